"""The lib/rbtree.c port keeps the red-black invariants and the search paths of a BST."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ksmfs.kernel.rbtree import RBTree


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=200))
def test_random_inserts_and_erases_keep_the_invariants(ops: list[tuple[bool, int]]) -> None:
    """After any sequence of inserts and erases the tree is a valid red-black BST."""
    t = RBTree()
    keys: set[int] = set()
    for insert, k in ops:
        if insert and k not in keys:
            t.insert(k)
            keys.add(k)
        elif not insert and k in keys:
            t.erase(k)
            keys.discard(k)
        t.check()
        assert len(t) == len(keys)
    for k in keys:
        assert t.path(k)[-1] == k
        lo, hi = t.interval(k)
        assert lo < k < hi


def test_shape_of_a_known_sequence() -> None:
    """Inserting 1..7 in order gives the shape lib/rbtree.c gives (root 2, then 4 under it)."""
    t = RBTree()
    for k in range(1, 8):
        t.insert(k)
    assert t.root == 2
    assert (t.left[2], t.right[2]) == (1, 4)
    assert (t.left[4], t.right[4]) == (3, 6)
    assert (t.left[6], t.right[6]) == (5, 7)
    assert t.check() == 3


def test_interval_is_the_set_of_keys_whose_path_passes() -> None:
    """A search for x passes node n exactly when x lies in n's interval."""
    rng = random.Random(5)
    t = RBTree()
    keys = rng.sample(range(1000), 100)
    for k in keys:
        t.insert(k)
    for n in keys[:20]:
        lo, hi = t.interval(n)
        for x in range(0, 1000, 7):
            assert (n in t.path(x)) == (lo < x < hi)
