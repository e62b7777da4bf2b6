"""Every engine against the same faults: the crash table, interrupts and cancellation.

Engines: the local pool (``pm.parmap``), a thread executor, a process executor, Dask
(``backend=client``), the drop-ins' job server (``pm.Pool``) and the fake engine
(tests/fake_engine.py). Where an engine's documented behaviour differs from the local
pool's, `expected` says how; nothing else is relaxed.
"""

from __future__ import annotations

import concurrent.futures
import faulthandler
import multiprocessing.pool
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

import helpers
import pytest
from crash_table import CRASH_TABLE
from fake_engine import Fault, fake_parmap
from helpers import BadToUnpickle

import ipyparmap as pm

ENGINES = ("local", "thread", "process", "dask", "jobs", "fake")
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
            # The standard library's pool breaks as a whole when a process dies: every
            # unfinished item fails as crashed, nothing more is sent (docs/user-guide.md,
            # engine/executor.py); nobody can tell which task killed it.
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
            if engine == "thread" and kind in LETHAL and phase in WORKER_PHASES:
                marks = pytest.mark.skip(
                    reason=f"{kind} would end the test process: a thread executor runs tasks "
                    "in the caller's own process"
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
        with pytest.raises(ValueError, match="executor"):
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
