"""The bulk (vector) merge: cmp_and_merge_page() for a whole batch window at once.

Not in mm/ksm.c: the kernel merges page by page. Ksm._cmp_and_merge_pages() (ksm.py)
sends a window here when no search of it can have a side effect (_tree_has_special(),
_detaches_from_chain()); otherwise, and always with Kernel(exact=True), every page goes
through Ksm._cmp_and_merge_one(), the port of cmp_and_merge_page().

_cmp_and_merge_bulk() classifies the window's pages before touching a tree: attached KSM
pages are no-ops, changed checksums become volatile, zero pages merge into the zero
page, contents no other frame holds go to the unstable tree. Candidate contents are
sorted (_classify_groups) into plans with a closed form: an AppendPlan (a node with
room takes every page of its content; decided page by page, _append_pages(), since a
node stands for one content), a NewNodesPlan (contents new to the stable tree
that fit one KSM page, decided for all at once) and BlocksPlans (fill the node, then
blocks of max_page_sharing pages each making a KSM page). _merge_groups() carries them
out with vector operations, with the counter changes of the page-by-page path summed.
Everything whose outcome depends on order runs page by page in visit order, and the
trace records of the vector merges are written at their pages' places (_flush_trace).
tests/kernel/test_oracle.py checks this module against the exact path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._rbtree import TokenMap
from .ksm_defs import SEQ_ODD, STABLE, UNSTABLE, calc_checksum
from .ksm_nodes import StableNodes
from .mm import FRAME_FILE, FRAME_SHMEM, MM, UNIQUE_BIT
from .stabletree import MISSING


@dataclass
class NewNodesPlan:
    """Contents of a batch not yet in the stable tree, each fitting in one KSM page.
    ``pos``: visit positions of their pages, grouped by content (visit order inside a
    group); ``sizes``: pages per content; ``tree_items``: the unstable tree's item of this
    pass for the content, or -1."""

    pos: np.ndarray
    sizes: np.ndarray
    tokens: np.ndarray
    tree_items: np.ndarray


@dataclass
class BlocksPlan:
    """One content of a batch with a closed form that may make KSM pages: append what
    fits to ``node``, then blocks of max_page_sharing pages, in each of which the first
    page waits in the unstable tree, the second pairs with it and becomes a new KSM page
    (a new dup once one exists) and the rest append (spec §3.6)."""

    pos: np.ndarray  # visit positions of the content's pages, in visit order
    node: int  # the stable node (the chain's head dup) with room, or -1
    token: int
    room: int  # pages ``node`` can still take (0 without a node)
    tree_item: int  # the unstable tree's item of this pass for the content, or -1
    cid: int  # the content's chain, or -1


@dataclass
class AppendPlan:
    """Contents whose node (a plain node, or a chain whose only dup with room is its
    head) has room for every page of the batch: the pages append to it."""

    pos: np.ndarray  # visit positions of the pages
    nodes: np.ndarray  # the node of each page
    group_nodes: np.ndarray  # per content: its node (distinct) ...
    group_sizes: np.ndarray  # ... and its number of pages


@dataclass
class BatchPlans:
    """What _classify_groups() decided for a batch's candidate pages."""

    blocks: list[BlocksPlan]
    append: AppendPlan
    new_nodes: NewNodesPlan | None
    slow: list[np.ndarray]  # visit positions for the page-by-page path, per content


class BulkMerge(StableNodes):
    """Mixin of Ksm: the vector path of cmp_and_merge_page() for a batch window."""

    # what the mixin reads of Ksm besides the node arrays (set in Ksm.__init__)
    _mm_by_gpid: Callable[[np.ndarray], np.ndarray]
    _mms: dict[int, MM]
    _scan_mm: MM | None
    _stale_nodes: set[int]
    _trace_queue: list[tuple[int, int, str, dict[str, object]]]
    _due_chains: np.ndarray
    _pos: int
    demoted_unique: set[int]
    unstable_tree: list[TokenMap]
    max_page_sharing: int
    merge_across_nodes: int
    stable_node_chains_prune_millisecs: int
    use_zero_pages: int
    seqnr: int
    pages_shared: int
    pages_sharing: int
    pages_unshared: int
    pages_in_order: int

    if TYPE_CHECKING:  # the port's functions it calls (ksm.py)
        def _emit(self, event: str, pid: int | None = None, comm: str = "ksmd", **fields: object) -> None: ...
        def _cmp_and_merge_one(self, g: int, forked: bool) -> None: ...
        def _get_mergeable_page(self, g: int) -> int | None: ...
        def _merge_with_zero_page(self, g: np.ndarray, pos: np.ndarray | None = None) -> None: ...
        def _mmid(self, g: int) -> int: ...
        def _nid(self, frame: int) -> int: ...
        def _oldchecksum(self, g: np.ndarray, fl: np.ndarray) -> np.ndarray: ...
        def _per_mm(self, g: np.ndarray) -> list[tuple[MM, int]]: ...
        def _remove_one(self, g: int) -> None: ...
        def _remove_from_tree(self, g: np.ndarray) -> None: ...
        def put_frames(self, frames: np.ndarray, distinct: bool = False) -> None: ...

    def _cmp_and_merge_bulk(
        self, g: np.ndarray, f: np.ndarray, kind: np.ndarray, ksm: np.ndarray, fl: np.ndarray,
        skip: np.ndarray | None = None,
    ) -> None:
        """The vector path of _cmp_and_merge_pages() (no search has side effects). No page
        here is attached to its KSM page, so a KSM page is one inherited through fork."""
        mem = self.mem
        n = g.shape[0]
        forked = ksm
        plain = ~ksm if skip is None else ~ksm & ~skip
        tok = mem.ftoken.a[f]
        # the plain pages (neither fork-shared nor skipped): usually all of them
        if plain.all():
            pos_plain = None
            tp, gp, flp, fpl = tok, g, fl, f
        else:
            pos_plain = np.flatnonzero(plain)
            tp, gp, flp, fpl = tok[pos_plain], g[pos_plain], fl[pos_plain], f[pos_plain]
        chk = calc_checksum(tp)
        stable_cand = chk == self._oldchecksum(gp, flp)
        # classify before touching any tree: which contents could meet another page?
        sc_idx = np.flatnonzero(stable_cand)
        pos_sc = sc_idx if pos_plain is None else pos_plain[sc_idx]  # their places in g
        cand_tok = tp[sc_idx]
        fp = fpl[sc_idx]
        fm = mem.fmap.a[fp]
        unique = ((cand_tok & UNIQUE_BIT) != 0) & (fm == 1)
        if self.demoted_unique:
            unique &= ~np.isin(cand_tok, np.fromiter(self.demoted_unique, np.uint64))
        zero = (cand_tok == 0) & bool(self.use_zero_pages)
        if self._due_chains.shape[0]:
            self._prune_passed_chains(cand_tok[~zero])
        slow_c = ~unique & ~zero
        pos_c = pos_sc[slow_c]
        tok_c = cand_tok[slow_c]
        f_c = fp[slow_c]
        any_forked = bool(forked.any())
        forced: set[int] = set(tok[forked].tolist()) if any_forked else set()
        in_order = np.zeros(n, dtype=bool)
        if any_forked:
            in_order[forked] = True
        if tok_c.shape[0]:
            # an item still attached to a node whose content is in play must leave it at its
            # place in the visit order: the node's fill level decides later merges
            st_plain = (flp & STABLE) != 0
            if st_plain.any():
                sti = np.flatnonzero(st_plain)
                ntok = self.node_token.a[mem.ival.a[gp[sti]].astype(np.int64)]
                hit = np.isin(ntok, tok_c)
                in_order[sti[hit] if pos_plain is None else pos_plain[sti[hit]]] = True
                forced.update(ntok[hit].tolist())
        if skip is not None:
            # a skipped item attached to a node whose content is in play leaves it at its
            # place (the node's fill level decides the searches around it); the others
            # leave now, which no search of this window can tell apart
            spos = np.flatnonzero(skip)
            late = np.zeros(spos.shape[0], dtype=bool)
            sst = (fl[spos] & STABLE) != 0
            if (tok_c.shape[0] or forced) and sst.any():
                ntok = self.node_token.a[mem.ival.a[g[spos[sst]]].astype(np.int64)]
                hit = np.isin(ntok, tok_c)
                if forced:
                    hit |= np.isin(ntok, np.fromiter(forced, np.uint64, len(forced)))
                late[np.flatnonzero(sst)[hit]] = True
                forced.update(ntok[hit].tolist())
            in_order[spos[late]] = True
            self._remove_from_tree(g[spos[~late]])
        if self.use_zero_pages and mem.compounds and zero.any():
            # a zero page merged out of a compound page splits it: at its place in the order
            zc = zero & mem.in_compound(fp)
            in_order[pos_sc[zc]] = True
        classified = self._classify_groups(g, f, pos_c, tok_c, forced, f_c, fm[slow_c])
        plans, app, new_plan = classified.blocks, classified.append, classified.new_nodes
        for grp in classified.slow:
            in_order[grp] = True
        some_in_order = bool(in_order.any())
        # bulk: remove from trees, checksum rule, zero pages, never-matching contents
        if pos_plain is None and not some_in_order:
            gb, flb = g, fl
        else:
            bm = plain & ~in_order
            gb, flb = g[bm], fl[bm]
        if (flb & np.uint8(STABLE | UNSTABLE | SEQ_ODD)).any():
            # (``fl`` holds these items' flags: nothing above changed them)
            self._remove_from_tree(gb)
        # the checksum rule, with the checksums and their comparison from above (leaving
        # the tree restores exactly the oldchecksum that _oldchecksum() reported)
        chg = np.flatnonzero(~stable_cand)
        chg_pos = chg if pos_plain is None else pos_plain[chg]
        chk_chg = chk[chg]
        if some_in_order:
            m = ~in_order[chg_pos]
            chg_pos, chk_chg = chg_pos[m], chk_chg[m]
        if chg_pos.shape[0] == n and int(g[-1]) - int(g[0]) + 1 == n:
            mem.ival.a[int(g[0]) : int(g[-1]) + 1] = chk_chg  # (g ascends: one range)
        else:
            mem.ival.a[g[chg_pos]] = chk_chg
        # the contents no other page can meet (and zero pages): in no plan
        uz = ~slow_c
        keep_pos = pos_sc[uz]
        tbk = cand_tok[uz]
        if some_in_order:
            m = ~in_order[keep_pos]
            keep_pos, tbk = keep_pos[m], tbk[m]
        if keep_pos.shape[0]:
            gbk = g[keep_pos]
            z = (tbk == 0) & bool(self.use_zero_pages)
            if z.any():
                self._merge_with_zero_page(gbk[z], keep_pos[z])
                gbk = gbk[~z]
            if gbk.shape[0]:
                # unstable_tree_search_insert() that cannot find a match: insert
                self._insert_unstable_bulk(gbk)
        if plans or app.pos.shape[0] or new_plan is not None:
            self._merge_groups(g, plans, app, new_plan)
        # in order: everything whose outcome depends on other pages of the same content;
        # the trace records of the vector merges are written at their pages' places
        if some_in_order:
            self.pages_in_order += int(np.count_nonzero(in_order))
            for i in np.flatnonzero(in_order).tolist():
                self._pos = i
                self._flush_trace(i)
                if skip is not None and skip[i]:
                    self._remove_one(int(g[i]))
                else:
                    self._cmp_and_merge_one(int(g[i]), bool(forked[i]))
        self._flush_trace(None)

    def _flush_trace(self, before: int | None) -> None:
        """Write the queued records of vector merges at visit positions < ``before``
        (all of them for None), in visit order."""
        q = self._trace_queue
        if not q:
            return
        q.sort(key=lambda e: (e[0], e[1]))
        k = len(q) if before is None else next((j for j, e in enumerate(q) if e[0] >= before), len(q))
        for _, _, event, fields in q[:k]:
            self._emit(event, None, "ksmd", **fields)
        del q[:k]

    def _classify_groups(
        self, g: np.ndarray, f: np.ndarray, pos_c: np.ndarray, tok_c: np.ndarray, forced: set[int],
        f_c: np.ndarray | None = None, fm_c: np.ndarray | None = None,
    ) -> BatchPlans:
        """Split the batch's candidate pages by content. A content whose outcome follows
        from a closed form gets a plan: "append" (a node with room takes every page) or
        "blocks" (fill the node, then blocks of max_page_sharing pages each making a KSM
        page). Everything else (due chain prunes, stale nodes, fork-shared pages, aborted
        tree walks) goes to the page-by-page path. ``f_c``: the frames of ``pos_c``,
        ``fm_c`` their map counts."""
        empty = np.zeros(0, dtype=np.int64)
        if not pos_c.shape[0]:
            return BatchPlans([], AppendPlan(empty, empty, empty, empty), None, [])
        if f_c is None:
            f_c = f[pos_c]
        if not self.merge_across_nodes:
            return self._classify_sorted(pos_c, tok_c, f_c, forced, None)
        # the usual case, decided page by page without grouping: the contents whose
        # node takes every page of the batch (most of them, once the stable tree is
        # built); only the other pages are grouped by content
        if fm_c is None:
            fm_c = self.mem.fmap.a[f_c]
        vals, app, target, gn, gcnt = self._append_pages(tok_c, f_c, fm_c, forced)
        if not app.any():
            return self._classify_sorted(pos_c, tok_c, f_c, forced, vals)
        fast = AppendPlan(pos_c[app], target[app], gn, gcnt)
        rest = ~app
        if not rest.any():
            return BatchPlans([], fast, None, [])
        res = self._classify_sorted(pos_c[rest], tok_c[rest], f_c[rest], forced, vals[rest])
        a2 = res.append
        if a2.pos.shape[0]:
            fast = AppendPlan(
                np.concatenate((fast.pos, a2.pos)), np.concatenate((fast.nodes, a2.nodes)),
                np.concatenate((gn, a2.group_nodes)), np.concatenate((fast.group_sizes, a2.group_sizes)),
            )
        return BatchPlans(res.blocks, fast, res.new_nodes, res.slow)

    def _append_pages(
        self, tok_c: np.ndarray, f_c: np.ndarray, fm_c: np.ndarray, forced: set[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The "append" plan decided per page (merge_across_nodes): a plain node, or a
        chain whose only dup with room is its head (no stale or single dup: every search
        picks the head, as for a plain node; see _classify_sorted), that has room for
        every page of its content in the batch, all of them single pages. A node stands
        for one content, so the pages of a content are the pages of its node: counted
        with a bincount instead of a sort (with np.unique when the window has far fewer
        pages than the tree has nodes: a small slice must not cost a pass over every
        node). Returns (stable tree lookup per page, pages appended, their node, the
        nodes whose pages all append in ascending order, pages per such node)."""
        mem = self.mem
        mps = self.max_page_sharing
        vals = self.stable_tree[0].lookup(tok_c)
        plain = vals >= 0
        chained = (vals < 0) & (vals > MISSING)
        has_chain = bool(chained.any())
        if has_chain:
            cids = np.where(chained, -vals - 1, 0)
            chained &= self._chains_with_head_only(mps)[cids]
            target = np.where(plain, vals, np.where(chained, self.chain_head.a[cids], 0))
            cand = plain | chained
        else:
            target = np.where(plain, vals, 0)
            cand = plain
        node_len = self.node_len.a
        ln = node_len[target]
        cand &= (self.node_kfn.a[target] >= 0) & (ln > 0) & (ln < mps)
        nn = self.node_len.n
        if not cand.any():
            return vals, cand, target, np.zeros(0, np.int64), np.zeros(0, np.int64)
        tc = target[cand]
        few = tc.shape[0] * 16 < nn
        if few:
            # the same counts as the bincount below, over the window's own nodes
            un, inv, cnt = np.unique(tc, return_inverse=True, return_counts=True)
            okn = cnt <= mps - node_len[un]
        else:
            cnt = np.bincount(tc, minlength=nn)
            okn = cnt <= mps - node_len[: cnt.shape[0]]
        # a page of a compound page (or mapped twice): whether its merge splits or fails
        # depends on the order of the merges, so its whole content takes the other path
        shared = fm_c != 1
        if mem.compounds:
            shared |= mem.in_compound(f_c)
        bad = cand & shared
        if forced:
            bad |= cand & np.isin(tok_c, np.fromiter(forced, np.uint64, len(forced)))
        if bad.any():
            if few:
                okn[inv[bad[cand]]] = False
            else:
                okn[target[bad]] = False
        if few:
            app = cand.copy()
            app[cand] = okn[inv]
            gn, gcnt = un[okn], cnt[okn]
        else:
            app = cand & okn[target]
            gn = np.flatnonzero(okn & (cnt > 0))
            gcnt = cnt[gn]
        if has_chain:
            ac = app & chained
            if ac.any():
                # the first search of such a content prunes a due chain: only the time moves
                now = self._clock_ns()
                prune_ns = self.stable_node_chains_prune_millisecs * 1_000_000
                due_c = np.unique(cids[ac])
                due_c = due_c[now >= self.chain_prune.a[due_c] + prune_ns]
                self.chain_prune.a[due_c] = now
        return vals, app, target, gn, gcnt

    def _classify_sorted(
        self, pos_c: np.ndarray, tok_c: np.ndarray, f_c: np.ndarray, forced: set[int],
        vals_p: np.ndarray | None,
    ) -> BatchPlans:
        """_classify_groups() for pages grouped by content (a stable sort of their tokens),
        with each page's stable tree lookup ``vals_p`` when merge_across_nodes (the pages
        of _append_pages() are not among them), or None (each content's NUMA node)."""
        plans: list[BlocksPlan] = []
        slow: list[np.ndarray] = []
        new_plan: NewNodesPlan | None = None
        mem = self.mem
        order = _group_order(tok_c)
        ts = tok_c[order]
        ps = pos_c[order]
        fs = f_c[order]
        brk = np.flatnonzero(ts[1:] != ts[:-1]) + 1
        starts_a = np.concatenate(([0], brk))
        sizes_a = np.diff(np.concatenate((starts_a, [ts.shape[0]])))
        # a page of a compound page: whether its merge splits or fails (two pages of one
        # compound) depends on the order of the merges: the page-by-page path
        single = (mem.fmap.a[fs] == 1) & ~mem.in_compound(fs)
        ok_a = np.minimum.reduceat(single.astype(np.int8), starts_a) > 0
        nid_a = None
        if vals_p is None:
            nids = mem.nid_of(fs)
            lo = np.minimum.reduceat(nids, starts_a)
            ok_a &= lo == np.maximum.reduceat(nids, starts_a)
            nid_a = lo.tolist()
        mps = self.max_page_sharing
        seq_odd = bool(self.seqnr & 1)
        now = self._clock_ns()
        prune_ns = self.stable_node_chains_prune_millisecs * 1_000_000
        node_kfn = self.node_kfn.a
        node_len = self.node_len.a
        uniq = ts[starts_a]
        gnode = np.full(starts_a.shape[0], -1, dtype=np.int64)
        app_group = np.zeros(starts_a.shape[0], dtype=bool)
        if vals_p is not None:
            # (the contents whose node takes all their pages were taken by _append_pages)
            vals = vals_p[order[starts_a]]
            new_plan, rest_a = self._classify_new(
                np.arange(starts_a.shape[0]), vals, uniq, sizes_a, ok_a, forced, mps, seq_odd, ps, starts_a
            )
        else:
            rest_a = np.arange(starts_a.shape[0])
        stable_trees = self.stable_tree
        unstable_trees = self.unstable_tree
        # (Python values only for the contents left to this loop)
        for i, t, k, ok, start in zip(rest_a.tolist(), uniq[rest_a].tolist(), sizes_a[rest_a].tolist(),
                                      ok_a[rest_a].tolist(), starts_a[rest_a].tolist(), strict=True):
            if t in forced or not ok:
                slow.append(ps[start : start + k])
                continue
            nid = 0 if nid_a is None else nid_a[i]
            e = stable_trees[nid].get(t)
            room = 0
            cid = -1
            if e is not None and e < 0:
                # a chain: without a prune due and with no stale dup, stable_node_dup()
                # returns the head dup; when it is full a new dup is made at the head
                cid = -e - 1
                ch = self.chains[cid]
                dl = ch.dups
                dla = np.fromiter(dl, np.int64, len(dl))
                lens = node_len[dla]
                cand = (lens > 0) & (lens < mps)
                # closed form only when at most the head dup can take pages: then every
                # search (pruning or not) picks the head, and a new dup is made when it
                # is full; a dup with room further down the list takes the exact path
                if len(dl) < 2 or (node_kfn[dla] < 0).any() or (lens <= 0).any() or cand[1:].any():
                    slow.append(ps[start : start + k])
                    continue
                if now >= self.chain_prune.a[cid] + prune_ns:
                    self._set_prune_time(cid, now)  # the first search prunes (no other effect)
                e = dl[0]
            if e is not None:
                ln = int(node_len[e])
                if node_kfn[e] < 0 or ln == 0:
                    slow.append(ps[start : start + k])  # a stale node: exact path
                    continue
                room = mps - ln if ln < mps else 0
                if k <= room:
                    app_group[i] = True
                    gnode[i] = e
                    continue
            tree_item = -1
            tr = unstable_trees[nid].get(t)
            if tr is not None:
                tf = int(mem.iflags.a[tr])
                if (tf & UNSTABLE) and bool(tf & SEQ_ODD) == seq_odd:
                    page = self._get_mergeable_page(tr)
                    # (with a node ``e`` too: once it is full, a page's stable_tree_search() fails
                    # and unstable_tree_search_insert() finds this item, as for the first
                    # page of a block, which this plan's first block starts with)
                    if (page is None or int(mem.ftoken.a[page]) != t or int(mem.fmap.a[page]) != 1
                            or mem.compound_of(page) >= 0):
                        slow.append(ps[start : start + k])  # aborted walks: exact path
                        continue
                    tree_item = tr
            # append what fits, then blocks of max_page_sharing pages: in each block the
            # first page waits in the unstable tree, the second pairs with it and becomes a
            # new KSM page (a new dup once one exists), the rest append (spec §3.6)
            plans.append(BlocksPlan(ps[start : start + k], e if e is not None else -1, t, room, tree_item, cid))
        sel = np.repeat(app_group, sizes_a)
        app_pos = ps[sel]
        app_nodes = np.repeat(gnode[app_group], sizes_a[app_group])
        return BatchPlans(
            plans, AppendPlan(app_pos, app_nodes, gnode[app_group], sizes_a[app_group]), new_plan, slow
        )

    def _classify_new(
        self, rest: np.ndarray, vals: np.ndarray, uniq: np.ndarray, sizes: np.ndarray,
        ok: np.ndarray, forced: set[int], mps: int, seq_odd: bool, ps: np.ndarray,
        starts: np.ndarray,
    ) -> tuple[NewNodesPlan | None, np.ndarray]:
        """Contents not in the stable tree whose group fits in one KSM page: a lone page
        goes to the unstable tree, or the group (with the unstable tree's page of this
        pass, when there is one) makes one new KSM page. The same closed form as a
        "blocks" plan of one block, decided for all contents at once. Returns the plan
        and the groups left for the per-content loop."""
        cand = rest[(vals[rest] == MISSING) & ok[rest]]
        if forced and cand.shape[0]:
            cand = cand[~np.isin(uniq[cand], np.fromiter(forced, np.uint64, len(forced)))]
        if not cand.shape[0]:
            return None, rest
        mem = self.mem
        ut = self.unstable_tree[0]
        tr = np.empty(cand.shape[0], dtype=np.int64)
        ut.lookup_into(np.ascontiguousarray(uniq[cand], dtype=np.uint64), tr, -1)
        trs = np.maximum(tr, 0)
        trf = mem.iflags.a[trs]
        valid = (tr >= 0) & ((trf & UNSTABLE) != 0) & (((trf & SEQ_ODD) != 0) == seq_odd)
        page = self._mergeable_pages(trs)
        fine = (page >= 0) & (mem.ftoken.a[np.maximum(page, 0)] == uniq[cand])
        fine &= (mem.fmap.a[np.maximum(page, 0)] == 1) & ~mem.in_compound(np.maximum(page, 0))
        k = sizes[cand]
        # a valid tree item whose walk would abort stays with the exact path
        simple = np.where(valid, fine & (k + 1 <= mps), k <= mps)
        sel = cand[simple]
        if not sel.shape[0]:
            return None, rest
        keep = np.ones(vals.shape[0], dtype=bool)
        keep[sel] = False
        tree_item = np.where(valid, tr, -1)[simple]
        k = k[simple]
        idx = np.repeat(starts[sel], k) + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        plan = NewNodesPlan(pos=ps[idx], sizes=k, tokens=uniq[sel], tree_items=tree_item)
        return plan, rest[keep[rest]]

    def _mergeable_pages(self, g: np.ndarray) -> np.ndarray:
        """get_mergeable_page() of many items: the frame, or -1."""
        bases = []
        ends = []
        for mm in self._mms.values():
            if mm.exiting:
                continue
            for v in mm.vmas:
                if v.mergeable:
                    bases.append(v.base)
                    ends.append(v.base + v.npages)
        out = np.full(g.shape[0], -1, dtype=np.int64)
        if not bases:
            return out
        order = np.argsort(bases)
        b = np.asarray(bases, dtype=np.int64)[order]
        e = np.asarray(ends, dtype=np.int64)[order]
        r = np.searchsorted(b, g, side="right") - 1
        inside = (r >= 0) & (g < e[np.maximum(r, 0)])
        fr = self.mem.pte.a[g].astype(np.int64)
        kind = self.mem.fnode.a[np.maximum(fr, 0)]
        okp = inside & (fr >= 0) & (kind != FRAME_FILE) & (kind != FRAME_SHMEM)
        out[okp] = fr[okp]
        return out

    def _merge_groups(
        self,
        g: np.ndarray,
        plans: list[BlocksPlan],
        app: AppendPlan,
        new_plan: NewNodesPlan | None = None,
    ) -> None:
        """Carry out the plans of _classify_groups() with vector operations; the counter
        changes are those of the page-by-page path, summed."""
        mem = self.mem
        app_pos, app_nodes = app.pos, app.nodes
        att_g: list[np.ndarray] = []  # items appended to a node
        att_n: list[np.ndarray] = []
        repl_g: list[np.ndarray] = []  # PTEs pointed at a KSM page
        repl_k: list[np.ndarray] = []
        seq_flag = SEQ_ODD if self.seqnr & 1 else 0
        shared = sharing = unshared = 0
        tracing = self.trace.want("ksm_merge_with_ksm_page")
        events: list[tuple[int, int, int, int | None, int]] = []  # (pos, order, item, ksm_page, pfn)
        hl_on = self.trace.want("ksm_remove_rmap_item")
        hl: list[np.ndarray] = []  # stable_tree_append() order: rows (pos, order, item)
        if app_pos.shape[0]:
            # one content per node: the groups' nodes are distinct, so += is exact
            gn, gs = app.group_nodes, app.group_sizes
            self.node_len.a[gn] += gs.astype(np.int32)
            mem.map_add(self.node_kfn.a[gn], gs)
            ga = g[app_pos]
            sharing += ga.shape[0]
            if tracing:
                kfns = self.node_kfn.a[app_nodes].tolist()
                events += [(p, 0, gi, kf, kf) for p, gi, kf in zip(app_pos.tolist(), ga.tolist(), kfns, strict=False)]
            if hl_on:
                hl.append(np.stack((app_pos, np.zeros_like(app_pos), ga)))
            # (a page of the plan's content has checksum and content of its node: no
            # exception to keep aside, see _attach_ival)
            mem.iflags.a[ga] = (mem.iflags.a[ga] & ~np.uint8(UNSTABLE | SEQ_ODD)) | STABLE
            mem.ival.a[ga] = app_nodes
            if self._scan_mm is not None:
                self._scan_mm.ksm_merging_pages += ga.shape[0]  # the window's pages are its
            else:
                for mm, cnt in self._per_mm(ga):
                    mm.ksm_merging_pages += cnt
            old = mem.pte.a[ga]
            mem.pte.a[ga] = self.node_kfn.a[app_nodes]
            # every page of the plan is the only mapping of a frame that is no KSM page
            # and in no compound page (_append_pages): put_frames() would free each
            mem.free_frames(old)
        if new_plan is not None:
            sh, sg, un = self._merge_new_nodes(
                g, new_plan, att_g, att_n, repl_g, repl_k, events, tracing, hl if hl_on else None
            )
            # the new KSM pages' items (the first in att_g): each page's checksum is its
            # content's, the node's (classified as unchanged), so none is kept aside
            known = sum(a.shape[0] for a in att_g)
            own = att_g[0].shape[0] if att_g else 0  # its pages of the window (then tree items)
            shared += sh
            sharing += sg
            unshared += un
        else:
            known = own = 0
        for plan in plans:
            pos, t = plan.pos, plan.token
            gg = g[pos]
            node, room, tree_item, cid = plan.node, plan.room, plan.tree_item, plan.cid
            if node >= 0 and room:
                kfn = int(self.node_kfn.a[node])
                head = gg[:room]
                self.node_len.a[node] += head.shape[0]
                sharing += head.shape[0]
                if tracing:
                    events += [(p, 0, gi, kfn, kfn) for p, gi in zip(pos[:room].tolist(), head.tolist(), strict=False)]
                if hl_on:
                    hl.append(np.stack((pos[:room], np.zeros(head.shape[0], np.int64), head)))
                att_g.append(head)
                att_n.append(np.full(head.shape[0], node, np.int32))
                repl_g.append(head)
                repl_k.append(np.full(head.shape[0], kfn, np.int32))
                mem.map_add(kfn, head.shape[0])
                gg = gg[room:]
            seqv = gg.astype(np.int64)
            bpos = pos[room:] if node >= 0 and room else pos  # visit positions of seqv
            if tree_item >= 0:
                seqv = np.concatenate((np.array([tree_item], dtype=np.int64), seqv))
                bpos = np.concatenate(([-1], bpos))
                unshared -= 1  # the tree item was counted when it entered the tree
            nid = self._nid(int(mem.pte.a[int(seqv[0])]))
            tree = self.stable_tree[nid]
            prior = node
            for c0 in range(0, seqv.shape[0], self.max_page_sharing):
                blk = seqv[c0 : c0 + self.max_page_sharing]
                if blk.shape[0] == 1:
                    gi = int(blk[0])
                    self.unstable_tree[nid][t] = gi
                    mem.iflags.a[gi] = (int(mem.iflags.a[gi]) & ~(SEQ_ODD | STABLE)) | UNSTABLE | seq_flag
                    unshared += 1
                    break
                kfn = int(mem.pte.a[int(blk[1])])
                n = self._new_node(t, kfn, nid)
                mem.fnode.a[kfn] = n
                if prior < 0:
                    tree.add(t, n, int(bpos[c0 + 1]))
                else:
                    if cid < 0:
                        cid = self._chain_new(t, nid, prior)
                    self._chain_add_dup(cid, n)
                prior = n
                self.node_len.a[n] = blk.shape[0]
                if tracing:
                    # try_to_merge_two_pages(): the current page becomes the KSM page
                    # (ksm_page NULL), then the tree page joins it; the rest append
                    bp = bpos[c0 : c0 + blk.shape[0]].tolist()
                    events.append((bp[1], 0, int(blk[1]), None, kfn))
                    events.append((bp[1], 1, int(blk[0]), kfn, kfn))
                    events += [(p, 0, int(gi), kfn, kfn) for p, gi in zip(bp[2:], blk[2:].tolist(), strict=False)]
                if hl_on:
                    # the tree item is appended first, then the current page, then the rest
                    bpa = np.asarray(bpos[c0 : c0 + blk.shape[0]], dtype=np.int64)
                    bpa[0] = bpa[1]
                    order = np.zeros(blk.shape[0], np.int64)
                    order[1] = 1
                    hl.append(np.stack((bpa, order, blk.astype(np.int64))))
                shared += 1
                sharing += blk.shape[0] - 1
                att_g.append(blk)
                att_n.append(np.full(blk.shape[0], n, np.int32))
                others = np.delete(blk, 1)
                repl_g.append(others)
                repl_k.append(np.full(others.shape[0], kfn, np.int32))
                mem.map_add(kfn, others.shape[0])
        self.pages_shared += shared
        self.pages_sharing += sharing
        self.pages_unshared += unshared
        if repl_g:
            rg = np.concatenate(repl_g)
            rk = np.concatenate(repl_k)
            old = mem.pte.a[rg]
            mem.pte.a[rg] = rk
            # each page (or tree item) merged here was its frame's only mapping
            # (_classify_groups, _classify_new): distinct frames
            self.put_frames(old.astype(np.int32), distinct=True)
        if att_g:
            ag = np.concatenate(att_g)
            an = np.concatenate(att_n)
            mem.iflags.a[ag] = (mem.iflags.a[ag] & ~np.uint8(UNSTABLE | SEQ_ODD)) | STABLE
            mem.ival.a[ag[:known]] = an[:known]
            self._attach_ival(ag[known:], an[known:])
            others = ag
            if own and self._scan_mm is not None:
                # the new KSM pages' own pages are the window's, of the scanned mm; their
                # tree items and the blocks' pages may be any mm's
                self._scan_mm.ksm_merging_pages += own
                others = ag[own:]
            if others.shape[0]:
                for mm, cnt in self._per_mm(others):
                    mm.ksm_merging_pages += cnt
        if hl:
            rows = np.concatenate(hl, axis=1)
            self._note_appends(rows[2][np.lexsort((rows[1], rows[0]))])
        if events:
            # written by _flush_trace() at their places among the page-by-page merges
            self._trace_queue += [
                (pos, order, "ksm_merge_with_ksm_page",
                 {"ksm_page": kpage, "pfn": pfn, "rmap_item": gi, "mm": self._mmid(gi), "err": 0})
                for pos, order, gi, kpage, pfn in events
            ]

    def _merge_new_nodes(
        self, g: np.ndarray, plan: NewNodesPlan, att_g: list[np.ndarray], att_n: list[np.ndarray],
        repl_g: list[np.ndarray], repl_k: list[np.ndarray],
        events: list[tuple[int, int, int, int | None, int]], tracing: bool,
        hl: list[np.ndarray] | None = None,
    ) -> tuple[int, int, int]:
        """A NewNodesPlan: per content, the sequence [unstable tree item] + the batch's
        pages; one page alone is inserted in the unstable tree, otherwise the second of
        the sequence becomes the KSM page (try_to_merge_two_pages) and the others join it
        (stable_tree_append). Returns (shared, sharing, unshared) changes."""
        mem = self.mem
        k = plan.sizes
        has = plan.tree_items >= 0
        first = np.cumsum(k) - k  # index of each group's first page in plan.pos
        gp = g[plan.pos]
        seq_flag = SEQ_ODD if self.seqnr & 1 else 0
        # lone pages: unstable_tree_search_insert() inserts them
        lone = ~has & (k == 1)
        unshared = 0
        if lone.any():
            gl = gp[first[lone]]
            self.unstable_tree[0].set_many(np.ascontiguousarray(plan.tokens[lone], dtype=np.uint64),
                                           gl.astype(np.int64))
            mem.iflags.a[gl] = (mem.iflags.a[gl] & ~np.uint8(SEQ_ODD | STABLE)) | UNSTABLE | seq_flag
            unshared += gl.shape[0]
        mk = ~lone
        if not mk.any():
            return 0, 0, unshared
        pages = np.repeat(mk, k)
        gp, pos = gp[pages], plan.pos[pages]
        k, has, toks, items = k[mk], has[mk], plan.tokens[mk], plan.tree_items[mk]
        first = np.cumsum(k) - k
        length = k + has  # pages in the new KSM page
        # the KSM page is the page of the second of the sequence: the group's first page
        # when a tree item leads, else its second
        kidx = first + np.where(has, 0, 1)
        kg = gp[kidx]
        kfn = mem.pte.a[kg].astype(np.int64)
        nodes = self._new_nodes(toks, kfn, length)
        mem.fnode.a[kfn] = nodes
        kpos = pos[kidx]
        tree = self.stable_tree[0]
        tree.add_many(toks, nodes, kpos)
        # members: every page of the groups, plus the tree items
        node_of_page = np.repeat(nodes, k)
        kfn_of_page = np.repeat(kfn, k)
        is_k = np.zeros(gp.shape[0], dtype=bool)
        is_k[kidx] = True
        others = np.concatenate((gp[~is_k], items[has]))
        others_k = np.concatenate((kfn_of_page[~is_k], kfn[has]))
        att_g += [gp, items[has]]
        att_n += [node_of_page.astype(np.int32), nodes[has].astype(np.int32)]
        repl_g.append(others)
        repl_k.append(others_k.astype(np.int32))
        mem.map_add(kfn, length - 1)
        if hl is not None:
            # stable_tree_append() order: the sequence's first item, then the KSM page's,
            # both at the KSM page's place, then the others at theirs
            pr = pos.astype(np.int64, copy=True)
            orr = np.zeros(gp.shape[0], dtype=np.int64)
            orr[kidx] = 1
            pr[first[~has]] = kpos[~has]
            hl.append(np.stack((pr, orr, gp.astype(np.int64))))
            if has.any():
                hl.append(np.stack((kpos[has].astype(np.int64), np.zeros(int(has.sum()), np.int64),
                                    items[has].astype(np.int64))))
        if tracing:
            # try_to_merge_two_pages(): the current page becomes the KSM page (ksm_page
            # NULL), then the tree page joins it; the rest append, each at its place
            kl = kfn.tolist()
            for j, (kp, kgi, kf) in enumerate(zip(kpos.tolist(), kg.tolist(), kl, strict=False)):
                events.append((kp, 0, kgi, None, kf))
                if has[j]:
                    events.append((kp, 1, int(items[j]), kf, kf))
                else:
                    events.append((kp, 1, int(gp[first[j]]), kf, kf))
            rest = ~is_k
            if not has.all():
                rest[first[~has]] = False
            kf_all = np.repeat(kfn, k)
            events += [(p, 0, gi, kf, kf) for p, gi, kf in
                       zip(pos[rest].tolist(), gp[rest].tolist(), kf_all[rest].tolist(), strict=False)]
        shared = nodes.shape[0]
        sharing = int((length - 1).sum())
        return shared, sharing, unshared - int(np.count_nonzero(has))

    def _insert_unstable_bulk(self, g: np.ndarray) -> None:
        mem = self.mem
        mem.iflags.a[g] = (mem.iflags.a[g] & ~np.uint8(UNSTABLE | SEQ_ODD | STABLE)) | (
            UNSTABLE | (SEQ_ODD if self.seqnr & 1 else 0)
        )
        self.pages_unshared += g.shape[0]

    def _detaches_from_chain(self, g: np.ndarray, fl: np.ndarray, ksm: np.ndarray) -> bool:
        """Will a page of this batch leave a chain's dup (a COW noticed lazily)? Then a
        dup may gain room in the middle of the batch, and later searches passing the
        chain would act on it: the batch must run in visit order."""
        if not self.chains:
            return False
        st = ~ksm & ((fl & STABLE) != 0)
        if not st.any():
            return False
        nodes = self.mem.ival.a[g[st]].astype(np.int64)
        return bool((self.node_chain.a[nodes] >= 0).any())

    def _tree_has_special(self) -> bool:
        """Is there a node whose visit by a search has a side effect (a stale KSM page, a
        chain of one dup or none, a chain whose dup with room for two more pages is not its
        head — a search would move it there)? Without one, searches can be skipped. Chains
        due for a prune (which then changes nothing but the prune time) are collected in
        ``self._due_chains`` for the caller. Checked for all chains at once."""
        self._due_chains = np.zeros(0, dtype=np.int64)
        if self._stale_nodes:
            return True
        if not self.chains:
            return False
        ids, chain = self._dups()
        nc = self.chain_live.n
        live = self.chain_live.a[:nc]
        ndups = np.bincount(chain, minlength=nc)[:nc]
        if (live & (ndups < 2)).any():
            return True
        lens = self.node_len.a[ids]
        room2 = (lens > 0) & (lens + 1 < self.max_page_sharing)
        if room2.any() and (self.chain_head.a[chain[room2]] != ids[room2]).any():
            return True
        prune_ns = self.stable_node_chains_prune_millisecs * 1_000_000
        due = live & (self._clock_ns() >= self.chain_prune.a[:nc] + prune_ns)
        if due.any():
            # a pruning stable_node_dup() takes the fullest dup with room, the others the
            # first: with two dups with room, which search prunes first decides
            cand = (lens > 0) & (lens < self.max_page_sharing)
            if (due & (np.bincount(chain[cand], minlength=nc)[:nc] >= 2)).any():
                return True
        self._due_chains = np.flatnonzero(due)
        return False

    def _prune_passed_chains(self, keys: np.ndarray) -> None:
        """A due chain (whose prune changes nothing but the prune time) is pruned if some
        search of this batch walks through it: a search key inside its rbtree interval
        (intervals are kept per chain until the tree's shape changes)."""
        if not keys.shape[0]:
            return
        cids = self._due_chains
        ver = self.chain_ivl_ver.a
        if len(self.stable_tree) == 1:
            stale = cids[ver[cids] != self.stable_tree[0].rb.version].tolist()
        else:
            stale = [c for c in cids.tolist()
                     if ver[c] != self.stable_tree[self.chains[c].nid].rb.version]
        for c in stale:
            ch = self.chains[c]
            tree = self.stable_tree[ch.nid]
            lo, hi = tree.interval(ch.token)
            self.chain_ivl_lo.a[c] = max(lo, 0)
            self.chain_ivl_hi.a[c] = min(hi, (1 << 64) - 1)
            self.chain_ivl_flags.a[c] = (lo >= 0) | ((hi < (1 << 64)) << 1)
            ver[c] = tree.rb.version
        flags = self.chain_ivl_flags.a[cids]
        if cids.shape[0] <= 4:
            # few due chains: a scan of the keys per chain is cheaper than a sort
            passed = np.zeros(cids.shape[0], dtype=bool)
            for j, (c, fg) in enumerate(zip(cids.tolist(), flags.tolist(), strict=True)):
                m = keys > self.chain_ivl_lo.a[c] if fg & 1 else None
                if fg & 2:
                    below = keys < self.chain_ivl_hi.a[c]
                    m = below if m is None else m & below
                passed[j] = True if m is None else bool(m.any())
            hit = cids[passed]
        else:
            skeys = np.sort(keys)
            left = np.where(flags & 1, np.searchsorted(skeys, self.chain_ivl_lo.a[cids], "right"), 0)
            right = np.where(flags & 2, np.searchsorted(skeys, self.chain_ivl_hi.a[cids], "left"), skeys.shape[0])
            hit = cids[right > left]
        if hit.shape[0]:
            now = self._clock_ns()
            self.chain_prune.a[hit] = now


def _group_order(keys: np.ndarray) -> np.ndarray:
    """np.argsort(keys, kind="stable") (equal keys keep their order), from two quicksorts:
    numpy's stable sort of 64-bit keys is a merge sort, 5x slower on a batch's tokens.
    The second sort orders (rank of the key, index), which are distinct."""
    n = keys.shape[0]
    o1 = np.argsort(keys)
    ks = keys[o1]
    rank = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(ks[1:] != ks[:-1], out=rank[1:])
    return o1[np.argsort(rank * n + o1)]
