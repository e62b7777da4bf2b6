"""Several callers at once, stale code, and floods of items, output and results."""

from __future__ import annotations

import importlib
import sys
import threading

import helpers
import psutil
import pytest

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_two_threads_map_on_the_shared_pool_at_once():
    results: dict[int, list] = {}
    errors: list = []

    def caller(k: int) -> None:
        try:
            results[k] = list(
                pm.parmap(helpers.sleepy, [(k * 100 + i, 0.01) for i in range(40)], workers=2)
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert results == {k: [k * 100 + i for i in range(40)] for k in range(2)}


def test_edited_local_module_is_never_stale(tmp_path, monkeypatch):
    module = tmp_path / "localcode.py"
    module.write_text("def answer(x):\n    return 'old'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import localcode

    assert pm.parmap(localcode.answer, [0, 1], workers=2) == ["old", "old"]
    module.write_text("def answer(x):\n    return 'new'\n")
    importlib.reload(localcode)  # what the user (or %autoreload) does after editing
    assert pm.parmap(localcode.answer, [0, 1], workers=2) == ["new", "new"]  # warm workers
    sys.modules.pop("localcode", None)


def test_none_huge_and_unhashable_items():
    items = [None, {"a": [1, 2]}, [1, [2, [3]]], {1, 2}, "x" * 5_000_000, bytearray(3)]
    res = pm.parmap(repr, items, workers=2)
    assert res == [repr(i) for i in items]


def test_a_million_tiny_items():
    res = pm.parmap(helpers.square, range(1_000_000), workers=2)
    assert len(res) == 1_000_000 and res[999_999] == 999_999**2 and res.ok


@pytest.mark.timeout(120)
def test_queued_chunks_never_outgrow_a_small_socket_buffer(monkeypatch):
    """A chunk queued behind a busy worker goes out at once only if it fits in the
    socket's buffer: the worker does not read while it runs, and a send that blocks
    while the worker blocks sending its results would hang both. With the small buffers
    some systems grant, this run deadlocked without that check."""
    from ipyparmap.process import pool

    pm.shutdown()
    monkeypatch.setattr(pool, "SEND_BUFFER_BYTES", 4096)  # new workers get small ones
    try:
        res = pm.parmap(helpers.square, range(300_000), workers=2, progress=False)
        assert len(res) == 300_000 and res[-1] == 299_999**2 and res.ok
    finally:
        pm.shutdown()


def test_a_task_printing_50_mb(capfd):
    res = pm.parmap(helpers.chatter, [50], workers=1)
    assert res == [50]
    assert len(res.outputs[0].stdout) == 50 * 2**20
    out = capfd.readouterr().out
    assert len(out) >= 50 * 2**20


def test_many_small_calls_keep_fds_threads_and_processes_flat():
    me = psutil.Process()
    for _ in range(50):
        pm.parmap(helpers.square, range(2), workers=2)
    before = (me.num_fds(), me.num_threads(), len(me.children(recursive=True)))
    for _ in range(500):
        pm.parmap(helpers.square, range(2), workers=2)
    after = (me.num_fds(), me.num_threads(), len(me.children(recursive=True)))
    assert after == before


@pytest.mark.slow
def test_a_500_mb_result():
    res = pm.parmap(helpers.big_result, [500], workers=1)
    assert len(res[0]) == 500 * 2**20


@pytest.mark.slow
def test_ten_thousand_small_calls_do_not_grow_memory():
    me = psutil.Process()
    for _ in range(200):
        pm.parmap(helpers.square, range(2), workers=2)
    rss = me.memory_info().rss
    fds = me.num_fds()
    for _ in range(10_000):
        pm.parmap(helpers.square, range(2), workers=2)
    assert me.num_fds() <= fds
    assert me.memory_info().rss - rss < 20 * 2**20
