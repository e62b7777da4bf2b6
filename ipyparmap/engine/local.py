"""The local engine: chunks go to leased workers of a process pool (layer: engine).

What only local worker processes have: one socketpair each (a chunk goes to a specific
idle worker, so we always know who holds what), death sentinels (a dead worker fails
only the item it was running: engine/attribution.py decides; a replacement starts), the
status board (per-item timeouts kill only the stuck worker), boot-failure detection,
memory sampling, and recycling (``max_memory``; ``maxtasksperchild`` for the drop-ins).

The engine reads chunks from the run's feed and hands results to its sink; it holds no
other run state. The drop-ins' job server (engine/jobs.py) uses it unchanged, with a
wake-up socket among the waited-on objects and a per-worker item limit.
"""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ipyparmap.engine.attribution import function_unloadable
from ipyparmap.engine.feed import SHARED_MEMORY, Chunk
from ipyparmap.errors import (
    MemoryLimitExceeded,
    ParmapError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)
from ipyparmap.figures import format_bytes
from ipyparmap.options import describe
from ipyparmap.process.capture import kernel_log_levels, unsent_output
from ipyparmap.process.pool import EnvExtra, PendingWorker, Pool, WorkerHandle, caller_world
from ipyparmap.process.resources import describe_exit, signal_name
from ipyparmap.views.progress import BUSY, DEAD, IDLE
from ipyparmap.wire import messages as M
from ipyparmap.wire.channel import FrameError
from ipyparmap.wire.codec import loads
from ipyparmap.wire.serialize import Incoming, rebuild_exception

if TYPE_CHECKING:
    from ipyparmap.engine.run import Runner

#: Workers that die before they ever start, in a row, before the run gives up.
MAX_BOOT_FAILURES = 3
#: Seconds between samples of busy workers' memory.
MEMORY_SAMPLE_SECONDS = 0.5
#: ...with ``max_memory`` set: a worker over the limit is stopped within about this
#: (plus the run loop's tick, 0.1 s), while its item runs...
MEMORY_LIMIT_SAMPLE_SECONDS = 0.1
#: ...once the item has run this long. A quicker item could end before any sample or
#: be caught by one, at random; it always ends, and a worker that stays over the limit
#: is replaced after its chunk (as between items, loading a chunk or sending results).
MEMORY_LIMIT_GRACE_SECONDS = 0.25
#: A worker whose chunk takes less than this gets its next chunk queued behind it, so it
#: never waits for the parent's round trip (results in, next chunk out). Longer chunks
#: are not worth it, and a queued chunk could not go to a worker that frees up first.
PREFETCH_SECONDS = 0.05
#: ...and only when chunks batch at least this many items: with single slow items an
#: estimate says little about the next one, and a chunk queued behind a long item waits.
PREFETCH_MIN_ITEMS = 8
#: When every chunk in flight should be back within this (by its planner's estimate)
#: and a CPU is free, the engine polls its pipes for up to this long before it sleeps:
#: a sleeping parent's wake-up costs more than such a chunk (~40 us of a ~160 us warm
#: 2-item call on a 2-core machine).
SPIN_SECONDS = 100e-6


class LocalEngine:
    """Runs chunks on ``workers`` leased workers of ``pool``.

    ``max_items_per_worker`` retires a worker after that many items (the drop-ins'
    ``maxtasksperchild``); ``wake`` is a socket whose readiness calls ``on_wake`` (a
    job server's way to say "new work"); ``func_name`` names the function in errors.
    """

    packing = SHARED_MEMORY  # items' large buffers travel in shared memory

    def __init__(self, pool: Pool, *, env: EnvExtra = None, max_items_per_worker: int | None = None,
                 wake: Any = None, on_wake: Callable[[], None] | None = None,
                 func_name: str = "the function"):  # fmt: skip
        self.pool = pool
        self.env = env
        self.max_items = max_items_per_worker
        self.wake, self.on_wake = wake, on_wake
        self.func_name = func_name
        self.run: Runner = None  # type: ignore[assignment]  # set by start()
        self.workers: list[WorkerHandle] = []
        self.in_flight: dict[WorkerHandle, Chunk] = {}  # worker -> the chunk it runs
        self.queued: dict[WorkerHandle, Chunk] = {}  # a busy worker's next chunk
        self.timed_out: dict[WorkerHandle, int] = {}  # worker -> position killed for
        self.items_run: dict[WorkerHandle, int] = {}  # for max_items_per_worker
        # Workers forked ahead of need, for replacements known to be coming (_order_spare)
        self.spares: list[PendingWorker] = []
        self.selector: Any = None  # every pipe and sentinel (from the pool's cache, if it can)
        self.cpus = 1  # usable CPUs (set by start): spin-waiting needs one to spare
        self.boot_failures = 0
        self.log_levels = (0, b"")  # the kernel's logging levels, for new workers' boards
        self.memory_sampled = time.monotonic()  # when busy workers' RSS was last read
        self.over_memory: dict[WorkerHandle, int] = {}  # worker -> RSS it was stopped at
        # The caller's working directory, environment, sys.path and module versions now,
        # at the call: every chunk runs in it (sync_world in _send).
        self.world = caller_world()

    # ------------------------------------------------------------------ the run's calls
    def start(self, run: Runner) -> None:
        self.run = run
        self.options = run.options
        payload = getattr(run.feed, "payload", None)
        if payload is not None:  # new workers: what they need, made ready while they start
            self.pool.prepare(run.n_workers, payload)
        self.workers = self.pool.acquire(run.n_workers, self.env)
        from ipyparmap.process.resources import cpu_count

        self.cpus = cpu_count()
        self.selector = self.pool.take_selector(self.workers)
        if self.selector is None:
            self.selector = selectors.DefaultSelector()
            for worker in self.workers:
                self._watch(worker)
        self.log_levels = kernel_log_levels()  # workers log as the kernel would
        for worker in self.workers:
            worker.board.set_forwarding(*self.log_levels)
            run.worker_state(worker.pid, IDLE)
        if self.wake is not None:
            self.selector.register(self.wake, selectors.EVENT_READ, (None, "wake"))
        self._preload(getattr(run.feed, "payload", None))

    def _preload(self, payload) -> None:
        """A function with big globals: before they are hashed and copied for the first
        chunk (~0.1 s for 200 MB), have the workers import the modules it needs (NumPy:
        ~50 ms), so both happen at once."""
        if payload is None or payload.packed is None:
            return
        modules = payload.preload()
        for worker in self.workers:
            new = tuple(name for name in modules if name not in worker.preloaded)
            if not new:
                continue
            try:
                worker.send(M.pack(M.Preload(new)))
            except OSError:
                continue  # it died: its sentinel says so
            worker.preloaded.update(new)

    def busy(self) -> bool:
        return bool(self.in_flight)

    def dispatch(self) -> None:
        run = self.run
        if run.state.stopping:
            return
        feed = run.feed
        for worker in list(self.workers):
            if worker in self.in_flight or worker.closed:
                continue
            chunk = feed.next_chunk(worker)
            if chunk is None:
                return
            self._send(chunk)
        for worker, running in list(self.in_flight.items()):
            if worker in self.queued or not self._prefetch_ok(running):
                continue
            chunk = feed.next_chunk(worker)
            if chunk is None:
                return
            self._send(chunk, queued=True)

    def wait(self, timeout: float) -> None:
        if self.options.timeout is not None:
            timeout = min(timeout, max(0.01, self.options.timeout / 10))
        for key, _ in self._select(timeout):
            worker, what = key.data
            if worker is None:
                self.on_wake()
            elif worker.closed:
                continue
            elif what == "pipe":
                self._receive(worker)
            else:
                self._on_death(worker)
        self._check_timeouts()
        self._sample_memory()
        self._refresh_progress()

    def _select(self, timeout: float) -> list:
        """The selector's events; polled for a moment first when results are due."""
        select = self.selector.select
        if self._due_soon():
            clock = time.perf_counter
            until = clock() + SPIN_SECONDS
            while True:
                events = select(0)
                if events or clock() >= until:
                    return events or select(timeout)
        return select(timeout)

    def _due_soon(self) -> bool:
        """Whether every chunk in flight should be back within SPIN_SECONDS, with a CPU
        to spare for polling (never on one CPU: the poll would hold up the worker)."""
        in_flight = self.in_flight
        if not in_flight or len(in_flight) >= self.cpus:
            return False
        for chunk in in_flight.values():
            per_item = chunk.planner.per_item
            if per_item is None or per_item * len(chunk.items) >= SPIN_SECONDS:
                return False
        return True

    def kill_busy(self) -> None:
        sink = self.run.sink
        busy = [w for w in self.in_flight if not w.closed]
        for worker in busy:
            worker.kill()
        for worker in busy:
            worker.reap(5.0)
            chunk = self.in_flight.pop(worker)
            self._salvage(worker, chunk)
            sink.cancel_rest(chunk)
            if worker in self.queued:
                following = self.queued.pop(worker)
                _release(following)
                sink.cancel_rest(following)
            self._forget(worker)

    def _salvage(self, worker: WorkerHandle, chunk: Chunk) -> None:
        """A worker killed on purpose (interrupt, cancel, the first failure): keep what it
        finished and wrote before, from its pipe and its board's output log. Pinned by
        tests/test_output_capture.py::test_an_interrupt_keeps_what_killed_items_printed"""
        sink = self.run.sink
        for message, fds in _unread(worker):
            if type(message) in (M.ResultBatch, M.Output):  # the output log they emptied
                worker.board.seen = message.seq
            if type(message) is M.ResultBatch and message.chunk_id == chunk.id:
                if message.outputs:
                    sink.output(chunk, message.outputs)
                values = Incoming(message.values, list(fds), message.table)
                sink.fold(chunk, message.start, values, message.errors, message.timings,
                          message.memory_kb, message.began)  # fmt: skip
            else:
                for fd in fds:
                    os.close(fd)
                if type(message) is M.Output and message.chunk_id == chunk.id:
                    sink.output(chunk, message.lines)
        lines = unsent_output(worker.board, chunk.id)
        if lines:
            sink.output(chunk, lines)

    def unused(self) -> None:
        """The run failed before it started this engine (its function cannot be
        pickled): stop the template process the call started ahead, if no worker of the
        pool needs it, so that a misuse leaves no process behind."""
        self.pool.drop_template_if_unused()

    def close(self) -> None:
        for spare in self.spares:  # not needed after all
            self.pool.cancel_spare(spare)
        self.spares.clear()
        keep = max(self.run.n_workers, len(self.workers))
        idle = [w for w in self.workers if w not in self.in_flight]
        self.pool.release(idle, keep=keep)
        if self.selector is None:
            return
        if self.wake is not None:
            self.selector.unregister(self.wake)
        if len(idle) == len(self.workers):  # it watches exactly these: keep it for them
            self.pool.keep_selector(self.workers, self.selector)
        else:
            self.selector.close()
        self.run = None  # type: ignore[assignment]  # (a cycle: the run holds us)

    # ------------------------------------------------------------------ sending
    def _prefetch_ok(self, running: Chunk) -> bool:
        """Whether to queue a next chunk behind ``running`` (short chunks only)."""
        per_item = running.planner.per_item
        return (
            per_item is not None
            # big arrays: the next chunk's copy into shared memory overlaps this one
            and (len(running.items) >= PREFETCH_MIN_ITEMS or running.shared)
            and per_item * len(running.items) < PREFETCH_SECONDS
            and not running.solo
            and not self.run.feed.requeue  # suspects and retries go out one at a time
            and self.options.max_memory is None  # recycling needs an idle worker
            and self.max_items is None  # counting items per worker: one chunk at a time
        )

    def _send(self, chunk: Chunk, queued: bool = False) -> None:
        worker = chunk.owner
        chunk.worker_id = worker.pid
        payload = self.run.feed.payload_for(chunk)
        if payload is None:  # nothing wants it any more (a drop-in pool's job ended)
            _release(chunk)
            return
        if queued:
            self.queued[worker] = chunk
            # A busy worker does not read its pipe: a message bigger than the pipe's
            # buffer would block us while the worker blocks sending us its results, a
            # deadlock. Such a chunk stays here, assigned, and goes out when the worker
            # is idle. Pinned by (a long name, on its own line):
            # tests/faults/test_concurrency.py::test_queued_chunks_never_outgrow_a_small_socket_buffer  # noqa: E501
            if len(chunk.blob.blob) + 1024 > worker.fits or payload.key not in worker.functions:
                return
        else:
            self.in_flight[worker] = chunk
            self.run.worker_state(worker.pid, BUSY, chunk.indices[0])
            if (
                self.max_items is not None
                and self.items_run.get(worker, 0) + len(chunk.items) >= self.max_items
            ):
                self._order_spare(payload)  # it retires after this chunk
        packed = chunk.blob
        try:
            worker.sync_world(self.world)  # what changed since its last chunk, if anything
            worker.send_function(payload)
            # Blocks of tiny items (stride > 1) pin a stuck item only to its block: with
            # a timeout, every item runs on its own.
            stride = chunk.planner.timing_stride() if self.options.timeout is None else 1
            fds, table = packed.share()  # large buffers: shared memory, mapped by the worker
            chunk.shared = bool(fds)
            message = M.RunChunk(
                chunk.id, payload.key, packed.blob, self.options.star, stride, table,
                fresh_rss=self.options.max_memory is not None,  # it decides on recycling
            )  # fmt: skip
            worker.send(M.pack(message), fds)
        except OSError:
            pass  # it died; its sentinel fires and _on_death requeues the chunk
        finally:
            packed.close()  # the worker has its own descriptor
        chunk.blob = None

    # ------------------------------------------------------------------ receiving
    def _receive(self, worker: WorkerHandle) -> None:
        try:
            message, fds = worker.recv()
        except FrameError as bad:  # whole, but its descriptors were lost: the batch's
            # values cannot be mapped, so they fail to load like any unloadable result
            message, fds = M.unpack(loads(bad.payload)), []
        except (EOFError, OSError):
            self._on_death(worker)
            return
        self._handle(worker, message, fds)

    def _handle(self, worker: WorkerHandle, message: Any, fds: list[int] = ()) -> None:
        kind = type(message)
        if kind is M.ResultBatch:
            worker.board.seen = message.seq  # the worker's output log it emptied
            self._on_results(worker, message, Incoming(message.values, list(fds), message.table))
        elif kind is M.Output:
            worker.board.seen = message.seq
            chunk = self.in_flight.get(worker)
            if chunk is not None and chunk.id == message.chunk_id:
                self.run.sink.output(chunk, message.lines)
        elif kind is M.Display:
            chunk = self.in_flight.get(worker)
            if chunk is not None and chunk.id == message.chunk_id:
                self.run.sink.output(chunk, [(message.position, "display", message)])
        elif kind is M.Ready:
            worker.ready = True
            self.boot_failures = 0
        elif kind is M.LoadFailed:
            self._on_load_failed(worker, message)

    def _on_results(self, worker: WorkerHandle, batch: M.ResultBatch, values: Incoming) -> None:
        chunk = self.in_flight.get(worker)
        if chunk is None or chunk.id != batch.chunk_id:
            values.discard()
            return
        sink = self.run.sink
        if batch.outputs:
            sink.output(chunk, batch.outputs)
        memory_kb = batch.memory_kb
        if memory_kb and memory_kb[1]:
            worker.last_rss = memory_kb[1] * 1024
        elif self.options.max_memory is not None:  # it cannot tell (no /proc: macOS)
            from ipyparmap.process.resources import rss_bytes

            worker.last_rss = rss_bytes(worker.pid) or worker.last_rss
        sink.fold(chunk, batch.start, values, batch.errors, batch.timings, memory_kb, batch.began)
        if batch.done:
            self._chunk_finished(worker, chunk)

    def _chunk_finished(self, worker: WorkerHandle, chunk: Chunk) -> None:
        """The worker is through with its running chunk: it starts the queued one, if any."""
        del self.in_flight[worker]
        following = self.queued.pop(worker, None)
        if following is not None and following.blob is not None:  # assigned, not yet sent
            self._send(following)
            if worker not in self.in_flight:  # it was not wanted any more
                self.run.worker_state(worker.pid, IDLE)
        elif following is not None:
            self.in_flight[worker] = following
            self.run.worker_state(worker.pid, BUSY, following.indices[0])
        else:
            self.run.worker_state(worker.pid, IDLE)
        self._maybe_recycle(worker, chunk)

    def _on_load_failed(self, worker: WorkerHandle, message: M.LoadFailed) -> None:
        chunk = self.in_flight.get(worker)
        if message.what == "func":
            cause = rebuild_exception(message.info) if message.info is not None else None
            if chunk is not None:  # the chunk this report answers
                self._chunk_finished(worker, chunk)
            self.run.sink.function_failed(message.ident, function_unloadable(self.func_name, cause))
            return
        if chunk is None:
            return
        self._chunk_finished(worker, chunk)
        self.run.policy.items_unloadable(chunk, rebuild_exception(message.info))

    # ------------------------------------------------------------------ workers
    def _watch(self, worker: WorkerHandle) -> None:
        self.selector.register(worker.conn.fileno(), selectors.EVENT_READ, (worker, "pipe"))
        self.selector.register(worker.sentinel, selectors.EVENT_READ, (worker, "death"))

    def _unwatch(self, worker: WorkerHandle) -> None:
        for fd in (worker.conn.fileno(), worker.sentinel):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _forget(self, worker: WorkerHandle) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
            self._unwatch(worker)
        self.timed_out.pop(worker, None)
        self.items_run.pop(worker, None)
        self.pool.discard(worker)
        self.run.worker_state(worker.pid, DEAD)

    def _maybe_recycle(self, worker: WorkerHandle, chunk: Chunk) -> None:
        """``worker`` finished ``chunk`` and is idle again: retire it if it grew too big
        (max_memory) or ran its share of items (max_items_per_worker)."""
        limit = self.options.max_memory
        if limit is not None and worker.last_rss is not None and worker.last_rss > limit:
            self.run.stats.recycled += 1
            self._retire(worker)
            return
        if self.max_items is not None:
            count = self.items_run.get(worker, 0) + len(chunk.items)
            self.items_run[worker] = count
            if count >= self.max_items:  # like maxtasksperchild
                self._retire(worker)

    def _retire(self, worker: WorkerHandle) -> None:
        """Stop an idle worker on purpose and start a fresh one in its place."""
        self.workers.remove(worker)
        self._unwatch(worker)
        self.items_run.pop(worker, None)
        self.pool.release([worker], keep=0, wait=False)  # stops it, in the background
        if not self.run.state.stopping and self.run.feed.more_work():
            self._replace_worker(planned=True)

    def _order_spare(self, payload=None) -> None:
        """A worker will be replaced (it retires after its chunk, or one just died: a
        function that crashes its worker may well do it again): have one forked ahead,
        so that the replacement does not wait for a fork and the new worker's boot (and
        its loading of ``payload``, the function its next chunk will likely run) overlap
        the current work. One per worker at most; unused ones end with the run."""
        if len(self.spares) < len(self.workers) and self.run.feed.more_work():
            spare = self.pool.order_spare(self.env)
            if spare is not None:
                self.spares.append(spare)
                if payload is not None:
                    spare.prime(self.world, payload)

    def _replace_worker(self, planned: bool = False) -> None:
        """Start a worker in place of one that died (or, ``planned``, was retired)."""
        spare = self.spares.pop(0) if self.spares else None
        worker = self.pool.spawn(self.env, spare)
        stats = self.run.stats
        if not planned:
            stats.restarts += 1
        self.workers.append(worker)
        self._watch(worker)
        worker.board.set_forwarding(*self.log_levels)
        self.run.worker_state(worker.pid, IDLE)
        if self.run.progress is not None:
            self.run.progress.worker(worker.pid).restarts = stats.restarts

    def _on_death(self, worker: WorkerHandle) -> None:
        if worker.closed:
            return
        # Messages it sent before dying are still in the pipe: read them first.
        for message, fds in _unread(worker):
            self._handle(worker, message, fds)
        if worker.closed:  # handling a message may have closed it
            return
        chunk = self.in_flight.get(worker)
        if chunk is not None:  # what it wrote that no message brought: its board has it
            lines = unsent_output(worker.board, chunk.id)
            if lines:
                self.run.sink.output(chunk, lines)
        returncode = worker.reap(5.0)
        booted = worker.ready
        timed_out = self.timed_out.get(worker)
        where = worker.board.read()  # what it was doing when it died
        chunk = self.in_flight.pop(worker, None)
        following = self.queued.pop(worker, None)  # queued behind: it never started
        self._forget(worker)
        run = self.run
        if following is not None:
            _release(following)
            for position in reversed(range(len(following.items))):
                run.feed.put_back(following.pending(position, solo=following.solo))
        if chunk is not None:
            self._crashed(chunk, worker, returncode, where, timed_out)
        if not booted:
            self.boot_failures += 1
            if self.boot_failures >= MAX_BOOT_FAILURES:
                run.abort()
                raise ParmapError(
                    f"worker processes {describe_exit(returncode)} before they started; "
                    f"their error output is above. Can {describe(_executable())} import "
                    "ipyparmap?"
                )
        if not run.state.stopping and run.feed.more_work():
            self._replace_worker()
            # for the next death, if there is one (primed with the run's function)
            self._order_spare(getattr(run.feed, "payload", None))

    def _crashed(self, chunk: Chunk, worker: WorkerHandle, returncode, where,
                 timed_out_position) -> None:  # fmt: skip
        over_memory = self.over_memory.pop(worker, None)

        def blame(position: int) -> tuple[str, BaseException]:
            label = self.run.label(chunk.indices[position])
            if timed_out_position == position:
                return "timeout", TaskTimeout(
                    f"item {label} ran longer than the timeout of {self.options.timeout:g} s; "
                    f"its worker (pid {worker.pid}) was killed",
                    self.options.timeout,
                )
            if over_memory is not None:
                limit = self.options.max_memory
                return "memory", MemoryLimitExceeded(
                    f"the worker running item {label} (pid {worker.pid}) used "
                    f"{format_bytes(over_memory)} of memory (RSS), over the max_memory limit "
                    f"of {format_bytes(limit)}; it was stopped",
                    limit,
                    over_memory,
                )
            error: TaskError = WorkerCrashed(
                f"the worker running item {label} (pid {worker.pid}) {describe_exit(returncode)}"
                + (  # with SIGKILL, likely the OOM killer: how big was it?
                    f"; it used {format_bytes(worker.last_rss)} of memory at the last sample"
                    if worker.last_rss and signal_name(returncode) == "SIGKILL"
                    else ""
                ),
                returncode if returncode is None or returncode >= 0 else None,
                signal_name(returncode),
            )
            return "crashed", error

        blamed = self.run.policy.worker_died(chunk, where, blame)
        started = where[3]
        if blamed is None or started <= 0:
            return
        # The worker was busy with the item until it died: that time counts in the run's
        # figures ("workers busy"), or a run with a timeout would read as idle workers.
        run = self.run
        ran = max(0.0, time.monotonic() - started)
        stats = run.stats
        stats.task_time += ran
        stats.busy[worker.pid] = stats.busy.get(worker.pid, 0.0) + ran
        if run.progress is not None:
            run.progress.worker(worker.pid).busy += ran
        if run.sink.keep_details:  # the timeline shows it ran until it died
            run.sink.timing(
                [chunk.indices[blamed]], M.Timings.single(ran), worker.pid, time.time() - ran
            )

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

    def _sample_memory(self) -> None:
        """Note busy workers' RSS now and then: an OOM-killed worker's message says how
        big it was, and the progress view shows it. With ``max_memory``, more often, and
        a worker over the limit is stopped: its item fails as ``memory`` (`_crashed`)."""
        limit = self.options.max_memory
        every = MEMORY_SAMPLE_SECONDS if limit is None else MEMORY_LIMIT_SAMPLE_SECONDS
        now = time.monotonic()
        if now - self.memory_sampled < every or not self.in_flight:
            return
        self.memory_sampled = now
        from ipyparmap.process.resources import rss_bytes

        progress = self.run.progress
        for worker in self.in_flight:
            rss = rss_bytes(worker.pid)
            if rss is None:
                continue
            worker.last_rss = rss
            if progress is not None:
                progress.worker(worker.pid).rss = rss
            if limit is not None and rss > limit and self._running_for(worker, now):
                self.over_memory[worker] = rss
                worker.kill()  # its death sentinel fires: _on_death, then _crashed

    def _running_for(self, worker: WorkerHandle, now: float) -> bool:
        """Whether ``worker`` runs an item (not loading a chunk, not sending results)
        since MEMORY_LIMIT_GRACE_SECONDS at least, and is not being stopped already."""
        if worker in self.over_memory or worker in self.timed_out:
            return False
        board_chunk, position, _, started = worker.board.read()
        chunk = self.in_flight[worker]
        running = board_chunk == chunk.id and 0 <= position < len(chunk.items)
        return running and now - started >= MEMORY_LIMIT_GRACE_SECONDS

    def _refresh_progress(self) -> None:
        progress = self.run.progress
        if progress is None or not progress.listeners:
            return
        for worker, chunk in self.in_flight.items():
            board_chunk, position, _, _ = worker.board.read()
            if board_chunk == chunk.id and 0 <= position < len(chunk.indices):
                progress.worker(worker.pid).current = chunk.indices[position]
        progress.maybe_refresh()


def _unread(worker: WorkerHandle):
    """The messages a dead (or killed) worker sent that are still in its pipe."""
    while True:
        try:
            if not worker.conn.poll(0):
                return
            message, fds = worker.recv()
        except (EOFError, OSError):
            return
        yield message, fds


def _executable() -> str:
    import sys

    return sys.executable


def _release(chunk: Chunk) -> None:
    """Close the shared memory of a chunk that was never sent."""
    if chunk.blob is not None:
        chunk.blob.close()
        chunk.blob = None
