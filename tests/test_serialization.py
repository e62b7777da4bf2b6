"""What travels to workers: the function once per worker, chunks with items only."""

from __future__ import annotations

import linecache

import pytest
from conftest import notebook_function

import ipyparmap as pm
from ipyparmap import protocol as P
from ipyparmap import serialize
from ipyparmap.pool import WorkerHandle

pytestmark = pytest.mark.usefixtures("no_leaks")

BIG = 4_000_000  # bytes of a notebook global


@pytest.fixture
def sent(monkeypatch):
    """Record (worker pid, tag, size) of every message the parent sends."""
    log = []
    original = WorkerHandle.send

    def send(self, message):
        log.append((self.pid, message[0], len(serialize.dumps(message))))
        return original(self, message)

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
    funcs = [m for m in sent if m[1] == P.FUNC]
    chunks = [m for m in sent if m[1] == P.CHUNK]
    assert len(funcs) == 2 and len({pid for pid, *_ in funcs}) == 2
    assert all(size > BIG for *_, size in funcs)  # the global travels with the function
    assert len(chunks) == 60
    assert max(size for *_, size in chunks) < 1000  # chunks: items only

    sent.clear()  # a second call with the same function and globals: nothing to resend
    assert pm.parmap(func, range(10), workers=2) == [BIG + i for i in range(10)]
    assert [m for m in sent if m[1] == P.FUNC] == []


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
