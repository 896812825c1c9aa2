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
    return _nonzero(_splitmix64(base) & np.uint64(_M62))[0]


def pool_tokens(name: str, size: int) -> np.ndarray:
    """Tokens of pool contents 0 … size-1 of pool ``name`` (unshuffled)."""
    with np.errstate(over="ignore"):
        base = np.uint64(_key(f"pool:{name}"))
        idx = np.arange(size, dtype=np.uint64)
        x = _splitmix64(base + idx * np.uint64(0x9E3779B97F4A7C15))
    return _nonzero(x & np.uint64(_M62)) | np.uint64(POOL_BIT)


def pool_perm(seed: int, process: str, pool: str, size: int) -> list[int]:
    """The contract's shuffle: ``random.Random(f"{seed}:{process}:{pool}").shuffle(perm)``."""
    perm = list(range(size))
    random.Random(f"{seed}:{process}:{pool}").shuffle(perm)
    return perm


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

    def __init__(self, scenario: Scenario) -> None:
        self.seed = scenario.seed
        self.pools = dict(scenario.pools)
        self._pool_cache: dict[str, np.ndarray] = {}
        self._perm_cache: dict[tuple[str, str], np.ndarray] = {}
        self._next_unique = 0

    def _pool(self, name: str) -> np.ndarray:
        if name not in self._pool_cache:
            self._pool_cache[name] = pool_tokens(name, self.pools[name])
        return self._pool_cache[name]

    def _perm(self, process: str, pool: str) -> np.ndarray:
        key = (process, pool)
        if key not in self._perm_cache:
            perm = pool_perm(self.seed, process, pool, self.pools[pool])
            self._perm_cache[key] = np.asarray(perm, dtype=np.int64)
        return self._perm_cache[key]

    def unique(self, n: int) -> np.ndarray:
        """n fresh tokens with bit 63 set, never handed out before in this run."""
        start = self._next_unique
        self._next_unique += n
        with np.errstate(over="ignore"):
            ctr = np.arange(start, start + n, dtype=np.uint64) + np.uint64(self.seed & _M63)
        return _mix63(ctr) | np.uint64(UNIQUE_BIT)

    def segment(self, seg: Segment, process: str) -> np.ndarray:
        """The tokens of ``seg`` as written by process ``process`` (its full name)."""
        n = seg.pages
        if seg.source == "zero":
            return np.zeros(n, dtype=np.uint64)
        if seg.source == "unique":
            return self.unique(n)
        if seg.source == "value":
            assert seg.value is not None
            return np.full(n, value_token(seg.value), dtype=np.uint64)
        if seg.source == "pool":
            assert seg.pool is not None
            size = self.pools[seg.pool]
            idx = (seg.offset + np.arange(n, dtype=np.int64)) % size
            if seg.shuffle:
                idx = self._perm(process, seg.pool)[idx]
            return self._pool(seg.pool)[idx]
        raise ValueError(f"unknown segment source {seg.source!r}")

    def fill(self, process: ProcessSpec | str, vma: VmaSpec) -> np.ndarray:
        """The initial contents of ``vma`` (its segments front to back)."""
        pname = process if isinstance(process, str) else process.name
        parts = [self.segment(s, pname) for s in vma.fill]
        if not parts:
            return np.zeros(vma.pages, dtype=np.uint64)
        return np.concatenate(parts).astype(np.uint64, copy=False)
