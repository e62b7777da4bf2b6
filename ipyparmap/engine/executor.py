"""The executor engine: chunks become tasks of any Executor or a Dask cluster (layer: engine).

``backend=`` may be a ``concurrent.futures.Executor`` (threads or processes), a
``distributed.Client``, or ``"dask"`` (the current client). A chunk is one task running
`process.worker.run_task`, which returns the chunk's results, errors, timings and
captured output in one piece (a `messages.TaskDone`). So progress moves per chunk,
and what a task cannot tell us (which item a dead process was running) is found out by
running again: a lost task of several items runs each item alone, with nothing else in
flight, and only an item that loses its worker alone fails as ``crashed``
(engine/attribution.py, the same policy as the local engine's). Dask gives up on every
task that sat on the workers a bad task killed (``KilledWorker``), so the innocent ones
run again, each alone. A ``ProcessPoolExecutor`` breaks as a whole when one of its
processes dies (the standard library's behaviour): every item it held fails as
``crashed``, the items not sent yet are cancelled, and nothing more can be sent.

What differs between executors is a `TaskBackend` (`ThreadTasks`, `ProcessTasks`,
`DaskTasks`): how the function travels (not at all to threads; with each task to a
process executor, which has no other way in; as one Dask task that every chunk task
depends on, recomputed if the workers holding it die), how tasks are submitted, waited
for and cancelled. Per-item ``timeout`` needs the local engine (a task in someone
else's executor cannot be killed) and is refused up front.
"""

from __future__ import annotations

import concurrent.futures
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ipyparmap.engine.attribution import function_unloadable
from ipyparmap.engine.feed import PICKLED, Chunk
from ipyparmap.errors import TaskTimeout, WorkerCrashed
from ipyparmap.process.worker import run_task
from ipyparmap.views.progress import BUSY, IDLE
from ipyparmap.wire import messages as M
from ipyparmap.wire.serialize import FunctionPayload, rebuild_exception

if TYPE_CHECKING:
    from ipyparmap.engine.run import Runner

#: Seconds an interrupted or cancelled run waits for results that are on their way.
HARVEST_SECONDS = 0.25
#: Exceptions (by name: Dask's types differ between versions) that mean a task was lost
#: with its worker, not that the task raised.
LOST_TASK_ERRORS = ("BrokenProcessPool", "KilledWorker", "BrokenExecutor", "FuturesCancelledError")


class TaskBackend:
    """How chunks run as tasks of one kind of executor."""

    name = "executor"
    #: capture print output inside the task (not in threads: sys.stdout is shared)
    capture = True
    #: how chunks' items travel (engine/feed.py): inside the pickle, or as they are
    packing = PICKLED
    #: a timed-out or interrupted task can be left to finish alone (our own threads);
    #: other executors' tasks cannot be stopped nor left, so timeout= is refused
    abandons = False

    def __init__(self, executor: Any):
        self.executor = executor

    def concurrency(self) -> int:
        """How many chunks run at once when ``workers`` is not given."""
        count = getattr(self.executor, "_max_workers", None)
        if isinstance(count, int) and count > 0:
            return count
        from ipyparmap.process.resources import cpu_count

        return cpu_count()

    def depth(self, workers: int) -> int:
        """Tasks kept in flight: twice the concurrency, so no executor worker waits for
        the next task."""
        return 2 * workers

    def prepare(self, func: Any, payload: FunctionPayload) -> Any:
        """What each task gets as its function (see `run_task`): a big global's data
        inside the pickle, since these workers get no shared memory."""
        return (payload.content_key(), payload.in_band(func), payload.sources)

    def running_since(self, future: Any) -> tuple[int, float] | None:
        """(position, start) of the item a task runs now, where the backend can tell."""
        return None

    def take_output(self, future: Any) -> list:
        """Output a running task wrote since the last call, where it can be had early."""
        return []

    def forget(self, future: Any) -> None:
        """The engine is done with a task (it finished, or was abandoned)."""

    def submit(self, *args: Any) -> Any:
        return self.executor.submit(run_task, *args)

    def first_completed(self, futures: list, timeout: float) -> set:
        """The futures that are done, waiting up to ``timeout`` for at least one."""
        return concurrent.futures.wait(futures, timeout, FIRST_COMPLETED)[0]

    def cancel(self, futures: list) -> None:
        for future in futures:
            future.cancel()  # a task that already runs finishes alone

    def release(self) -> None:
        """The run is over."""


class ThreadTasks(TaskBackend):
    name = "thread"
    capture = False

    def prepare(self, func: Any, payload: FunctionPayload) -> Any:
        return func  # same process: nothing to pickle


class ProcessTasks(TaskBackend):
    name = "process"


class DaskTasks(TaskBackend):
    name = "dask"

    def __init__(self, executor: Any):
        super().__init__(executor)
        self.function_task: Any = None

    def concurrency(self) -> int:
        try:
            return max(1, sum(self.executor.nthreads().values()))
        except Exception:
            return 1

    def prepare(self, func: Any, payload: FunctionPayload) -> Any:
        # A task whose result is the payload, not scattered data: if the workers
        # holding it die, the scheduler recomputes it instead of cancelling every
        # task that needs it. Workers fetch it once and keep it while it is needed.
        self.function_task = self.executor.submit(
            _payload, (payload.content_key(), payload.in_band(func), payload.sources), pure=False
        )
        return self.function_task

    def submit(self, *args: Any) -> Any:
        return self.executor.submit(run_task, *args, pure=False)

    def first_completed(self, futures: list, timeout: float) -> set:
        from distributed import wait as dask_wait

        try:
            return dask_wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)[0]
        except Exception as exc:  # its TimeoutError type differs between versions
            if "Timeout" in type(exc).__name__:
                return set()
            if "Cancelled" in type(exc).__name__:  # lost on the cluster's side
                return {f for f in futures if f.status in ("cancelled", "error")}
            raise

    def cancel(self, futures: list) -> None:
        try:
            self.executor.cancel(futures, force=True)
        except Exception:
            pass

    def release(self) -> None:
        self.function_task = None  # lets Dask forget the function's task


def _payload(payload: tuple) -> tuple:
    """The Dask task whose result is the pickled function (see DaskTasks.prepare)."""
    return payload


def resolve_backend(backend: Any) -> TaskBackend:
    """The `TaskBackend` for a ``backend=`` option.

    Raises ValueError with what is wrong: no Dask client, a closed client, a shut-down
    executor, something that is not an executor at all.
    """
    if backend == "dask":
        try:
            from distributed import Client
        except ImportError:
            raise ValueError(
                "backend='dask' needs the 'distributed' package (pip install distributed)"
            ) from None
        try:
            backend = Client.current()
        except ValueError:
            raise ValueError(
                "backend='dask' needs a running distributed.Client: create one first, "
                "e.g. client = distributed.Client() or Client('tcp://scheduler:8786')"
            ) from None
    if _is_dask_client(backend):
        if backend.status in ("closed", "closing"):
            raise ValueError("the Dask client is closed")
        return DaskTasks(backend)
    if isinstance(backend, Executor):
        if getattr(backend, "_broken", False):  # a ProcessPoolExecutor whose process died
            raise ValueError(
                f"the executor is broken ({backend._broken}): it cannot run anything any "
                "more; make a new one"
            )
        if getattr(backend, "_shutdown", False) or getattr(backend, "_shutdown_thread", False):
            raise ValueError("the executor is shut down")
        if isinstance(backend, ThreadPoolExecutor):
            return ThreadTasks(backend)
        return ProcessTasks(backend)
    raise ValueError(
        "backend must be None, 'local', 'threads', 'dask', a distributed.Client or a "
        f"concurrent.futures.Executor, got {type(backend).__name__}"
    )


def _is_dask_client(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("distributed") and hasattr(obj, "submit") and hasattr(obj, "scatter")


class ExecutorEngine:
    """Runs chunks as tasks of ``backend``, at most ``2 x workers`` in flight."""

    def __init__(self, backend: TaskBackend, *, func_name: str = "the function"):
        self.backend = backend
        self.packing = backend.packing
        self.func_name = func_name
        self.run: Runner = None  # type: ignore[assignment]  # set by start()
        self.in_flight: dict[Any, Chunk] = {}  # future -> the chunk it runs
        self.task_function: Any = None
        self.broken = False  # the executor refused a task: it broke (a process died)

    def start(self, run: Runner) -> None:
        self.run = run
        self.options = run.options
        self.depth = self.backend.depth(run.n_workers)
        self.task_function = self.backend.prepare(run.feed.func, run.feed.payload)

    def busy(self) -> bool:
        return bool(self.in_flight)

    def dispatch(self) -> None:
        run = self.run
        feed = run.feed
        while not run.state.stopping and not self.broken and len(self.in_flight) < self.depth:
            if feed.suspect_next() and self.in_flight:
                return  # a suspect runs alone, so that a lost worker is its own doing
            chunk = feed.next_chunk(None)
            if chunk is None:
                return
            self._submit(chunk)
            if chunk.solo:
                return

    def _submit(self, chunk: Chunk) -> None:
        args = (self.task_function, chunk.blob, self.options.star, self.backend.capture)
        try:
            future = self.backend.submit(*args)
        except RuntimeError as exc:
            self.run.sink.cancel_rest(chunk)
            if isinstance(exc, concurrent.futures.BrokenExecutor):
                # A worker died and broke the pool: nothing more can be sent. The tasks
                # in flight fail with it; the run stops once they have been seen to
                # (stopping now would hide their failure from errors="raise").
                self.broken = True
                if not self.in_flight:
                    self.run.state.stop()
                return
            self.run.state.stop()
            raise ValueError(f"the executor is shut down ({exc})") from None
        chunk.blob = None
        chunk.owner = future
        self.in_flight[future] = chunk

    def wait(self, timeout: float) -> None:
        futures = list(self.in_flight)
        if not futures:
            return
        for future in self.backend.first_completed(futures, timeout):
            chunk = self.in_flight.pop(future, None)
            if chunk is not None:
                self._finished(chunk, future)
                self.backend.forget(future)
        for future, chunk in self.in_flight.items():  # output of tasks still running
            lines = self.backend.take_output(future)
            if lines:
                self.run.sink.output(chunk, lines)
        if self.options.timeout is not None and self.backend.abandons:
            self._check_timeouts()
        if self.broken and not self.in_flight:
            self.run.state.stop()
        if self.run.progress is not None:
            self.run.progress.maybe_refresh()

    def _finished(self, chunk: Chunk, future) -> None:
        run = self.run
        try:
            outcome = future.result()
        except BaseException as exc:  # the task itself failed: a lost worker, a broken pool
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._task_failed(chunk, exc)
            return
        if type(outcome) is M.TaskDone:
            chunk.worker_id = outcome.worker
            run.worker_state(outcome.worker, BUSY)
            if outcome.outputs:
                run.sink.output(chunk, outcome.outputs)
            run.sink.fold(chunk, 0, outcome.values, outcome.errors, outcome.timings,
                          outcome.memory_kb, outcome.began)  # fmt: skip
            run.worker_state(outcome.worker, IDLE)
            return
        cause = rebuild_exception(outcome.info)  # a TaskFailed
        if outcome.what == "func":
            error = function_unloadable(self.func_name, cause)
            run.sink.function_failed(run.feed.payload.key, error)
        else:
            run.policy.items_unloadable(chunk, cause)

    def _check_timeouts(self) -> None:
        """Abandon tasks whose running item is past ``timeout``: the item fails as
        ``timeout``; the rest of its chunk goes back to the feed."""
        limit = self.options.timeout
        now = time.monotonic()
        for future, chunk in list(self.in_flight.items()):
            running = self.backend.running_since(future)
            if running is None or now - running[1] <= limit:
                continue
            position, started = running
            del self.in_flight[future]
            self.backend.forget(future)

            def blame(pos: int, chunk=chunk) -> tuple[str, BaseException]:
                return "timeout", TaskTimeout(
                    f"item {self.run.label(chunk.indices[pos])} ran longer than the timeout "
                    f"of {limit:g} s; its thread was abandoned (a thread cannot be "
                    "stopped: it runs on until the item returns)",
                    limit,
                )

            self.run.policy.worker_died(chunk, (chunk.id, position, 1, started), blame)

    def _task_failed(self, chunk: Chunk, exc: BaseException) -> None:
        run = self.run
        name = type(exc).__name__
        if run.state.stopping and (
            isinstance(exc, concurrent.futures.CancelledError) or "Cancelled" in name
        ):
            run.sink.cancel_rest(chunk)  # we cancelled it
            return
        if name not in LOST_TASK_ERRORS:  # the task machinery raised: every item fails
            for position in chunk.unreported():
                run.sink.item_failed(chunk, position, "error", exc)
            return
        if name == "KilledWorker":
            crash = WorkerCrashed(
                f"the {self.backend.name} worker running item "
                f"{run.label(chunk.indices[chunk.reported])} was lost: {name}: {exc}"
            )
            run.policy.task_lost(chunk, crash)
            return
        message = (
            f"the {self.backend.name} worker running items {chunk.indices[0]}.."
            f"{chunk.indices[-1]} was lost: {name}: {exc}"
        )
        for position in chunk.unreported():
            run.sink.item_failed(chunk, position, "crashed", WorkerCrashed(message))
        if name in ("BrokenProcessPool", "BrokenExecutor"):
            # the executor is unusable now: stop sending, the unsent items are cancelled
            run.state.stop()

    def kill_busy(self) -> None:
        sink = self.run.sink
        # Tasks that finished a moment ago may not have told us yet: keep their results.
        deadline = time.monotonic() + HARVEST_SECONDS
        while self.in_flight and (remaining := deadline - time.monotonic()) > 0:
            finished = self.backend.first_completed(list(self.in_flight), remaining)
            if not finished:
                break
            for future in finished:
                chunk = self.in_flight.pop(future)
                try:
                    self._finished(chunk, future)
                except Exception:  # a failure now must not stop the cancelling
                    sink.cancel_rest(chunk)
                self.backend.forget(future)
        futures = list(self.in_flight)
        if futures:
            self.backend.cancel(futures)
        for future in futures:
            sink.cancel_rest(self.in_flight.pop(future))
            self.backend.forget(future)

    def unused(self) -> None:
        """Nothing was prepared ahead: the backend's workers are its own."""

    def close(self) -> None:
        self.task_function = None
        self.backend.release()
        self.run = None  # type: ignore[assignment]  # (a cycle: the run holds us)
