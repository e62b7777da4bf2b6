"""Conformance of the drop-in classes with the documented standard-library behaviour,
plus what the standard library gets wrong (hangs on crashes, notebook functions)."""

from __future__ import annotations

import concurrent.futures
import gc
import multiprocessing
import multiprocessing.pool
import threading
import time
import weakref

import helpers
import psutil
import pytest
from conftest import children, notebook_function, wait_for, workers

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture
def pool():
    with pm.Pool(2) as p:
        yield p


# -- multiprocessing.pool.Pool -------------------------------------------------------------------
def test_map_apply_starmap_imap(pool):
    assert pool.map(helpers.square, range(10)) == [x * x for x in range(10)]
    assert pool.map(helpers.square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert pool.map(helpers.square, []) == []
    assert pool.apply(helpers.add, (1, 2)) == 3
    assert pool.apply(helpers.add, (), {"a": 1, "b": 5}) == 6
    assert pool.starmap(helpers.add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(pool.imap(helpers.square, range(6))) == [0, 1, 4, 9, 16, 25]
    assert list(pool.imap(helpers.square, iter(range(6)), chunksize=2)) == [0, 1, 4, 9, 16, 25]
    assert sorted(pool.imap_unordered(helpers.square, range(6))) == [0, 1, 4, 9, 16, 25]


def test_async_results(pool):
    got, errors = [], []
    result = pool.map_async(helpers.square, range(4), callback=got.append)
    assert result.get(timeout=30) == [0, 1, 4, 9]
    result.wait()
    assert result.ready() and result.successful() and got == [[0, 1, 4, 9]]
    failing = pool.apply_async(helpers.fail_on, (3,), error_callback=errors.append)
    with pytest.raises(ValueError, match="bad item 3"):
        failing.get(timeout=30)
    assert not failing.successful() and isinstance(errors[0], ValueError)
    assert pool.starmap_async(helpers.add, [(1, 1)]).get(30) == [2]
    slow = pool.apply_async(helpers.sleepy, ((1, 1.0),))
    with pytest.raises(ValueError, match="not ready"):
        slow.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.05)
    assert slow.get(timeout=30) == 1


def test_apply_async_calls_run_in_parallel(pool, tmp_path):
    calls = [
        pool.apply_async(helpers.rendezvous, ((str(tmp_path), str(i), 2, 20),)) for i in range(2)
    ]
    assert [r.get(timeout=30) for r in calls] == [True, True]  # both ran at the same time


def test_imap_next_timeout(pool):
    it = pool.imap(helpers.sleepy, [(0, 1.0), (1, 0.0)])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(timeout=30) == 0
    assert next(it) == 1
    with pytest.raises(StopIteration):
        next(it)


def test_task_exception_has_remote_traceback_cause(pool):
    with pytest.raises(ValueError, match="bad item 3") as info:
        pool.map(helpers.fail_on, range(6))
    cause = info.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert 'raise ValueError(f"bad item {x}")' in str(cause)
    with pytest.raises(KeyError):
        pool.apply(helpers.raise_key_error, (1,))
    it = pool.imap(helpers.fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == [4, 5]  # as multiprocessing: the iterator goes on after a failure


def test_processes_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError, match="Number of processes must be at least 1"):
            pm.Pool(bad)


def test_closed_and_terminated_pools_refuse_work():
    pool = pm.Pool(1)
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(helpers.square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(helpers.square, (1,))
    pool.join()
    pool = pm.Pool(1)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    pool.terminate()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.imap(helpers.square, [1])
    pool.join()


def test_close_then_join_finishes_queued_work():
    pool = pm.Pool(2)
    result = pool.map_async(helpers.sleepy, [(i, 0.1) for i in range(6)])
    pool.close()
    pool.join()
    assert result.ready() and result.get(0) == list(range(6))


def test_input_iterable_error_is_reraised_and_the_pool_stays_usable(pool):
    def numbers():
        yield 1
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        pool.map(helpers.square, numbers())
    it = pool.imap(helpers.square, numbers())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="input broke"):
        next(it)
    assert pool.map(helpers.square, [3]) == [9]


def test_unpicklable_argument_raises_its_own_error_never_a_hang(pool):
    lock = threading.Lock()
    started = time.monotonic()
    with pytest.raises(TypeError, match="cannot pickle"):
        pool.map(helpers.pid_of, [1, lock])
    with pytest.raises(TypeError, match="cannot pickle"):  # on the result, as the stdlib
        pool.apply_async(helpers.pid_of, (lock,)).get(30)
    assert time.monotonic() - started < 10  # never a hang
    assert pool.map(helpers.square, [2]) == [4]


def test_results_and_arguments_are_not_kept_alive(pool):
    arguments = [helpers.Payload(i) for i in range(3)]
    refs = [weakref.ref(a) for a in arguments]
    result = pool.map_async(helpers.payload_value, arguments)
    assert result.get(30) == [0, 1, 2]
    del arguments, result
    gc.collect()
    wait_for(lambda: all(r() is None for r in refs), timeout=5, what="arguments to be freed")


def test_initializer_runs_once_per_worker():
    with pm.Pool(2, initializer=helpers.record_init, initargs=("x",)) as pool:
        seen = dict(pool.map(helpers.init_count, range(20), chunksize=1))
    assert set(seen.values()) == {1}  # every worker ran it exactly once
    with pytest.raises(TypeError, match="initializer must be a callable"):
        pm.Pool(1, initializer=5)


def test_maxtasksperchild_recycles_workers():
    with pm.Pool(1, maxtasksperchild=2) as pool:
        pids = pool.map(helpers.pid_of, range(6), chunksize=1)
    assert len(set(pids)) == 3


def test_notebook_functions_lambdas_and_closures(pool):
    func = notebook_function("factor = 7\ndef f(x):\n    return x * factor\n", "f")
    offset = 3
    assert pool.map(func, range(3)) == [0, 7, 14]
    assert pool.map(lambda x: x + offset, range(3)) == [3, 4, 5]
    assert pool.apply(lambda: "closure") == "closure"


def test_worker_print_reaches_our_stdout(pool, capfd):
    pool.map(helpers.shout, range(2))
    out = capfd.readouterr().out
    assert "hello 0" in out and "hello 1" in out


@pytest.mark.parametrize("entry", ["map", "apply_async", "imap", "submit"])
def test_a_killed_worker_fails_its_task_instead_of_hanging(entry):
    crash = ("run", "_exit")
    with pm.Pool(2) as pool, pm.ProcessPoolExecutor(2) as executor:
        with pytest.raises(pm.WorkerCrashed, match="exited with code 3"):
            if entry == "map":
                pool.map(helpers.act, [0, crash, 2], chunksize=1)
            elif entry == "apply_async":
                pool.apply_async(helpers.act, (crash,)).get(timeout=30)
            elif entry == "imap":
                list(pool.imap(helpers.act, [0, crash, 2]))
            else:
                executor.submit(helpers.act, crash).result(timeout=30)
        # and both keep working
        assert pool.map(helpers.square, [3]) == [9]
        assert executor.submit(helpers.square, 4).result(30) == 16


def test_terminate_with_thousands_of_queued_long_tasks_returns_at_once():
    pool = pm.Pool(2)
    result = pool.map_async(helpers.sleepy, [(i, 10) for i in range(5000)], chunksize=1)
    wait_for(lambda: len(workers()) == 2, timeout=30)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 5
    assert result.ready()
    with pytest.raises(pm.Cancelled):
        result.get(0)
    wait_for(lambda: not children(), timeout=10)


def test_context_manager_terminates():
    with pm.Pool(2) as pool:
        pool.map(helpers.square, [1])
        pids = {p.pid for p in children()}  # the template and its forks, or the workers
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=10)


def test_cpu_count_and_module_level_names():
    assert pm.cpu_count() >= 1
    assert pm.TimeoutError is multiprocessing.TimeoutError
    pm.freeze_support()
    assert pm.current_process().name == "MainProcess"


# -- multiprocessing.Process ---------------------------------------------------------------------
def test_process_runs_a_lambda_and_reports_exit_codes(capfd):
    p = pm.Process(target=lambda a, b: print("sum", a + b), args=(2, 3), name="adder")
    assert p.exitcode is None and not p.is_alive()
    p.start()
    assert p.pid is not None
    p.join(30)
    assert p.exitcode == 0 and not p.is_alive()
    assert "sum 5" in capfd.readouterr().out
    p.close()
    with pytest.raises(ValueError):
        p.start()

    failing = pm.Process(target=helpers.fail_on, args=(3,))
    failing.start()
    failing.join(30)
    assert failing.exitcode == 1
    err = capfd.readouterr().err
    assert "Process Process-" in err and "ValueError: bad item 3" in err

    exiting = pm.Process(target=helpers.die, args=("exit",))
    exiting.start()
    exiting.join(30)
    assert exiting.exitcode == 3


def test_process_start_twice_terminate_kill_join_timeout():
    p = pm.Process(target=helpers.sleepy, args=((1, 30),))
    p.start()
    with pytest.raises(AssertionError):
        p.start()
    p.join(timeout=0.05)
    assert p.is_alive()
    with pytest.raises(ValueError, match="still running"):
        p.close()
    p.terminate()
    p.join(10)
    assert p.exitcode == -15
    q = pm.Process(target=helpers.sleepy, args=((1, 30),))
    q.start()
    q.kill()
    q.join(10)
    assert q.exitcode == -9


def test_process_subclass_with_run():
    cls = notebook_function(
        "import ipyparmap\n"
        "class Greeter(ipyparmap.Process):\n"
        "    def run(self):\n"
        "        print('hello from', self.name)\n",
        "Greeter",
    )
    p = cls(name="greeter")
    p.start()
    p.join(30)
    assert p.exitcode == 0


# -- concurrent.futures.ProcessPoolExecutor -----------------------------------------------------------
def test_executor_submit_map_shutdown():
    executor = pm.ProcessPoolExecutor(2)
    assert isinstance(executor, concurrent.futures.Executor)
    assert executor.submit(helpers.add, 1, b=2).result(30) == 3
    assert list(executor.map(helpers.add, [1, 2, 3], [10, 20, 30], chunksize=2)) == [11, 22, 33]
    failing = executor.submit(helpers.fail_on, 3)
    with pytest.raises(ValueError):
        failing.result(30)
    assert isinstance(failing.exception(), ValueError)
    it = executor.map(helpers.sleepy, [(0, 2.0)], timeout=0.1)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(it)
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(helpers.square, 1)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        pm.ProcessPoolExecutor(0)


def test_executor_cancel_futures_on_shutdown():
    executor = pm.ProcessPoolExecutor(1)
    running = executor.submit(helpers.sleepy, (1, 0.5))
    queued = [executor.submit(helpers.sleepy, (i, 0.5)) for i in range(5)]
    wait_for(running.running, timeout=30)
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == 1
    assert all(f.cancelled() for f in queued[1:])


def test_executor_crash_fails_only_its_own_future():
    with pm.ProcessPoolExecutor(2) as executor:
        good = [executor.submit(helpers.sleepy, (i, 0.2)) for i in range(4)]
        bad = executor.submit(helpers.act, ("run", "_exit"))
        assert isinstance(bad.exception(30), pm.WorkerCrashed)
        assert [f.result(30) for f in good] == [0, 1, 2, 3]


def test_a_function_that_cannot_load_fails_its_job_only(pool):
    bad = notebook_function(
        "def uses(x):\n    return (x, guard)\n", "uses", guard=helpers.BadToUnpickle("raise")
    )
    with pytest.raises(pm.SerializationError, match="could not be unpickled in a worker"):
        pool.map(bad, range(4))
    with pytest.raises(pm.SerializationError):
        pool.apply(bad, (1,))
    assert pool.map(helpers.square, range(4)) == [0, 1, 4, 9]  # the pool serves on
