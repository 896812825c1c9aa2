"""Stable nodes and chains as arrays: the project's storage of struct ksm_stable_node.

mm/ksm.c allocates one struct ksm_stable_node per KSM page and links chains (a content
that needs several KSM pages, max_page_sharing) and their dups through hlists. Here the
nodes are a struct of arrays indexed by node id (Ksm.node_token, node_kfn, node_len,
node_chain, node_alive, node_nid: created in Ksm.__init__), chains are Chain objects
holding the dup lists, with numpy mirrors (chain_live, chain_head, chain_prune, the
cached rbtree interval of the chain's key) so that a batch checks every chain at once
(ksm_bulk.py). An rmap_item attached to a node keeps the node id in PhysMem.ival in
place of its checksum (_attach_ival / _detach_ival).

The kernel's functions that decide things about nodes (stable_node_dup(),
remove_node_from_stable_tree(), free_stable_node_chain(), __is_page_sharing_candidate())
stay in ksm.py; this mixin holds the storage operations they call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .ksm_defs import STABLE, calc_checksum, calc_checksum1
from .mm import GrowArray, PhysMem
from .stabletree import StableTree
from .trace import TraceBuffer


@dataclass
class Chain:
    """A stable_node chain: one content that needs several KSM pages (max_page_sharing)."""

    token: int
    nid: int
    dups: list[int] = field(default_factory=list)  # hlist order, head first
    # (its chain_prune_time lives in Ksm.chain_prune, indexed by chain id)


class StableNodes:
    """Mixin of Ksm: allocation and bookkeeping of the stable node and chain arrays."""

    # what the mixin reads of Ksm (set in Ksm.__init__)
    mem: PhysMem
    trace: TraceBuffer
    _clock_ns: Callable[[], int]
    chk_exc: dict[int, int]
    stable_tree: list[StableTree]
    stable_node_chains: int
    stable_node_dups: int

    def _init_nodes(self) -> None:
        # stable nodes (struct ksm_stable_node), struct of arrays
        self.node_token = GrowArray(np.uint64)
        self.node_kfn = GrowArray(np.int32, -1)  # -1: the KSM page is gone (stale)
        self.node_len = GrowArray(np.int32)  # rmap_hlist_len
        self.node_chain = GrowArray(np.int32, -1)  # chain id of a dup
        self.node_alive = GrowArray(np.bool_)
        self.node_nid = GrowArray(np.uint8)
        self._free_nodes: list[int] = []
        self.chains: dict[int, Chain] = {}
        self._next_chain = 0
        # stable_tree_append() adds an item at the head of the node's hlist; the order is
        # only needed by the ksm_remove_rmap_item lines of remove_node_from_stable_tree(),
        # so an append counter per item is kept only while that event is traced
        self._hlist_seq = np.zeros(0, dtype=np.int64)
        self._hlist_next = 0
        # chains: Chain objects hold the dup lists; numpy mirrors of whether a chain is
        # live, its head dup, its prune time and its key's rbtree interval let a batch
        # check every chain at once (ksm_bulk.py: _tree_has_special)
        self.chain_live = GrowArray(np.bool_)
        self.chain_head = GrowArray(np.int64, -1)
        self.chain_prune = GrowArray(np.int64)
        self.chain_ivl_lo = GrowArray(np.uint64)  # rbtree interval of the chain's key
        self.chain_ivl_hi = GrowArray(np.uint64)
        self.chain_ivl_flags = GrowArray(np.uint8)  # 1: has a low bound, 2: a high one
        self.chain_ivl_ver = GrowArray(np.int64, -1)  # rb version it was computed at

    def _new_nodes(self, tokens: np.ndarray, kfns: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """_new_node() for many plain nodes of NUMA node 0, in order."""
        m = tokens.shape[0]
        take = min(m, len(self._free_nodes))
        ids = np.empty(m, dtype=np.int64)
        if take:
            ids[:take] = self._free_nodes[::-1][:take]
            del self._free_nodes[-take:]
        if m > take:
            start = self.node_token.extend(m - take)
            for arr in (self.node_kfn, self.node_len, self.node_chain, self.node_alive, self.node_nid):
                arr.extend(m - take)
            ids[take:] = np.arange(start, start + m - take)
        self.node_token.a[ids] = tokens
        self.node_kfn.a[ids] = kfns
        self.node_len.a[ids] = lengths
        self.node_chain.a[ids] = -1
        self.node_alive.a[ids] = True
        self.node_nid.a[ids] = 0
        return ids

    def _attach_ival(self, g: np.ndarray, nodes: np.ndarray) -> None:
        """Store the node in place of the checksum; a checksum that is not the node's
        content's (a forked page attached without a checksum round) is kept aside."""
        ival = self.mem.ival.a
        if g.shape[0] == 1:
            gi, n = int(g[0]), int(nodes[0])
            c = int(ival[gi])
            if c != calc_checksum1(int(self.node_token.a[n])):
                self.chk_exc[gi] = c
            ival[gi] = n
            return
        cur = ival[g]
        odd = cur != calc_checksum(self.node_token.a[nodes])
        if odd.any():
            for gi, c in zip(g[odd].tolist(), cur[odd].tolist(), strict=False):
                self.chk_exc[gi] = c
        ival[g] = nodes

    def _detach_ival(self, g: np.ndarray, nodes: np.ndarray) -> None:
        """The item leaves its node: its checksum comes back."""
        if g.shape[0] == 1:
            self.mem.ival.a[int(g[0])] = calc_checksum1(int(self.node_token.a[int(nodes[0])]))
        else:
            self.mem.ival.a[g] = calc_checksum(self.node_token.a[nodes])
        if self.chk_exc:
            for gi in g.tolist():
                c = self.chk_exc.pop(gi, None)
                if c is not None:
                    self.mem.ival.a[gi] = c

    def _new_node(self, token: int, kfn: int, nid: int) -> int:
        if self._free_nodes:
            n = self._free_nodes.pop()
        else:
            n = self.node_token.extend(1)
            for arr in (self.node_kfn, self.node_len, self.node_chain, self.node_alive, self.node_nid):
                arr.extend(1)
        self.node_token.a[n] = token
        self.node_kfn.a[n] = kfn
        self.node_len.a[n] = 0
        self.node_chain.a[n] = -1
        self.node_alive.a[n] = True
        self.node_nid.a[n] = nid
        return n

    def _note_appends(self, g: np.ndarray) -> None:
        """stable_tree_append() of items ``g``, in this order (only while traced)."""
        n = self.mem.iflags.n
        if self._hlist_seq.shape[0] < n:
            grown = np.zeros(max(n, 2 * self._hlist_seq.shape[0]), dtype=np.int64)
            grown[: self._hlist_seq.shape[0]] = self._hlist_seq
            self._hlist_seq = grown
        self._hlist_seq[g] = self._hlist_next + 1 + np.arange(g.shape[0], dtype=np.int64)
        self._hlist_next += g.shape[0]

    def _hlists(self, nodes: list[int]) -> dict[int, list[int]]:
        """The items on each node's hlist, head (newest append) first; items appended
        while the event was not traced count as older, in address order."""
        if not self.trace.want("ksm_remove_rmap_item") or not nodes:
            return {}
        mem = self.mem
        n = mem.iflags.n
        cand = np.flatnonzero((mem.iflags.a[:n] & STABLE) != 0)
        cn = mem.ival.a[cand].astype(np.int64)
        hit = np.isin(cn, np.asarray(nodes, dtype=np.int64))
        items, owner = cand[hit], cn[hit]
        seq = np.zeros(items.shape[0], dtype=np.int64)
        known = items < self._hlist_seq.shape[0]
        seq[known] = self._hlist_seq[items[known]]
        order = np.lexsort((-items, -seq, owner))
        out: dict[int, list[int]] = {}
        for node, gi in zip(owner[order].tolist(), items[order].tolist(), strict=False):
            out.setdefault(node, []).append(gi)
        return out

    def _stale(self, n: int) -> bool:
        return int(self.node_kfn.a[n]) < 0

    def _chain_new(self, token: int, nid: int, first: int) -> int:
        """alloc_stable_node_chain(): the chain takes the node's place in the tree and the
        node becomes its first dup (chains++, dups++); prune time = now."""
        cid = self._next_chain
        self._next_chain += 1
        for arr in (self.chain_live, self.chain_head, self.chain_prune, self.chain_ivl_lo,
                    self.chain_ivl_hi, self.chain_ivl_flags, self.chain_ivl_ver):
            arr.extend(1)
        self.chain_ivl_ver.a[cid] = -1
        self.chains[cid] = Chain(token, nid, [first])
        self.chain_live.a[cid] = True
        self.chain_head.a[cid] = first
        self.chain_prune.a[cid] = self._clock_ns()
        self.node_chain.a[first] = cid
        self.stable_tree[nid][token] = -(cid + 1)
        self.stable_node_chains += 1
        self.stable_node_dups += 1
        return cid

    def _chain_add_dup(self, cid: int, n: int) -> None:
        """stable_node_chain_add_dup(): at the head of the hlist, dups++."""
        self.chains[cid].dups.insert(0, n)
        self.chain_head.a[cid] = n
        self.node_chain.a[n] = cid
        self.stable_node_dups += 1

    def _chain_remove_dup(self, cid: int, n: int) -> None:
        """__stable_node_dup_del(): dups--."""
        dl = self.chains[cid].dups
        dl.remove(n)
        self.chain_head.a[cid] = dl[0] if dl else -1
        self.stable_node_dups -= 1

    def _chain_drop(self, cid: int) -> Chain:
        ch = self.chains.pop(cid)
        self.chain_live.a[cid] = False
        self.stable_node_chains -= 1
        return ch

    def _set_prune_time(self, cid: int, t: int) -> None:
        self.chain_prune.a[cid] = t

    def _dups(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live dup and its chain id: from the chains' lists when dups are few
        (a batch may be cut in many windows: no pass over every node then)."""
        if self.stable_node_dups * 8 < self.node_alive.n:
            lists = [ch.dups for ch in self.chains.values()]
            ids = np.fromiter(itertools.chain.from_iterable(lists), np.int64, sum(map(len, lists)))
        else:
            n = self.node_alive.n
            ids = np.flatnonzero(self.node_alive.a[:n] & (self.node_chain.a[:n] >= 0))
        return ids, self.node_chain.a[ids].astype(np.int64)

    def _chains_with_head_only(self, mps: int) -> np.ndarray:
        """Per chain id: live, at least two dups, none stale, and no dup but the head
        with room for a page (then every search, pruning or not, picks the head)."""
        ids, chain = self._dups()
        nc = self.chain_live.n
        ndups = np.bincount(chain, minlength=nc)[:nc]
        lens = self.node_len.a[ids]
        bad = self.node_kfn.a[ids] < 0
        nonhead = self.chain_head.a[chain] != ids
        bad |= nonhead & (lens > 0) & (lens < mps)
        bad |= lens <= 0
        nbad = np.bincount(chain[bad], minlength=nc)[:nc]
        ok: np.ndarray = self.chain_live.a[:nc] & (ndups >= 2) & (nbad == 0)
        return ok

    def _all_nodes(self) -> list[int]:
        return np.flatnonzero(self.node_alive.a[: self.node_alive.n]).tolist()
