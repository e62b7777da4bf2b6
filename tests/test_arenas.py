"""Issue 14: shared arrays carved from a few arenas, so any number of them holds a
handful of descriptors, with the same no-copy transfer and lifetime rules."""

from __future__ import annotations

import gc
import mmap
import os
import threading

import pytest
from conftest import notebook_function, open_fds

import ipyparmap as pm
from ipyparmap.wire import serialize, sharedmem

np = pytest.importorskip("numpy")
pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd"),
]


@pytest.fixture
def arenas():
    """The arenas open before the test; after it, no arena of its own is left open."""
    gc.collect()  # arrays of earlier tests, held by reference cycles
    before = set(sharedmem._arenas)
    yield before
    gc.collect()
    assert set(sharedmem._arenas) <= before


# -- descriptors, reuse, threads ---------------------------------------------------------
@pytest.mark.parametrize("count", [1_000, 5_000])
def test_thousands_of_small_shared_arrays_hold_a_handful_of_descriptors(arenas, count):
    fds = open_fds()
    held = [pm.shared_array(1_000) for _ in range(count)]  # 8 KB each (one memfd each: 2)
    for i, a in enumerate(held):
        a[:] = i
    assert open_fds() - fds <= 8
    assert all(a[0] == i and a[-1] == i for i, a in enumerate(held))  # no overlaps
    del held, a
    gc.collect()
    assert open_fds() <= fds  # every arena made for them is closed with its last array


def test_freed_memory_is_reused_and_reads_zero(arenas, monkeypatch):
    for punch in (True, False):  # MADV_REMOVE for whole pages; zeroing where it is missing
        monkeypatch.setattr(sharedmem, "_punch", punch and sharedmem._punch)
        keep = pm.shared_array(10)  # keeps the arena open meanwhile
        sizes = [10, 5_000, 100_000, 3]  # within a page, across pages, many pages
        first = [pm.shared_array(n) for n in sizes]
        places = [sharedmem.find_segment(memoryview(a)) for a in first]
        for a in first:
            a[:] = -1.5
        del first, a
        gc.collect()
        again = [pm.shared_array(n) for n in sizes]
        assert [sharedmem.find_segment(memoryview(a)) for a in again] == places  # reused
        assert all(not a.any() for a in again)
        for a in again:
            a[:] = 2.0
        merged = pm.shared_array(sum(sizes))  # freed neighbours merge into one block
        del again, a
        gc.collect()
        assert not merged.any()
        del keep, merged


def test_arenas_grow_geometrically_and_big_arrays_get_their_own(arenas, monkeypatch):
    monkeypatch.setattr(sharedmem, "ARENA_BYTES", 1 << 20)
    small = [pm.shared_array(10_000) for _ in range(1_000)]  # 80 MB in 1 MiB arenas at first
    opened = [a for a in sharedmem._arenas.values() if a.address not in arenas]
    assert len(opened) <= 8  # 1 + 1 + 2 + 4 + ... MiB: O(log n) of them
    big = pm.shared_array(200_000)  # 1.6 MB: an arena of its own, sized to fit
    own = sharedmem._arenas[_start(big)]
    assert own.dedicated and own.size == -(-1_600_000 // sharedmem._PAGE) * sharedmem._PAGE
    fds = open_fds()
    del big
    gc.collect()
    assert open_fds() == fds - (2 if not sharedmem._MMAP_OPTIONS else 1)
    del small


def _start(a) -> int:
    """The start address of the arena holding ``a``."""
    import bisect

    address = a.__array_interface__["data"][0]
    return sharedmem._starts[bisect.bisect_right(sharedmem._starts, address) - 1]


def test_views_of_arrays_inside_an_arena_go_without_a_copy(arenas, copies):
    pad = pm.shared_array(12_345)  # the next array starts at an offset inside the arena
    a = pm.shared_array((300, 200))
    a[:] = np.arange(200)
    assert sharedmem.find_segment(memoryview(a))[1] > 0
    items = [a, a[7:], a[:, 50:], a[1:3, :7].copy()]  # the last: a plain small array
    expected = [float(x.sum()) for x in items]
    assert pm.parmap(_total, items, workers=1) == expected
    assert copies == []
    del pad


def _total(a):
    return float(a.sum())


def test_allocating_and_freeing_from_threads_keeps_the_arenas_consistent(arenas):
    errors = []

    def churn(seed):
        try:
            for i in range(300):
                a = pm.shared_array(100 + (seed * 37 + i) % 900)
                assert not a.any()
                a[:] = seed + 1
                assert sharedmem.find_segment(memoryview(a[3:])) is not None
                assert (a == seed + 1).all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


# -- a worker's own shared arrays, and what a receiver maps --------------------------------
def test_a_worker_returns_shared_arrays_it_allocated(arenas):
    """The worker drops each array once sent, before the parent reads it: its memory
    must not be reused (nor zeroed) meanwhile, though the worker keeps other arrays."""
    make = notebook_function(
        "import ipyparmap as pm\n"
        "kept = []\n"
        "def make(i):\n"
        "    kept.append(pm.shared_array(10))  # an array the worker keeps\n"
        "    a = pm.shared_array(100_000)\n"
        "    a[:] = i\n"
        "    return a\n",
        "make",
    )
    got = pm.parmap(make, range(40), workers=2, chunksize=1)
    assert [float(a.mean()) for a in got] == [float(i) for i in range(40)]


def test_a_receiver_maps_only_the_span_its_buffers_cover(arenas):
    keep = [pm.shared_array(100_000) for _ in range(20)]  # 16 MB of a 64 MiB arena
    keep[7][:] = 7
    packed = serialize.dumps_packed([keep[7], keep[9][5:]])
    fds, table = packed.share()
    got = serialize.loads_shared(packed.blob, [os.dup(fd) for fd in fds], table)
    mapping = got[0]
    while not isinstance(mapping, mmap.mmap):
        mapping = mapping.base if isinstance(mapping, np.ndarray) else mapping.obj
    assert len(mapping) < 3 * 800_000 + 2 * sharedmem._PAGE < sharedmem.ARENA_BYTES
    assert (got[0] == 7).all() and not got[1].any()
    packed.close()
