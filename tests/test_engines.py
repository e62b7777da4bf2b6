"""Every engine against the same faults: the crash table, interrupts and cancellation.

Engines: the local pool (``pm.parmap``), a thread executor, ``backend="threads"`` (our
own threads), a process executor, Dask
(``backend=client``), the drop-ins' job server (``pm.Pool``) and the fake engine
(tests/fake_engine.py). Where an engine's documented behaviour differs from the local
pool's, `expected` says how; nothing else is relaxed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import faulthandler
import multiprocessing.pool
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import helpers
import psutil
import pytest
from conftest import wait_for
from crash_table import CRASH_TABLE
from fake_engine import Fault, fake_parmap
from helpers import BadToUnpickle

import ipyparmap as pm

ENGINES = ("local", "thread", "threads", "process", "dask", "jobs", "fake")
#: Kinds that end the process they happen in.
LETHAL = {"_exit": 3, "sigkill": -9, "segfault": -11}  # kind -> exit code
#: Phases that happen where the item runs (a worker; the caller's own process for threads).
WORKER_PHASES = ("worker-unpickle", "run", "result-pickle")
#: Dask: one kind per phase, and one lethal kind only. A task that kills its worker kills
#: four (Dask retries it once, ipyparmap runs it again alone), and a LocalCluster whose
#: workers are killed over and over sometimes stops restarting them (distributed
#: 2026.8: its nannies close, the cluster is left with no worker and tasks wait forever).
DASK_ROWS = {
    ("call-pickle", "raise"),
    ("worker-unpickle", "exit"),
    ("run", "segfault"),
    ("result-pickle", "raise"),
    ("result-unpickle", "exit"),
}


# -- engines ---------------------------------------------------------------------------------
class Engine:
    """One engine, driven the way its users drive it."""

    def __init__(self, name: str, backend=None):
        self.name = name
        self.backend = backend  # an executor, a Dask client or a pm.Pool

    def parmap(self, func, items, **options):
        if self.name == "fake":
            return fake_parmap(func, items, scripted_deaths(items), workers=2, **options)
        return pm.parmap(func, items, workers=2, backend=self.backend, **options)

    def parmap_async(self, func, items, **options):
        return pm.parmap_async(func, items, workers=2, backend=self.backend, **options)


@pytest.fixture
def engine(request, no_leaks):
    name = request.param
    if name == "thread":
        with concurrent.futures.ThreadPoolExecutor(2) as executor:
            yield Engine(name, executor)
    elif name == "process":
        # (forked from pytest, its processes would dump a segfault's stack on our terminal)
        executor = concurrent.futures.ProcessPoolExecutor(2, initializer=faulthandler.disable)
        yield Engine(name, executor)
        executor.shutdown(wait=True, cancel_futures=True)
    elif name == "dask":
        yield Engine(name, request.getfixturevalue("client"))
    elif name == "jobs":
        with pm.Pool(2) as pool:
            yield Engine(name, pool)
    elif name == "threads":
        yield Engine(name, "threads")
    else:
        yield Engine(name)


def scripted_deaths(items) -> list[Fault]:
    """The fake engine's stand-ins for crash-table items that would end this process:
    the worker dies in the phase where a real one would (never run for real)."""
    faults = []
    for item in items:
        if isinstance(item, BadToUnpickle) and item.how in LETHAL:
            faults.append(Fault("loading", item, times=None, exitcode=LETHAL[item.how]))
        elif isinstance(item, tuple) and item[1] in LETHAL:
            phase = {"run": "running", "result-pickle": "sending"}[item[0]]
            faults.append(Fault(phase, item, times=None, exitcode=LETHAL[item[1]]))
    return faults


# -- what each engine reports ----------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    kind: str  # the bad item's Failure.kind
    exc_type: type  # its exception (what a drop-in raises)
    message: str  # in that exception's text
    pinned: bool = True  # only the bad item fails (else: every unfinished item does)
    names_worker: bool = True  # a crashed Failure has the worker's PID


def expected(engine: str, phase: str, kind: str, row: Expected) -> Expected:
    """The local pool's row, changed where ``engine`` documents another behaviour."""
    if kind in LETHAL and phase in WORKER_PHASES:
        if engine == "process":
            # The standard library's pool breaks as a whole when a process dies
            # (docs/user-guide.md, engine/executor.py): every item in flight fails as
            # crashed, nobody can tell which task killed it, and nothing more is sent
            # (those items are cancelled; the docs say "every unfinished item fails as
            # crashed").
            return Expected("crashed", pm.WorkerCrashed, "BrokenProcessPool", False, False)
        if engine == "dask":
            # Dask gives up on the task (KilledWorker); each item runs again alone, so
            # only the bad one fails. Which worker ran it is Dask's secret.
            return Expected("crashed", pm.WorkerCrashed, "KilledWorker", names_worker=False)
    if engine == "jobs" and phase == "call-pickle":
        # A drop-in raises an argument's own pickling error, as multiprocessing does.
        if kind == "raise":
            return replace(row, exc_type=ValueError, message="boom from die()")
        return replace(row, exc_type=SystemExit, message="3")
    return row


def table_params(engines=ENGINES, chunksizes=(1, None)):
    params = []
    for engine in engines:
        for phase, kind, bad, failure_kind, exc_type, message in CRASH_TABLE:
            if engine == "dask" and (phase, kind) not in DASK_ROWS:
                continue
            marks = ()
            if engine in ("thread", "threads") and kind in LETHAL and phase in WORKER_PHASES:
                marks = pytest.mark.skip(
                    reason=f"{kind} would end the test process: threads run tasks in the "
                    "caller's own process"
                )
            elif engine == "threads" and phase != "run":
                marks = pytest.mark.skip(
                    reason=f"no {phase} phase: backend='threads' pickles nothing (items, "
                    "function and results stay as they are)"
                )
            exp = expected(engine, phase, kind, Expected(failure_kind, exc_type, message))
            for chunksize in chunksizes[-1:] if engine == "dask" else chunksizes:
                size = f"cs{chunksize}" if chunksize else "auto"
                case = (engine, phase, kind, bad, exp, chunksize)
                params.append(
                    pytest.param(*case, id=f"{engine}-{phase}-{kind}-{size}", marks=marks)
                )
    return params


def assert_failure_is(failure, index: int, exp: Expected) -> None:
    assert isinstance(failure, pm.Failure), failure
    assert failure.index == index and failure.kind == exp.kind, failure
    assert isinstance(failure.exception, exp.exc_type), repr(failure.exception)
    assert exp.message in str(failure.exception), str(failure.exception)
    if failure.kind == "crashed":
        assert (failure.worker is not None) == exp.names_worker, failure.worker


def assert_broken_pool(res, exp: Expected) -> None:
    """A process executor broke: every item is its value, crashed with the pool, or
    cancelled; the cancelled ones were never sent (the last ones: input goes in order)."""
    cancelled = []
    for index, value in enumerate(res):
        if not isinstance(value, pm.Failure):
            assert value == index
        elif value.kind == "cancelled":
            cancelled.append(index)
        else:
            assert_failure_is(value, index, exp)
    assert cancelled == list(range(len(res) - len(cancelled), len(res))), res


# -- the crash table ---------------------------------------------------------------------------
ARGS = "engine, phase, kind, bad, exp, chunksize"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(ARGS, table_params(), indirect=["engine"])
def test_crash_table_collect(engine, phase, kind, bad, exp, chunksize):
    items = [0, 1, bad, 3, 4, 5, 6, 7]
    others = [0, 1, 3, 4, 5, 6, 7]
    if engine.name == "jobs":
        pool = engine.backend
        if chunksize == 1:  # one apply_async job per item
            outcomes = []
            for item in items:
                try:
                    outcomes.append(pool.apply_async(helpers.act, (item,)))
                except (Exception, SystemExit) as exc:  # refused at the call
                    outcomes.append(exc)
            outcomes = [
                _outcome(lambda o=o: o.get(30)) if hasattr(o, "get") else o for o in outcomes
            ]
            exp = replace(exp, message=exp.message.replace("item 2", "item 0"))  # its job's item 0
        else:  # one imap job: every item's outcome, in order
            stream = pool.imap(helpers.act, items)
            outcomes = [_outcome(lambda: stream.next(30)) for _ in items]
        assert [outcomes[i] for i in others] == others
        error = outcomes[2]
        assert isinstance(error, exp.exc_type) and exp.message in str(error), repr(error)
        assert pool.map(helpers.square, range(4)) == [0, 1, 4, 9]  # and it serves on
        return
    res = engine.parmap(helpers.act, items, errors="collect", chunksize=chunksize)
    assert_failure_is(res[2], 2, exp)
    if exp.pinned:  # only the bad item fails; every other item has its result
        assert [res[i] for i in others] == others
    else:
        assert_broken_pool(res, exp)
    if engine.name == "process" and not exp.pinned:  # broken for good
        with pytest.raises(ValueError, match=r"the executor is broken.*make a new one"):
            engine.parmap(helpers.square, range(4))
    else:  # the engine still works afterwards
        assert engine.parmap(helpers.square, range(4)) == [0, 1, 4, 9]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(ARGS, table_params(chunksizes=(1,)), indirect=["engine"])
def test_crash_table_raise(engine, phase, kind, bad, exp, chunksize):
    items = [0, 1, bad, 3]
    if engine.name == "jobs":  # a drop-in map fails at its first failure, with what it raised
        pool = engine.backend
        failing = pool.map_async(helpers.act, items, chunksize=1)
        innocent = pool.map_async(helpers.sleepy, [(i, 0.01) for i in range(6)], chunksize=1)
        with pytest.raises(exp.exc_type) as info:
            failing.get(30)
        assert exp.message in str(info.value)
        if phase == "run" and exp.kind == "error":  # the task's own exception
            assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
        assert innocent.get(30) == list(range(6))  # another job's tasks still finish
        return
    with pytest.raises(pm.ParmapError) as info:
        engine.parmap(helpers.act, items, chunksize=chunksize)
    err = info.value
    assert err.failure.kind == exp.kind
    if exp.kind == "crashed":
        assert isinstance(err, pm.WorkerCrashed)
    elif exp.exc_type is pm.SerializationError:
        assert isinstance(err, pm.SerializationError)
    else:
        assert isinstance(err, pm.TaskError)
        assert isinstance(err.__cause__, exp.exc_type)  # the task's own exception
    assert exp.message in str(err) or exp.message in str(err.__cause__)
    # finished results are kept; what had not finished is marked cancelled
    assert isinstance(err.results, pm.Results) and len(err.results) == 4
    if exp.pinned:
        assert err.failure.index == 2 and err.results[2] is err.failure
    else:  # a broken pool: the first failure seen may be any item that had not finished
        assert_failure_is(err.results[2], 2, exp)
        assert err.results[err.failure.index] is err.failure
    for index in (0, 1, 3):
        value = err.results[index]
        if not isinstance(value, pm.Failure):
            assert value == index
        elif value.kind != "cancelled":  # only a broken pool fails innocent items
            assert not exp.pinned
            assert_failure_is(value, index, exp)


def _outcome(get):
    """What ``get()`` returns, or the exception it raises."""
    try:
        return get()
    except (Exception, SystemExit) as exc:
        return exc


# -- an executor that breaks while the run dispatches ------------------------------------------
class BreaksWhileDispatching(concurrent.futures.Executor):
    """Runs tasks at once, in this process, until task ``break_at``: that one's process
    "dies" and breaks the pool, as a ProcessPoolExecutor's does, and the pool refuses
    the next submission before the broken task has been seen to fail (a real pool's
    manager thread marks it broken first, then fails its futures)."""

    _max_workers = 2

    def __init__(self, break_at: int):
        self.break_at = break_at
        self.calls = 0
        self.broken: concurrent.futures.Future | None = None

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        if self.broken is not None:
            self.broken.set_exception(BrokenProcessPool("a process died"))
            raise BrokenProcessPool("a process died")
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.calls == self.break_at:
            self.broken = future  # still running when its process died
        else:
            future.set_result(fn(*args, **kwargs))
        return future


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_an_executor_breaking_while_dispatching_still_fails_the_run(errors):
    executor = BreaksWhileDispatching(break_at=2)
    if errors == "raise":  # the broken task's failure is the run's first: it must raise
        with pytest.raises(pm.WorkerCrashed, match="BrokenProcessPool") as info:
            pm.parmap(helpers.square, range(6), backend=executor, chunksize=1, workers=2)
        res = info.value.results
        assert info.value.failure is res[1]
    else:
        res = pm.parmap(helpers.square, range(6), backend=executor, chunksize=1, errors=errors)
    assert res[0] == 0 and res[1].kind == "crashed"
    assert [f.kind for f in res[2:]] == ["cancelled"] * 4  # never sent: the pool was broken


# -- stopping a run: KeyboardInterrupt and cancel ---------------------------------------------
STOP_ENGINES = ("local", "thread", "threads", "process", "dask")
QUICK = 4  # items 0..3 finish at once; the rest hold their worker until released
N_ITEMS = 10


def hold(args):
    """Write this process's PID to ``folder/started-<value>``; if ``held``, wait for
    ``folder/release`` (30 s at most); then touch ``folder/done-<value>``."""
    value, folder, held = args
    folder = Path(folder)
    (folder / f".started-{value}").write_text(str(os.getpid()))
    (folder / f".started-{value}").rename(folder / f"started-{value}")  # whole, or not there
    if held:
        deadline = time.monotonic() + 30
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    (folder / f"done-{value}").touch()
    return value


def marked(folder: Path, what: str) -> set[int]:
    return {int(p.name.split("-")[1]) for p in folder.glob(f"{what}-*")}


def both_workers_held(folder: Path):
    return lambda: len(marked(folder, "started") - set(range(QUICK))) >= 2


@contextlib.contextmanager
def ctrl_c_when(condition, what: str, before=lambda: None):
    """Press Ctrl-C once ``condition()`` holds, while the body runs (SIGINT to the main
    thread, whose handler raises KeyboardInterrupt there; a real signal also wakes a
    main thread blocked on a lock, which ``_thread.interrupt_main()`` does not).
    ``before()`` runs just before. Never fires after the body ended."""
    armed = threading.Event()
    armed.set()
    lock = threading.Lock()  # "still armed?" and the kill happen together

    def interrupt():
        wait_for(lambda: not armed.is_set() or condition(), timeout=30, what=what)
        with lock:
            if armed.is_set():
                before()
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    timer = threading.Thread(target=interrupt, daemon=True)
    timer.start()
    try:
        yield
    finally:
        # A Ctrl-C sent just as the body ended by itself lands here, in the lock or the
        # join: the body's own outcome (a failed pytest.raises) is what the test reports.
        try:
            with lock:
                armed.clear()
            timer.join(35)
        except KeyboardInterrupt:
            timer.join(35)
    assert not timer.is_alive()


def ipyparmap_threads() -> list[str]:
    # (not the drop-ins' descriptor server: one per process, for good, once a drop-in
    # passed a queue or lock to a worker; dropins/handover.py)
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("ipyparmap") and t.name != "ipyparmap-handover"
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["interrupt", "cancel"])
@pytest.mark.parametrize("engine", STOP_ENGINES, indirect=True)
def test_stopping_a_run_keeps_finished_results_and_leaves_nothing_behind(engine, how, tmp_path):
    threads_before = set(threading.enumerate())
    items = [(i, str(tmp_path), i >= QUICK) for i in range(N_ITEMS)]
    stop: dict = {}

    def snapshot():  # what had happened when the stop was asked for
        stop.update(at=time.monotonic(), done=marked(tmp_path, "done"))

    if how == "interrupt":  # what Ctrl-C does to the caller
        held = both_workers_held(tmp_path)
        with ctrl_c_when(held, "2 held items to start", before=snapshot):
            with pytest.raises(pm.Interrupted) as info:
                engine.parmap(hold, items, chunksize=1)
            stopped = time.monotonic()
    else:
        run = engine.parmap_async(hold, items, chunksize=1)
        wait_for(both_workers_held(tmp_path), timeout=30, what="2 held items to start")
        snapshot()
        assert run.cancel()
        with pytest.raises(pm.Cancelled) as info:
            run.result(timeout=10)
        stopped = time.monotonic()
        assert run.join(10)
    started = marked(tmp_path, "started")
    assert stopped - stop["at"] < 2.0, f"took {stopped - stop['at']:.1f} s to stop"

    res = info.value.results
    assert len(res) == N_ITEMS
    for index, value in enumerate(res):  # finished results are kept, the rest cancelled
        if index in stop["done"]:
            if engine.name == "dask" and isinstance(value, pm.Failure):
                # (an item's task may have finished on a Dask worker, its result still on
                # its way to the scheduler and the client when the stop came: cancelled
                # then, as Dask's own futures of it are; never another outcome)
                assert value.kind == "cancelled", (index, value)
                continue
            assert value == index, (index, value)
        else:
            assert isinstance(value, pm.Failure) and value.kind == "cancelled", (index, value)
    if engine.name != "dask":  # Dask does not keep submission order across its workers
        assert stop["done"] == set(range(QUICK))

    held = {i: int((tmp_path / f"started-{i}").read_text()) for i in started - set(range(QUICK))}
    if engine.name == "local":  # the busy workers were killed
        for pid in held.values():
            wait_for(lambda pid=pid: _gone(pid), timeout=5, what=f"worker {pid} to be killed")
    (tmp_path / "release").touch()  # other executors' running tasks finish on their own
    if engine.name == "dask":
        client = engine.backend
        wait_for(lambda: not any(client.processing().values()), timeout=30, what="Dask idle")
    elif engine.name == "threads":  # abandoned: they end once released, nothing new ran
        wait_for(lambda: not ipyparmap_threads(), timeout=10, what="abandoned threads to end")
        assert marked(tmp_path, "started") == started
        assert not marked(tmp_path, "done") & set(range(QUICK + 4, N_ITEMS))
    elif engine.name in ("thread", "process"):
        engine.backend.shutdown(wait=True)
        late = marked(tmp_path, "started") - started  # started after the run stopped
        # The standard library's process pool marks the calls it has queued for its
        # processes as running: those cannot be cancelled, so they still run (and
        # their results are dropped); at most the chunks in flight (2 x workers).
        allowed = set(range(QUICK + 2, QUICK + 4)) if engine.name == "process" else set()
        assert late <= allowed, late
        assert not marked(tmp_path, "done") & set(range(QUICK + 4, N_ITEMS))
    # no ipyparmap thread is left; with our own executors shut down, no thread at all
    wait_for(lambda: not ipyparmap_threads(), timeout=10, what="ipyparmap threads to end")
    if engine.name != "dask":
        wait_for(
            lambda: not set(threading.enumerate()) - threads_before,
            timeout=10,
            what=f"threads to end: {set(threading.enumerate()) - threads_before}",
        )
    # (and no_leaks checks that no child process is left)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["interrupt", "terminate"])
@pytest.mark.parametrize("engine", ["jobs"], indirect=True)
def test_stopping_a_drop_in_pool_leaves_nothing_behind(engine, how, tmp_path):
    pool = engine.backend
    items = [(i, str(tmp_path), i >= QUICK) for i in range(N_ITEMS)]
    if how == "interrupt":  # Ctrl-C while the caller waits for a map
        assert pool.map(hold, items[:QUICK], chunksize=1) == list(range(QUICK))
        result = pool.map_async(hold, items[QUICK:], chunksize=1)
        held = both_workers_held(tmp_path)
        # pytest.raises outside: the held tasks may have started already, so the Ctrl-C
        # can come as soon as ctrl_c_when is entered, before get() is called
        with pytest.raises(KeyboardInterrupt), ctrl_c_when(held, "2 held items to start"):
            result.get(60)
        started = time.monotonic()
        pool.terminate()  # what leaving `with Pool() as pool:` does
        with pytest.raises(pm.Cancelled):
            result.get(10)
    else:
        result = pool.map_async(hold, items, chunksize=1)
        wait_for(both_workers_held(tmp_path), timeout=30, what="2 held items to start")
        started = time.monotonic()
        pool.terminate()
        with pytest.raises(pm.Cancelled):
            result.get(10)
    pool.join()
    assert time.monotonic() - started < 5
    for path in tmp_path.glob("started-*"):  # the held tasks' workers were killed
        if int(path.name.split("-")[1]) >= QUICK:
            pid = int(path.read_text())
            wait_for(lambda pid=pid: _gone(pid), timeout=5, what=f"worker {pid} to be killed")
    assert not marked(tmp_path, "done") - set(range(QUICK))
    wait_for(lambda: not ipyparmap_threads(), timeout=10, what="the pool's thread to end")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
