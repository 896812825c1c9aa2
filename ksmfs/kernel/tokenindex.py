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
        each round, every pending key takes its slot if that slot is free and no other
        pending key of the round wants it; the others move one slot on."""
        ts = np.asarray(ts, dtype=np.uint64)
        vs = np.asarray(vs, dtype=np.int64)
        ok = ts < TOMB
        ts, vs = ts[ok], vs[ok]
        if not ts.shape[0]:
            return
        while (self.used + ts.shape[0]) * 2 > self.keys.shape[0]:
            self._rehash(self.bits + 1)
        h = self._h(ts)
        while ts.shape[0]:
            k = self.keys[h]
            free = (k == EMPTY) | (k == TOMB)
            # one winner per slot: the first pending key that probes it
            _, first = np.unique(h, return_index=True)
            win = np.zeros(ts.shape[0], dtype=bool)
            win[first] = True
            win &= free
            hw = h[win]
            self.used += int(np.count_nonzero(self.keys[hw] == EMPTY))
            self.keys[hw] = ts[win]
            self.vals[hw] = vs[win]
            rest = ~win
            ts, vs = ts[rest], vs[rest]
            # a loser whose slot is now taken moves on; one that lost to a peer retries
            h = h[rest]
            taken = (self.keys[h] != EMPTY) & (self.keys[h] != TOMB)
            h = np.where(taken, (h + 1) & self.mask, h)

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

    def lookup(self, ts: np.ndarray) -> np.ndarray:
        """The value of every token, MISSING when absent, UNKNOWN for sentinel tokens."""
        n = ts.shape[0]
        res = np.full(n, MISSING, dtype=np.int64)
        active = np.arange(n)
        h = self._h(ts)
        tt = ts
        while active.shape[0]:
            k = self.keys[h]
            hit = k == tt
            if hit.any():
                res[active[hit]] = self.vals[h[hit]]
            more = ~hit & (k != EMPTY)
            active, h, tt = active[more], (h[more] + 1) & self.mask, tt[more]
        res[ts >= TOMB] = UNKNOWN
        return res
