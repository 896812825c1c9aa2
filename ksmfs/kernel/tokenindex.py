"""A numpy open-addressing hash map from content token to tree entry.

A StableTree (kernel/stabletree.py) keeps one in step with its dict so that a ksmd batch
can look up the contents of thousands of pages in one vector operation instead of one
dict lookup per content.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)
TOMB = np.uint64(0xFFFFFFFFFFFFFFFE)
MISSING = -(1 << 62)  # lookup(): not in the tree
UNKNOWN = -(1 << 61)  # lookup(): a token equal to a sentinel; ask the dict
_MUL = np.uint64(0x9E3779B97F4A7C15)


class TokenIndex:
    def __init__(self, bits: int = 10) -> None:
        self._alloc(bits)

    def _alloc(self, bits: int) -> None:
        self.bits = bits
        self.keys = np.full(1 << bits, EMPTY, dtype=np.uint64)
        self.vals = np.zeros(1 << bits, dtype=np.int64)
        self.used = 0  # live + tombstones
        self.mask = (1 << bits) - 1

    def _h(self, t: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((t * _MUL) >> np.uint64(64 - self.bits)).astype(np.int64)

    def _h1(self, t: int) -> int:
        return ((t * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> (64 - self.bits)

    def set(self, t: int, v: int) -> None:
        if t >= 0xFFFFFFFFFFFFFFFE:
            return  # sentinels are never indexed; lookups of them say UNKNOWN
        keys = self.keys
        h = self._h1(t)
        tomb = -1
        while True:
            k = int(keys[h])
            if k == t:
                self.vals[h] = v
                return
            if k == 0xFFFFFFFFFFFFFFFF:
                break
            if k == 0xFFFFFFFFFFFFFFFE and tomb < 0:
                tomb = h
            h = (h + 1) & self.mask
        if tomb >= 0:
            h = tomb
        else:
            self.used += 1
        keys[h] = t
        self.vals[h] = v
        if self.used * 2 > keys.shape[0]:
            self._rehash(self.bits + 1)

    def set_many(self, ts: np.ndarray, vs: np.ndarray) -> None:
        """set() of distinct keys none of which is in the index yet, with vector probes:
        each round, every pending key whose slot is free and not taken by another pending
        key of the round takes it; the others move one slot on."""
        ts = np.asarray(ts, dtype=np.uint64)
        vs = np.asarray(vs, dtype=np.int64)
        ok = ts < TOMB
        ts, vs = ts[ok], vs[ok]
        if not ts.shape[0]:
            return
        bits = self.bits
        while (self.used + ts.shape[0]) * 2 > 1 << bits:
            bits += 1
        if bits != self.bits:
            self._rehash(bits)
        if not self.used:  # an empty table (no tombstone either): one sort places all
            self._place(ts, vs)
            return
        h = self._h(ts)
        owner = np.empty(self.keys.shape[0], dtype=np.int64)  # scratch, read where written
        while ts.shape[0]:
            k = self.keys[h]
            fi = np.flatnonzero((k == EMPTY) | (k == TOMB))
            # one winner per free slot among the pending keys that probe it (which one
            # does not matter: a lookup finds a key wherever its probe placed it)
            hf = h[fi]
            owner[hf] = fi
            wi = fi[owner[hf] == fi]
            hw = h[wi]
            self.used += int(np.count_nonzero(self.keys[hw] == EMPTY))
            self.keys[hw] = ts[wi]
            self.vals[hw] = vs[wi]
            rest = np.ones(ts.shape[0], dtype=bool)
            rest[wi] = False
            ts, vs = ts[rest], vs[rest]
            # a loser whose slot is now taken moves on; one that lost to a peer retries
            h = h[rest]
            taken = (self.keys[h] != EMPTY) & (self.keys[h] != TOMB)
            h = np.where(taken, (h + 1) & self.mask, h)

    def get(self, t: int) -> int | None:
        """The value of one token (None when absent; a sentinel token is never indexed)."""
        if t >= 0xFFFFFFFFFFFFFFFE:
            return None
        keys = self.keys
        h = self._h1(t)
        while True:
            k = int(keys[h])
            if k == t:
                return int(self.vals[h])
            if k == 0xFFFFFFFFFFFFFFFF:
                return None
            h = (h + 1) & self.mask

    def delete(self, t: int) -> None:
        if t >= 0xFFFFFFFFFFFFFFFE:
            return
        keys = self.keys
        h = self._h1(t)
        while True:
            k = int(keys[h])
            if k == t:
                keys[h] = TOMB
                return
            if k == 0xFFFFFFFFFFFFFFFF:
                return
            h = (h + 1) & self.mask

    def _rehash(self, bits: int) -> None:
        """Move the live keys into a table of 2**bits slots, with vector operations: in
        an empty table, linear probing puts the keys taken in order of their home slot
        at i + max(home_j - j for j <= i) (one sort and a running maximum instead of a
        Python loop, which cost ~1.4 us per key: 90 ms for 65536 keys in one ksmd slice)."""
        live = (self.keys != EMPTY) & (self.keys != TOMB)
        ks, vs = self.keys[live], self.vals[live]
        self._alloc(bits)
        self._place(ks, vs)

    def _place(self, ks: np.ndarray, vs: np.ndarray) -> None:
        """Put distinct keys into the empty table (see _rehash)."""
        n = ks.shape[0]
        if not n:
            return
        h = self._h(ks)
        order = np.argsort(h)  # any order among keys of one home slot is a valid table
        ks, vs, h = ks[order], vs[order], h[order]
        i = np.arange(n, dtype=np.int64)
        pos = i + np.maximum.accumulate(h - i)
        fits = pos <= self.mask
        self.keys[pos[fits]] = ks[fits]
        self.vals[pos[fits]] = vs[fits]
        self.used = int(np.count_nonzero(fits))
        if not fits.all():
            # the probes that run past the last slot wrap around to the first free ones
            self.set_many(ks[~fits], vs[~fits])

    def _find(self, ts: np.ndarray) -> np.ndarray:
        """The slot of every token, -1 when absent (and for sentinel tokens)."""
        keys = self.keys
        h = self._h(ts)
        k = keys[h]
        hit = k == ts
        slot = np.where(hit, h, -1)
        # the first probe finds most keys (or an empty slot); the rest probe on, few
        more = ~hit & (k != EMPTY)
        if more.any():
            active = np.flatnonzero(more)
            h, tt = h[active], ts[active]
            while active.shape[0]:
                h = (h + 1) & self.mask
                k = keys[h]
                hit = k == tt
                if hit.any():
                    slot[active[hit]] = h[hit]
                more = ~hit & (k != EMPTY)
                active, h, tt = active[more], h[more], tt[more]
        slot[ts >= TOMB] = -1
        return slot

    def lookup(self, ts: np.ndarray) -> np.ndarray:
        """The value of every token, MISSING when absent, UNKNOWN for sentinel tokens."""
        slot = self._find(ts)
        res = np.where(slot >= 0, self.vals[slot], MISSING)
        res[ts >= TOMB] = UNKNOWN
        return res

    def upsert_many(self, ts: np.ndarray, vs: np.ndarray) -> None:
        """set() of distinct keys, some of which may be in the index already."""
        ts = np.asarray(ts, dtype=np.uint64)
        vs = np.asarray(vs, dtype=np.int64)
        slot = self._find(ts)
        there = slot >= 0
        if there.any():
            self.vals[slot[there]] = vs[there]
            ts, vs = ts[~there], vs[~there]
        self.set_many(ts, vs)

