"""One NUMA node's stable tree: content token -> stable node, in three views kept in step.

mm/ksm.c keeps one rbtree per NUMA node (root_stable_tree[nid]), ordered by memcmp of
the KSM pages. Here a content is a token, and a tree is:

- a dict token -> node id (>= 0) or chain (-(cid + 1)): the exact lookup of the
  page-by-page path (stable_tree_search() finds the same match as the rbtree walk);
- a TokenIndex of the same pairs, so that a ksmd batch looks up thousands of contents
  in one vector operation (kernel/ksm_bulk.py);
- the kernel's rbtree (kernel/rbtree.py) of the same keys: its shape decides which nodes
  a search passes, and passing a node can prune it (stable_node_dup(), spec §8.9).

Every change goes through this class's methods, so the three cannot get out of step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .rbtree import RBTree
from .tokenindex import TokenIndex


class StableTree:
    """token -> node id (>= 0) or chain (-(cid + 1)), with a TokenIndex kept in step, and
    the kernel's rbtree of the same keys.

    ``defer`` holds keys added by a batch whose rbtree inserts wait until the batch ends,
    to be applied in the order in which the kernel would have inserted them."""

    __slots__ = ("_index", "_ivl", "_ivl_version", "_map", "defer", "rb")

    def __init__(self) -> None:
        self._map: dict[int, int] = {}
        self._index = TokenIndex()
        self.rb = RBTree()  # read by the walks; changed only through this class
        self.defer: list[tuple[int, int]] | None = None  # (visit position, key)
        self._ivl: dict[int, tuple[int, int]] = {}
        self._ivl_version = -1

    # -- reads
    def get(self, t: int) -> int | None:
        return self._map.get(t)

    def __getitem__(self, t: int) -> int:
        return self._map[t]

    def __contains__(self, t: int) -> bool:
        return t in self._map

    def __iter__(self) -> Iterator[int]:
        return iter(self._map)

    def lookup(self, ts: np.ndarray) -> np.ndarray:
        """The value of every token at once (tokenindex.MISSING when absent, UNKNOWN for
        a token equal to an index sentinel: ask get())."""
        return self._index.lookup(ts)

    def interval(self, t: int) -> tuple[int, int]:
        """rb.interval(t), cached until the tree's shape changes."""
        if self._ivl_version != self.rb.version:
            self._ivl.clear()
            self._ivl_version = self.rb.version
        iv = self._ivl.get(t)
        if iv is None:
            iv = self._ivl[t] = self.rb.interval(t)
        return iv

    # -- changes
    def __setitem__(self, t: int, v: int) -> None:
        """A key's value changes (a node becomes a chain, a chain collapses into its
        dup: rb_replace_node(), the rbtree's shape stays)."""
        self._map[t] = v
        self._index.set(t, v)

    def __delitem__(self, t: int) -> None:
        """rb_erase()."""
        del self._map[t]
        self._index.delete(t)
        if t in self.rb:
            self.rb.erase(t)

    def add(self, t: int, v: int, pos: int = 0) -> None:
        """A new key: rb_link_node() + rb_insert_color() (now, or at the end of the batch)."""
        self[t] = v
        if self.defer is not None:
            self.defer.append((pos, t))
        else:
            self.rb.insert(t)

    def add_many(self, ts: np.ndarray, vs: np.ndarray, pos: np.ndarray) -> None:
        """add() of many new keys (none in the tree yet), in the order given."""
        tl = ts.tolist()
        self._map.update(zip(tl, vs.tolist(), strict=True))
        self._index.set_many(ts, vs)
        if self.defer is not None:
            self.defer.extend(zip(pos.tolist(), tl, strict=True))
        else:
            for t in tl:
                self.rb.insert(t)

    def flush(self) -> None:
        """End of a batch: the deferred rbtree inserts, in the kernel's order."""
        pending, self.defer = self.defer or [], None
        for _, t in sorted(pending):
            if t in self._map and t not in self.rb:
                self.rb.insert(t)
