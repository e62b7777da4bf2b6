"""What travels to workers: the function once per worker, chunks with items only."""

from __future__ import annotations

import linecache

import pytest
from conftest import notebook_function

import ipyparmap as pm
from ipyparmap.process.pool import WorkerHandle
from ipyparmap.wire import codec, serialize
from ipyparmap.wire import messages as P

pytestmark = pytest.mark.usefixtures("no_leaks")

BIG = 4_000_000  # bytes of a notebook global


@pytest.fixture
def sent(monkeypatch):
    """Record (worker pid, tag, size) of every message the parent sends."""
    log = []
    original = WorkerHandle.send

    def send(self, message, fds=()):
        log.append((self.pid, message[0], len(codec.dumps(message)), len(fds)))
        return original(self, message, fds)

    monkeypatch.setattr(WorkerHandle, "send", send)
    return log


def test_function_and_big_global_sent_once_per_worker_chunks_carry_items(sent):
    func = notebook_function(
        """
        blob = b"x" * BIG
        def size_plus(i):
            return len(blob) + i
        """,
        "size_plus",
        BIG=BIG,
    )
    res = pm.parmap(func, range(60), workers=2, chunksize=1)
    assert res == [BIG + i for i in range(60)]
    funcs = [m for m in sent if m[1] == P.LoadFunction.TAG]
    chunks = [m for m in sent if m[1] == P.RunChunk.TAG]
    assert len(funcs) == 2 and len({pid for pid, *_ in funcs}) == 2
    assert all(size > BIG for _, _, size, _ in funcs)  # the global travels with the function
    assert len(chunks) == 60
    assert max(size for _, _, size, _ in chunks) < 1000  # chunks: items only

    sent.clear()  # a second call with the same function and globals: nothing to resend
    assert pm.parmap(func, range(10), workers=2) == [BIG + i for i in range(10)]
    assert [m for m in sent if m[1] == P.LoadFunction.TAG] == []


def test_changed_globals_are_resent():
    ns = {"__name__": "__main__"}
    exec("factor = 2\ndef scale(x):\n    return x * factor\n", ns)
    assert pm.parmap(ns["scale"], [1, 2], workers=2) == [2, 4]
    ns["factor"] = 10  # the notebook changed the global: workers must see the new value
    assert pm.parmap(ns["scale"], [1, 2], workers=2) == [10, 20]


def test_redefined_notebook_function_runs_new_code():
    old = notebook_function("def f(x):\n    return 'old'\n", "f")
    new = notebook_function("def f(x):\n    return 'new'\n", "f")
    assert pm.parmap(old, [0], workers=1) == ["old"]
    assert pm.parmap(new, [0], workers=1) == ["new"]


def test_worker_tracebacks_show_notebook_cell_source():
    source = "def cell_func(x):\n    value = 1 / x  # the failing cell line\n    return value\n"
    filename = "/tmp/ipykernel_0/1234567.py"  # what ipykernel names cells: not on disk
    ns = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        res = pm.parmap(ns["cell_func"], [1, 0], workers=1, errors="collect")
    finally:
        linecache.cache.pop(filename, None)
    failure = res[1]
    assert isinstance(failure.exception, ZeroDivisionError)
    assert "value = 1 / x  # the failing cell line" in failure.traceback
    assert filename in failure.traceback


def test_cell_sources_only_ship_files_not_on_disk():
    func = notebook_function("def g(x):\n    return x\n", "g")
    assert serialize.cell_sources(func) == {}  # not in linecache: nothing to ship
    assert serialize.cell_sources(serialize.pickle_function) == {}  # a real file


def test_find_unpicklable_walks_containers_and_attributes():
    import threading

    class Config:
        def __init__(self):
            self.options = {"retry": 3, "lock": threading.Lock()}

    path, part, error = serialize.find_unpicklable([1, Config()], "items")
    assert path == "items[1].options['lock']"
    assert "lock" in type(part).__name__
    assert "pickle" in str(error)


def test_large_arrays_travel_in_shared_memory_not_through_the_pipe(sent):
    np = pytest.importorskip("numpy")
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    func = notebook_function(
        "def shifted(a):\n    return a + offset.sum()\n", "shifted", offset=np.ones(1_000_000)
    )  # an 8 MB global
    arrays = [big * k for k in range(4)]
    res = pm.parmap(func, arrays, workers=2, chunksize=1)
    for k, out in enumerate(res):
        assert out.shape == big.shape and out.flags.writeable
        assert np.array_equal(out, big * k + 1_000_000)
    funcs = [m for m in sent if m[1] == P.LoadFunction.TAG]
    chunks = [m for m in sent if m[1] == P.RunChunk.TAG]
    assert all(size < 100_000 and fds == 1 for _, _, size, fds in funcs)  # the 8 MB: shared
    assert all(size < 10_000 and fds == 1 for _, _, size, fds in chunks)  # 16 MB items: shared


def test_shared_memory_is_released(no_leaks):
    np = pytest.importorskip("numpy")
    import os

    import psutil

    arrays = [np.ones(500_000) for _ in range(4)]
    pm.parmap(np.sum, arrays, workers=2)
    me = psutil.Process()
    fds = me.num_fds()
    for _ in range(20):
        res = pm.parmap(lambda a: a * 2, arrays, workers=2)
        del res
    assert me.num_fds() <= fds  # no descriptor kept per call
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    pm.parmap(lambda a: a * 2, arrays, workers=2)
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert after - before == set()  # nothing named, anywhere


# -- pm.shared_array: data in shared memory from the start, sent without a copy -----------
def _total(a):
    return float(a.sum())


def test_shared_arrays_and_their_views_travel_without_a_copy(copies):
    np = pytest.importorskip("numpy")
    a = pm.shared_array((1000, 500))  # 4 MB, zeros
    a[:] = np.arange(500)
    items = [a, a[10:], a[:, 100:], a.T]  # views at offsets, not contiguous ones too
    assert pm.parmap(_total, items, workers=2) == [float(x.sum()) for x in items]
    # only the non-contiguous view (not sent out of band at all) could need a copy
    assert copies == [], copies
    func = notebook_function("def scaled(k):\n    return float(g.sum()) * k\n", "scaled", g=a)
    assert pm.parmap(func, [1, 2], workers=2) == [float(a.sum()), 2 * float(a.sum())]
    assert copies == []  # the global too


def test_shared_array_semantics_copy_on_write_read_only_views_and_release(copies):
    np = pytest.importorskip("numpy")
    import gc

    from ipyparmap.wire import sharedmem

    gc.collect()  # arrays of earlier tests, held by reference cycles
    segments = len(sharedmem._blocks)
    a = pm.shared_array(1_000_000, dtype=np.int64)
    a[:] = 7
    poke = notebook_function("def poke(x):\n    x[0] = -1\n    return int(x[0])\n", "poke")
    assert pm.parmap(poke, [a], workers=1) == [-1]
    assert a[0] == 7  # a worker's writes stay in the worker
    frozen = a[:]
    frozen.flags.writeable = False  # its address can't be taken: copied, still right
    assert pm.parmap(_total, [frozen], workers=1) == [7.0 * 1_000_000]
    assert copies == [8_000_000]
    assert len(sharedmem._blocks) == segments + 1
    del a, frozen
    gc.collect()
    assert len(sharedmem._blocks) == segments  # its memory freed with the last array


def test_shared_array_validates_its_shape():
    pytest.importorskip("numpy")
    with pytest.raises(ValueError, match="shape must hold non-negative ints"):
        pm.shared_array((3, -1))
    assert pm.shared_array(0).shape == (0,)


def test_a_shared_global_is_not_hashed_and_workers_see_it_live(copies, sent):
    np = pytest.importorskip("numpy")
    table = pm.shared_array(2_000_000)  # 16 MB global of the function
    lookup = notebook_function("def lookup(i):\n    return float(table[i])\n", "lookup")
    lookup.__globals__["table"] = table
    assert pm.parmap(lookup, [0, 1], workers=2) == [0.0, 0.0]
    table[:2] = [5.0, 6.0]  # changed between calls, in place
    assert pm.parmap(lookup, [0, 1], workers=2) == [5.0, 6.0]  # the workers see it
    assert copies == []
    # sent once per worker, not again
    assert sum(1 for m in sent if m[1] == P.LoadFunction.TAG) == 2
    plain = notebook_function("def first(i):\n    return float(g[i])\n", "first", g=np.zeros(9000))
    pm.parmap(plain, [0], workers=1)
    plain.__globals__["g"][0] = 1.0  # a plain array changed in place: sent again
    assert pm.parmap(plain, [0], workers=1) == [1.0]
