"""One map over the local pool: the dispatch loop, and all of a run's state (layer L3).

Data flow::

    iterable ──(pulled lazily, bounded look-ahead)──┐
    requeue (crash splits, retries) ────────────────┤
                                                    ▼
        Runner._dispatch ── CHUNK ──> worker pipe ──> Worker: func(item) per item
                                                          │   status board (shm):
        Runner._wait: multiprocessing.connection.wait     │   chunk, position, since
          on every pipe and every death sentinel  <───────┘
            │ RESULTS / OUTPUT / LOAD_ERROR   │ sentinel fired: worker died
            ▼                                 ▼
        _on_results: values, errors      _on_death: read the board, blame the
        _on_output: print forwarding       running item (crashed/timeout), requeue
            │                              the others, spawn a replacement
            ▼
        outcomes: batches (indices, values or Failures) ──> parmap: ResultSlots
                                                             imap: values in order

Who owns what: the Runner owns every piece of run state (which worker holds which
chunk, attempts, the requeue, partial results) and is driven by one thread only, the
caller's (or the thread of a background Run). The Pool owns processes, never run state.
Workers hold nothing but their current chunk, so a dead worker costs only its chunk.

Interrupts: KeyboardInterrupt may arrive anywhere in the caller's thread. Whoever
catches it calls :meth:`Runner.abort`, which is idempotent: it stops dispatching, kills
busy workers (they may be deep in a C extension), and turns unfinished items into
``cancelled`` failures. Finished results are never dropped.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from . import protocol as P
from .config import Options, describe
from .errors import (
    Interrupted,
    ParmapError,
    SerializationError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)
from .plan import ChunkPlanner
from .pool import Pool, WorkerHandle
from .progress import BUSY, DEAD, IDLE, ProgressModel
from .resources import describe_exit, signal_name
from .results import Failure, ItemOutput, Results, ResultSlots, RunStats
from .serialize import (
    PICKLING_ERRORS,
    ItemPicklingError,
    loads,
    pickle_function,
    pickle_items,
    rebuild_exception,
)

#: Seconds between loop wake-ups when nothing arrives (progress refresh, timeouts).
TICK = 0.1
#: Workers that die before they ever start, in a row, before the run gives up.
MAX_BOOT_FAILURES = 3
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
    worker: WorkerHandle
    blob: bytes | None = None  # the pickled items, until sent
    reported: int = 0  # positions below this have come back

    def attempts_at(self, position: int) -> int:
        return 0 if self.attempts is None else self.attempts[position]


@dataclass
class _Pending:
    """An item waiting to be dispatched again (after a crash split, or for a retry)."""

    index: int
    item: Any
    attempts: int = 0
    solo: bool = False


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
    """Runs ``func`` over ``iterable`` on leased workers of ``pool``."""

    def __init__(
        self,
        func: Callable,
        iterable: Iterable,
        options: Options,
        *,
        pool: Pool,
        workers: int,
        env: dict[str, str] | None = None,
        progress: ProgressModel | None = None,
        on_output: OutputCallback | None = None,
        keep_details: bool = True,
    ):
        self.func = func
        self.options = options
        self.pool = pool
        self.env = env
        self.total = input_length(iterable)
        self.sequence = iterable if isinstance(iterable, Sequence) else None
        self.source = iter(iterable)
        self.n_workers = workers if self.total is None else max(1, min(workers, self.total))
        self.progress = progress
        self.on_output = on_output
        self.keep_details = keep_details  # per-index durations and outputs, for Results
        self.planner = ChunkPlanner(self.n_workers, options.chunksize, self.total)
        self.stats = RunStats(workers=self.n_workers)
        self.started = time.monotonic()

        self.workers: list[WorkerHandle] = []
        self.in_flight: dict[WorkerHandle, _Chunk] = {}
        self.requeue: deque[_Pending] = deque()
        self.outcomes: deque = deque()  # batches (indices, values), ready to hand out
        self.slots = ResultSlots()  # parmap: everything handed out, in input order
        self.stdout: dict[int, list] = {}
        self.stderr: dict[int, list] = {}
        self.cancelled: dict[int, Any] = {}  # index -> item, for unfinished items
        self.timed_out: dict[WorkerHandle, int] = {}  # worker -> position killed for
        self.pulled = 0  # items taken from the input so far
        self.floor = 0  # ordered imap: lowest index not handed out yet
        self.ordered_window = False  # ordered imap: bound the look-ahead
        self.exhausted = False
        self.input_error: InputError | None = None
        self.stopping = False
        self.closed = False
        self.boot_failures = 0
        self.first_failure: Failure | None = None  # errors="raise": stop at this one
        self.payload = None

    # ------------------------------------------------------------------ public driving
    def results(self) -> Results:
        """Run to the end; return Results, or raise with the partial Results attached."""
        try:
            for indices, values in self.events():
                self.slots.place(indices, values)
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted(
                "interrupted; the finished results are in .results", self._build()
            ) from None
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
            if self.input_error is not None:
                raise self.input_error
        finally:
            self.abort()

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
                self._close()
                return
            except KeyboardInterrupt:
                continue

    # ------------------------------------------------------------------ start and stop
    def _start(self) -> None:
        if self.total == 0:  # nothing to do: no worker needs to start
            self.exhausted = True
            return
        # Pre-flight: an unpicklable function fails here, before any worker starts.
        self.payload = pickle_function(self.func)
        self.workers = self.pool.acquire(self.n_workers, self.env)
        for worker in self.workers:
            self._progress_worker(worker, IDLE)
        if self.progress is not None:
            self.progress.total = self.total

    def _drained(self) -> bool:
        return not self.requeue and (self.exhausted or self.stopping)

    def _kill_busy(self) -> None:
        busy = [w for w in self.in_flight if not w.closed]
        for worker in busy:
            worker.kill()
        for worker in busy:
            worker.reap(5.0)
            chunk = self.in_flight.pop(worker)
            for pos in range(chunk.reported, len(chunk.items)):
                self.cancelled[chunk.indices[pos]] = chunk.items[pos]
            self._forget(worker)
        while self.requeue:
            pending = self.requeue.popleft()
            self.cancelled[pending.index] = pending.item

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        keep = max(self.n_workers, len(self.workers))
        self.pool.release([w for w in self.workers if w not in self.in_flight], keep=keep)
        self.stats.wall = time.monotonic() - self.started
        self.stats.items = self.pulled
        if self.progress is not None:
            for worker in self.workers:
                self._progress_worker(worker, IDLE)
            self.progress.finish()

    def _forget(self, worker: WorkerHandle) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self.timed_out.pop(worker, None)
        self.pool.discard(worker)
        self._progress_worker(worker, DEAD)

    # ------------------------------------------------------------------ dispatching
    def _dispatch(self) -> None:
        if self.stopping:
            return
        for worker in list(self.workers):
            if worker in self.in_flight or worker.closed:
                continue
            chunk = self._next_chunk(worker)
            if chunk is None:
                return
            self._send(chunk)

    def _next_chunk(self, worker: WorkerHandle) -> _Chunk | None:
        while True:
            taken = self._take_requeued() if self.requeue else self._take_new()
            if taken is None:
                return None
            indices, items, attempts, solo = taken
            try:
                blob = pickle_items(items)
            except ItemPicklingError as bad:
                self._unpicklable_item(indices, items, attempts, bad)
                continue
            self.stats.chunks += 1
            return _Chunk(next(_chunk_ids), indices, items, attempts, solo, worker, blob)

    def _take_requeued(self):
        if self.requeue[0].solo:
            pending = [self.requeue.popleft()]
        else:
            size = self.planner.next_size(len(self.requeue))
            pending = []
            while self.requeue and len(pending) < size and not self.requeue[0].solo:
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
        if len(items) < size:
            self.exhausted = True
        if not items:
            return None
        return range(start, self.pulled), items, None, False

    def _unpicklable_item(self, indices, items, attempts, bad: ItemPicklingError) -> None:
        position = bad.position
        index, item = indices[position], items[position]
        error = SerializationError(
            f"cannot pickle item {index} ({describe(item)}) to send it to a worker: "
            f"{type(bad.error).__name__}: {bad.error}"
        )
        self._final_failure(index, item, "error", error, None, 1)
        rest = [
            _Pending(indices[p], items[p], 0 if attempts is None else attempts[p])
            for p in range(len(items))
            if p != position
        ]
        self.requeue.extendleft(reversed(rest))

    def _send(self, chunk: _Chunk) -> None:
        worker = chunk.worker
        self.in_flight[worker] = chunk
        self._progress_worker(worker, BUSY, chunk.indices[0])
        payload = self.payload
        try:
            worker.send_function(payload.key, payload.blob, payload.sources)
            stride = self.planner.timing_stride()
            worker.send((P.CHUNK, chunk.id, payload.key, chunk.blob, self.options.star, stride))
        except OSError:
            pass  # it died; its sentinel fires and _on_death requeues the chunk
        chunk.blob = None

    # ------------------------------------------------------------------ waiting
    def _wait(self, timeout: float) -> None:
        owners: dict[Any, WorkerHandle] = {}
        for worker in self.workers:
            owners[worker.conn] = worker
            owners[worker.sentinel] = worker
        if self.options.timeout is not None:
            timeout = min(timeout, max(0.01, self.options.timeout / 10))
        for ready in wait(list(owners), timeout):
            worker = owners[ready]
            if worker.closed:
                continue
            if ready is worker.conn:
                self._receive(worker)
            else:
                self._on_death(worker)
        self._check_timeouts()
        self._refresh_progress()

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._on_death(worker)
            return
        self._handle(worker, loads(data))

    def _handle(self, worker: WorkerHandle, message: tuple) -> None:
        tag = message[0]
        if tag == P.RESULTS:
            self._on_results(worker, *message[1:])
        elif tag == P.OUTPUT:
            chunk = self.in_flight.get(worker)
            if chunk is not None and chunk.id == message[1]:
                self._on_output(chunk, message[2])
        elif tag == P.READY:
            worker.ready = True
            self.boot_failures = 0
        elif tag == P.LOAD_ERROR:
            self._on_load_error(worker, *message[1:])

    # ------------------------------------------------------------------ outcomes
    def _on_results(self, worker, chunk_id, start, values_blob, errors, durations,
                    outputs, maxrss_kb, done) -> None:  # fmt: skip
        chunk = self.in_flight.get(worker)
        if chunk is None or chunk.id != chunk_id:
            return
        if outputs:
            self._on_output(chunk, outputs)
        count = len(durations)
        busy = sum(durations)
        stats = self.stats
        stats.task_time += busy
        stats.busy[worker.pid] = stats.busy.get(worker.pid, 0.0) + busy
        if self.progress is not None:
            self.progress.worker(worker.pid).busy += busy
        if maxrss_kb:
            stats.peak_rss = max(stats.peak_rss or 0, maxrss_kb * 1024)
        self.planner.record(count, busy)
        indices = chunk.indices[start : start + count]
        if self.keep_details:
            self.slots.timing(indices, durations, worker.pid)
        try:
            values = loads(values_blob)
        except PICKLING_ERRORS as exc:
            self._unloadable_results(chunk, start, count, exc)
        else:
            if errors:
                self._failed_in_batch(chunk, start, values, errors)
            else:
                self._succeeded(indices, values, worker)
        chunk.reported = start + count
        if done:
            del self.in_flight[worker]
            self._progress_worker(worker, IDLE)

    def _succeeded(self, indices, values: list, worker: WorkerHandle) -> None:
        self.outcomes.append((indices, values))
        if self.progress is not None:
            self.progress.worker(worker.pid).done += len(values)
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
            self._succeeded(ok_indices, ok_values, chunk.worker)

    def _unloadable_results(self, chunk: _Chunk, start: int, count: int, error) -> None:
        if count == 1:
            index = chunk.indices[start]
            exc = SerializationError(
                f"the result of item {index} could not be unpickled here: "
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
        self._final_failure(index, item, kind, exc, chunk.worker.pid, attempts, tb_text)

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

    def _on_load_error(self, worker: WorkerHandle, what: str, ident, info) -> None:
        if what == "func":
            cause = rebuild_exception(info) if info is not None else None
            error = SerializationError(
                f"the function {_name(self.func)} could not be unpickled in a worker"
                + (f": {type(cause).__name__}: {cause}" if cause is not None else "")
            )
            error.__cause__ = cause
            self.abort()
            raise error
        chunk = self.in_flight.pop(worker, None)
        self._progress_worker(worker, IDLE)
        if chunk is None:
            return
        if len(chunk.items) == 1:
            cause = rebuild_exception(info)
            error = SerializationError(
                f"item {chunk.indices[0]} could not be unpickled in the worker: "
                f"{type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            self._item_failed(chunk, 0, "error", error, "")
        else:  # find the bad item: send each alone
            for position in reversed(range(len(chunk.items))):
                self._requeue_position(chunk, position, solo=True)

    # ------------------------------------------------------------------ deaths and timeouts
    def _on_death(self, worker: WorkerHandle) -> None:
        if worker.closed:
            return
        # Messages it sent before dying are still in the pipe: read them first.
        while True:
            try:
                if not worker.conn.poll(0):
                    break
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):
                break
            self._handle(worker, loads(data))
        if worker.closed:  # handling a message may have closed it
            return
        returncode = worker.reap(5.0)
        booted = worker.ready
        timed_out = self.timed_out.get(worker)
        board = worker.board.read()  # what it was doing when it died
        chunk = self.in_flight.pop(worker, None)
        self._forget(worker)
        if chunk is not None:
            self._crashed_chunk(chunk, worker, returncode, board, timed_out)
        if not booted:
            self.boot_failures += 1
            if self.boot_failures >= MAX_BOOT_FAILURES:
                self.abort()
                raise ParmapError(
                    f"worker processes {describe_exit(returncode)} before they started; "
                    f"their error output is above. Can {describe(_executable())} import "
                    "ipyparmap?"
                )
        if not self.stopping and (self.requeue or not self.exhausted):
            self._replace_worker()

    def _replace_worker(self) -> None:
        worker = self.pool.spawn(self.env)
        self.stats.restarts += 1
        self.workers.append(worker)
        self._progress_worker(worker, IDLE)
        if self.progress is not None:
            self.progress.worker(worker.pid).restarts = self.stats.restarts

    def _crashed_chunk(self, chunk, worker, returncode, board, timed_out_position) -> None:
        remaining = list(range(chunk.reported, len(chunk.items)))
        if not remaining:
            return
        board_chunk, position, _ = board
        if board_chunk != chunk.id:  # it died before it even looked at the chunk
            blame = None
        elif 0 <= position < len(chunk.items):
            blame = position
        elif chunk.solo or len(remaining) == 1:  # died loading items or sending results
            blame = remaining[0]
        else:  # which item? run each alone to find out
            for pos in reversed(remaining):
                self._requeue_position(chunk, pos, solo=True)
            return
        for pos in reversed(remaining):
            if pos != blame:
                self._requeue_position(chunk, pos, solo=chunk.solo)
        if blame is None:
            return
        index = chunk.indices[blame]
        if timed_out_position == blame:
            exc: TaskError = TaskTimeout(
                f"item {index} ran longer than the timeout of {self.options.timeout:g} s; "
                f"its worker (pid {worker.pid}) was killed",
                self.options.timeout,
            )
            kind = "timeout"
        else:
            exc = WorkerCrashed(
                f"the worker running item {index} (pid {worker.pid}) {describe_exit(returncode)}",
                returncode if returncode is None or returncode >= 0 else None,
                signal_name(returncode),
            )
            kind = "crashed"
        self._item_failed(chunk, blame, kind, exc, "")

    def _requeue_position(self, chunk: _Chunk, pos: int, solo: bool) -> None:
        self.requeue.appendleft(
            _Pending(chunk.indices[pos], chunk.items[pos], chunk.attempts_at(pos), solo)
        )

    def _check_timeouts(self) -> None:
        limit = self.options.timeout
        if limit is None:
            return
        now = time.monotonic()
        for worker, chunk in self.in_flight.items():
            if worker in self.timed_out:
                continue
            board_chunk, position, started = worker.board.read()
            running = board_chunk == chunk.id and 0 <= position < len(chunk.items)
            if running and now - started > limit:
                self.timed_out[worker] = position
                worker.kill()

    # ------------------------------------------------------------------ progress
    def _progress_worker(self, worker: WorkerHandle, state: str, current: int | None = None):
        if self.progress is not None:
            record = self.progress.worker(worker.pid)
            record.state = state
            record.current = current

    def _refresh_progress(self) -> None:
        if self.progress is None or not self.progress.listeners:
            return
        for worker, chunk in self.in_flight.items():
            board_chunk, position, _ = worker.board.read()
            if board_chunk == chunk.id and 0 <= position < len(chunk.indices):
                self.progress.worker(worker.pid).current = chunk.indices[position]
        self.progress.maybe_refresh()

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


def _executable() -> str:
    import sys

    return sys.executable
