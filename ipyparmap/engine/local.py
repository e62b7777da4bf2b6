"""The local engine: chunks go to leased workers of the warm process pool (layer L3).

The generic run state and loop live in runner.py; this module adds what only local
worker processes have: one pipe each (chunks go to a specific idle worker, so we
always know who holds what), death sentinels (a dead worker fails only the item it was
running; the rest of its chunk is requeued and a replacement starts), the status board
(per-item timeouts kill only the stuck worker), and boot-failure detection.
"""

from __future__ import annotations

import selectors
import time

from ipyparmap.engine.run import OutputCallback, Runner, _Chunk, _name
from ipyparmap.errors import ParmapError, SerializationError, TaskError, TaskTimeout, WorkerCrashed
from ipyparmap.options import Options, describe, format_bytes
from ipyparmap.process.pool import EnvExtra, Pool, WorkerHandle
from ipyparmap.process.resources import describe_exit, signal_name
from ipyparmap.views.progress import BUSY, DEAD, IDLE, ProgressModel
from ipyparmap.wire import messages as P
from ipyparmap.wire.serialize import Incoming, rebuild_exception

#: Workers that die before they ever start, in a row, before the run gives up.
MAX_BOOT_FAILURES = 3
#: Seconds between samples of busy workers' memory.
MEMORY_SAMPLE_SECONDS = 0.5
#: A worker whose chunk takes less than this gets its next chunk queued behind it, so it
#: never waits for the parent's round trip (results in, next chunk out). Longer chunks
#: are not worth it, and a queued chunk could not go to a worker that frees up first.
PREFETCH_SECONDS = 0.05
#: ...and only when chunks batch at least this many items: with single slow items an
#: estimate says little about the next one, and a chunk queued behind a long item waits.
PREFETCH_MIN_ITEMS = 8


class LocalRunner(Runner):
    """Runs ``func`` over ``iterable`` on leased workers of ``pool``."""

    share_buffers = True

    def __init__(
        self,
        func,
        iterable,
        options: Options,
        *,
        pool: Pool,
        workers: int,
        env: EnvExtra = None,
        progress: ProgressModel | None = None,
        on_output: OutputCallback | None = None,
        keep_details: bool = True,
    ):
        super().__init__(
            func, iterable, options, workers=workers, progress=progress,
            on_output=on_output, keep_details=keep_details,
        )  # fmt: skip
        self.pool = pool
        self.env = env
        self.workers: list[WorkerHandle] = []
        self.timed_out: dict[WorkerHandle, int] = {}  # worker -> position killed for
        self.queued: dict[WorkerHandle, _Chunk] = {}  # a busy worker's next chunk
        self.selector = None  # every pipe and sentinel (from the pool's cache, if it can)
        self.extra: list = []  # waitables of this run only, unregistered at the end
        self.boot_failures = 0
        self.memory_sampled = time.monotonic()  # when busy workers' RSS was last read

    def _start_engine(self) -> None:
        self.workers = self.pool.acquire(self.n_workers, self.env)
        self.selector = self.pool.take_selector(self.workers)
        if self.selector is None:
            self.selector = selectors.DefaultSelector()
            for worker in self.workers:
                self._watch(worker)
        for worker in self.workers:
            self._progress_worker(worker.pid, IDLE)
        for waitable, callback in self._extra_waitables().items():
            self.selector.register(waitable, selectors.EVENT_READ, (None, callback))
            self.extra.append(waitable)

    def _watch(self, worker: WorkerHandle) -> None:
        self.selector.register(worker.conn.fileno(), selectors.EVENT_READ, (worker, "pipe"))
        self.selector.register(worker.sentinel, selectors.EVENT_READ, (worker, "death"))

    def _unwatch(self, worker: WorkerHandle) -> None:
        for fd in (worker.conn.fileno(), worker.sentinel):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _kill_busy(self) -> None:
        busy = [w for w in self.in_flight if not w.closed]
        for worker in busy:
            worker.kill()
        for worker in busy:
            worker.reap(5.0)
            self._cancel_rest(self.in_flight.pop(worker))
            if worker in self.queued:
                following = self.queued.pop(worker)
                _release(following)
                self._cancel_rest(following)
            self._forget(worker)

    def _close_engine(self) -> None:
        keep = max(self.n_workers, len(self.workers))
        idle = [w for w in self.workers if w not in self.in_flight]
        self.pool.release(idle, keep=keep)
        if self.selector is None:
            return
        for waitable in self.extra:
            self.selector.unregister(waitable)
        if len(idle) == len(self.workers):  # it watches exactly these: keep it for them
            self.pool.keep_selector(self.workers, self.selector)
        else:
            self.selector.close()

    def _forget(self, worker: WorkerHandle) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
            self._unwatch(worker)
        self.timed_out.pop(worker, None)
        self.pool.discard(worker)
        self._progress_worker(worker.pid, DEAD)

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
        for worker, running in list(self.in_flight.items()):
            if worker in self.queued or not self._prefetch_ok(running):
                continue
            chunk = self._next_chunk(worker)
            if chunk is None:
                return
            self._send(chunk, queued=True)

    def _prefetch_ok(self, running: _Chunk) -> bool:
        """Whether to queue a next chunk behind ``running`` (short chunks only)."""
        per_item = self.planner.per_item
        return (
            per_item is not None
            # big arrays: the next chunk's copy into shared memory overlaps this one
            and (len(running.items) >= PREFETCH_MIN_ITEMS or running.shared)
            and per_item * len(running.items) < PREFETCH_SECONDS
            and not running.solo
            and not self.requeue  # suspects and retries go out one at a time
            and self.options.max_memory is None  # recycling needs an idle worker
            and self._prefetch_allowed()
        )

    def _prefetch_allowed(self) -> bool:
        """Hook: whether this engine may queue chunks behind running ones."""
        return True

    def _send(self, chunk: _Chunk, queued: bool = False) -> None:
        worker = chunk.owner
        chunk.worker_id = worker.pid
        payload = self._payload_for(chunk)
        if payload is None:  # nothing wants it any more (a drop-in pool's job ended)
            _release(chunk)
            return
        if queued:
            self.queued[worker] = chunk
            # A busy worker does not read its pipe: a message bigger than the pipe's
            # buffer would block us while the worker blocks sending us its results. Such
            # a chunk stays here, assigned, and goes out when the worker is idle.
            if len(chunk.blob.blob) + 1024 > worker.fits or payload.key not in worker.functions:
                return
        else:
            self.in_flight[worker] = chunk
            self._progress_worker(worker.pid, BUSY, chunk.indices[0])
        packed = chunk.blob
        try:
            worker.send_function(payload)
            # Blocks of tiny items (stride > 1) pin a stuck item only to its block: with
            # a timeout, every item runs on its own.
            stride = self.planner.timing_stride() if self.options.timeout is None else 1
            fds, table = packed.share()  # large buffers: one memfd, mapped by the worker
            chunk.shared = bool(fds)
            fresh_rss = self.options.max_memory is not None  # it decides on recycling
            message = (P.CHUNK, chunk.id, payload.key, packed.blob, self.options.star, stride,
                       table, fresh_rss)  # fmt: skip
            worker.send(message, fds)
        except OSError:
            pass  # it died; its sentinel fires and _on_death requeues the chunk
        finally:
            packed.close()  # the worker has its own descriptor
        chunk.blob = None

    def _wait(self, timeout: float) -> None:
        if self.options.timeout is not None:
            timeout = min(timeout, max(0.01, self.options.timeout / 10))
        for key, _ in self.selector.select(timeout):
            worker, what = key.data
            if worker is None:  # an extra waitable: what is its callback
                what()
            elif worker.closed:
                continue
            elif what == "pipe":
                self._receive(worker)
            else:
                self._on_death(worker)
        self._check_timeouts()
        self._sample_memory()
        self._refresh_progress()

    def _sample_memory(self) -> None:
        """Note busy workers' RSS now and then: an OOM-killed worker's message says how
        big it was, and the progress view shows it."""
        now = time.monotonic()
        if now - self.memory_sampled < MEMORY_SAMPLE_SECONDS or not self.in_flight:
            return
        self.memory_sampled = now
        from ipyparmap.process.resources import rss_bytes

        for worker in self.in_flight:
            rss = rss_bytes(worker.pid)
            if rss is not None:
                worker.last_rss = rss
                if self.progress is not None:
                    self.progress.worker(worker.pid).rss = rss

    def _receive(self, worker: WorkerHandle) -> None:
        try:
            message, fds = worker.recv()
        except (EOFError, OSError):
            self._on_death(worker)
            return
        self._handle(worker, message, fds)

    def _handle(self, worker: WorkerHandle, message: tuple, fds: list[int] = ()) -> None:
        tag = message[0]
        if tag == P.RESULTS:
            chunk_id, start, blob, table, *rest = message[1:]
            self._on_results(worker, chunk_id, start, Incoming(blob, list(fds), table), *rest)
        elif tag == P.OUTPUT:
            chunk = self.in_flight.get(worker)
            if chunk is not None and chunk.id == message[1]:
                self._on_output(chunk, message[2])
        elif tag == P.READY:
            worker.ready = True
            self.boot_failures = 0
        elif tag == P.LOAD_ERROR:
            self._on_load_error(worker, *message[1:])

    def _on_results(self, worker, chunk_id, start, values: Incoming, errors, timings, began,
                    outputs, memory_kb, done) -> None:  # fmt: skip
        chunk = self.in_flight.get(worker)
        if chunk is None or chunk.id != chunk_id:
            values.discard()
            return
        if outputs:
            self._on_output(chunk, outputs)
        if memory_kb and memory_kb[1]:
            worker.last_rss = memory_kb[1] * 1024
        elif self.options.max_memory is not None:  # it cannot tell (no /proc: macOS)
            from ipyparmap.process.resources import rss_bytes

            worker.last_rss = rss_bytes(worker.pid) or worker.last_rss
        self._fold(chunk, start, values, errors, timings, memory_kb, began)
        if done:
            self._chunk_finished(worker, chunk)

    def _chunk_finished(self, worker: WorkerHandle, chunk: _Chunk) -> None:
        """The worker is through with its running chunk: it starts the queued one, if any."""
        del self.in_flight[worker]
        following = self.queued.pop(worker, None)
        if following is not None and following.blob is not None:  # assigned, not yet sent
            self._send(following)
            if worker not in self.in_flight:  # it was not wanted any more
                self._progress_worker(worker.pid, IDLE)
        elif following is not None:
            self.in_flight[worker] = following
            self._progress_worker(worker.pid, BUSY, following.indices[0])
        else:
            self._progress_worker(worker.pid, IDLE)
        self._chunk_done(worker, chunk)

    def _payload_for(self, chunk: _Chunk):
        """Hook: the pickled function this chunk runs."""
        return self.payload

    def _chunk_done(self, worker: WorkerHandle, chunk: _Chunk) -> None:
        """``worker`` finished ``chunk`` and is idle again: recycle it if it grew too big."""
        limit = self.options.max_memory
        if limit is not None and worker.last_rss is not None and worker.last_rss > limit:
            self.stats.recycled += 1
            self._retire(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        """Stop an idle worker on purpose and start a fresh one in its place."""
        self.workers.remove(worker)
        self._unwatch(worker)
        self.pool.release([worker], keep=0)  # stops it
        if not self.stopping and (self.requeue or not self.exhausted):
            self._replace_worker(planned=True)

    def _extra_waitables(self) -> dict:
        """Hook: more objects for the wait, each mapped to what to call when it is ready."""
        return {}

    def _on_load_error(self, worker: WorkerHandle, what: str, ident, info) -> None:
        if what == "func":
            cause = rebuild_exception(info) if info is not None else None
            error = SerializationError(
                f"the function {_name(self.func)} could not be unpickled in a worker"
                + (f": {type(cause).__name__}: {cause}" if cause is not None else "")
            )
            error.__cause__ = cause
            self._function_failed(worker, ident, error)
            return
        chunk = self.in_flight.get(worker)
        if chunk is None:
            return
        self._chunk_finished(worker, chunk)
        if len(chunk.items) == 1:
            cause = rebuild_exception(info)
            error = SerializationError(
                f"item {self._label(chunk.indices[0])} could not be unpickled in the worker: "
                f"{type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            self._item_failed(chunk, 0, "error", error, "")
        else:  # find the bad item: send each alone
            for position in reversed(range(len(chunk.items))):
                self._requeue_position(chunk, position, solo=True)

    def _function_failed(self, worker: WorkerHandle, key: bytes, error: BaseException) -> None:
        """The function could not be loaded in a worker: nothing of this run can run."""
        self.abort()
        raise error

    def _on_death(self, worker: WorkerHandle) -> None:
        if worker.closed:
            return
        # Messages it sent before dying are still in the pipe: read them first.
        while True:
            try:
                if not worker.conn.poll(0):
                    break
                message, fds = worker.recv()
            except (EOFError, OSError):
                break
            self._handle(worker, message, fds)
        if worker.closed:  # handling a message may have closed it
            return
        returncode = worker.reap(5.0)
        booted = worker.ready
        timed_out = self.timed_out.get(worker)
        board = worker.board.read()  # what it was doing when it died
        chunk = self.in_flight.pop(worker, None)
        following = self.queued.pop(worker, None)  # queued behind: it never started
        self._forget(worker)
        if following is not None:
            _release(following)
            for position in reversed(range(len(following.items))):
                self._requeue_position(following, position, solo=following.solo)
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

    def _replace_worker(self, planned: bool = False) -> None:
        """Start a worker in place of one that died (or, ``planned``, was retired)."""
        worker = self.pool.spawn(self.env)
        if not planned:
            self.stats.restarts += 1
        self.workers.append(worker)
        self._watch(worker)
        self._progress_worker(worker.pid, IDLE)
        if self.progress is not None:
            self.progress.worker(worker.pid).restarts = self.stats.restarts

    def _crashed_chunk(self, chunk, worker, returncode, board, timed_out_position) -> None:
        remaining = list(range(chunk.reported, len(chunk.items)))
        if not remaining:
            return
        board_chunk, position, span, started = board
        suspects: set = set()  # positions that may have killed it: each runs alone again
        if board_chunk != chunk.id:  # it died before it even looked at the chunk
            blame = None
        elif 0 <= position < len(chunk.items):
            blame = position
            if span > 1:  # somewhere in a block of tiny items (see worker.run_items)
                end = min(position + span, len(chunk.items))
                suspects = set(range(max(position, chunk.reported), end))
                blame = min(suspects) if len(suspects) == 1 else None
        elif chunk.solo or len(remaining) == 1:  # died loading items or sending results
            blame = remaining[0]
        else:  # which item? run each alone to find out
            blame, suspects = None, set(remaining)
        if blame is None and len(suspects) > 1:
            for pos in reversed(remaining):
                self._requeue_position(chunk, pos, solo=chunk.solo or pos in suspects)
            return
        for pos in reversed(remaining):
            if pos != blame:
                self._requeue_position(chunk, pos, solo=chunk.solo)
        if blame is None:
            return
        label = self._label(chunk.indices[blame])
        if timed_out_position == blame:
            exc: TaskError = TaskTimeout(
                f"item {label} ran longer than the timeout of {self.options.timeout:g} s; "
                f"its worker (pid {worker.pid}) was killed",
                self.options.timeout,
            )
            kind = "timeout"
        else:
            exc = WorkerCrashed(
                f"the worker running item {label} (pid {worker.pid}) {describe_exit(returncode)}"
                + (  # with SIGKILL, likely the OOM killer: how big was it?
                    f"; it used {format_bytes(worker.last_rss)} of memory at the last sample"
                    if worker.last_rss and signal_name(returncode) == "SIGKILL"
                    else ""
                ),
                returncode if returncode is None or returncode >= 0 else None,
                signal_name(returncode),
            )
            kind = "crashed"
        if self.keep_details and started > 0:  # the timeline shows it ran until it died
            ran = max(0.0, time.monotonic() - started)
            self.slots.timing(
                [chunk.indices[blame]], P.Timings.single(ran), worker.pid, time.time() - ran
            )
        self._item_failed(chunk, blame, kind, exc, "")

    def _check_timeouts(self) -> None:
        limit = self.options.timeout
        if limit is None:
            return
        now = time.monotonic()
        for worker, chunk in self.in_flight.items():
            if worker in self.timed_out:
                continue
            board_chunk, position, _, started = worker.board.read()
            running = board_chunk == chunk.id and 0 <= position < len(chunk.items)
            if running and now - started > limit:
                self.timed_out[worker] = position
                worker.kill()

    def _refresh_progress(self) -> None:
        if self.progress is None or not self.progress.listeners:
            return
        for worker, chunk in self.in_flight.items():
            board_chunk, position, _, _ = worker.board.read()
            if board_chunk == chunk.id and 0 <= position < len(chunk.indices):
                self.progress.worker(worker.pid).current = chunk.indices[position]
        self.progress.maybe_refresh()


def _executable() -> str:
    import sys

    return sys.executable


def _release(chunk: _Chunk) -> None:
    """Close the shared memory of a chunk that was never sent."""
    if chunk.blob is not None:
        chunk.blob.close()
        chunk.blob = None
