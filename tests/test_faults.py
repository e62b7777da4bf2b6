"""Faults with real processes: outside kills, timeouts, retries, input errors.

The crash table (every phase x every way a process can misbehave) is in
tests/crash_table.py; tests/test_engines.py runs it on every engine.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import helpers
import psutil
import pytest
from conftest import wait_for
from helpers import BadToUnpickle

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_task_error_carries_remote_traceback_and_partial_results():
    with pytest.raises(pm.TaskError) as info:
        pm.parmap(helpers.fail_on, range(50), workers=2, chunksize=1)
    err = info.value
    cause = err.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "bad item 3"
    remote = cause.__cause__
    assert isinstance(remote, pm.errors.RemoteTraceback)
    assert 'raise ValueError(f"bad item {x}")' in remote.tb  # the source line, from the worker
    assert "fail_on" in remote.tb
    assert "worker.py" not in remote.tb  # the worker's own frames are dropped
    assert err.failure.index == 3 and "bad item 3" in err.failure.traceback
    assert err.results[:3] == [0, 1, 2]
    assert len(err.results) == 50
    cancelled = [f for f in err.results.failures if f.kind == "cancelled"]
    assert cancelled, "items not run are marked cancelled"
    assert all(isinstance(v, (int, pm.Failure)) for v in err.results)


def test_unpicklable_exception_and_exception_needing_arguments():
    func = __import__("conftest").notebook_function(
        """
        import threading
        class Unpicklable(Exception):
            def __init__(self):
                super().__init__("has a lock")
                self.lock = threading.Lock()
        class NeedsArgs(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}-{b}")
        def bad(x):
            if x == 1:
                raise Unpicklable()
            if x == 2:
                raise NeedsArgs(1, 2)
            return x
        """,
        "bad",
    )
    res = pm.parmap(func, range(4), errors="collect", workers=2)
    assert res[0] == 0 and res[3] == 3
    for index, text in ((1, "has a lock"), (2, "1-2")):
        exc = res[index].exception
        assert isinstance(exc, Exception)
        assert text in str(exc)
        if isinstance(exc, pm.errors.RemoteException):
            assert exc.type_name.endswith(("Unpicklable", "NeedsArgs"))


def test_unpicklable_item_names_its_index():
    items = [1, 2, threading.Lock(), 4]
    with pytest.raises(pm.SerializationError, match=r"cannot pickle item 2 \(<unlocked"):
        pm.parmap(helpers.square if False else helpers.pid_of, items, workers=2)
    res = pm.parmap(helpers.pid_of, items, workers=2, errors="collect")
    assert res[2].kind == "error" and "lock" in str(res[2].exception)
    assert isinstance(res[0], int) and isinstance(res[3], int)


def test_sigkill_from_outside_fails_only_that_item(tmp_path):
    pid_file = tmp_path / "victim.pid"
    items = [(i, "", 0.05) for i in range(6)] + [(6, str(pid_file), 30)] + [(7, "", 0.05)]
    killed = []

    def killer():
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    res = pm.parmap(helpers.write_pid_and_sleep, items, workers=2, errors="collect", chunksize=1)
    thread.join(10)
    assert killed
    failure = res[6]
    assert failure.kind == "crashed" and failure.worker == killed[0]
    assert isinstance(failure.exception, pm.WorkerCrashed)
    assert failure.exception.signal_name == "SIGKILL"
    assert "likely out of memory" in str(failure.exception)
    assert [res[i] for i in (0, 1, 2, 3, 4, 5, 7)] == [0, 1, 2, 3, 4, 5, 7]
    assert not psutil.pid_exists(killed[0])


def test_a_replacement_worker_finishes_the_run():
    items = list(range(10))
    items[2] = ("run", "_exit")
    res = pm.parmap(helpers.act, items, workers=1, chunksize=1, errors="collect")
    assert res.stats.restarts == 1  # the only worker died: a new one took over
    assert res[2].kind == "crashed"
    assert [res[i] for i in range(10) if i != 2] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert len(set(res.worker_of[i] for i in (0, 9))) == 2


@pytest.mark.parametrize("kind", ["_exit", "raise"])
def test_failure_deep_in_a_large_chunk_of_tiny_items_is_pinned_to_its_item(kind):
    items = list(range(20_000))
    items[15_000] = ("run", kind)  # by then chunks hold thousands of items, timed in blocks
    res = pm.parmap(helpers.act, items, workers=2, errors="collect")
    assert res.stats.chunks < 500
    assert [f.index for f in res.failures] == [15_000]
    assert res.failures[0].kind == ("crashed" if kind == "_exit" else "error")
    assert res.values(default=-1)[:15_000] == list(range(15_000))
    assert res.values(default=-1)[15_001:] == list(range(15_001, 20_000))
    ran = [d for i, d in enumerate(res.durations) if i != 15_000]
    assert all(d is not None and d >= 0 for d in ran)


def test_retries_rerun_a_crashed_item(tmp_path):
    marker = tmp_path / "crashed"
    items = [(i, str(marker) if i == 2 else str(tmp_path / f"ok{i}")) for i in range(4)]
    for i in (0, 1, 3):
        (tmp_path / f"ok{i}").write_text("x")
    res = pm.parmap(helpers.crash_once, items, workers=2, retries=1, chunksize=1)
    assert res == [0, 1, 2, 3]
    assert res.stats.retries == 1 and res.stats.restarts >= 1
    marker.unlink()
    res = pm.parmap(helpers.crash_once, items, workers=2, retries=0, errors="collect")
    assert res[2].kind == "crashed" and res[2].attempts == 1
    assert "exited with code 7" in str(res[2].exception)


def test_retries_rerun_an_item_that_raised():
    res = pm.parmap(helpers.fail_on, range(5), workers=2, retries=2, errors="collect")
    assert res[3].kind == "error" and res[3].attempts == 3
    assert res.stats.retries == 2


def test_timeout_kills_only_the_stuck_worker():
    pm.parmap(helpers.square, range(2), workers=2)  # warm both workers
    items = [(i, 0.01) for i in range(10)]
    items[4] = (4, 60)
    started = time.monotonic()
    res = pm.parmap(helpers.sleepy, items, workers=2, timeout=1.0, errors="collect", chunksize=1)
    elapsed = time.monotonic() - started
    assert elapsed < 30  # not the 60 s the stuck item wanted: its worker was killed
    failure = res[4]
    assert failure.kind == "timeout" and isinstance(failure.exception, pm.TaskTimeout)
    assert "ran longer than the timeout of 1 s" in str(failure.exception)
    assert (
        not psutil.pid_exists(failure.worker) or psutil.Process(failure.worker).status() == "zombie"
    )
    ok = [res[i] for i in range(10) if i != 4]
    assert ok == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    survivors = {res.worker_of[i] for i in range(10) if i != 4} - {failure.worker}
    assert survivors, "the other worker kept running"
    assert all(psutil.pid_exists(pid) for pid in survivors)


def test_timeout_with_errors_raise():
    with pytest.raises(pm.TaskTimeout) as info:
        pm.parmap(helpers.sleepy, [(0, 0), (1, 30)], workers=2, timeout=0.5, chunksize=1)
    assert info.value.failure.index == 1
    assert info.value.results[0] == 0


def test_timeout_inside_a_large_chunk_requeues_the_rest():
    items = [(i, 0.001) for i in range(40)]
    items[10] = (10, 30)
    res = pm.parmap(helpers.sleepy, items, workers=1, chunksize=40, timeout=0.5, errors="collect")
    assert res[10].kind == "timeout"
    assert [res[i] for i in range(40) if i != 10] == [i for i in range(40) if i != 10]


def test_input_generator_raising_halfway_keeps_earlier_results():
    def numbers():
        yield from range(5)
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke") as info:
        pm.parmap(helpers.square, numbers(), workers=2)
    assert info.value.results == [0, 1, 4, 9, 16]
    assert any("item 5" in note for note in info.value.__notes__)
    # and the pool stays usable
    assert pm.parmap(helpers.square, [3]) == [9]


def test_unpinned_deaths_end_in_a_clear_failure():
    """A function whose loading kills every worker dies before any item starts, so no
    death can be pinned on an item; each still counts against the items the worker held,
    and the run ends with a clear failure instead of respawning workers forever."""
    import functools

    killer = functools.partial(helpers.add, BadToUnpickle("_exit"))  # dies as it loads
    res = pm.parmap(killer, range(3), workers=2, errors="collect", progress=False)
    assert [f.kind for f in res] == ["crashed"] * 3
    assert all("died before they could say which item" in str(f.exception) for f in res)
    assert res.stats.restarts <= 3 * 3  # at most MAX_UNPINNED_DEATHS per item
    with pytest.raises(pm.WorkerCrashed, match="held by 3 workers that died"):
        pm.parmap(killer, range(3), workers=2, progress=False)
