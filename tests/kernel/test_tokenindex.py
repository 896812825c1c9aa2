"""TokenIndex (kernel/tokenindex.py) against a dict: sets, deletes and the vector
rehash keep every lookup equal to the dict's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmfs.kernel.tokenindex import MISSING, UNKNOWN, TokenIndex

# small key spaces make collisions, long probe runs and wrap-arounds at the table's end
tokens = st.one_of(
    st.integers(0, 300),
    st.integers(0, (1 << 64) - 1),
    st.sampled_from([(1 << 64) - 1, (1 << 64) - 2]),  # the sentinels: never indexed
)
ops = st.lists(
    st.tuples(st.sampled_from(["set", "delete", "set_many"]), st.lists(tokens, max_size=40)),
    max_size=60,
)


def _check(index: TokenIndex, ref: dict[int, int]) -> None:
    probe = np.array(sorted(set(ref) | set(range(0, 301, 7))) or [0], dtype=np.uint64)
    got = index.lookup(probe).tolist()
    for t, v in zip(probe.tolist(), got, strict=True):
        if t >= (1 << 64) - 2:
            assert v == UNKNOWN
        else:
            assert v == ref.get(t, MISSING), t
    live = (index.keys != np.uint64((1 << 64) - 1)) & (index.keys != np.uint64((1 << 64) - 2))
    assert int(np.count_nonzero(live)) == len(ref)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 6))
def test_index_matches_dict(seq: list[tuple[str, list[int]]], bits: int) -> None:
    index = TokenIndex(bits)
    ref: dict[int, int] = {}
    value = 0
    for op, ts in seq:
        if op == "set":
            for t in ts:
                value += 1
                index.set(t, value)
                if t < (1 << 64) - 2:
                    ref[t] = value
        elif op == "delete":
            for t in ts:
                index.delete(t)
                ref.pop(t, None)
        else:  # set_many takes distinct keys that are not indexed yet
            new = [t for t in dict.fromkeys(ts) if t not in ref]
            vals = list(range(value + 1, value + 1 + len(new)))
            value += len(new)
            index.set_many(np.array(new, dtype=np.uint64), np.array(vals, dtype=np.int64))
            ref.update((t, v) for t, v in zip(new, vals, strict=True) if t < (1 << 64) - 2)
        _check(index, ref)


def test_rehash_wraps_around_the_table_end() -> None:
    # keys whose home slots are all the last one: the run must wrap to slot 0 onwards
    index = TokenIndex(4)
    last = [t for t in range(100000) if index._h1(t) == index.mask][:5]
    index._rehash(4)
    for i, t in enumerate(last):
        index.set(t, i)
    before = index.keys.copy()
    index._rehash(4)  # same size: the placement must wrap exactly as set() did
    assert np.array_equal(np.sort(index.keys), np.sort(before))
    assert index.lookup(np.array(last, dtype=np.uint64)).tolist() == list(range(5))

