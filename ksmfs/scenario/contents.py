"""Deterministic page contents (64-bit tokens) for scenario fill segments.

Both backends take their tokens from here, so a sim run and a real run hold the same
contents in the same pages.  The token classes never collide:

* ``zero``: token 0, the all-zero page;
* ``value:K`` and ``pool:NAME``: bit 63 clear, never 0; bit 62 tells the two apart, the
  rest is a fixed mix (splitmix64 finaliser) of K or of (NAME, i) -- independent of the
  seed, so a pool means the same contents in every scenario;
* ``unique``: bit 63 set; the low 63 bits are a bijective mix of ``seed`` + a counter that
  only grows during one run, so a unique token is never handed out twice.

The real backend materialises token t as 8 big-endian bytes repeated 512 times
(:func:`page_bytes`); 0 becomes 4096 zero bytes.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import numpy as np

from ksmfs.linux import PAGE_SIZE
from ksmfs.scenario.model import ProcessSpec, Scenario, Segment, VmaSpec

_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1
_M62 = (1 << 62) - 1
UNIQUE_BIT = 1 << 63
POOL_BIT = 1 << 62


def _key(text: str) -> int:
    """A stable 64-bit key for a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _mix63(x: np.ndarray) -> np.ndarray:
    """A bijection of [0, 2^63): xor-shifts and odd multipliers modulo 2^63."""
    m = np.uint64(_M63)
    x = x.astype(np.uint64, copy=True) & m
    x ^= x >> np.uint64(29)
    x = (x * np.uint64(0xBF58476D1CE4E5B9)) & m
    x ^= x >> np.uint64(26)
    x = (x * np.uint64(0x94D049BB133111EB)) & m
    x ^= x >> np.uint64(30)
    return x


def _nonzero(x: np.ndarray) -> np.ndarray:
    # A mix that lands on 0 would be the zero page; move it (a 2^-62 event).
    x[x == 0] = np.uint64(1)
    return x


def value_token(k: int) -> np.uint64:
    """The token of content ``value:K``."""
    base = np.array([_key(f"value:{k}")], dtype=np.uint64)
    tok: np.uint64 = _nonzero(_splitmix64(base) & np.uint64(_M62))[0]
    return tok


def pool_tokens(name: str, size: int) -> np.ndarray:
    """Tokens of pool contents 0 … size-1 of pool ``name`` (unshuffled)."""
    with np.errstate(over="ignore"):
        base = np.uint64(_key(f"pool:{name}"))
        idx = np.arange(size, dtype=np.uint64)
        x = _splitmix64(base + idx * np.uint64(0x9E3779B97F4A7C15))
    return _nonzero(x & np.uint64(_M62)) | np.uint64(POOL_BIT)


def pool_perm(seed: int, process: str, pool: str, size: int) -> np.ndarray:
    """The contract's shuffle: ``random.Random(f"{seed}:{process}:{pool}").shuffle(perm)``
    of ``perm = list(range(size))``, as an int64 array.

    Computed with numpy from the same Mersenne Twister words (a pure Python shuffle of a
    large pool took 0.1 s per 200 000 contents): see :func:`_shuffle_draws` and
    :func:`_apply_swaps`; tests/scenario/test_contents.py checks it against
    ``random.shuffle``."""
    if size <= 1 or size > _MAX_SHUFFLE:
        # a pool of 2^32 contents or more draws several words per index: Python's own
        perm = list(range(size))
        random.Random(f"{seed}:{process}:{pool}").shuffle(perm)
        return np.asarray(perm, dtype=np.int64)
    draws = _shuffle_draws(random.Random(f"{seed}:{process}:{pool}"), size)
    return _apply_swaps(size, draws)


# random.shuffle's _randbelow(n) takes one 32-bit word per attempt while n < 2^32
_MAX_SHUFFLE = (1 << 32) - 1
_DRAW_STEPS = 8192  # shuffle steps resolved per round of _shuffle_draws


def _shuffle_draws(rng: random.Random, n: int) -> np.ndarray:
    """The ``j`` that ``rng.shuffle`` of ``n`` items draws at each step, steps in its order
    (``i = n - 1 … 1``), without touching ``rng``.

    ``shuffle`` does ``j = _randbelow(i + 1)``: with ``k = (i + 1).bit_length()`` it takes
    32-bit Mersenne Twister words ``w`` until ``w >> (32 - k) < i + 1`` (rejection
    sampling). numpy's MT19937 started from ``rng``'s state yields the same words. Which
    step a word belongs to depends on the rejections before it, so for a buffer of words
    the step of each word is found as a fixpoint: guess it (no rejections), decide
    accept/reject with that step's bound, recount, repeat until nothing changes; the
    fixpoint is the sequential answer (the first word whose guess is wrong is right after
    one more round, so it ends), and with slowly changing bounds it takes a few rounds."""
    state = rng.getstate()[1]
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937",
                "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]}}
    steps = n - 1
    out = np.empty(steps, dtype=np.int64)
    buf = np.zeros(0, dtype=np.uint64)
    done = 0
    while done < steps:
        want = min(_DRAW_STEPS, steps - done)
        nw = want + want // 2 + 64  # more words than steps: room for the rejections
        if buf.shape[0] < nw:
            buf = np.concatenate([buf, bg.random_raw(nw - buf.shape[0] + _DRAW_STEPS).astype(np.uint64)])
        w = buf[:nw]
        guess = np.arange(nw, dtype=np.int64)  # step (from ``done``) of each word
        while True:
            bound = np.maximum(n - done - guess, 1)  # i + 1
            k = np.frexp(bound.astype(np.float64))[1].astype(np.uint64)  # bit_length
            r = (w >> (np.uint64(32) - k)).astype(np.int64)
            acc = r < bound
            new: np.ndarray = np.cumsum(acc) - acc
            if np.array_equal(new, guess):
                break
            guess = new
        took = np.flatnonzero(acc & (guess < want))
        got = took.shape[0]
        out[done : done + got] = r[took]
        buf = buf[int(took[-1]) + 1 if got else 0 :]
        done += got
    return out


def _apply_swaps(n: int, draws: np.ndarray) -> np.ndarray:
    """``x = list(range(n))`` after ``x[i], x[j] = x[j], x[i]`` for ``i = n - 1 … 1`` with
    ``j = draws[n - 1 - i]`` (Fisher-Yates), as vector operations.

    Position i is final after its step (later steps use indices below i), and it takes
    the value position ``j_i`` holds just before. That value is the original ``j_i`` if no
    earlier step (a larger i') swapped into ``j_i``; otherwise it is what the latest such
    step i' carried there: the value ``i'`` held just before its own step, which by the
    same rule is its original value or what the latest step before it carried into
    ``i'``. Those "carried from" links point to larger indices, so following them to
    their end is pointer jumping (a few rounds of ``link = link[link]``)."""
    idx = np.arange(n, dtype=np.int64)
    target = np.empty(n, dtype=np.int64)  # j of step i; step 0 is a no-op swap with 0
    target[1:] = draws[::-1]
    target[0] = 0
    # steps grouped by target, ascending within a group (the order they happen in is
    # descending: the latest step before i into p is the next larger member of p's group);
    # the keys target * n + i are distinct and below n^2 <= 2^64
    order = np.argsort(target.astype(np.uint64) * np.uint64(n) + idx.astype(np.uint64))
    tg = target[order]
    same = tg[1:] == tg[:-1]
    writer = np.full(n, -1, dtype=np.int64)  # latest step before i that swapped into j_i
    writer[order[:-1][same]] = order[1:][same]
    # latest step before i that swapped into i itself: the smallest member > i of i's group
    count = np.bincount(target, minlength=n)
    start = np.cumsum(count) - count
    first = np.where(count > 0, order[np.minimum(start, n - 1)], -1)
    second = np.where(count > 1, order[np.minimum(start + 1, n - 1)], -1)
    into = np.where(first > idx, first, np.where(first == idx, second, -1))
    held = np.where(into >= 0, into, idx)  # value i held before its step: follow the links
    while True:
        nxt = held[held]
        if np.array_equal(nxt, held):
            break
        held = nxt
    return np.where(writer >= 0, held[np.maximum(writer, 0)], target)


def page_bytes(tokens: np.ndarray | int) -> bytes:
    """Page contents for tokens: each token as 8 big-endian bytes, repeated 512 times."""
    arr = np.atleast_1d(np.asarray(tokens, dtype=np.uint64)).astype(">u8")
    return np.repeat(arr[:, None], PAGE_SIZE // 8, axis=1).tobytes()


class Contents:
    """Hands out the tokens of one scenario run.

    One instance per run: ``unique`` segments draw from its counter, so call the methods
    in timeline order (processes in file order, VMAs in order, then steps) to get the
    same tokens in every run of the same scenario.
    """

    # tokens of shuffled pools kept for later segments of the same process (pool[perm]):
    # at most this many, the oldest dropped first (a 64M-page scenario's four 800 000-
    # content layouts would otherwise stay for the whole run)
    LAYOUT_CACHE_TOKENS = 1 << 21

    def __init__(self, scenario: Scenario) -> None:
        self.seed = scenario.seed
        self.pools = dict(scenario.pools)
        self._pool_cache: dict[str, np.ndarray] = {}
        self._layout_cache: dict[tuple[str, str], np.ndarray] = {}
        self._next_unique = 0

    def _pool(self, name: str) -> np.ndarray:
        if name not in self._pool_cache:
            self._pool_cache[name] = pool_tokens(name, self.pools[name])
        return self._pool_cache[name]

    def _layout(self, process: str, pool: str) -> np.ndarray:
        """The pool's tokens in the process's shuffled order: ``pool[perm]``."""
        key = (process, pool)
        lay = self._layout_cache.pop(key, None)
        if lay is None:
            lay = self._pool(pool)[pool_perm(self.seed, process, pool, self.pools[pool])]
        cache = self._layout_cache
        while cache and sum(a.shape[0] for a in cache.values()) + lay.shape[0] > self.LAYOUT_CACHE_TOKENS:
            del cache[next(iter(cache))]
        cache[key] = lay  # newest last
        return lay

    def release(self) -> None:
        """Drop the cached pool tokens and layouts (they are computed again if a later
        step needs them): the processes are filled, and at 64M pages they are tens of MiB
        at the time ksmd's trees grow."""
        self._pool_cache.clear()
        self._layout_cache.clear()

    def unique(self, n: int) -> np.ndarray:
        """n fresh tokens with bit 63 set, never handed out before in this run."""
        start = self._next_unique
        self._next_unique += n
        return self._unique_at(start, n)

    def _unique_at(self, start: int, n: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            ctr = np.arange(start, start + n, dtype=np.uint64) + np.uint64(self.seed & _M63)
        return _mix63(ctr) | np.uint64(UNIQUE_BIT)

    def segment(self, seg: Segment, process: str) -> np.ndarray:
        """The tokens of ``seg`` as written by process ``process`` (its full name)."""
        return self._part(seg, process, 0, seg.pages, self._take_unique(seg))

    def _take_unique(self, seg: Segment) -> int:
        """The first counter value of a unique segment (taken now, in timeline order)."""
        if seg.source != "unique":
            return 0
        start = self._next_unique
        self._next_unique += seg.pages
        return start

    def _part(self, seg: Segment, process: str, lo: int, hi: int, unique_start: int) -> np.ndarray:
        """Tokens of pages ``lo … hi-1`` of ``seg``."""
        n = hi - lo
        if seg.source == "zero":
            return np.zeros(n, dtype=np.uint64)
        if seg.source == "unique":
            return self._unique_at(unique_start + lo, n)
        if seg.source == "value":
            assert seg.value is not None
            return np.full(n, value_token(seg.value), dtype=np.uint64)
        if seg.source == "pool":
            assert seg.pool is not None
            size = self.pools[seg.pool]
            lay = self._layout(process, seg.pool) if seg.shuffle else self._pool(seg.pool)
            # page j holds lay[(offset + j) % size]: the layout from there, then repeated
            first = (seg.offset + lo) % size
            head = lay[first : first + n]
            if head.shape[0] == n:
                return head.copy()
            return np.concatenate([head, np.resize(lay, n - head.shape[0])])
        raise ValueError(f"unknown segment source {seg.source!r}")

    def fill_parts(self, process: ProcessSpec | str, vma: VmaSpec,
                   chunk: int = 1 << 18) -> Iterator[tuple[int, np.ndarray]]:
        """The initial contents of ``vma`` as ``(first page, tokens)`` pieces of at most
        ``chunk`` pages, front to back (a 16M-page VMA is 128 MiB of tokens at once).
        Consume it whole before asking for other contents: unique segments take their
        counter values as the generator reaches them."""
        pname = process if isinstance(process, str) else process.name
        if not vma.fill:
            for lo in range(0, vma.pages, chunk):
                yield lo, np.zeros(min(chunk, vma.pages - lo), dtype=np.uint64)
            return
        at = 0
        for seg in vma.fill:
            ustart = self._take_unique(seg)
            for lo in range(0, seg.pages, chunk):
                hi = min(seg.pages, lo + chunk)
                yield at + lo, self._part(seg, pname, lo, hi, ustart)
            at += seg.pages

    def fill(self, process: ProcessSpec | str, vma: VmaSpec) -> np.ndarray:
        """The initial contents of ``vma`` (its segments front to back)."""
        out = np.empty(vma.pages, dtype=np.uint64)
        for lo, part in self.fill_parts(process, vma):
            out[lo : lo + part.shape[0]] = part
        return out
