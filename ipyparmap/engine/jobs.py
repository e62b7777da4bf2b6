"""A long-lived local run fed with jobs, each with its own function (layer: engine).

The drop-in ``Pool`` and ``ProcessPoolExecutor`` (dropins/compat.py) accept work piece
by piece: ``apply_async`` after ``apply_async``, a ``map`` while another runs. A
`JobServer` is an ordinary `Runner` on the ordinary `LocalEngine`, composed with a
`JobFeed` (its input is a FIFO of `Job` objects instead of one iterable: chunks never
mix jobs, each job has its own pickled function and chunk planner) and a `JobSink`
(each outcome goes to its job), driven by a thread for the life of the pool. Everything
the local engine does (one pipe per worker, death sentinels, crash attribution to the
item, replacement workers) applies unchanged; a crash fails only the job item that was
running.

Indices are ``(job id, index in job)`` pairs, so outcomes route to their job.
"""

from __future__ import annotations

import contextvars
import itertools
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ipyparmap.engine.feed import SHARED_MEMORY, Chunk, Feed, Pending
from ipyparmap.engine.local import LocalEngine
from ipyparmap.engine.outcomes import OutcomeSink
from ipyparmap.engine.plan import ChunkPlanner
from ipyparmap.engine.run import CancelRun, Runner
from ipyparmap.engine.state import RunState
from ipyparmap.errors import Cancelled
from ipyparmap.options import Options
from ipyparmap.process.pool import EnvExtra, Pool
from ipyparmap.results import Failure, RunStats
from ipyparmap.wire.serialize import FunctionPayload, pickle_function

_job_ids = itertools.count()

#: Job kinds: a "map" fails (and completes) at its first failed item, like the standard
#: library's map; a "stream" (imap, submit) delivers every item's outcome in turn.
MAP, STREAM = "map", "stream"


class Job:
    """One submission: a function, its items, and what to do with each outcome."""

    def __init__(
        self,
        func: Callable,
        items: Iterable,
        *,
        kind: str = MAP,
        chunksize: int | None = None,
        workers: int = 1,
        on_outcome: Callable[[int, Any], None] | None = None,
        on_done: Callable[[Job], None] | None = None,
        start: Callable[[], bool] | None = None,
    ):
        self.id = next(_job_ids)
        self.kind = kind
        # Pickled here, in the caller's thread: an unpicklable function raises at once.
        self.payload: FunctionPayload = pickle_function(func)
        try:
            self.total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self.source = iter(items)
        self.planner = ChunkPlanner(workers, chunksize)
        self.pulled = 0
        self.finished = 0
        self.exhausted = False
        self.results: dict[int, Any] = {}
        self.error: BaseException | None = None  # map: its first failure, or input error
        self.failure: Failure | None = None
        self.on_outcome = on_outcome
        self.on_done = on_done
        self.context = contextvars.copy_context()  # worker output goes to the caller's cell
        self.done = threading.Event()
        # Called before the first item is sent; False means "cancelled meanwhile, skip"
        # (how a pending concurrent.futures.Future is cancelled).
        self.start = start

    def take(self, size: int) -> list:
        """Up to ``size`` more items; an error from the input ends the job with it."""
        if self.start is not None:
            begin, self.start = self.start, None
            if not begin():
                self.cancel("cancelled before it started")
                return []
        items: list = []
        try:
            items.extend(itertools.islice(self.source, size))
        except Exception as exc:  # the input iterable raised: the job fails with it
            # ...at the start of this chunk, whose earlier items are not run, as the
            # standard library's imap(chunksize=) does (test_imap_handle_iterable_exception)
            self.exhausted = True
            self.fail_input(exc, self.pulled)
            return []
        self.pulled += len(items)
        if len(items) < size or (self.total is not None and self.pulled >= self.total):
            self.exhausted = True
            self._check_done()  # the last items may have come back already
        return items

    def fail_input(self, exc: BaseException, index: int) -> None:
        if self.kind == STREAM and self.on_outcome is not None:
            self.on_outcome(index, EndOfStream(exc))
        if self.error is None:
            self.error = exc
        self._check_done()

    def deliver(self, index: int, outcome: Any) -> None:
        if self.done.is_set():
            return
        self.finished += 1
        if isinstance(outcome, Failure) and self.failure is None:
            self.failure = outcome
            if self.kind == MAP:  # like multiprocessing: the first failure ends the map
                self.exhausted = True
                self.error = outcome.exception
                self._finish()
                return
        if self.on_outcome is not None:
            self.on_outcome(index, outcome)
        else:
            self.results[index] = outcome
        self._check_done()

    def cancel(self, reason: str) -> None:
        if not self.done.is_set():
            self.exhausted = True
            self.error = Cancelled(reason)
            if self.on_outcome is not None:
                self.on_outcome(-1, EndOfStream(self.error))
            self._finish()

    def _check_done(self) -> None:
        if self.exhausted and self.finished >= self.pulled:
            self._finish()

    def _finish(self) -> None:
        if self.done.is_set():
            return
        self.payload.close()
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)

    def ordered_results(self) -> list:
        return [self.results[i] for i in range(self.pulled)]


class EndOfStream:
    """A stream outcome that ends it with an exception (input error, cancellation)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class JobFeed(Feed):
    """Chunks from a FIFO of jobs, oldest first; a chunk never mixes jobs."""

    def __init__(self, workers: int):
        super().__init__(ChunkPlanner(workers), SHARED_MEMORY)
        self.jobs: dict[int, Job] = {}  # live jobs by id (outcomes route here)
        self.queue: deque[Job] = deque()  # jobs with items still to send, oldest first
        self.lock = threading.Lock()  # the pool's callers submit from other threads
        self.closing = False  # no more jobs will come
        self.engine_busy: Callable[[], bool] = lambda: False

    def add(self, job: Job) -> None:
        with self.lock:
            if self.closing:
                raise ValueError("Pool not running")
            self.jobs[job.id] = job
            self.queue.append(job)

    def close(self) -> None:
        with self.lock:
            self.closing = True

    def take_new(self, stopping: bool) -> tuple | None:
        with self.lock:
            while self.queue and (self.queue[0].exhausted or self.queue[0].done.is_set()):
                self.queue.popleft()
            if not self.queue:
                if self.closing and not self.engine_busy():
                    self.exhausted = True  # closed and nothing left: the server ends
                return None
            job = self.queue[0]
        remaining = None if job.total is None else job.total - job.pulled
        start = job.pulled
        items = job.take(job.planner.next_size(remaining))
        if not items:
            return None
        indices = [(job.id, start + i) for i in range(len(items))]
        return indices, items, None, None, False, job.payload, job.planner

    def requeued_payload(self, pending: Pending) -> tuple | None:
        job = self.jobs.get(pending.index[0])
        if job is None:  # items of jobs that ended meanwhile (a map's first failure)
            return None
        return job.payload, job.planner

    def payload_for(self, chunk: Chunk) -> FunctionPayload | None:
        job = self.jobs.get(chunk.indices[0][0])
        return None if job is None else job.payload  # None: its job ended meanwhile

    def same_batch(self, first: Pending, other: Pending) -> bool:
        return first.index[0] == other.index[0]  # chunks never mix jobs

    def label(self, index: Any) -> str:
        return str(index[1])  # (job, index in job): users know the latter

    def forget_if_done(self, job: Job) -> None:
        if job.done.is_set():
            with self.lock:
                self.jobs.pop(job.id, None)  # its results live on in the caller's handle


class JobSink(OutcomeSink):
    """Each outcome goes to its job; a job's own rules say when it is done."""

    def __init__(self, feed: JobFeed, state: RunState, options: Options,
                 on_output: Callable[[Any, str, str], None] | None = None):  # fmt: skip
        super().__init__(feed, state, options, RunStats())
        self.feed: JobFeed = feed
        self.print_output = on_output

    def succeeded(self, indices, values: list, worker_id: Any) -> None:
        jobs = self.feed.jobs
        for (job_id, index), value in zip(indices, values, strict=True):
            job = jobs.get(job_id)
            if job is not None:
                job.deliver(index, value)
                self.feed.forget_if_done(job)

    def final_failure(self, index, item, kind, exc, worker_id, attempts, tb_text="") -> None:
        job_id, local = index
        job = self.feed.jobs.get(job_id)
        if job is None:
            return
        if not tb_text and exc is not None:
            tb_text = getattr(exc.__cause__, "tb", "")
        job.deliver(local, Failure(local, item, kind, exc, tb_text, worker_id, attempts))
        self.feed.forget_if_done(job)

    def function_failed(self, key: bytes, error: BaseException) -> None:
        """Only the jobs of that function fail; the pool goes on serving the others."""
        for job in list(self.feed.jobs.values()):
            if job.payload.key == key and not job.done.is_set():
                job.error = error
                job.exhausted = True
                job._finish()
                self.feed.forget_if_done(job)

    def output(self, chunk: Chunk, lines: list) -> None:
        if self.print_output is None:
            return
        for position, stream, text in lines:
            index = chunk.indices[position] if 0 <= position < len(chunk.indices) else None
            job = self.feed.jobs.get(index[0]) if index is not None else None
            if job is None:
                self.print_output(index, stream, text)
            else:  # printed in the cell that submitted the job
                job.context.run(self.print_output, index, stream, text)


class JobServer:
    """A local run, driven by its own thread, whose input is a queue of jobs."""

    def __init__(
        self,
        *,
        pool: Pool,
        workers: int,
        env: EnvExtra = None,
        max_tasks_per_worker: int | None = None,
        on_output: Callable[[Any, str, str], None] | None = None,
    ):
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.feed = JobFeed(workers)
        state = RunState()
        self.sink = JobSink(self.feed, state, Options(workers=workers, errors="collect"), on_output)
        self.engine = LocalEngine(
            pool, env=env, max_items_per_worker=max_tasks_per_worker,
            wake=self._wake_r, on_wake=self._drain_wakeups,
        )  # fmt: skip
        self.feed.engine_busy = self.engine.busy
        self.run = Runner(self.feed, self.sink, self.engine, workers=workers)
        self.thread = threading.Thread(target=self._serve, name="ipyparmap-pool", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, job: Job) -> None:
        if self.run.state.closed:
            raise ValueError("Pool not running")
        self.feed.add(job)
        self._wake()

    def close(self) -> None:
        """Take no more jobs; the thread ends once the submitted ones are done."""
        self.feed.close()
        self._wake()

    def terminate(self) -> None:
        """Kill the workers now; unfinished jobs end with ``pm.Cancelled``."""
        self.close()
        self.run.cancel()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _serve(self) -> None:
        try:
            for _ in self.run.events():  # outcomes are routed to jobs, nothing is yielded
                pass
        except CancelRun:
            pass
        except BaseException as exc:  # the engine itself broke: fail every job with it
            for job in list(self.feed.jobs.values()):
                if not job.done.is_set():
                    job.error = exc
                    job._finish()
        finally:
            self.run.abort()
            for job in list(self.feed.jobs.values()):
                job.cancel("the pool was terminated")
            self._wake_r.close()
            self._wake_w.close()
