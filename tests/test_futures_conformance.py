"""The ProcessPoolExecutor drop-in against the standard library's documented behaviour,
and Pool.imap's chunksize (issue 16). Each test names the CPython test it mirrors
(Lib/test/test_concurrent_futures.py in 3.11, Lib/test/_test_multiprocessing.py)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool

import helpers
import pytest
from conftest import notebook_function

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- errors are the standard library's ----------------------------------------------------
def test_a_crash_is_a_broken_process_pool_that_fails_only_its_future():
    # mirrors ExecutorDeadlockTest.test_crash ("crash during func execution on worker":
    # BrokenProcessPool); unlike the stdlib, the other futures still complete
    with pm.ProcessPoolExecutor(2) as executor:
        good = [executor.submit(helpers.sleepy, (i, 0.2)) for i in range(3)]
        bad = executor.submit(helpers.act, ("run", "_exit"))
        error = bad.exception(30)
        assert isinstance(error, BrokenProcessPool)
        assert isinstance(error, pm.WorkerCrashed)
        assert error.exitcode == 3 and "exited with code 3" in str(error)
        assert [f.result(30) for f in good] == [0, 1, 2]
        assert executor.submit(helpers.square, 3).result(30) == 9  # not broken
        again = pickle.loads(pickle.dumps(error))
        assert isinstance(again, BrokenProcessPool) and isinstance(again, pm.WorkerCrashed)
        with pytest.raises(BrokenProcessPool):  # in map() too
            list(executor.map(helpers.act, [1, ("run", "_exit")], timeout=30))


ERROR_AT_PICKLE = """
import pickle

class ErrorAtPickle:
    def __reduce__(self):
        raise pickle.PicklingError("error at pickle")

def return_instance(*args):
    return ErrorAtPickle()
"""


def test_an_error_pickling_a_result_is_that_error():
    # mirrors ExecutorDeadlockTest.test_crash ("error during result pickle on worker":
    # PicklingError, and "exit during result pickle on worker": SystemExit)
    return_instance = notebook_function(ERROR_AT_PICKLE, "return_instance")
    with pm.ProcessPoolExecutor(1) as executor:
        with pytest.raises(pickle.PicklingError, match="error at pickle"):
            executor.submit(return_instance).result(30)
        with pytest.raises(SystemExit) as info:
            executor.submit(helpers.act, ("result-pickle", "exit")).result(30)
        assert info.value.code == 3
        with pytest.raises(ValueError, match="boom from die"):  # any other error: itself
            executor.submit(helpers.act, ("result-pickle", "raise")).result(30)
        with pytest.raises(pickle.PicklingError, match="error at pickle"):
            list(executor.map(return_instance, [1], timeout=30))
        assert executor.submit(helpers.square, 4).result(30) == 16


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_an_error_unpickling_a_result_is_a_broken_process_pool(how):
    # mirrors ExecutorDeadlockTest.test_crash ("error/exit during result unpickle in
    # result_handler": BrokenProcessPool); here only that future fails
    with pm.ProcessPoolExecutor(1) as executor:
        with pytest.raises(BrokenProcessPool, match="could not be unpickled"):
            executor.submit(helpers.act, ("result-unpickle", how)).result(30)
        assert executor.submit(helpers.square, 4).result(30) == 16


@pytest.mark.parametrize("how", ["raise", "exit", "_exit"])
def test_a_task_that_cannot_be_loaded_in_the_worker_is_a_broken_process_pool(how):
    # mirrors ExecutorDeadlockTest.test_crash ("error/exit/crash at task unpickle":
    # BrokenProcessPool); here only that future fails, and ipyparmap's error stays
    with pm.ProcessPoolExecutor(1) as executor:
        error = executor.submit(helpers.act, helpers.BadToUnpickle(how)).exception(30)
        assert isinstance(error, BrokenProcessPool)
        assert isinstance(error, pm.WorkerCrashed if how == "_exit" else pm.SerializationError)
        bad = notebook_function(
            "def uses(x):\n    return (x, guard)\n", "uses", guard=helpers.BadToUnpickle(how)
        )
        with pytest.raises(BrokenProcessPool):  # the function itself cannot load
            executor.submit(bad, 1).result(30)
        assert executor.submit(helpers.square, 4).result(30) == 16


def test_exit_in_the_function_is_that_system_exit():
    # mirrors ExecutorDeadlockTest.test_crash ("exit during func execution on worker")
    with pm.ProcessPoolExecutor(1) as executor:
        with pytest.raises(SystemExit):
            executor.submit(helpers.die, "exit").result(30)
        with pytest.raises(BrokenProcessPool):  # "crash during result pickle on worker"
            executor.submit(helpers.act, ("result-pickle", "_exit")).result(30)


def test_submit_after_shutdown_raises_runtime_error():
    # mirrors ExecutorShutdownTest.test_run_after_shutdown
    executor = pm.ProcessPoolExecutor(1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(pow, [2], [5])


def _run_script(source: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_submit_after_interpreter_shutdown_raises_runtime_error():
    # mirrors ExecutorShutdownTest.test_submit_after_interpreter_shutdown
    done = _run_script("""
        import atexit
        import ipyparmap as pm

        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        atexit.register(run_last)
        t = pm.ProcessPoolExecutor(1)
        t.submit(id, 42).result()
    """)
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in done.stderr
    assert done.stdout.strip() == "runtime-error"


def test_work_never_waited_on_runs_at_interpreter_exit():
    # mirrors ExecutorShutdownTest.test_interpreter_shutdown ("apple" printed at exit)
    done = _run_script("""
        import ipyparmap as pm
        import helpers

        t = pm.ProcessPoolExecutor(2)
        t.submit(helpers.sleep_then, 0, 1.0)
        t.submit(print, "apple")
        u = pm.ProcessPoolExecutor(1)
        u.submit(helpers.sleep_then, 0, 0.5)
        u.submit(print, "banana")
        u.shutdown(wait=False)  # the stdlib still runs its pending work
    """)
    assert done.returncode == 0 and not done.stderr, done.stderr  # as the stdlib's test
    assert sorted(done.stdout.split()) == ["apple", "banana"]


def test_a_failing_initializer_breaks_the_executor(caplog):
    # mirrors FailingInitializerMixin.test_initializer: pending futures and every later
    # submit raise BrokenExecutor (BrokenProcessPool); the error is printed by the worker
    executor = pm.ProcessPoolExecutor(2, initializer=helpers.fail_on, initargs=(3,))
    try:
        futures = [executor.submit(helpers.square, i) for i in range(4)]
        for future in futures:
            with pytest.raises(concurrent.futures.BrokenExecutor):
                future.result(30)
        assert executor._broken
        with pytest.raises(BrokenProcessPool):
            executor.submit(helpers.square, 1)
        with pytest.raises(BrokenProcessPool):
            executor.map(helpers.square, [1])
    finally:
        executor.shutdown(wait=True)
    # logged on the worker's "concurrent.futures" logger, as the stdlib logs it
    # (ipyparmap forwards worker log records to the same logger here)
    logged = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert logged and logged[0].getMessage() == "Exception in initializer:"
    assert "ValueError: bad item 3" in caplog.text
    with pm.ProcessPoolExecutor(1, initializer=helpers.fail_on, initargs=(3,)) as executor:
        with pytest.raises(BrokenProcessPool):  # map() breaks it as well
            list(executor.map(helpers.square, range(3), timeout=30))
        assert executor._broken
        with pytest.raises(BrokenProcessPool):
            executor.submit(helpers.square, 1)


def test_a_working_initializer_still_runs_once_per_worker():
    # mirrors InitializerMixin.test_initializer
    with pm.ProcessPoolExecutor(1, initializer=helpers.record_init, initargs=("x",)) as ex:
        assert [ex.submit(helpers.init_count, i).result(30)[1] for i in range(3)] == [1, 1, 1]


# -- mp_context and max_tasks_per_child -----------------------------------------------------
def test_mp_context_spawn_is_accepted_others_are_refused():
    # the stdlib honours every context (ProcessPoolSpawnMixin, ...); ipyparmap's workers
    # are always spawned, so a spawn context works and fork/forkserver are refused
    with pm.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert ex.submit(helpers.square, 5).result(30) == 25
    for method in ("fork", "forkserver"):
        with pytest.raises(ValueError, match=f"start method '{method}' is not supported"):
            pm.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))
    with pytest.raises(TypeError, match="mp_context"):
        pm.ProcessPoolExecutor(1, mp_context="spawn")


def test_max_tasks_per_child():
    # mirrors ProcessPoolExecutorTest.test_max_tasks_per_child (a fresh worker per task)
    # and test_max_tasks_per_child_defaults-style argument checks
    with pm.ProcessPoolExecutor(1, max_tasks_per_child=2) as executor:
        pids = [executor.submit(helpers.pid_of, i).result(30) for i in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        pm.ProcessPoolExecutor(1, max_tasks_per_child=1.5)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        pm.ProcessPoolExecutor(1, max_tasks_per_child=0)


# -- Pool.imap chunksize ---------------------------------------------------------------------
def _raising_input(n: int, bad: int):
    for i in range(n):
        if i == bad:
            raise SyntaxError("input broke")
        yield i


@pytest.mark.parametrize("chunksize", [1, 2, 3, 5])
def test_imap_raises_at_the_start_of_the_raising_chunk(chunksize):
    # mirrors _TestPool.test_imap_handle_iterable_exception: with chunksize c and the
    # input raising at item 10, exactly (10 // c) * c results come before the error
    with pm.Pool(2) as pool:
        it = pool.imap(helpers.square, _raising_input(20, 10), chunksize)
        expected = (10 // chunksize) * chunksize
        for i in range(expected):
            assert it.next(30) == i * i
        with pytest.raises(SyntaxError, match="input broke"):
            it.next(30)


def test_imap_unordered_raising_input_stops_at_a_chunk_start():
    # mirrors _TestPool.test_imap_unordered_handle_iterable_exception (the error may
    # come at any time; no item of the raising chunk is ever run)
    with pm.Pool(2) as pool:
        it = pool.imap_unordered(helpers.square, _raising_input(20, 10), 3)
        seen = []
        with pytest.raises(SyntaxError):
            for _ in range(20):
                seen.append(it.next(30))
        assert set(seen) <= {i * i for i in range(9)}


def test_imap_honours_chunksize():
    # the stdlib sends chunks of exactly `chunksize` items: the same worker runs them
    with pm.Pool(2) as pool:
        pids = list(pool.imap(helpers.pid_of, range(12), chunksize=4))
        for start in range(0, 12, 4):
            assert len(set(pids[start : start + 4])) == 1
        pids = list(pool.imap_unordered(helpers.pid_of, range(8), chunksize=8))
        assert len(set(pids)) == 1
