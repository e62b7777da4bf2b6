"""The shortcuts of the hot paths give the same answers as the long way round.

- A function whose pickle can't have changed is not pickled again (fingerprint.py):
  every way a notebook can change what a function does must still reach the workers.
- Tiny items run in blocks through ``map()`` in the worker (worker.run_items): errors,
  crashes and printed output must still be pinned to their own item.
"""

from __future__ import annotations

import math
import sys

import helpers
import pytest
from conftest import notebook_function, open_fds

import ipyparmap as pm
from ipyparmap.process.worker import _CapturedStream, _OutputSink, run_items
from ipyparmap.wire import board as B
from ipyparmap.wire import codec, localmodules, serialize
from ipyparmap.wire import messages as P
from ipyparmap.wire.fingerprint import fingerprint

pytestmark = pytest.mark.usefixtures("no_leaks")


# -- the function payload cache -----------------------------------------------------------
def _namespace(source: str) -> dict:
    ns = {"__name__": "__main__"}
    exec(compile(source, "<notebook-cell-fast>", "exec"), ns)
    return ns


def test_an_unchanged_function_is_not_pickled_again():
    ns = _namespace("K = 3\ndef f(x):\n    return x * K\n")
    first = serialize.pickle_function(ns["f"])
    assert serialize.pickle_function(ns["f"]) is first  # the cached payload itself
    ns["K"] = 4
    changed = serialize.pickle_function(ns["f"])
    assert changed is not first and changed.key != first.key


@pytest.mark.parametrize(
    "source, change, expected",
    [
        # a global rebound
        ("K = 1\ndef f(x):\n    return x + K\n", "K = 100", [100, 101]),
        # a global mutated in place: never cached, since nothing would be rebound
        ("L = [1]\ndef f(x):\n    return x + L[0]\n", "L[0] = 100", [100, 101]),
        # a helper redefined
        (
            "def g(x):\n    return 1\ndef f(x):\n    return x + g(x)\n",
            "def g(x):\n    return 100",
            [100, 101],
        ),
        # a global of a helper rebound
        (
            "K = 1\ndef g(x):\n    return K\ndef f(x):\n    return x + g(x)\n",
            "K = 100",
            [100, 101],
        ),
        # a builtin shadowed by a new global
        ("def f(x):\n    return x + abs(-1)\n", "abs = lambda v: 100", [100, 101]),
        # defaults replaced
        ("def f(x, k=1):\n    return x + k\n", "f.__defaults__ = (100,)", [100, 101]),
        # an attribute set on a class the function uses
        (
            "class C:\n    k = 1\ndef f(x):\n    return x + C.k\n",
            "C.k = 100",
            [100, 101],
        ),
        # a tuple global whose element is mutable
        ("T = ([1],)\ndef f(x):\n    return x + T[0][0]\n", "T[0][0] = 100", [100, 101]),
    ],
    ids=["rebound", "mutated", "helper", "helper-glob", "shadowed", "defaults", "class", "tuple"],
)
def test_every_change_a_notebook_can_make_reaches_the_workers(source, change, expected):
    ns = _namespace(source)
    first = pm.parmap(ns["f"], [0, 1], workers=2)
    assert first != expected
    exec(change, ns)
    assert pm.parmap(ns["f"], [0, 1], workers=2) == expected


def test_a_changed_closure_reaches_the_workers():
    ns = _namespace(
        "def make():\n    k = 1\n    def f(x):\n        return x + k\n"
        "    def set_k(v):\n        nonlocal k\n        k = v\n    return f, set_k\n"
    )
    f, set_k = ns["make"]()
    assert pm.parmap(f, [0, 1], workers=2) == [1, 2]
    set_k(100)
    assert pm.parmap(f, [0, 1], workers=2) == [100, 101]


def test_what_gets_a_fingerprint():
    def has(source, name="f", **globals_):
        return fingerprint(notebook_function(source, name, **globals_), localmodules.by_reference)

    assert has("def f(x):\n    return x * x\n") is not None
    assert has("def f(x):\n    return math.sqrt(x) + K\n", math=math, K=(1, 2.5, "s")) is not None
    assert has("def f(x):\n    return g(x)\ndef g(x):\n    return f(x)\n") is not None  # cycle
    assert has("def f(x):\n    return L\n", L=[1]) is None  # mutable
    assert has("def f(x):\n    return D\n", D={}) is None
    assert has("def f(x):\n    return append(x)\n", append=[].append) is None  # bound
    assert has("def f(x):\n    return helpers.square(x)\n", helpers=helpers) is None  # local
    notebook_class = notebook_function("class C:\n    pass\n", "C")
    assert has("def f(x):\n    return C\n", C=notebook_class) is None


# -- tiny items in blocks -------------------------------------------------------------
def _fail_on_multiples_of_7(x):
    if x % 7 == 0:
        raise ValueError(f"bad {x}")
    if x == 30:
        print("thirty")
    return x


def test_blocks_pin_errors_and_output_to_their_items():
    items = list(range(100))
    positions, times = [B.IDLE, B.LOADING, 1], [0.0]
    sink = _OutputSink(positions)
    saved = sys.stdout
    sys.stdout = _CapturedStream(sink, "stdout", saved)
    try:
        start, values, errors, timings, _ = run_items(
            _fail_on_multiples_of_7, items, False, 16, positions, times, sink=sink
        )
    finally:
        sys.stdout = saved
    assert start == 0 and len(values) == 100
    stride, count, seconds = timings  # one figure per block of 16, the last one of 4
    assert (stride, count, len(seconds)) == (16, 100, 7)
    assert len(P.Timings(*timings).per_item()) == 100
    assert sorted(errors) == [x for x in items if x % 7 == 0]
    assert all(errors[x][2] == f"bad {x}" for x in errors)
    assert [v for i, v in enumerate(values) if i % 7] == [x for x in items if x % 7]
    assert [(pos, text) for pos, _, text in sink.take()] == [(30, "thirty\n")]
    assert positions[2] == 1 and sink.block is None  # left as found


def test_blocks_of_tiny_items_in_workers_keep_errors_and_output_per_item():
    items = list(range(30_000))
    res = pm.parmap(helpers.tiny_with_events, items, workers=2, errors="collect")
    assert res.stats.chunks < 1000  # batched, so the later chunks ran in blocks
    assert [f.index for f in res.failures] == [12_345, 12_346, 29_999]
    assert res.outputs[20_001].stdout == "printed by 20001\n"
    assert res.values(default=None)[20_001] == 20_001
    assert sum(v for v in res.values(default=0)) == sum(items) - 12_345 - 12_346 - 29_999


# -- small calls pickle plain items with the C pickler ------------------------------------
@pytest.mark.parametrize("items", [[1, 2], [1.5, "s", None, True, 3j], []])
def test_small_plain_lists_pickle_exactly_as_cloudpickle_would(items):
    import cloudpickle

    assert serialize.dumps_packed(items).blob == cloudpickle.dumps(items, protocol=5)


def test_small_lists_with_anything_else_still_use_cloudpickle():
    cls = notebook_function("class Point:\n    pass\n", "Point")
    packed = serialize.dumps_packed([1, cls()])  # a notebook class: by value
    assert type(codec.loads(packed.blob)[1]).__name__ == "Point"


# -- warm calls reuse the epoll set of their workers --------------------------------------
def test_warm_calls_reuse_the_selector_of_their_workers_and_shutdown_closes_it():
    from ipyparmap.engine import local

    seen = []
    original = local.LocalEngine.close

    def close_engine(self):
        seen.append((self.selector, frozenset(self.workers)))
        original(self)

    pm.shutdown()
    before = open_fds()
    try:
        local.LocalEngine.close = close_engine
        for _ in range(3):
            assert pm.parmap(helpers.square, [1, 2], workers=2) == [1, 4]
    finally:
        local.LocalEngine.close = original
    assert len({id(selector) for selector, _ in seen}) == 1  # made once, then reused
    assert len({workers for _, workers in seen}) == 1
    assert seen[-1][0].get_map() is not None  # still open: kept by the pool
    pm.shutdown()
    assert seen[-1][0].get_map() is None  # closed with the pool
    assert open_fds() <= before  # nothing kept open (fewer: a GC elsewhere)


def test_a_worker_death_between_calls_gets_a_fresh_selector():
    import os
    import signal

    from ipyparmap.process.pool import default_pool

    pm.parmap(helpers.square, [1, 2], workers=2)
    victim = default_pool().workers()[0][0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait(10)
    assert pm.parmap(helpers.square, range(10), workers=2) == [x * x for x in range(10)]


def test_an_import_since_the_last_call_repickles():
    import sys

    ns = _namespace("def f(x):\n    return x\n")
    first = serialize.pickle_function(ns["f"])
    sys.modules["ipyparmap_test_fake_module"] = type(sys)("ipyparmap_test_fake_module")
    try:
        assert serialize.pickle_function(ns["f"]) is not first
    finally:
        del sys.modules["ipyparmap_test_fake_module"]


# -- a range input travels as range slices ------------------------------------------------
@pytest.mark.parametrize(
    "items", [range(0), range(5), range(3, 1000, 7), range(50, -50, -3)], ids=repr
)
def test_a_range_input_gives_what_its_list_gives(items):
    res = pm.parmap(helpers.square, items, workers=2, progress=False)
    assert res == [x * x for x in items]
    assert res.stats.items == len(items)
    assert list(pm.imap(helpers.square, items, workers=2, progress=False)) == list(res)


def test_a_range_input_is_chunked_as_ranges():
    from ipyparmap.engine.feed import ItemFeed
    from ipyparmap.engine.plan import ChunkPlanner

    feed = ItemFeed(helpers.square, range(10, 50, 2), ChunkPlanner(2, chunksize=8))
    chunk = feed.next_chunk(owner=None)
    assert chunk.items == range(10, 26, 2) and chunk.indices == range(0, 8)
    assert len(chunk.blob) < 100  # a range, not eight pickled ints


def test_a_range_input_still_names_failed_and_crashed_items():
    res = pm.parmap(helpers.fail_on, range(1, 40, 2), errors="collect", progress=False)
    failure = res[1]  # input item 3
    assert isinstance(failure, pm.Failure) and failure.kind == "error"
    assert failure.item == 3 and "bad item 3" in str(failure.exception)
    res = pm.parmap(helpers.fail_on, range(10), errors="collect", progress=False)
    assert res[3].kind == "error" and res[3].item == 3
    crashed = pm.parmap(helpers.exit_on, range(20), workers=2, errors="collect", progress=False)
    assert crashed[7].kind == "crashed" and crashed[7].item == 7
    assert [crashed[i] for i in range(20) if i != 7] == [i for i in range(20) if i != 7]


def test_a_big_global_is_hashed_from_its_copy_the_first_time_and_live_after(monkeypatch):
    np = pytest.importorskip("numpy")
    import zlib

    from ipyparmap.process.pool import default_pool

    ns = _namespace("def f(i):\n    return float(BIG[i])\n")
    ns["BIG"] = np.arange(100_000, dtype=np.float64)  # 800 KB: a buffer apart
    live = []
    real_crc32 = zlib.crc32

    def counting_crc32(data, *args):
        if isinstance(data, memoryview) and data.obj is ns["BIG"]:
            live.append(1)  # the live array, not the copy the workers map
        return real_crc32(data, *args)

    monkeypatch.setattr(zlib, "crc32", counting_crc32)
    assert pm.parmap(ns["f"], [5, 6], workers=2, progress=False) == [5.0, 6.0]
    assert not live  # the first call hashed nothing on its way (the copy, meanwhile)
    first = serialize.pickle_function(ns["f"])
    key = first.key  # the same data: the key the workers have
    assert live and key in default_pool().workers()[0][0].functions
    first.close()
    assert pm.parmap(ns["f"], [5, 6], workers=2, progress=False) == [5.0, 6.0]
    ns["BIG"][5] = -1.0  # changed in place: a new key, so warm workers get the new data
    changed = serialize.pickle_function(ns["f"])
    assert changed.code_key == first.code_key and changed.key != key
    changed.close()
    assert pm.parmap(ns["f"], [5, 6], workers=2, progress=False) == [-1.0, 6.0]
    ns["BIG"][6] = -2.0
    assert pm.parmap(ns["f"], [5, 6], workers=2, progress=False) == [-1.0, -2.0]


def test_the_engine_polls_only_for_results_due_soon_with_a_cpu_to_spare():
    from types import SimpleNamespace

    from ipyparmap.engine import local
    from ipyparmap.engine.plan import ChunkPlanner

    tiny, slow = ChunkPlanner(2), ChunkPlanner(2)
    tiny.record(2, 2e-6)
    slow.record(1, 0.05)
    engine = local.LocalEngine.__new__(local.LocalEngine)
    engine.cpus = 2
    engine.in_flight = {}
    assert not engine._due_soon()  # nothing in flight: sleep
    engine.in_flight = {"w1": SimpleNamespace(planner=tiny, items=[1, 2])}
    assert engine._due_soon()
    engine.in_flight["w2"] = SimpleNamespace(planner=tiny, items=[3])
    assert not engine._due_soon()  # every CPU has a worker: polling would slow one
    engine.in_flight = {"w1": SimpleNamespace(planner=slow, items=[1])}
    assert not engine._due_soon()  # a 50 ms item: sleep until it ends
    engine.in_flight = {"w1": SimpleNamespace(planner=ChunkPlanner(2), items=[1])}
    assert not engine._due_soon()  # not measured yet
    engine.cpus = 1
    engine.in_flight = {"w1": SimpleNamespace(planner=tiny, items=[1])}
    assert not engine._due_soon()  # one CPU: the worker needs it


def test_the_modules_a_big_global_needs_are_imported_ahead():
    np = pytest.importorskip("numpy")
    ns = _namespace("def f(i):\n    return float(BIG[i]) + len('json')\n")
    ns["BIG"] = np.arange(100_000, dtype=np.float64)
    payload = serialize.pickle_function(ns["f"])
    modules = payload.preload()
    assert "numpy" in modules
    assert "json" not in modules and "__main__" not in modules  # a string is no import
    payload.close()
    from ipyparmap.process.pool import default_pool

    assert pm.parmap(ns["f"], [3, 4], workers=2, progress=False) == [7.0, 8.0]
    workers = [w for w, _ in default_pool().workers()]
    assert workers and all("numpy" in w.preloaded for w in workers)


def test_a_module_that_fails_to_preload_does_not_hurt_the_worker():
    from ipyparmap.process.pool import default_pool
    from ipyparmap.wire import messages as M

    assert pm.parmap(helpers.square, [1, 2], workers=2, progress=False) == [1, 4]
    before = {w.pid for w, _ in default_pool().workers()}
    for worker, _ in default_pool().workers():
        worker.send(M.pack(M.Preload(("no_such_module_anywhere", "json"))))
    res = pm.parmap(helpers.square, range(6), workers=2, chunksize=1, progress=False)
    assert res == [x * x for x in range(6)]
    assert res.stats.restarts == 0 and set(res.worker_of) <= before  # nobody died
