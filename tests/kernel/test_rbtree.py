"""The stable tree's rbtree: the lib/rbtree.c port (kernel/rbtree.py) keeps the red-black
invariants and the search paths of a BST, and the compiled tree (kernel/_rbtree.c) has,
after any sequence of inserts and erases, exactly the shape of the port: same root, and
the same parent, children and colour at every key."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmfs.kernel._rbtree import RBTree as CTree
from ksmfs.kernel._rbtree import TokenMap
from ksmfs.kernel.rbtree import RBTree as PyTree
from ksmfs.kernel.stabletree import MISSING, StableTree, _order

TOP = (1 << 64) - 1
IMPLS = [pytest.param(PyTree, id="python"), pytest.param(CTree, id="c")]


def left(t: Any, k: int) -> int | None:
    return t.left[k] if isinstance(t, PyTree) else t.node(k)[1]


def right(t: Any, k: int) -> int | None:
    return t.right[k] if isinstance(t, PyTree) else t.node(k)[2]


def assert_same_shape(py: PyTree, c: CTree) -> None:
    """Same keys, root, and links and colour at every node; both trees valid."""
    assert c.root == py.root
    assert len(c) == len(py)
    for k in py.color:
        assert k in c
        assert c.node(k) == (py.parent[k], py.left[k], py.right[k], py.color[k]), k
    assert c.check() == py.check()


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=200))
def test_random_inserts_and_erases_keep_the_invariants(
    impl: type, ops: list[tuple[bool, int]]
) -> None:
    """After any sequence of inserts and erases the tree is a valid red-black BST."""
    t = impl()
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


@pytest.mark.parametrize("impl", IMPLS)
def test_shape_of_a_known_sequence(impl: type) -> None:
    """Inserting 1..7 in order gives the shape lib/rbtree.c gives (root 2, then 4 under it)."""
    t = impl()
    for k in range(1, 8):
        t.insert(k)
    assert t.root == 2
    assert (left(t, 2), right(t, 2)) == (1, 4)
    assert (left(t, 4), right(t, 4)) == (3, 6)
    assert (left(t, 6), right(t, 6)) == (5, 7)
    assert t.check() == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_interval_is_the_set_of_keys_whose_path_passes(impl: type) -> None:
    """A search for x passes node n exactly when x lies in n's interval."""
    rng = random.Random(5)
    t = impl()
    keys = rng.sample(range(1000), 100)
    for k in keys:
        t.insert(k)
    for n in keys[:20]:
        lo, hi = t.interval(n)
        for x in range(0, 1000, 7):
            assert (n in t.path(x)) == (lo < x < hi)


# Keys from a few values (many collisions: duplicates, erase and re-insert), from a wider
# range, and from the whole uint64 range with its ends (content tokens take any uint64;
# the ends of the range, 2**64 - 1 and - 2, are ordinary keys to the rbtree).
KEYS = st.one_of(
    st.integers(0, 15),
    st.integers(0, 500),
    st.integers(0, TOP),
    st.sampled_from([0, 1, TOP - 1, TOP, 1 << 63, (1 << 63) - 1]),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("iie"), KEYS), max_size=300))
def test_compiled_tree_has_the_shape_of_the_port(ops: list[tuple[str, int]]) -> None:
    """Same inserts and erases into both trees: after every operation the compiled tree
    has the port's exact shape, a duplicate insert is refused by both with KeyError (and
    changes nothing), and the searches pass the same nodes."""
    py, c = PyTree(), CTree()
    for op, k in ops:
        if op == "i":
            if k in py:
                with pytest.raises(KeyError):
                    c.insert(k)
                with pytest.raises(KeyError):
                    py.insert(k)
            else:
                py.insert(k)
                c.insert(k)
        elif k in py:
            py.erase(k)
            c.erase(k)
        else:
            assert k not in c
            with pytest.raises(KeyError):
                c.erase(k)
        assert c.version == py.version
        assert_same_shape(py, c)
    for _, k in ops[:20]:
        assert c.path(k) == py.path(k)
        assert c.interval(k) == py.interval(k)
        for n in py.path(k)[:-1] if k in py else py.path(k):
            assert c.step(n, k) == (py.left[n] if k < n else py.right[n])


@pytest.mark.parametrize("n", [1, 100, 5000, 40000])
def test_large_trees_with_reused_slots_keep_the_shape(n: int) -> None:
    """Bigger trees than hypothesis builds: the compiled tree's node array and hash grow
    several times and erased slots are reused; the shape still follows the port."""
    rng = random.Random(n)
    py, c = PyTree(), CTree()
    live: list[int] = []
    for i in range(3 * n):
        if live and rng.random() < 0.35:
            k = live.pop(rng.randrange(len(live)))
            py.erase(k)
            c.erase(k)
        else:
            k = rng.randrange(1 << 64) if i % 3 else rng.randrange(4 * n)
            if k in py:
                continue
            py.insert(k)
            c.insert(k)
            live.append(k)
        if i % max(1, n // 4) == 0:
            assert_same_shape(py, c)
    assert_same_shape(py, c)


@settings(max_examples=200, deadline=None)
@given(
    first=st.lists(st.integers(0, 200), max_size=60),
    keys=st.lists(st.one_of(st.integers(0, 200), st.integers(0, TOP)), max_size=200),
)
def test_insert_many_is_insert_in_order(first: list[int], keys: list[int]) -> None:
    """insert_many(keys, skip_present=True) is insert() of each key not yet in the tree
    (duplicates inside the array included), in the array's order; without skip_present
    a present key is a KeyError."""
    py, c = PyTree(), CTree()
    for k in first:
        if k not in py:
            py.insert(k)
            c.insert(k)
    want = 0
    for k in keys:
        if k not in py:
            py.insert(k)
            want += 1
    assert c.insert_many(np.array(keys, dtype=np.uint64), skip_present=True) == want
    assert c.version == py.version
    assert_same_shape(py, c)
    if keys:
        with pytest.raises(KeyError):
            c.insert_many(np.array(keys[:1], dtype=np.uint64))


def test_bad_keys_are_refused_with_one_line() -> None:
    c = CTree()
    with pytest.raises(TypeError, match="uint64"):
        c.insert_many(np.array([1, 2], dtype=np.int64))
    with pytest.raises(OverflowError, match=r"\[0, 2\*\*64\)"):
        c.insert(-1)
    with pytest.raises(OverflowError):
        c.insert(1 << 64)
    assert -1 not in c and (1 << 64) not in c and "x" not in c
    with pytest.raises(KeyError):
        c.step(5, 1)
    assert len(c) == 0 and c.version == 0 and c.check() == 1


# -- StableTree: deferred inserts are applied at flush() in the kernel's order ----------


class RefStableTree:
    """The deferral of kernel/stabletree.py before it used insert_many: the (position,
    key) pairs sorted, each key still mapped and not yet in the tree inserted in turn."""

    def __init__(self) -> None:
        self.map: dict[int, int] = {}
        self.rb = PyTree()
        self.defer: list[tuple[int, int]] | None = None

    def add(self, t: int, v: int, pos: int) -> None:
        self.map[t] = v
        if self.defer is not None:
            self.defer.append((pos, t))
        else:
            self.rb.insert(t)

    def delete(self, t: int) -> None:
        del self.map[t]
        if t in self.rb:
            self.rb.erase(t)

    def flush(self) -> None:
        pending, self.defer = self.defer or [], None
        for _, t in sorted(pending):
            if t in self.map and t not in self.rb:
                self.rb.insert(t)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["add", "many", "del"]), st.lists(KEYS, max_size=6),
                      st.integers(0, 40)),
            max_size=12,
        ),
        max_size=5,
    ),
    deferred=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_stable_tree_flush_inserts_in_the_kernels_order(
    batches: list[list[tuple[str, list[int], int]]], deferred: list[bool]
) -> None:
    """add(), add_many() and deletes inside deferred batches (positions in any order,
    keys deleted and added again) leave the rbtree in the shape the page-by-page order
    gives: sorted (position, key) pairs, each inserted if still mapped and not in it."""
    tree, ref = StableTree(), RefStableTree()
    val = 0
    for batch, defer in zip(batches, deferred, strict=False):
        if defer:
            tree.defer = []
            ref.defer = []
        for op, ks, pos in batch:
            if op == "del":
                for k in ks:
                    if k in ref.map:
                        del tree[k]
                        ref.delete(k)
                continue
            new = list(dict.fromkeys(k for k in ks if k not in ref.map))
            vals = list(range(val, val + len(new)))
            val += len(new)
            if op == "add":
                for i, (k, v) in enumerate(zip(new, vals, strict=True)):
                    tree.add(k, v, pos + i)
                    ref.add(k, v, pos + i)
            else:
                ps = [(pos * 7 + 3 * i) % 41 for i in range(len(new))]
                tree.add_many(np.array(new, dtype=np.uint64), np.array(vals, dtype=np.int64),
                              np.array(ps, dtype=np.int64))
                for k, v, p in zip(new, vals, ps, strict=True):
                    ref.add(k, v, p)
        tree.flush()
        ref.flush()
        assert dict(zip(tree, (tree[k] for k in tree), strict=True)) == ref.map
        assert_same_shape(ref.rb, tree.rb)



# -- TokenMap: the stable tree's token -> node map ---------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["set", "del", "many", "look"]), st.lists(KEYS, max_size=8),
                  st.integers(-(1 << 63) + 1, (1 << 63) - 1)),
        max_size=120,
    )
)
def test_token_map_is_a_dict(ops: list[tuple[str, list[int], int]]) -> None:
    """TokenMap behaves as a dict of the same keys: set (new and existing keys), delete
    (missing keys: KeyError), set_many (repeated keys: the last value wins), and the array
    lookup gives each key's value or the missing marker."""
    play_map_ops(ops, check_each_key=False)


def play_map_ops(ops: list[tuple[str, list[int], int]], *, check_each_key: bool) -> None:
    """Apply ``ops`` to a TokenMap and to a dict, and compare every view of the two after
    each op (and after each key of a set or delete when ``check_each_key``)."""
    m, d = TokenMap(), {}
    for op, ks, v in ops:
        if op == "set":
            for k in ks:
                m[k] = v
                d[k] = v
                if check_each_key:
                    assert_map_is(m, d, ks)
        elif op == "many":
            vals = [(v + i) % (1 << 62) for i in range(len(ks))]
            m.set_many(np.array(ks, dtype=np.uint64), np.array(vals, dtype=np.int64))
            d.update(zip(ks, vals, strict=True))
        elif op == "del":
            for k in ks:
                if k in d:
                    del m[k]
                    del d[k]
                else:
                    with pytest.raises(KeyError):
                        del m[k]
                if check_each_key:
                    assert_map_is(m, d, ks)
        elif op == "clear":
            m.clear()
            d.clear()
        assert_map_is(m, d, ks)


def test_token_map_grows_and_shrinks() -> None:
    """Many keys set and most deleted again (backward-shift deletion keeps every probe
    run reachable): the survivors keep their values; clear() empties the map and keeps
    its table."""
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 1 << 64, 60000, dtype=np.uint64))
    keys = keys[rng.permutation(keys.shape[0])]
    m = TokenMap()
    m.set_many(keys, np.arange(keys.shape[0], dtype=np.int64))
    gone = keys[: keys.shape[0] * 3 // 4]
    for k in gone.tolist():
        del m[k]
    out = np.empty(keys.shape[0], dtype=np.int64)
    m.lookup_into(keys, out, MISSING)
    n = gone.shape[0]
    assert (out[:n] == MISSING).all()
    assert out[n:].tolist() == list(range(n, keys.shape[0]))
    assert len(m) == keys.shape[0] - n
    size = m.nbytes
    m.clear()
    m.lookup_into(keys, out, MISSING)
    assert len(m) == 0 and list(m) == [] and (out == MISSING).all() and m.nbytes == size
    m[int(keys[0])] = 5
    assert m[int(keys[0])] == 5 and len(m) == 1


def test_token_map_refuses_bad_input_with_one_line() -> None:
    m = TokenMap()
    with pytest.raises(ValueError, match="values"):
        m[1] = -(1 << 63)
    with pytest.raises(TypeError, match="int64"):
        m.set_many(np.array([1], dtype=np.uint64), np.array([1], dtype=np.uint64))
    with pytest.raises(ValueError, match="length"):
        m.set_many(np.array([1, 2], dtype=np.uint64), np.array([1], dtype=np.int64))
    with pytest.raises(OverflowError):
        m[-1] = 0
    assert len(m) == 0 and m.get(-1) is None and -1 not in m


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.one_of(st.integers(0, 50), st.integers(-(1 << 40), 1 << 40)),
                             KEYS), max_size=80),
    distinct=st.booleans(),
)
def test_flush_order_is_the_sorted_pairs(pairs: list[tuple[int, int]], distinct: bool) -> None:
    """The order of the deferred inserts is that of the sorted (position, key) pairs,
    whether positions are distinct and close (the linear scatter) or repeat and spread
    (the fallback)."""
    if distinct:
        pairs = list(dict(pairs).items())
    if not pairs:
        return
    pos = np.array([p for p, _ in pairs], dtype=np.int64)
    ts = np.array([t for _, t in pairs], dtype=np.uint64)
    got = [(int(pos[i]), int(ts[i])) for i in _order(pos, ts)]
    assert got == sorted(pairs)


def assert_map_is(m: TokenMap, d: dict[int, int], probe: list[int]) -> None:
    """Every view of the map (len, iteration, keys(), [], get, in, lookup_into) is d's."""
    assert len(m) == len(d)
    assert sorted(m) == sorted(d) == sorted(m.keys())
    ks = sorted(set(d) | set(probe))
    out = np.empty(len(ks), dtype=np.int64)
    m.lookup_into(np.array(ks, dtype=np.uint64), out, MISSING)
    assert out.tolist() == [d.get(k, MISSING) for k in ks]
    assert all(m[k] == d[k] and m.get(k) == d[k] and k in m for k in d)
    assert all(m.get(k, -7) == -7 and k not in m for k in probe if k not in d)


# Many keys from a small range (several growths, from the initial 16 entries, with keys
# set again, deleted and looked up while the previous table is still being moved) and a
# few from the full range.
GROW_KEYS = st.one_of(st.integers(0, 700), st.integers(0, TOP))


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["set", "set", "many", "del", "look", "clear"]),
                  st.lists(GROW_KEYS, max_size=40), st.integers(-(1 << 63) + 1, (1 << 63) - 1)),
        max_size=60,
    )
)
def test_token_map_is_a_dict_across_growths(ops: list[tuple[str, list[int], int]]) -> None:
    """Growth moves the old table a few entries per change: sets, deletes, batch sets and
    lookups that hit keys still in the old table, and clear() half-way through a move,
    leave the map equal to a dict after every operation."""
    play_map_ops(ops, check_each_key=True)


def test_token_map_batches_cross_growths_mid_move() -> None:
    """Batches of random keys (repeats included) with deletes between them: each batch
    starts while the previous growth is still moving entries; the map stays a dict."""
    rng = np.random.default_rng(11)
    m, d = TokenMap(), {}
    for step in range(300):
        ks = rng.integers(0, 3000 if step % 2 else 1 << 64, int(rng.integers(1, 60)),
                          dtype=np.uint64)
        vals = rng.integers(-(1 << 62), 1 << 62, ks.shape[0], dtype=np.int64)
        m.set_many(ks, vals)
        d.update(zip(ks.tolist(), vals.tolist(), strict=True))
        have = sorted(d)
        for i in rng.choice(len(have), min(len(have), 5), replace=False).tolist():
            k = have[i]
            del m[k]
            del d[k]
        assert_map_is(m, d, ks.tolist())
    assert len(d) > 2000


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("iiiemc"), st.lists(GROW_KEYS, max_size=30)),
                    max_size=50))
def test_tree_index_across_growths(ops: list[tuple[str, list[int]]]) -> None:
    """The compiled tree's key -> slot index grows incrementally too: inserts (one by one
    and insert_many), erases and lookups while the old index is being moved keep `in`,
    node() and check() (which looks every node up by key) right, and the shape the
    port's."""
    py, c = PyTree(), CTree()
    for op, ks in ops:
        if op == "m":
            new = list(dict.fromkeys(k for k in ks if k not in py))
            c.insert_many(np.array(ks, dtype=np.uint64), skip_present=True)
            for k in new:
                py.insert(k)
        for k in ks:
            if op == "i" and k not in py:
                py.insert(k)
                c.insert(k)
            elif op == "e" and k in py:
                py.erase(k)
                c.erase(k)
            elif op == "c":
                assert (k in c) == (k in py)
            if op != "m":
                assert c.check() == py.check()
        assert_same_shape(py, c)
        assert all((k in c) == (k in py) for k in ks)


def test_large_maps_grow_through_prefaulted_tables() -> None:
    """Past 32k entries the next table is allocated early and faulted in a bit per change,
    then taken over at the growth: batches and single sets and deletes up to 300k keys
    (several such growths, clear() once with the next table pending) keep the map a dict."""
    rng = np.random.default_rng(5)
    m, d = TokenMap(), {}
    cleared = False
    while len(d) < 300_000:
        ks = rng.integers(0, 1 << 64, 3000, dtype=np.uint64)
        vals = rng.integers(-(1 << 62), 1 << 62, ks.shape[0], dtype=np.int64)
        m.set_many(ks, vals)
        d.update(zip(ks.tolist(), vals.tolist(), strict=True))
        have = list(d)
        for i in rng.choice(len(have), 200, replace=False).tolist():
            del m[have[i]]
            del d[have[i]]
        k = int(ks[0]) ^ 1
        m[k] = 7
        d[k] = 7
        if not cleared and len(d) > 100_000:
            m.clear()
            d.clear()
            cleared = True
        assert len(m) == len(d)
        probe = np.array(have[-3000:] + ks.tolist(), dtype=np.uint64)
        out = np.empty(probe.shape[0], dtype=np.int64)
        m.lookup_into(probe, out, MISSING)
        assert out.tolist() == [d.get(k, MISSING) for k in probe.tolist()]
    assert sorted(m) == sorted(d)
    out = np.empty(len(d), dtype=np.int64)
    m.lookup_into(np.array(list(d), dtype=np.uint64), out, MISSING)
    assert out.tolist() == list(d.values())
