"""One NUMA node's stable tree: content token -> stable node, in two views kept in step.

mm/ksm.c keeps one rbtree per NUMA node (root_stable_tree[nid]), ordered by memcmp of
the KSM pages. Here a content is a token, and a tree is:

- a hash map token -> node id (>= 0) or chain (-(cid + 1)) (TokenMap): the exact lookup
  of the page-by-page path (stable_tree_search() finds the same match as the rbtree
  walk), and a ksmd batch looks up thousands of contents in one call (kernel/ksm_bulk.py);
- the kernel's rbtree of the same keys: its shape decides which nodes a search passes,
  and passing a node can prune it (stable_node_dup(), spec §8.9).

Both are compiled (kernel/_rbtree.c): the rbtree is lib/rbtree.c case by case, and
kernel/rbtree.py, the same algorithm in Python, is the reference it is tested against
(tests/kernel/test_rbtree.py). Every change goes through this class's methods, so the
two cannot get out of step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

try:
    from ._rbtree import RBTree, TokenMap
except ImportError as e:  # a checkout whose extension was never built (or is stale)
    raise ImportError(
        "ksmfs.kernel._rbtree (the compiled stable tree, kernel/_rbtree.c) is not "
        "built: run `pip install -e .` (or scripts/setup-test.sh) in the repository; it "
        f"needs gcc and the Python headers ({e})"
    ) from None

# StableTree.lookup()'s answer for a token that is not in the tree (node ids are >= 0,
# chains -(cid + 1) > MISSING)
MISSING = -(1 << 62)


class StableTree:
    """token -> node id (>= 0) or chain (-(cid + 1)), and the kernel's rbtree of the same
    keys.

    Setting ``defer`` to a list starts a batch whose rbtree inserts wait until flush(),
    to be applied in the order in which the kernel would have inserted them: the list
    holds the (visit position, key) pairs of add(), ``_defer_many`` the arrays of
    add_many()."""

    __slots__ = ("_defer_many", "_map", "defer", "rb")

    def __init__(self) -> None:
        self._map = TokenMap()
        self.rb = RBTree()  # read by the walks; changed only through this class
        self.defer: list[tuple[int, int]] | None = None  # (visit position, key)
        self._defer_many: list[tuple[np.ndarray, np.ndarray]] = []  # (positions, keys)

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
        """The value of every token at once (MISSING when absent; every uint64
        token can be looked up)."""
        ts = np.ascontiguousarray(ts, dtype=np.uint64)
        out = np.empty(ts.shape[0], dtype=np.int64)
        self._map.lookup_into(ts, out, MISSING)
        return out

    def interval(self, t: int) -> tuple[int, int]:
        """The open interval of search keys whose rbtree walk passes ``t``'s node."""
        return self.rb.interval(t)

    # -- changes
    def __setitem__(self, t: int, v: int) -> None:
        """A key's value changes (a node becomes a chain, a chain collapses into its
        dup: rb_replace_node(), the rbtree's shape stays)."""
        self._map[t] = v

    def __delitem__(self, t: int) -> None:
        """rb_erase()."""
        del self._map[t]
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
        ts = np.array(ts, dtype=np.uint64)  # a copy: the caller may reuse its arrays
        self._map.set_many(ts, np.ascontiguousarray(vs, dtype=np.int64))
        if self.defer is not None:
            self._defer_many.append((np.array(pos, dtype=np.int64), ts))
        else:
            self.rb.insert_many(ts)

    def flush(self) -> None:
        """End of a batch: the deferred rbtree inserts, in the kernel's order (visit
        position, then key), of the keys still in the map and not yet in the rbtree
        (a key removed and added again in the batch is inserted once, at its first place)."""
        pending, self.defer = self.defer or [], None
        chunks, self._defer_many = self._defer_many, []
        if pending:
            p, k = zip(*pending, strict=True)
            chunks.append((np.array(p, dtype=np.int64), np.array(k, dtype=np.uint64)))
        if not chunks:
            return
        pos = np.concatenate([c[0] for c in chunks])
        ts = np.concatenate([c[1] for c in chunks])
        if ts.shape[0]:
            ts = ts[_order(pos, ts)]
        self.rb.insert_many(ts[self.lookup(ts) != MISSING], skip_present=True)


def _order(pos: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The permutation that sorts the (position, key) pairs. Visit positions lie within
    a batch and are nearly always distinct (a page makes at most one new stable node), so
    a scatter into a table of the positions sorts them in linear time; np.lexsort
    (~10-30 ms for 100 000 pairs) is the fallback for positions that repeat or spread too
    far."""
    n = pos.shape[0]
    lo = int(pos.min())
    span = int(pos.max()) - lo + 1
    if span <= 4 * n + 65536:
        at = np.full(span, -1, dtype=np.int64)
        at[pos - lo] = np.arange(n)
        order = at[at >= 0]
        if order.shape[0] == n:  # no position twice
            return order
    return np.lexsort((ts, pos))
