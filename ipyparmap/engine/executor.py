"""The executor engine: chunks become tasks of any Executor or a Dask cluster (layer L3).

``backend=`` may be a ``concurrent.futures.Executor`` (threads or processes), a
``distributed.Client``, or ``"dask"`` (the current client). The generic run state in
runner.py stays the same; here a chunk is one task running
`run_task`, which returns the chunk's results, errors, timings
and captured output in one piece. So progress moves per chunk, and what a task cannot
tell us (which item a dead process was running) is found out by running again: when
Dask gives up on a task because its workers died (``KilledWorker``, which also hits
innocent tasks that were queued on those workers), each item of the chunk runs again
alone, with nothing else in flight, and only an item that kills its worker alone fails
as ``crashed``. A ``ProcessPoolExecutor`` breaks as a whole when one of its processes
dies (the standard library's behaviour): every unfinished item fails as ``crashed``.

The function is pickled once per run; a Dask cluster gets it once per worker
(scattered, broadcast), a process executor with each task (it has no other way in),
a thread executor not at all.

Per-item ``timeout`` needs the local engine (a task in someone else's executor cannot
be killed) and is refused up front.
"""

from __future__ import annotations

import concurrent.futures
import time
from concurrent.futures import FIRST_COMPLETED, Executor, ThreadPoolExecutor
from typing import Any

from ipyparmap.engine.run import OutputCallback, Runner, _Chunk, _name
from ipyparmap.errors import SerializationError, WorkerCrashed
from ipyparmap.options import Options
from ipyparmap.process.worker import TASK_DONE, run_task
from ipyparmap.views.progress import BUSY, IDLE, ProgressModel
from ipyparmap.wire.serialize import rebuild_exception


def resolve_backend(backend: Any) -> tuple[str, Any]:
    """``(kind, executor)`` for a backend option; kind is "thread", "process" or "dask".

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
        return "dask", backend
    if isinstance(backend, Executor):
        if getattr(backend, "_shutdown", False) or getattr(backend, "_shutdown_thread", False):
            raise ValueError("the executor is shut down")
        return ("thread" if isinstance(backend, ThreadPoolExecutor) else "process"), backend
    raise ValueError(
        "backend must be None, 'local', 'dask', a distributed.Client or a "
        f"concurrent.futures.Executor, got {type(backend).__name__}"
    )


def _is_dask_client(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("distributed") and hasattr(obj, "submit") and hasattr(obj, "scatter")


def default_concurrency(kind: str, executor: Any) -> int:
    """How many chunks run at once when ``workers`` is not given."""
    if kind == "dask":
        try:
            return max(1, sum(executor.nthreads().values()))
        except Exception:
            return 1
    count = getattr(executor, "_max_workers", None)
    if isinstance(count, int) and count > 0:
        return count
    from ipyparmap.process.resources import cpu_count

    return cpu_count()


#: Seconds an interrupted or cancelled run waits for results that are on their way.
HARVEST_SECONDS = 0.25


def _payload(payload: tuple) -> tuple:
    """The Dask task whose result is the pickled function (see _start_engine)."""
    return payload


class ExecutorRunner(Runner):
    """Runs the map as tasks of ``executor`` (kind "thread", "process" or "dask")."""

    def __init__(
        self,
        func,
        iterable,
        options: Options,
        *,
        kind: str,
        executor: Any,
        workers: int,
        progress: ProgressModel | None = None,
        on_output: OutputCallback | None = None,
        keep_details: bool = True,
    ):
        super().__init__(
            func, iterable, options, workers=workers, progress=progress,
            on_output=on_output, keep_details=keep_details,
        )  # fmt: skip
        self.kind = kind
        self.executor = executor
        self.task_payload: Any = None
        # Keep twice the concurrency queued so no executor worker waits for the next task.
        self.depth = 2 * self.n_workers

    # ------------------------------------------------------------------ engine hooks
    def _start_engine(self) -> None:
        payload = self.payload
        if self.kind == "thread":
            self.task_payload = self.func  # same process: nothing to pickle
        elif self.kind == "dask":
            # A task whose result is the payload, not scattered data: if the workers
            # holding it die, the scheduler recomputes it instead of cancelling every
            # task that needs it. Workers fetch it once and keep it while it is needed.
            self.task_payload = self.executor.submit(
                _payload, (payload.key, payload.blob, payload.sources), pure=False
            )
        else:
            self.task_payload = (payload.key, payload.blob, payload.sources)

    def _dispatch(self) -> None:
        while not self.stopping and len(self.in_flight) < self.depth:
            if self.requeue and self.requeue[0].solo and self.in_flight:
                return  # a suspect runs alone, so that a lost worker is its own doing
            chunk = self._next_chunk(None)
            if chunk is None:
                return
            self._submit(chunk)
            if chunk.solo:
                return

    def _submit(self, chunk: _Chunk) -> None:
        capture = self.kind != "thread"
        args = (self.task_payload, chunk.blob, self.options.star, capture)
        try:
            if self.kind == "dask":
                future = self.executor.submit(run_task, *args, pure=False)
            else:
                future = self.executor.submit(run_task, *args)
        except RuntimeError as exc:
            self.stopping = True
            self._cancel_rest(chunk)
            if isinstance(exc, concurrent.futures.BrokenExecutor):
                return  # a worker died and broke the pool: its items failed, these wait
            raise ValueError(f"the executor is shut down ({exc})") from None
        chunk.blob = None
        chunk.owner = future
        self.in_flight[future] = chunk

    def _wait(self, timeout: float) -> None:
        futures = list(self.in_flight)
        if not futures:
            return
        for future in self._first_completed(futures, timeout):
            chunk = self.in_flight.pop(future, None)
            if chunk is not None:
                self._finished(chunk, future)
        if self.progress is not None:
            self.progress.maybe_refresh()

    def _first_completed(self, futures: list, timeout: float) -> set:
        """The futures that are done, waiting up to ``timeout`` for at least one."""
        if self.kind != "dask":
            return concurrent.futures.wait(futures, timeout, FIRST_COMPLETED)[0]
        from distributed import wait as dask_wait

        try:
            return dask_wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)[0]
        except Exception as exc:  # its TimeoutError type differs between versions
            if "Timeout" in type(exc).__name__:
                return set()
            if "Cancelled" in type(exc).__name__:  # lost on the cluster's side
                return {f for f in futures if f.status in ("cancelled", "error")}
            raise

    def _finished(self, chunk: _Chunk, future) -> None:
        try:
            outcome = future.result()
        except BaseException as exc:  # the task itself failed: a lost worker, a broken pool
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._task_failed(chunk, exc)
            return
        if outcome[0] == TASK_DONE:
            _, values_blob, errors, timings, began, outputs, memory_kb, worker = outcome
            chunk.worker_id = worker
            self._progress_worker(worker, BUSY)
            if outputs:
                self._on_output(chunk, outputs)
            self._fold(chunk, 0, values_blob, errors, timings, memory_kb, began)
            self._progress_worker(worker, IDLE)
            return
        _, what, info = outcome  # TASK_LOAD_ERROR
        cause = rebuild_exception(info)
        if what == "func":
            error = SerializationError(
                f"the function {_name(self.func)} could not be unpickled in a worker: "
                f"{type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            self.abort()
            raise error
        if len(chunk.items) == 1:
            error = SerializationError(
                f"item {self._label(chunk.indices[0])} could not be unpickled in the worker: "
                f"{type(cause).__name__}: {cause}"
            )
            error.__cause__ = cause
            self._item_failed(chunk, 0, "error", error, "")
        else:  # find the bad item: send each alone
            for position in reversed(range(len(chunk.items))):
                self._requeue_position(chunk, position, solo=True)

    def _task_failed(self, chunk: _Chunk, exc: BaseException) -> None:
        name = type(exc).__name__
        if self.stopping and (
            isinstance(exc, concurrent.futures.CancelledError) or "Cancelled" in name
        ):
            self._cancel_rest(chunk)  # we cancelled it
            return
        crashed = name in (
            "BrokenProcessPool",
            "KilledWorker",
            "BrokenExecutor",
            "FuturesCancelledError",
        )
        if name == "KilledWorker" and not chunk.solo:
            # Dask gives up on every task that sat on the workers a bad task killed, so
            # the innocent ones run again, each alone; the guilty one dies alone.
            for position in reversed(range(chunk.reported, len(chunk.items))):
                self._requeue_position(chunk, position, solo=True)
            return
        message = (
            f"the {self.kind} worker running items {chunk.indices[0]}..{chunk.indices[-1]} "
            f"was lost: {name}: {exc}"
        )
        for position in range(chunk.reported, len(chunk.items)):
            if crashed:
                error: BaseException = WorkerCrashed(message)
                self._item_failed(chunk, position, "crashed", error, "")
            else:
                self._item_failed(chunk, position, "error", exc, "")
        if name in ("BrokenProcessPool", "BrokenExecutor"):
            # the executor is unusable now: stop sending, the unsent items are cancelled
            self.stopping = True

    def _kill_busy(self) -> None:
        # Tasks that finished a moment ago may not have told us yet: keep their results.
        deadline = time.monotonic() + HARVEST_SECONDS
        while self.in_flight and (remaining := deadline - time.monotonic()) > 0:
            finished = self._first_completed(list(self.in_flight), remaining)
            if not finished:
                break
            for future in finished:
                chunk = self.in_flight.pop(future)
                try:
                    self._finished(chunk, future)
                except Exception:  # a failure now must not stop the cancelling
                    self._cancel_rest(chunk)
        futures = list(self.in_flight)
        if self.kind == "dask" and futures:
            try:
                self.executor.cancel(futures, force=True)
            except Exception:
                pass
        for future in futures:
            if self.kind != "dask":
                future.cancel()  # a task that already runs in a thread/process finishes alone
            self._cancel_rest(self.in_flight.pop(future))

    def _close_engine(self) -> None:
        self.task_payload = None  # lets Dask forget the scattered function
