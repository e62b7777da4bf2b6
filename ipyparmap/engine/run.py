"""One map: the dispatch loop and all of a run's state, whatever the engine (layer L3).

Data flow (the local engine; see local.py and executor.py for the engine parts)::

    iterable ──(pulled lazily, bounded look-ahead)──┐
    requeue (crash splits, retries) ────────────────┤
                                                    ▼
        Runner._dispatch ── CHUNK ──> worker pipe ──> Worker: func(item) per item
                                                          │   status board (shm):
        Runner._wait: multiprocessing.connection.wait     │   chunk, position, since
          on every pipe and every death sentinel  <───────┘
            │ RESULTS / OUTPUT / LOAD_ERROR   │ sentinel fired: worker died
            ▼                                 ▼
        _fold: values, errors, timings   _on_death: read the board, blame the
        _on_output: print forwarding       running item (crashed/timeout), requeue
            │                              the others, spawn a replacement
            ▼
        outcomes: batches (indices, values or Failures) ──> parmap: ResultSlots
                                                             imap: values in order

Who owns what: a Runner owns every piece of run state (which worker holds which chunk,
attempts, the requeue, partial results) and is driven by one thread only, the caller's
(or the thread of a background Run). The base class here holds what every engine
shares: taking items from the input, folding result batches, failures, retries,
errors="raise", cancellation and building the Results. An engine subclass supplies
``_start_engine``, ``_dispatch``, ``_wait``, ``_kill_busy`` and ``_close_engine``.
The Pool owns processes, never run state; workers hold nothing but their current chunk.

Interrupts: KeyboardInterrupt may arrive anywhere in the caller's thread. Whoever
catches it calls `abort`, which is idempotent: it stops dispatching, kills
busy workers (they may be deep in a C extension), and turns unfinished items into
``cancelled`` failures. Finished results are never dropped. `cancel` asks
the same from another thread (a background Run, a Cancel button).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ipyparmap import errors
from ipyparmap.engine.plan import ChunkPlanner
from ipyparmap.errors import Interrupted, ParmapError, SerializationError, TaskError
from ipyparmap.options import Options, describe
from ipyparmap.results import Failure, ItemOutput, Results, ResultSlots, RunStats
from ipyparmap.views.progress import BUSY, IDLE, ProgressModel
from ipyparmap.wire.messages import Timings
from ipyparmap.wire.serialize import (
    PICKLING_ERRORS,
    Incoming,
    ItemPicklingError,
    loads,
    pickle_function,
    pickle_items,
    rebuild_exception,
)

#: Seconds between loop wake-ups when nothing arrives (progress refresh, timeouts).
TICK = 0.1
#: Chunks of items holding large buffers carry at most about this many bytes of them.
CHUNK_BYTES = 4 * 1024 * 1024
#: Seconds busy workers get to finish their chunk after errors="raise" stops a run.
RAISE_GRACE = 0.2

OutputCallback = Callable[[int, str, str], None]

# Chunk ids are unique in the process, so a warm worker's board can never show a
# chunk of an earlier run under an id this run uses.
_chunk_ids = itertools.count()


@dataclass
class _Chunk:
    id: int
    indices: Sequence[int]  # a range for new input, a list for requeued items
    items: list
    attempts: list | None  # attempts made before this dispatch, per position; None: all 0
    solo: bool  # sent alone to pin down which item kills its worker
    owner: Any  # the engine's handle: a WorkerHandle, a Future...
    blob: bytes | None = None  # the pickled items, until sent
    worker_id: Any = None  # the worker's PID (or address), where known
    reported: int = 0  # positions below this have come back
    shared: bool = False  # its large buffers went through shared memory

    def attempts_at(self, position: int) -> int:
        return 0 if self.attempts is None else self.attempts[position]


@dataclass
class _Pending:
    """An item waiting to be dispatched again (after a crash split, or for a retry)."""

    index: int
    item: Any
    attempts: int = 0
    solo: bool = False


class _CancelRun(Exception):
    """Internal: cancel() was called from another thread."""


class _StopRun(Exception):
    """Internal: errors="raise" saw its first failure."""

    def __init__(self, failure: Failure):
        super().__init__(failure)
        self.failure = failure


class InputError(Exception):
    """Internal: the input iterable raised ``error`` when asked for item ``index``."""

    def __init__(self, index: int, error: BaseException):
        super().__init__(index, error)
        self.index = index
        self.error = error


def input_length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except Exception:
        return None


class Runner:
    """Runs ``func`` over ``iterable``; an engine subclass runs the chunks."""

    #: Whether large buffers of items travel in shared memory (engines that can pass
    #: descriptors to their workers) or inside the pickle.
    share_buffers = False

    def __init__(
        self,
        func: Callable,
        iterable: Iterable,
        options: Options,
        *,
        workers: int,
        progress: ProgressModel | None = None,
        on_output: OutputCallback | None = None,
        keep_details: bool = True,
    ):
        self.func = func
        self.options = options
        self.total = input_length(iterable)
        self.sequence = iterable if isinstance(iterable, Sequence) else None
        self.source = iter(iterable)
        self.n_workers = workers if self.total is None else max(1, min(workers, self.total))
        self.progress = progress
        self.on_output = on_output
        self.keep_details = keep_details  # per-index durations and outputs, for Results
        self.planner = ChunkPlanner(self.n_workers, options.chunksize, self.total)
        self.stats = RunStats(workers=self.n_workers, started=time.time())
        self.started = time.monotonic()

        self.in_flight: dict[Any, _Chunk] = {}  # engine handle -> the chunk it runs
        self.requeue: deque[_Pending] = deque()
        self.outcomes: deque = deque()  # batches (indices, values), ready to hand out
        self.slots = ResultSlots()  # parmap: everything handed out, in input order
        self.stdout: dict[int, list] = {}
        self.stderr: dict[int, list] = {}
        self.cancelled: dict[int, Any] = {}  # index -> item, for unfinished items
        self.pulled = 0  # items taken from the input so far
        self.floor = 0  # ordered imap: lowest index not handed out yet
        self.ordered_window = False  # ordered imap: bound the look-ahead
        self.exhausted = False
        self.input_error: InputError | None = None
        self.stopping = False
        self.closed = False
        self.cancel_requested = False  # set by cancel(), from any thread
        self.lock = threading.Lock()  # guards self.slots against snapshot() from other threads
        self.first_failure: Failure | None = None  # errors="raise": stop at this one
        self.payload = None
        self.item_bytes = 0  # large buffers per item in the last chunk that had any

    # ------------------------------------------------------------------ public driving
    def results(self) -> Results:
        """Run to the end; return Results, or raise with the partial Results attached."""
        try:
            for indices, values in self.events():
                with self.lock:
                    self.slots.place(indices, values)
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted(
                "interrupted; the finished results are in .results", self._build()
            ) from None
        except _CancelRun:
            raise errors.Cancelled("the run was cancelled", self._build()) from None
        except _StopRun as stop:
            raise self._failure_error(stop.failure, self._build()) from _cause(stop.failure)
        except InputError as bad:
            self._attach_input_error(bad, self._build())
            raise bad.error from None
        return self._build()

    def values(self, ordered: bool = True) -> Iterator[Any]:
        """Yield values (Failure objects with errors="collect") in input or completion order."""
        self.keep_details = False
        self.ordered_window = ordered
        buffer: dict[int, Any] = {}
        try:
            for indices, values in self.events():
                if not ordered:
                    yield from values
                    continue
                if type(indices) is range and indices.start == self.floor and not buffer:
                    self.floor = indices.stop  # in order already: no buffering
                    yield from values
                    continue
                buffer.update(zip(indices, values, strict=True))
                while self.floor in buffer:
                    value = buffer.pop(self.floor)
                    self.floor += 1
                    yield value
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted("interrupted") from None
        except _CancelRun:
            raise errors.Cancelled("the run was cancelled") from None
        except _StopRun as stop:
            raise self._failure_error(stop.failure, None) from _cause(stop.failure)
        except InputError as bad:
            raise bad.error from None
        finally:
            self.abort()  # the consumer stopped early (break, close): stop the workers

    def events(self) -> Iterator[tuple[Sequence[int], list]]:
        """The core loop: yield batches ``(indices, values or Failures)`` as they finish."""
        self._start()
        try:
            while True:
                self._dispatch()
                if self.first_failure is not None:
                    self._raise_first_failure()
                if self.outcomes:  # hand them out, then dispatch again before waiting
                    while self.outcomes:
                        yield self.outcomes.popleft()
                    continue
                if not self.in_flight and self._drained():
                    break
                self._wait(TICK)
                if self.first_failure is not None:
                    self._raise_first_failure()
                if self.cancel_requested:
                    raise _CancelRun()
            if self.input_error is not None:
                raise self.input_error
        finally:
            self.abort()

    def snapshot(self) -> Results:
        """The results so far, safe to call from another thread (unfinished: PENDING)."""
        with self.lock:
            size = self.total if self.total is not None else self.pulled
            return self.slots.snapshot(size, self.stats)

    def cancel(self) -> None:
        """Ask the run to stop, from any thread; it stops within one loop tick (~0.1 s)."""
        self.cancel_requested = True

    def abort(self) -> None:
        """Stop: no more dispatching, busy workers killed, unfinished items cancelled.

        Safe to call more than once, and from ``except KeyboardInterrupt`` (a second
        Ctrl-C while aborting does not leave workers behind).
        """
        if self.closed:
            return
        self.stopping = True
        while True:
            try:
                self._kill_busy()
                while self.requeue:
                    pending = self.requeue.popleft()
                    self.cancelled[pending.index] = pending.item
                self._close()
                return
            except KeyboardInterrupt:
                continue

    # ------------------------------------------------------------------ engine hooks
    def _start_engine(self) -> None:
        """Get workers ready (the function is pickled already, in self.payload)."""
        raise NotImplementedError

    def _dispatch(self) -> None:
        """Hand chunks (from `_next_chunk`) to every worker that can take one."""
        raise NotImplementedError

    def _wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for news; fold what arrived (`_fold` etc.)."""
        raise NotImplementedError

    def _kill_busy(self) -> None:
        """Stop in-flight chunks now; their unreported items go to `_cancel_rest`."""
        raise NotImplementedError

    def _close_engine(self) -> None:
        """Give back what the engine holds (workers to the pool...)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ start and stop
    def _start(self) -> None:
        if self.total == 0:  # nothing to do: no worker needs to start
            self.exhausted = True
            return
        # Pre-flight: an unpicklable function fails here, before any worker starts.
        self.payload = pickle_function(self.func)
        if self.progress is not None:
            self.progress.total = self.total
            self.progress.cancel = self.cancel
        self._start_engine()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._close_engine()
        if self.payload is not None:
            self.payload.close()  # workers that loaded it keep their own mapping
        self.stats.wall = time.monotonic() - self.started
        self.stats.items = self.pulled
        if self.progress is not None:
            for record in self.progress.workers.values():
                if record.state == BUSY:
                    record.state = IDLE
                    record.current = None
            self.progress.cancel = None
            # [figures, issue 14] The views draw the final line from the stats, so they
            # must hold what _build will count: as many items as the Results has slots,
            # and the ones that never finished as "cancelled" (every finished item went
            # through progress.add, so those are size - progress.done).
            size = self.total if self.sequence is not None else self.pulled
            self.stats.items = size
            if size > self.progress.done:
                self.stats.failures["cancelled"] = size - self.progress.done
            self.progress.finish(self.stats)

    def _cancel_rest(self, chunk: _Chunk) -> None:
        """The chunk's items that have not come back become ``cancelled``."""
        for pos in range(chunk.reported, len(chunk.items)):
            self.cancelled[chunk.indices[pos]] = chunk.items[pos]

    def _same_batch(self, first: _Pending, other: _Pending) -> bool:
        """Whether two requeued items may share a chunk (always, with one function)."""
        return True

    def _label(self, index: Any) -> str:
        """How messages name the item at ``index``."""
        return str(index)

    def _planner_for(self, chunk: _Chunk) -> ChunkPlanner:
        """The planner that learns from this chunk's timings (one per function)."""
        return self.planner

    def _drained(self) -> bool:
        return not self.requeue and (self.exhausted or self.stopping)

    # ------------------------------------------------------------------ dispatching

    def _next_chunk(self, owner: Any) -> _Chunk | None:
        while True:
            taken = self._take_requeued() if self.requeue else self._take_new()
            if taken is None:
                return None
            indices, items, attempts, solo = taken
            try:
                blob = pickle_items(items, share=self.share_buffers)
            except ItemPicklingError as bad:
                self._unpicklable_item(indices, items, attempts, bad)
                continue
            self.stats.chunks += 1
            buffers = getattr(blob, "buffers", None)
            if buffers:  # large arrays: how big is an item, to size the next chunks
                self.item_bytes = sum(b.nbytes for b in buffers) // len(items)
            return _Chunk(next(_chunk_ids), indices, items, attempts, solo, owner, blob)

    def _take_requeued(self):
        first = self.requeue[0]
        if first.solo:
            pending = [self.requeue.popleft()]
        else:
            size = self.planner.next_size(len(self.requeue))
            pending = []
            while (
                self.requeue
                and len(pending) < size
                and not self.requeue[0].solo
                and self._same_batch(first, self.requeue[0])
            ):
                pending.append(self.requeue.popleft())
        return (
            [p.index for p in pending],
            [p.item for p in pending],
            [p.attempts for p in pending],
            len(pending) == 1 and pending[0].solo,
        )

    def _take_new(self):
        if self.exhausted or self.stopping:
            return None
        remaining = None if self.total is None else self.total - self.pulled
        size = self.planner.next_size(remaining)
        if self.item_bytes:  # copying big arrays into shared memory is the parent's work:
            # small chunks let the copy of the next one overlap this one's run
            size = max(1, min(size, CHUNK_BYTES // self.item_bytes))
        if self.ordered_window:  # ordered imap: don't run far ahead of the consumer
            window = max(1024, 4 * self.n_workers * self.planner.largest)
            size = min(size, self.floor + window - self.pulled)
            if size <= 0:
                return None
        items: list = []
        try:
            items.extend(itertools.islice(self.source, size))  # keeps items on error
        except Exception as exc:  # the input iterable itself raised
            self.input_error = InputError(self.pulled + len(items), exc)
            self.exhausted = True
        start = self.pulled
        self.pulled += len(items)
        if len(items) < size or self.pulled == self.total:  # (no empty read to find out)
            self.exhausted = True
        if not items:
            return None
        return range(start, self.pulled), items, None, False

    def _unpicklable_item(self, indices, items, attempts, bad: ItemPicklingError) -> None:
        position = bad.position
        index, item = indices[position], items[position]
        error = SerializationError(
            f"cannot pickle item {self._label(index)} ({describe(item)}) to send it to a worker: "
            f"{type(bad.error).__name__}: {bad.error}"
        )
        error.__cause__ = bad.error
        error.argument_error = True  # the drop-ins re-raise the pickling error itself
        self._final_failure(index, item, "error", error, None, 1)
        rest = [
            _Pending(indices[p], items[p], 0 if attempts is None else attempts[p])
            for p in range(len(items))
            if p != position
        ]
        self.requeue.extendleft(reversed(rest))

    # ------------------------------------------------------------------ outcomes
    def _fold(self, chunk: _Chunk, start: int, values_blob, errors: dict, timings: tuple,
              memory_kb: tuple, began: float | None = None) -> None:  # fmt: skip
        """Fold one result batch (positions ``start``.. of ``chunk``) into the run;
        ``timings`` is the wire form of a `protocol.Timings`."""
        timings = Timings(*timings)
        count = timings.count
        busy = timings.total()
        stats = self.stats
        stats.task_time += busy
        worker_id = chunk.worker_id
        stats.busy[worker_id] = stats.busy.get(worker_id, 0.0) + busy
        if self.progress is not None:
            self.progress.worker(worker_id).busy += busy
        peak_kb = memory_kb[0] if memory_kb else None
        if peak_kb:
            peak = peak_kb * 1024
            stats.peak_rss = max(stats.peak_rss or 0, peak)
            stats.worker_peak_rss[worker_id] = max(stats.worker_peak_rss.get(worker_id, 0), peak)
        self._planner_for(chunk).record(count, busy)
        indices = chunk.indices[start : start + count]
        if self.keep_details:
            self.slots.timing(indices, timings, worker_id, began)
        try:
            values = values_blob.load() if isinstance(values_blob, Incoming) else loads(values_blob)
        except PICKLING_ERRORS as exc:
            self._unloadable_results(chunk, start, count, exc)
        else:
            if errors:
                self._failed_in_batch(chunk, start, values, errors)
            else:
                self._succeeded(indices, values, worker_id)
        chunk.reported = start + count

    def _succeeded(self, indices, values: list, worker_id: Any) -> None:
        self.outcomes.append((indices, values))
        if self.progress is not None:
            self.progress.worker(worker_id).done += len(values)
            self.progress.add(len(values))

    def _failed_in_batch(self, chunk: _Chunk, start: int, values: list, errors: dict) -> None:
        """A batch with failed items: hand out the successes, handle each failure."""
        ok_indices, ok_values = [], []
        for offset, value in enumerate(values):
            position = start + offset
            info = errors.get(offset)
            if info is None:
                ok_indices.append(chunk.indices[position])
                ok_values.append(value)
            else:
                self._item_failed(chunk, position, "error", rebuild_exception(info), info[3])
        if ok_values:
            self._succeeded(ok_indices, ok_values, chunk.worker_id)

    def _unloadable_results(self, chunk: _Chunk, start: int, count: int, error) -> None:
        if count == 1:
            index = chunk.indices[start]
            exc = SerializationError(
                f"the result of item {self._label(index)} could not be unpickled here: "
                f"{type(error).__name__}: {error}"
            )
            self._item_failed(chunk, start, "error", exc, "")
            return
        for position in reversed(range(start, start + count)):  # run each alone to find it
            self._requeue_position(chunk, position, solo=True)

    def _item_failed(self, chunk: _Chunk, position: int, kind: str, exc, tb_text: str) -> None:
        index, item = chunk.indices[position], chunk.items[position]
        attempts = chunk.attempts_at(position) + 1
        if attempts <= self.options.retries and not self.stopping:
            self.stats.retries += 1
            self.requeue.appendleft(_Pending(index, item, attempts, kind != "error"))
            return
        self._final_failure(index, item, kind, exc, chunk.worker_id, attempts, tb_text)

    def _final_failure(self, index, item, kind, exc, pid, attempts, tb_text: str = "") -> None:
        failure = Failure(index, item, kind, exc, tb_text or _traceback_text(exc), pid, attempts)
        self.outcomes.append(([index], [failure]))
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        if self.progress is not None:
            self.progress.add(1, 1)
        if self.options.errors == "raise" and not self.stopping:
            self.stopping = True
            self.first_failure = failure

    def _raise_first_failure(self) -> None:
        failure, self.first_failure = self.first_failure, None
        # Busy workers get a moment to finish their chunk: those results are kept.
        deadline = time.monotonic() + RAISE_GRACE
        while self.in_flight and time.monotonic() < deadline:
            self._wait(max(0.0, deadline - time.monotonic()))
        self._kill_busy()
        raise _StopRun(failure)

    def _on_output(self, chunk: _Chunk, lines: list) -> None:
        for position, stream, text in lines:
            index = chunk.indices[position] if 0 <= position < len(chunk.indices) else -1
            if self.keep_details and index >= 0:
                store = self.stdout if stream == "stdout" else self.stderr
                store.setdefault(index, []).append(text)
            if self.on_output is not None:
                self.on_output(index, stream, text)

    def _requeue_position(self, chunk: _Chunk, pos: int, solo: bool) -> None:
        self.requeue.appendleft(
            _Pending(chunk.indices[pos], chunk.items[pos], chunk.attempts_at(pos), solo)
        )

    # ------------------------------------------------------------------ progress
    def _progress_worker(self, worker_id: Any, state: str, current: int | None = None):
        if self.progress is not None:
            record = self.progress.worker(worker_id)
            record.state = state
            record.current = current

    # ------------------------------------------------------------------ building results
    def _build(self) -> Results:
        """The Results so far; unfinished items are ``cancelled`` failures."""
        while self.outcomes:  # finished but not handed out when the run stopped
            self.slots.place(*self.outcomes.popleft())
        size = self.total if self.sequence is not None else self.pulled
        cancelled = self.cancelled
        n_cancelled = 0

        def missing(index: int) -> Failure:
            nonlocal n_cancelled
            n_cancelled += 1
            if index in cancelled:
                item = cancelled[index]
            else:  # never taken from the input
                item = self.sequence[index] if self.sequence is not None else None
            return Failure(index, item, "cancelled")

        outputs = {
            index: ItemOutput(
                "".join(self.stdout.get(index, ())), "".join(self.stderr.get(index, ()))
            )
            for index in sorted(set(self.stdout) | set(self.stderr))
        }
        results = self.slots.build(size, missing, self.stats, outputs)
        results.inputs = self.sequence
        self.stats.items = len(results)
        if n_cancelled:
            self.stats.failures["cancelled"] = n_cancelled
        return results

    def _failure_error(self, failure: Failure, results: Results | None) -> ParmapError:
        exc = failure.exception
        if isinstance(exc, (TaskError, SerializationError)):
            exc.failure, exc.results = failure, results
            return exc
        return TaskError(failure.describe(), failure, results)

    def _attach_input_error(self, bad: InputError, results: Results) -> None:
        error = bad.error
        try:
            error.results = results
            error.add_note(
                f"ipyparmap: the input iterable raised this when asked for item {bad.index}; "
                f"the {bad.index} items before it are in this exception's .results"
            )
        except (AttributeError, TypeError):
            pass


def _cause(failure: Failure) -> BaseException | None:
    exc = failure.exception
    if isinstance(exc, (TaskError, SerializationError)):
        return exc.__cause__
    return exc


def _traceback_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    cause = exc.__cause__
    return getattr(cause, "tb", "") or f"{type(exc).__name__}: {exc}\n"


def _name(func: Any) -> str:
    return repr(getattr(func, "__qualname__", None) or type(func).__name__)
