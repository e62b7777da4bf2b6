"""A fake engine for tests: chunks run in this process, one at a time, in order.

`FakeEngine` implements the run's `Engine` interface (engine/run.py) without worker
processes. Each of its "workers" is a number; a chunk handed to one runs when the run
waits (the oldest chunk first, one chunk per `wait`), with the real worker code
(`process.worker.run_items`, `pickle_values`), and its outcome goes through the same
calls the real engines make: `sink.fold` for results, `policy.worker_died` for a dead
worker (with the status board's whereabouts the local engine would read),
`policy.task_lost` for a lost executor task, `policy.items_unloadable`,
`sink.function_failed`. So a test can say exactly what happens where and check what
the run logic (feed, sink, crash policy, runner) makes of it, in milliseconds.

A `Fault` scripts what goes wrong, for the chunks that hold its item:

=================== ======================================================================
phase               what happens
=================== ======================================================================
``unpinned``        the worker dies before it looks at the chunk (nobody can tell which
                    item killed it)
``loading``         the worker dies while it unpickles the chunk's items
``running``         the worker dies while it runs the fault's item
``block``           the worker dies in a block of ``span`` tiny items that starts at the
                    fault's item (which one of them did it is unknown)
``timeout``         the fault's item runs past the timeout: its worker is killed
``sending``         the worker dies while it pickles the chunk's results
``task-lost``       the chunk's task is lost with its executor worker (as Dask's
                    ``KilledWorker``): no whereabouts at all
``unloadable-items``  the worker cannot unpickle the chunk's items
``unloadable-results``  the parent cannot unpickle the chunk's results
``hang``            the chunk never finishes until `FakeEngine.release` is set (or it
                    is killed)
``interrupt``       ``KeyboardInterrupt`` arrives while the run waits for the chunk
=================== ======================================================================

A fault fires ``times`` times (None: every time). Anything not scripted happens for
real, in this process: an item that raises, that cannot be unpickled, or whose result
cannot be pickled or unpickled, or a function that cannot be loaded.
"""

from __future__ import annotations

import itertools
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

from ipyparmap.engine.attribution import function_unloadable
from ipyparmap.engine.feed import PICKLED
from ipyparmap.engine.run import map_run
from ipyparmap.errors import TaskTimeout, WorkerCrashed
from ipyparmap.options import check_options
from ipyparmap.process.resources import describe_exit, signal_name
from ipyparmap.process.worker import pickle_values, run_items
from ipyparmap.wire import board as B
from ipyparmap.wire.codec import PICKLING_ERRORS, dumps, loads

#: Chunks one fake run may send before the engine calls it an endless loop.
MAX_CHUNKS = 500

PHASES = (
    "unpinned", "loading", "running", "block", "timeout", "sending", "task-lost",
    "unloadable-items", "unloadable-results", "hang", "interrupt",
)  # fmt: skip


@dataclass
class Fault:
    """Something that goes wrong with the chunks that hold ``item``."""

    phase: str
    item: Any  # the item's value (compared with ==), or a predicate on items
    times: int | None = 1  # how often it fires; None: every time
    exitcode: int = -9  # how the worker ended (names the crash: -9 is SIGKILL)
    span: int = 2  # "block": the block's length
    flushed: bool = False  # a death mid-chunk: the results before it had been sent

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"unknown fault phase {self.phase!r}")

    def matches(self, item: Any) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if callable(self.item) and not isinstance(self.item, type):
            return bool(self.item(item))
        try:
            return bool(item == self.item)
        except Exception:
            return False

    def fire(self) -> Fault:
        if self.times is not None:
            self.times -= 1
        return self


class _Unloadable:
    """A result that pickles but cannot be unpickled (what "unloadable-results" sends)."""

    def __reduce__(self):
        return _refuse, ()


def _refuse():
    raise ValueError("scripted: these results cannot be unpickled")


class FakeEngine:
    """Runs chunks in this process, deterministically, with scripted faults."""

    packing = PICKLED  # items travel as plain pickles

    def __init__(self, faults=(), *, func_name: str = "the function", max_chunks=MAX_CHUNKS):
        self.faults: list[Fault] = list(faults)
        self.func_name = func_name
        self.max_chunks = max_chunks
        self.run: Any = None
        self.workers: list[int] = []
        self.in_flight: dict[int, Any] = {}  # worker -> chunk, in dispatch order
        self.functions: dict[bytes, Any] = {}  # loaded functions by key (a worker's cache)
        self._ids = itertools.count(1001)
        # What happened, for tests to check: ("send", worker, indices, solo),
        # ("done", worker, indices), ("death", worker, indices, phase),
        # ("lost", worker, indices), ("killed", worker, indices)
        self.log: list[tuple] = []
        self.sent = 0
        self.deaths = 0
        self.closed = 0
        self.hanging = threading.Event()  # set while only hanging chunks are in flight
        self.release = threading.Event()  # set it to let hanging chunks finish
        self.interrupts_in_kill = 0  # KeyboardInterrupts kill_busy raises first (Ctrl-C twice)

    # ------------------------------------------------------------------ the Engine interface
    def start(self, run) -> None:
        self.run = run
        self.options = run.options
        self.workers = [next(self._ids) for _ in range(run.n_workers)]

    def busy(self) -> bool:
        return bool(self.in_flight)

    def dispatch(self) -> None:
        run = self.run
        if run.state.stopping:
            return
        for worker in list(self.workers):
            if worker in self.in_flight:
                continue
            chunk = run.feed.next_chunk(worker)
            if chunk is None:
                return
            self.sent += 1
            if self.sent > self.max_chunks:
                raise AssertionError(f"more than {self.max_chunks} chunks: an endless loop?")
            chunk.worker_id = worker
            self.in_flight[worker] = chunk
            self.log.append(("send", worker, tuple(chunk.indices), chunk.solo))

    def wait(self, timeout: float) -> None:
        for worker, chunk in list(self.in_flight.items()):
            if self._hangs(chunk):
                continue
            fault = self._fault("interrupt", chunk.items)
            if fault is not None:
                raise KeyboardInterrupt
            self._work(worker, chunk)
            return
        if self.in_flight:  # only hanging chunks: wait as a real engine would
            self.hanging.set()
            self.release.wait(timeout)

    def kill_busy(self) -> None:
        if self.interrupts_in_kill > 0:
            self.interrupts_in_kill -= 1
            raise KeyboardInterrupt
        sink = self.run.sink
        for worker, chunk in list(self.in_flight.items()):
            del self.in_flight[worker]
            self.workers.remove(worker)
            self.log.append(("killed", worker, tuple(chunk.indices)))
            sink.cancel_rest(chunk)
        self.hanging.clear()

    def close(self) -> None:
        self.closed += 1
        self.run = None  # as the real engines do (the run holds us)

    def unused(self) -> None:
        pass  # nothing prepared ahead

    # ------------------------------------------------------------------ one chunk
    def _work(self, worker: int, chunk) -> None:
        run = self.run
        items = chunk.items
        if (fault := self._fault("unpinned", items)) is not None:
            return self._die(worker, chunk, (B.IDLE, B.LOADING, 1, 0.0), fault)
        if (fault := self._fault("task-lost", items)) is not None:
            self._finish(worker, chunk, "lost")
            error = WorkerCrashed(
                f"the fake worker running item {run.label(chunk.indices[chunk.reported])} "
                "was lost: KilledWorker (scripted)"
            )
            run.policy.task_lost(chunk, error)
            return
        func = self._function(worker, chunk)
        if func is None:
            return
        now = time.monotonic()
        if (fault := self._fault("loading", items)) is not None:
            return self._die(worker, chunk, (chunk.id, B.LOADING, 1, now), fault)
        if (fault := self._fault("unloadable-items", items)) is not None:
            self._finish(worker, chunk, "done")
            run.policy.items_unloadable(chunk, ValueError("scripted: items cannot be unpickled"))
            return
        try:
            loaded = loads(chunk.blob)
        except PICKLING_ERRORS as exc:
            self._finish(worker, chunk, "done")
            run.policy.items_unloadable(chunk, exc)
            return
        chunk.blob = None
        death, stop = None, len(items)
        for position, item in enumerate(items):
            death = self._fault(("running", "block", "timeout"), [item])
            if death is not None:
                stop = position
                break
        positions, times = [chunk.id, B.LOADING, 1], [0.0]
        start, values, errors, timings, began = run_items(
            func, loaded[:stop], self.options.star, 1, positions, times
        )
        if death is not None:
            if death.flushed and stop > 0:  # what a long chunk's flush had sent
                blob, errors = pickle_values(values, errors)
                run.sink.fold(chunk, 0, blob, errors, timings, (), began)
            span = death.span if death.phase == "block" else 1
            timed_out = stop if death.phase == "timeout" else None
            return self._die(worker, chunk, (chunk.id, stop, span, now), death, timed_out)
        if (fault := self._fault("sending", items)) is not None:
            return self._die(worker, chunk, (chunk.id, len(items), 1, now), fault)
        blob, errors = pickle_values(values, errors)
        if self._fault("unloadable-results", items) is not None:
            blob = dumps([_Unloadable()] * len(values))
        self._finish(worker, chunk, "done")
        run.sink.fold(chunk, start, blob, errors, timings, (), began)

    def _function(self, worker: int, chunk) -> Any:
        """The chunk's function, loaded (and cached) as a worker would; None if it
        cannot be (the sink is told, as the local engine tells it)."""
        payload = self.run.feed.payload_for(chunk)
        func = self.functions.get(payload.key)
        if func is not None:
            return func
        buffers = payload.packed.buffers if payload.packed is not None else None
        try:
            func = pickle.loads(payload.blob, buffers=buffers)
        except PICKLING_ERRORS as exc:
            self._finish(worker, chunk, "done")
            self.run.sink.function_failed(payload.key, function_unloadable(self.func_name, exc))
            return None
        self.functions[payload.key] = func
        return func

    def _finish(self, worker: int, chunk, what: str) -> None:
        del self.in_flight[worker]
        self.log.append((what, worker, tuple(chunk.indices)))

    def _die(self, worker: int, chunk, where: tuple, fault: Fault, timed_out=None) -> None:
        """The worker holding ``chunk`` died at ``where``: what the local engine does."""
        run = self.run
        del self.in_flight[worker]
        self.workers.remove(worker)
        self.deaths += 1
        self.log.append(("death", worker, tuple(chunk.indices), fault.phase))
        code = fault.exitcode

        def blame(position: int) -> tuple[str, BaseException]:
            label = run.label(chunk.indices[position])
            if position == timed_out:
                limit = self.options.timeout or 0.0
                return "timeout", TaskTimeout(
                    f"item {label} ran longer than the timeout of {limit:g} s; its fake "
                    f"worker ({worker}) was killed",
                    limit,
                )
            return "crashed", WorkerCrashed(
                f"the worker running item {label} (fake worker {worker}) {describe_exit(code)}",
                code if code >= 0 else None,
                signal_name(code),
            )

        run.policy.worker_died(chunk, where, blame)
        if not run.state.stopping and run.feed.more_work():
            self.workers.append(next(self._ids))
            run.stats.restarts += 1

    # ------------------------------------------------------------------ faults
    def _fault(self, phases, items) -> Fault | None:
        phases = (phases,) if isinstance(phases, str) else phases
        for fault in self.faults:
            if fault.phase in phases and any(fault.matches(item) for item in items):
                return fault.fire()
        return None

    def _hangs(self, chunk) -> bool:
        if self.release.is_set():
            return False
        return any(
            f.phase == "hang" and f.matches(item) for f in self.faults for item in chunk.items
        )

    # ------------------------------------------------------------------ for tests
    def sends(self) -> list[tuple]:
        """The chunks sent, in order: ``(indices, solo)``."""
        return [(entry[2], entry[3]) for entry in self.log if entry[0] == "send"]


def fake_runner(func, items, faults=(), *, workers: int = 2, **options):
    """A Runner of ``func`` over ``items`` on a `FakeEngine`: ``(runner, engine)``."""
    engine = FakeEngine(faults)
    opts = check_options(progress=False, **options)
    runner = map_run(func, items, opts, engine, workers=workers, packing=PICKLED)
    return runner, engine


def fake_parmap(func, items, faults=(), *, workers: int = 2, **options):
    """``pm.parmap`` on a `FakeEngine` (Results, or the same exceptions)."""
    runner, _ = fake_runner(func, items, faults, workers=workers, **options)
    return runner.results()
