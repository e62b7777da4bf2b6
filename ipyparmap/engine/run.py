"""One run: the loop that drives a feed, an engine and an outcome sink (layer: engine).

Data flow (the local engine; engine/executor.py runs chunks as tasks instead)::

    iterable ──> Feed (feed.py): look-ahead, chunks sized by the planner, pickled;
       ▲         the requeue (crash splits, retries) goes out first
       │                │ next_chunk()
       │                ▼
       │   Engine (local.py) ── RunChunk ──> worker socketpair ──> worker: func(item)
       │     waits (selectors) on every pipe    <── ResultBatch / Output / LoadFailed
       │     and every death sentinel               status board (shared memory):
       │                │                           chunk, position, since
       │     results    │           a worker died │
       │                ▼                         ▼
       │   OutcomeSink (outcomes.py)        CrashPolicy (attribution.py): blame the
       │     fold: values, failures,          running item, requeue the others,
       │     retries, errors="raise",         count unpinned deaths
       └──── stats, progress counts  ◀────────┘
                        │ batches (indices, values or Failures)
                        ▼
            parmap: Results in input order      imap: values in order

Who owns what: the `Runner` owns the run's lifecycle (`RunState`) and is driven by one
thread only, the caller's (or the thread of a background Run): no part is shared
between threads except `cancel` (a flag) and `snapshot` (under the sink's lock). The
feed owns what is still to send, the sink what came back, the engine which worker or
task holds which chunk; the Pool (process/pool.py) owns processes, never run state;
workers hold nothing but their current chunk.

Interrupts: KeyboardInterrupt may arrive anywhere in the caller's thread. Whoever
catches it calls `Runner.abort`, which is idempotent: it stops dispatching, kills busy
workers (they may be deep in a C extension), and turns unfinished items into
``cancelled`` failures. Finished results are never dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from ipyparmap import errors
from ipyparmap.engine.attribution import CrashPolicy
from ipyparmap.engine.feed import AS_IS, PICKLED, Feed, ItemFeed
from ipyparmap.engine.outcomes import OutcomeSink, ResultsSink
from ipyparmap.engine.plan import ChunkPlanner
from ipyparmap.engine.state import RunState
from ipyparmap.errors import Interrupted, ParmapError, SerializationError, TaskError
from ipyparmap.options import Options
from ipyparmap.results import Failure, Results, RunStats
from ipyparmap.views.progress import BUSY, IDLE, ProgressModel
from ipyparmap.wire.serialize import pickle_function

#: Seconds between loop wake-ups when nothing arrives (progress refresh, timeouts).
TICK = 0.1
#: Seconds busy workers get to finish their chunk after errors="raise" stops a run.
RAISE_GRACE = 0.2


class CancelRun(Exception):
    """cancel() was called from another thread (the loop's way out)."""


class StopRun(Exception):
    """errors="raise" saw its first failure."""

    def __init__(self, failure: Failure):
        super().__init__(failure)
        self.failure = failure


class InputError(Exception):
    """The input iterable raised ``error`` when asked for item ``index``."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(index, error)
        self.index = index
        self.error = error


class Engine:
    """What a run needs of an engine (engine/local.py, engine/executor.py)."""

    def start(self, run: Runner) -> None:
        """Get workers ready; the engine reads chunks from ``run.feed`` from now on."""
        raise NotImplementedError

    def dispatch(self) -> None:
        """Hand chunks to every worker (or task slot) that can take one."""
        raise NotImplementedError

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for news and hand what arrived to the sink."""
        raise NotImplementedError

    def busy(self) -> bool:
        """Whether any chunk is in flight."""
        raise NotImplementedError

    def kill_busy(self) -> None:
        """Stop in-flight chunks now; their unreported items are cancelled."""
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the engine holds (workers to the pool...)."""
        raise NotImplementedError

    def unused(self) -> None:
        """The run failed before `start` (its pre-flight): give back what the engine
        prepared ahead of it (a template process), as `close` would after a start."""
        raise NotImplementedError


class Runner:
    """Drives ``feed`` through ``engine`` into ``sink`` until the input is done."""

    def __init__(self, feed: Feed, sink: OutcomeSink, engine: Engine, *, workers: int,
                 progress: ProgressModel | None = None):  # fmt: skip
        self.feed = feed
        self.sink = sink
        self.engine = engine
        self.state = sink.state
        self.options = sink.options
        self.stats = sink.stats
        self.n_workers = workers
        self.progress = progress
        self.policy = CrashPolicy(feed, sink)
        sink.policy = self.policy
        feed.on_unpicklable = sink.unpicklable_item
        self.started = time.monotonic()
        self.engine_started = False  # an empty input never starts one

    # ------------------------------------------------------------------ public driving
    def results(self) -> Results:
        """Run to the end; return Results, or raise with the partial Results attached."""
        sink: ResultsSink = self.sink  # type: ignore[assignment]
        try:
            for indices, values in self.events():
                sink.place(indices, values)
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted(
                "interrupted; the finished results are in .results", sink.build()
            ) from None
        except CancelRun:
            raise errors.Cancelled("the run was cancelled", sink.build()) from None
        except StopRun as stop:
            raise _failure_error(stop.failure, sink.build()) from _cause(stop.failure)
        except InputError as bad:
            _attach_input_error(bad, sink.build())
            raise bad.error from None
        return sink.build()

    def values(self, ordered: bool = True) -> Iterator[Any]:
        """Yield values (Failure objects with errors="collect") in input or completion order."""
        self.sink.keep_details = False
        floor = 0  # ordered: lowest index not handed out yet
        if ordered:
            self.feed.floor = lambda: floor  # bound the look-ahead to the consumer
        buffer: dict[int, Any] = {}
        try:
            for indices, values in self.events():
                if not ordered:
                    yield from values
                    continue
                if type(indices) is range and indices.start == floor and not buffer:
                    floor = indices.stop  # in order already: no buffering
                    yield from values
                    continue
                buffer.update(zip(indices, values, strict=True))
                while floor in buffer:
                    value = buffer.pop(floor)
                    floor += 1
                    yield value
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted("interrupted") from None
        except CancelRun:
            raise errors.Cancelled("the run was cancelled") from None
        except StopRun as stop:
            raise _failure_error(stop.failure, None) from _cause(stop.failure)
        except InputError as bad:
            raise bad.error from None
        finally:
            self.abort()  # the consumer stopped early (break, close): stop the workers

    def events(self) -> Iterator[tuple[Sequence[Any], list]]:
        """The loop: yield batches ``(indices, values or Failures)`` as they finish."""
        self._start()
        if not self.engine_started:  # an empty input: nothing to run
            self.abort()
            return
        engine, feed, sink, state = self.engine, self.feed, self.sink, self.state
        outcomes = sink.outcomes
        try:
            while True:
                engine.dispatch()
                if sink.first_failure is not None:
                    self._raise_first_failure()
                if outcomes:  # hand them out, then dispatch again before waiting
                    while outcomes:
                        yield outcomes.popleft()
                    continue
                if not engine.busy() and feed.drained(state.stopping):
                    break
                engine.wait(TICK)
                if sink.first_failure is not None:
                    self._raise_first_failure()
                if state.cancel_requested:
                    raise CancelRun()
            input_error = getattr(feed, "input_error", None)
            if input_error is not None:
                raise InputError(*input_error)
        finally:
            self.abort()

    def snapshot(self) -> Results:
        """The results so far, safe to call from another thread (unfinished: PENDING)."""
        return self.sink.snapshot()  # type: ignore[attr-defined]

    def cancel(self) -> None:
        """Ask the run to stop, from any thread; it stops within one loop tick (~0.1 s)."""
        self.state.request_cancel()

    def abort(self) -> None:
        """Stop: no more dispatching, busy workers killed, unfinished items cancelled.

        Safe to call more than once, and from ``except KeyboardInterrupt`` (a second
        Ctrl-C while aborting does not leave workers behind).
        """
        if self.state.closed:
            return
        self.state.stop()
        while True:
            try:
                if self.engine_started:
                    self.engine.kill_busy()
                for pending in self.feed.drop_requeued():
                    self.sink.cancel_item(pending.index, pending.item)
                self._close()
                return
            except KeyboardInterrupt:
                continue

    # ------------------------------------------------------------------ for engines
    def worker_state(self, worker_id: Any, state: str, current: Any = None) -> None:
        """Show a worker as idle, busy (on ``current``), starting or dead."""
        if self.progress is not None:
            record = self.progress.worker(worker_id)
            record.state = state
            record.current = current

    def label(self, index: Any) -> str:
        return self.feed.label(index)

    # ------------------------------------------------------------------ start and stop
    def _start(self) -> None:
        if isinstance(self.feed, ItemFeed):
            feed = self.feed
            if feed.total == 0:  # nothing to do: no worker needs to start
                feed.exhausted = True
                return
            # Pre-flight: an unpicklable function fails here, before any worker starts
            # (threads of this process take it as it is).
            if feed.packing is not AS_IS:
                try:
                    feed.payload = pickle_function(feed.func)
                except BaseException:
                    self.engine.unused()  # what it prepared ahead (a template) goes
                    raise
                feed.planner.recall(feed.payload.code_key)  # a repeated call knows its items
        if self.progress is not None:
            self.progress.set_items(getattr(self.feed, "total", None))
            self.progress.cancel = self.cancel
        self.engine_started = True
        self.engine.start(self)

    def _close(self) -> None:
        if self.state.closed:
            return
        self.state.close()
        if self.engine_started:
            self.engine.close()
        payload = getattr(self.feed, "payload", None)
        if payload is not None:
            self.feed.planner.remember(payload.code_key)
            payload.close()  # workers that loaded it keep their own mapping
        # The parts point at each other (engine -> run, sink <-> policy, feed -> sink):
        # cut the cycles, or the results' shared memory would wait for the garbage
        # collector (tests/test_serialization.py::test_shared_memory_is_released).
        self.sink.policy = self.policy.sink = self.feed.on_unpicklable = None
        self.stats.wall = time.monotonic() - self.started
        self.stats.items = getattr(self.feed, "pulled", 0)
        self.stats.chunks = self.feed.chunks
        if self.progress is not None:
            for record in self.progress.workers.values():
                if record.state == BUSY:
                    record.state = IDLE
                    record.current = None
            self.progress.cancel = None
            # The views draw the final line from the stats, so they must hold what
            # ResultsSink.build will count: as many items as the Results has slots, and
            # the ones that never finished as "cancelled" (every finished item went
            # through progress.add, so those are size - progress.items_done). Pinned by
            # tests/test_widget.py::test_a_run_stopped_by_its_first_failure_reads_the_same_everywhere  # noqa: E501
            if isinstance(self.feed, ItemFeed):
                size = self.feed.size()
                self.stats.items = size
                if size > self.progress.items_done:
                    self.stats.failures["cancelled"] = size - self.progress.items_done
            self.progress.finish(self.stats)

    def _raise_first_failure(self) -> None:
        failure, self.sink.first_failure = self.sink.first_failure, None
        # Busy workers get a moment to finish their chunk: those results are kept.
        deadline = time.monotonic() + RAISE_GRACE
        while self.engine.busy() and time.monotonic() < deadline:
            self.engine.wait(max(0.0, deadline - time.monotonic()))
        self.engine.kill_busy()
        raise StopRun(failure)


def map_run(func, iterable, options: Options, engine: Engine, *, workers: int,
            progress: ProgressModel | None = None, on_output=None,
            keep_details: bool = True, packing: str = PICKLED) -> Runner:  # fmt: skip
    """A Runner of ``func`` over ``iterable`` (``parmap``, ``imap``, ``parmap_async``)."""
    feed = ItemFeed(func, iterable, ChunkPlanner(1, options.chunksize), packing)
    if feed.total is not None:
        workers = max(1, min(workers, feed.total))
    feed.planner.workers = workers
    state = RunState()
    stats = RunStats(workers=workers, started=time.time())
    sink = ResultsSink(feed, state, options, stats, progress, keep_details)
    sink.on_output = on_output
    return Runner(feed, sink, engine, workers=workers, progress=progress)


def _failure_error(failure: Failure, results: Results | None) -> ParmapError:
    """What errors="raise" raises: the engine's own error (a crash, a timeout, what
    could not be pickled), or a TaskError that is also of the item's exception type
    where Python allows it (``except FileNotFoundError:`` catches it; errors.task_error)."""
    exc = failure.exception
    if isinstance(exc, (TaskError, SerializationError)):
        exc.failure, exc.results = failure, results
        return exc
    return errors.task_error(failure.describe(), failure, results, exc)


def _cause(failure: Failure) -> BaseException | None:
    exc = failure.exception
    if isinstance(exc, (TaskError, SerializationError)):
        return exc.__cause__
    return exc


def _attach_input_error(bad: InputError, results: Results) -> None:
    error = bad.error
    try:
        error.results = results
        error.add_note(
            f"ipyparmap: the input iterable raised this when asked for item {bad.index}; "
            f"the {bad.index} items before it are in this exception's .results"
        )
    except (AttributeError, TypeError):
        pass


def function_name(func: Any) -> str:
    """How messages name a mapped function: ``'square'``."""
    return repr(getattr(func, "__qualname__", None) or type(func).__name__)
