"""Page contents (tokens): deterministic, disjoint classes, the contract's shuffle formula."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmfs.scenario.contents import Contents, page_bytes, pool_perm, pool_tokens, value_token
from ksmfs.scenario.loader import parse_scenario
from ksmfs.scenario.model import Segment

TEXT = """\
seed = 17
max_full_scans = 2
[pools]
img = 50
other = 50
[[process]]
name = "vm"
count = 2
[[process.vma]]
name = "ram"
pages = 40
fill = [{from = "pool:img", pages = 20, shuffle = true, offset = 45},
        {from = "pool:other", pages = 5}, {from = "value:3", pages = 5},
        {from = "zero", pages = 5}, {from = "unique", pages = 5}]
"""


def fills(text: str = TEXT) -> list[np.ndarray]:
    s = parse_scenario(text, "c.toml")
    c = Contents(s)
    return [c.fill(p, v) for p in s.processes for v in p.vmas]


def test_deterministic_across_runs() -> None:
    """Two runs of one scenario give the same tokens (no salted hash, no global RNG)."""
    a, b = fills(), fills()
    for x, y in zip(a, b, strict=True):
        assert x.dtype == np.uint64
        assert np.array_equal(x, y)


def test_token_classes() -> None:
    """zero is 0; value/pool never 0 and never bit 63; unique always bit 63, never reused."""
    vm0, vm1 = fills()
    top = np.uint64(1 << 63)
    assert (vm0[30:35] == 0).all()
    shared = np.concatenate([vm0[:30], vm1[:30]])
    assert (shared != 0).all() and ((shared & top) == 0).all()
    uniq = np.concatenate([vm0[35:], vm1[35:]])
    assert ((uniq & top) != 0).all()
    assert len(set(uniq.tolist())) == 10
    assert (vm0[25:30] == value_token(3)).all() and (vm1[25:30] == value_token(3)).all()
    # Pools and values are disjoint and pool contents are pairwise distinct.
    allp = np.concatenate([pool_tokens("img", 50), pool_tokens("other", 50)])
    assert len(set(allp.tolist())) == 100
    assert int(value_token(3)) not in set(allp.tolist())
    assert value_token(3) != value_token(4)


def test_shuffle_formula() -> None:
    """page j holds perm[(offset + j) % size], perm shuffled by Random(f"{seed}:{proc}:{pool}")."""
    vm0, vm1 = fills()
    img = pool_tokens("img", 50)
    for name, got in (("vm-0", vm0), ("vm-1", vm1)):
        perm = list(range(50))
        random.Random(f"17:{name}:img").shuffle(perm)
        assert perm == pool_perm(17, name, "img", 50).tolist()
        want = [img[perm[(45 + j) % 50]] for j in range(20)]
        assert got[:20].tolist() == [int(t) for t in want]
    # unshuffled: pool content (offset + j) % size
    assert vm0[20:25].tolist() == pool_tokens("other", 50)[:5].tolist()
    # different processes get different layouts of the same contents
    assert vm0[:20].tolist() != vm1[:20].tolist()


@settings(max_examples=200, deadline=None)
@given(size=st.one_of(st.integers(0, 70), st.integers(71, 70000),
                      st.sampled_from([2**k + d for k in range(1, 18) for d in (-1, 0, 1)])),
       seed=st.integers(0, 2**64), name=st.text(max_size=8))
def test_pool_perm_is_random_shuffle(size: int, seed: int, name: str) -> None:
    """The numpy shuffle is random.shuffle's: same Mersenne Twister words, same rejections
    (sizes at and around powers of two, where half the draws are rejected)."""
    perm = list(range(size))
    random.Random(f"{seed}:{name}:pool").shuffle(perm)
    got = pool_perm(seed, name, "pool", size)
    assert got.dtype == np.int64
    assert got.tolist() == perm


def test_pool_perm_large() -> None:
    """A pool the size of the scale scenarios' (several rounds of draws, long swap chains)."""
    perm = list(range(200000))
    random.Random("1:guest-1:guest-image").shuffle(perm)
    assert pool_perm(1, "guest-1", "guest-image", 200000).tolist() == perm


def test_fill_parts_equal_fill() -> None:
    """Pieces of any size, in order, are fill()'s tokens, and leave the unique counter where
    fill() leaves it."""
    s = parse_scenario(TEXT, "c.toml")
    for chunk in (1, 3, 7, 64):
        whole, parts = Contents(s), Contents(s)
        for p in s.processes:
            for v in p.vmas:
                want = whole.fill(p, v)
                got = list(parts.fill_parts(p, v, chunk))
                assert [lo for lo, _ in got] == sorted(lo for lo, _ in got)
                assert all(t.shape[0] <= chunk for _, t in got)
                assert np.concatenate([t for _, t in got]).tolist() == want.tolist()
        assert whole.unique(5).tolist() == parts.unique(5).tolist()


def test_unique_counter_never_repeats() -> None:
    s = parse_scenario(TEXT, "c.toml")
    c = Contents(s)
    a = c.segment(Segment("unique", 1000), "vm-0")
    b = c.segment(Segment("unique", 1000), "vm-1")
    assert len(set(a.tolist()) | set(b.tolist())) == 2000


def test_seed_changes_unique_not_pools() -> None:
    a = fills()
    b = fills(TEXT.replace("seed = 17", "seed = 18"))
    assert not np.array_equal(a[0][35:], b[0][35:])
    assert np.array_equal(a[0][20:30], b[0][20:30])


def test_page_bytes() -> None:
    """Token t is 8 big-endian bytes repeated 512 times; 0 is an all-zero page."""
    assert page_bytes(0) == bytes(4096)
    t = 0x0102030405060708
    assert page_bytes(t) == bytes.fromhex("0102030405060708") * 512
    two = page_bytes(np.array([0, t], dtype=np.uint64))
    assert len(two) == 8192 and two[4096:4104] == bytes.fromhex("0102030405060708")
