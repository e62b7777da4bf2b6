"""Drop-in ``Pool``, ``Process`` and ``ProcessPoolExecutor`` on ipyparmap's engine (layer: api).

Change ``import multiprocessing`` (or ``from concurrent.futures import
ProcessPoolExecutor``) to ipyparmap and the code people already have works in a
notebook: notebook functions, lambdas and closures run in spawned workers, worker
``print`` shows in the cell, and a worker that dies fails its own task with
``WorkerCrashed`` instead of hanging the pool.

Where users rely on the standard library's behaviour it is kept: the task's own
exception is re-raised with a ``multiprocessing.pool.RemoteTraceback`` as its cause,
``get(timeout)`` raises ``multiprocessing.TimeoutError``, a closed pool raises
``ValueError``, ``with Pool() as p`` terminates on exit, an input iterable's exception
is re-raised unchanged, an argument that cannot be pickled raises its own error.

Each ``Pool``/``ProcessPoolExecutor`` owns its worker processes (``processes`` of them,
recycled after ``maxtasksperchild`` items) and a `JobServer`
(engine/jobs.py: a `Runner` on a `LocalEngine` fed with jobs) whose thread feeds them,
oldest submission first.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ipyparmap.dropins import handover
from ipyparmap.dropins.calls import PoolCall, ProcessCall
from ipyparmap.dropins.futures import (
    GuardedInitializer,
    InitializerFailed,
    PickledResult,
    ResultCall,
)
from ipyparmap.engine.jobs import MAP, STREAM, EndOfStream, Job, JobServer
from ipyparmap.errors import SerializationError, WorkerCrashed
from ipyparmap.options import BY_NAME as OPTIONS
from ipyparmap.process.pool import Pool as ProcessSet
from ipyparmap.process.pool import spawn_worker, worker_env
from ipyparmap.process.resources import cpu_count, thread_limits
from ipyparmap.results import Failure
from ipyparmap.views.textui import OutputPrinter
from ipyparmap.wire import messages as M
from ipyparmap.wire.codec import dumps, loads
from ipyparmap.wire.serialize import pickle_function, rebuild_exception

TimeoutError = multiprocessing.TimeoutError  # as multiprocessing.TimeoutError


def _task_exception(
    error: BaseException | None, remote: type = multiprocessing.pool.RemoteTraceback
) -> BaseException:
    """The exception a standard-library user expects for a failed task, with the
    worker's traceback as its cause (``remote``: ``multiprocessing``'s class, or
    ``concurrent.futures``' for the executor)."""
    if getattr(error, "argument_error", False) and isinstance(error.__cause__, BaseException):
        return error.__cause__  # "cannot pickle '_thread.lock' object": the argument's own
    cause = getattr(error, "__cause__", None)
    text = getattr(cause, "tb", None)
    if text is not None:  # the task's exception: the worker's traceback as its cause
        error.__cause__ = remote(text)
    return error


def _stdlib_check(option: str, value: Any, message: str) -> Any:
    """The run option's check, with the standard library's ValueError and words, which
    code written for ``multiprocessing`` may catch or match."""
    try:
        return OPTIONS[option].validate(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None


def _check_chunksize(chunksize: Any) -> int | None:
    return _stdlib_check("chunksize", chunksize, f"Chunksize must be 1+, not {chunksize!r}")


class _Engine:
    """A private set of worker processes and the JobServer thread feeding them."""

    def __init__(self, workers: int, initializer, initargs, max_tasks: int | None):
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self.workers = workers
        self.initializer = initializer
        # pickled once, as multiprocessing pickles them for a spawned child (queues,
        # locks, pipes); each worker opens them before its first task
        self.parcel = handover.pack(tuple(initargs)) if initializer is not None else None
        self.initargs = () if self.parcel is None else (self.parcel,)
        self.token = uuid.uuid4().hex
        self.processes = ProcessSet()
        self.runner = JobServer(
            pool=self.processes,
            workers=workers,
            env=thread_limits(workers),
            max_tasks_per_worker=max_tasks,
            on_output=OutputPrinter(tag=False),
        )
        self.runner.start()

    def call(self, func: Callable, mode: str) -> PoolCall:
        return PoolCall(func, mode, self.initializer, self.initargs, self.token)

    def submit(self, func: Callable, items, mode: str, kind: str, chunksize=None, **hooks) -> Job:
        job = Job(
            self.call(func, mode), items, kind=kind, chunksize=chunksize,
            workers=self.workers, **hooks,
        )  # fmt: skip
        self.runner.submit(job)
        return job

    def close(self) -> None:
        self.runner.close()

    def terminate(self) -> None:
        self.runner.terminate()
        self.runner.thread.join(10)
        self.processes.shutdown()
        handover.release(self.parcel)

    def join(self, timeout: float | None = None) -> None:
        self.runner.thread.join(timeout)
        self.processes.shutdown()
        if not self.runner.thread.is_alive():
            handover.release(self.parcel)


# ------------------------------------------------------------------------------ results
class AsyncResult:
    """What ``apply_async``/``map_async`` return, as in ``multiprocessing.pool``."""

    def __init__(self, pool: Pool, single: bool, callback=None, error_callback=None):
        self._pool = pool
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _job_done(self, job: Job) -> None:  # runs in the pool's thread
        if job.error is not None:
            self._error = _task_exception(job.error)
            if self._error_callback is not None:
                self._error_callback(self._error)
        else:
            values = job.ordered_results()
            self._value = values[0] if self._single else values
            if self._callback is not None:
                self._callback(self._value)
        self._pool = None  # the pool and its job need not live as long as this result
        self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


ApplyResult = AsyncResult
MapResult = AsyncResult


class IMapIterator:
    """What ``imap``/``imap_unordered`` return: ``next(timeout)`` as in multiprocessing."""

    def __init__(self, ordered: bool, timeout_error: type[BaseException] = TimeoutError,
                 value: Callable[[Any], Any] | None = None,
                 error: Callable[[BaseException], BaseException] = _task_exception):  # fmt: skip
        self._ordered = ordered
        self._timeout_error = timeout_error
        self._value = value  # turns a delivered outcome into the value (the executor's)
        self._error = error  # turns a failure's exception into the one to raise
        self._cond = threading.Condition()
        self._ready: dict[int, Any] = {}
        self._next = 0
        self._end: int | None = None  # how many outcomes there will be, once known
        self._delivered = 0

    def _outcome(self, index: int, outcome: Any) -> None:  # runs in the pool's thread
        with self._cond:
            if isinstance(outcome, EndOfStream):
                self._ready[index if index >= 0 else -1] = outcome
                if index >= 0:
                    self._end = index + 1
            else:
                self._ready[index] = outcome
            self._cond.notify_all()

    def _job_done(self, job: Job) -> None:
        with self._cond:
            if self._end is None:
                self._end = job.pulled
            self._cond.notify_all()

    def __iter__(self) -> Iterator:
        return self

    def _available(self):
        if -1 in self._ready:  # the pool was terminated
            return -1
        if self._ordered:
            return self._next if self._next in self._ready else None
        return next(iter(self._ready), None)

    def next(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                key = self._available()
                if key is not None:
                    outcome = self._ready.pop(key)
                    break
                done = self._ordered and self._end is not None and self._next >= self._end
                if done or (not self._ordered and self._end is not None
                            and self._delivered >= self._end):  # fmt: skip
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timeout_error
                self._cond.wait(remaining)
            self._next += 1
            self._delivered += 1
        if isinstance(outcome, EndOfStream):
            self._end = self._next - 1  # nothing comes after an input error
            raise outcome.error
        if isinstance(outcome, Failure):
            raise self._error(outcome.exception)
        return outcome if self._value is None else self._value(outcome)

    __next__ = next


# ------------------------------------------------------------------------------ Pool
class Pool:
    """``multiprocessing.pool.Pool`` that works in notebooks and never hangs on a crash
    (tests/test_compat.py::test_a_killed_worker_fails_its_task_instead_of_hanging).

    It draws no progress, like the standard library. ``context`` is accepted for
    compatibility and ignored: workers are always fresh interpreters.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ):
        if processes is None:
            processes = cpu_count()
        _stdlib_check("workers", processes, "Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._processes = processes
        self._engine = _Engine(processes, initializer, initargs, maxtasksperchild)
        self._state = "RUN"
        # A pool nobody closes still stops its workers when it is garbage collected.
        self._finalizer = weakref.finalize(self, _Engine.terminate, self._engine)

    def __repr__(self) -> str:
        return f"<ipyparmap.Pool state={self._state} pool_size={self._processes}>"

    def __del__(self, _warn=warnings.warn) -> None:
        # As multiprocessing: a pool dropped while running is a leak worth a warning
        # (its finalizer still stops the workers).
        if getattr(self, "_state", None) == "RUN":
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _map_result(self, func, iterable, mode, chunksize, callback, error_callback, single=False):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)  # like multiprocessing: input errors raise here
        result = AsyncResult(self, single, callback, error_callback)
        self._engine.submit(
            func, iterable, mode, MAP, _check_chunksize(chunksize), on_done=result._job_done
        )
        return result

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        item = (tuple(args), dict(kwds or {}))  # pickled by the engine: an error goes on
        # the result (and to error_callback), as the standard library's task handler does
        return self._map_result(func, [item], "apply", 1, callback, error_callback, single=True)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_result(func, iterable, "one", chunksize, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return self._map_result(func, iterable, "star", chunksize, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1):
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func, iterable, chunksize, ordered: bool) -> IMapIterator:
        self._check_running()
        iterator = IMapIterator(ordered)
        self._engine.submit(  # chunks of exactly ``chunksize`` items, as the stdlib's
            func, iterable, "one", STREAM, _check_chunksize(chunksize),
            on_outcome=iterator._outcome, on_done=iterator._job_done,
        )  # fmt: skip
        return iterator

    def close(self) -> None:
        if self._state == "RUN":
            self._state = "CLOSE"
            self._engine.close()

    def terminate(self) -> None:
        self._state = "TERMINATE"
        self._finalizer()  # stops at once; queued work ends with pm.Cancelled

    def join(self) -> None:
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        self._engine.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()  # as multiprocessing does


# ------------------------------------------------------------------------------ executor
class ProcessPoolExecutor(concurrent.futures.Executor):
    """``concurrent.futures.ProcessPoolExecutor`` where a crash fails only its own futures.

    Its errors are the standard library's (docs/from-multiprocessing.md): a crashed
    worker fails its future with a `WorkerCrashed` that is also a ``BrokenProcessPool``;
    an error while pickling a result is that error; a failing ``initializer`` breaks
    the executor; work never waited on still runs at interpreter exit.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        *,
        max_tasks_per_child: int | None = None,
    ):
        if max_workers is None:
            max_workers = cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _check_mp_context(mp_context)
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        guarded = None if initializer is None else GuardedInitializer(initializer)
        self._max_workers = max_workers
        self._mp_context = mp_context if mp_context is not None else _spawn_context()
        self._max_tasks_per_child = max_tasks_per_child
        self._engine = _Engine(max_workers, guarded, initargs, max_tasks_per_child)
        self._shutdown = False
        self._broken: str | bool = False  # the reason, once broken (as the stdlib's)
        self._lock = threading.Lock()
        self._pending: weakref.WeakSet = weakref.WeakSet()
        self._finalizer = weakref.finalize(self, _Engine.terminate, self._engine)
        _track_executor(self)

    def _check_open(self) -> None:  # the standard library's order and words
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _at_exit.started:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            self._check_open()
            future: concurrent.futures.Future = concurrent.futures.Future()
            item = (args, kwargs)

            def finished(job: Job) -> None:  # runs in the pool's thread
                if future.done():  # cancelled, or failed by a broken pool
                    return
                if job.error is not None:
                    if isinstance(job.error, InitializerFailed):
                        self._break(job.error)
                    else:
                        _settle(future.set_exception, self._exception(job.error))
                    return
                try:
                    value = _unpickle_result(job.results[0])
                except BaseException as exc:
                    _settle(future.set_exception, exc)
                else:
                    _settle(future.set_result, value)

            def start() -> bool:  # False: cancelled (or broken) while pending
                return not future.done() and future.set_running_or_notify_cancel()

            try:  # the function is pickled now, in the caller; the arguments by the
                # engine's feed (an error there reaches the future through ``finished``)
                self._engine.submit(
                    ResultCall(fn), [item], "apply", MAP, 1, on_done=finished, start=start,
                )  # fmt: skip
            except Exception as exc:  # as the standard library: on the future
                future.set_exception(_pickling_failure(exc))
                return future
            self._pending.add(future)
            return future

    def _exception(self, error: BaseException) -> BaseException:
        if isinstance(error, InitializerFailed):  # in map(): breaks the pool as submit's
            if not self._broken:
                self._break(error)
            return BrokenProcessPool(self._broken)
        if isinstance(error, WorkerCrashed) or (
            isinstance(error, SerializationError) and not error.argument_error
        ):  # a dead worker, or a task that could not be loaded in the worker
            return _broken_pool_error(error)
        if getattr(error, "argument_error", False):  # its own pickling error, as submit's
            return _pickling_failure(error)
        return _task_exception(error, _FuturesTraceback)

    def _break(self, error: BaseException) -> None:
        """The initializer failed in a worker: as in the standard library, every pending
        future fails with ``BrokenProcessPool`` and ``submit`` raises it from now on."""
        cause = _task_exception(error, _FuturesTraceback)
        with self._lock:
            self._broken = f"{_BROKEN} (the initializer raised {error})"
        for future in list(self._pending):
            if not future.done():
                broken = BrokenProcessPool(
                    "A process in the process pool was terminated abruptly while the "
                    "future was running or pending (the initializer failed)."
                )
                broken.__cause__ = cause
                _settle(future.set_exception, broken)
        self._engine.runner.terminate()  # we are in its thread: it stops once we return

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:  # fmt: skip
        self._check_open()
        _check_chunksize(chunksize)
        items = list(zip(*iterables, strict=False))  # all submitted at once, as the stdlib
        stream = IMapIterator(
            ordered=True, timeout_error=concurrent.futures.TimeoutError,
            value=_unpickle_result, error=self._exception,
        )  # fmt: skip
        self._engine.submit(
            ResultCall(fn), items, "star", STREAM, chunksize,
            on_outcome=stream._outcome, on_done=stream._job_done,
        )  # fmt: skip
        deadline = None if timeout is None else time.monotonic() + timeout

        def results():
            for _ in range(len(items)):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield stream.next(left)

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            for future in list(self._pending):
                future.cancel()
        self._engine.close()
        if wait:
            self._engine.join()
            _at_exit.executors.discard(self)  # else: its work is still run at exit
        self._finalizer.detach()

    def _finish_at_exit(self) -> None:
        """Run what was submitted and never waited on, as the standard library does."""
        if not self._broken:
            self._engine.close()
            self._engine.join()


# ------------------------------------------------------------------------------ Process
class Process(multiprocessing.process.BaseProcess):
    """``multiprocessing.Process`` for notebook-defined targets, under spawn.

    The standard library's own process class (``BaseProcess``: ``start``, ``join``,
    ``is_alive``, ``exitcode``, ``close``, ``active_children()``, subclassing with
    ``run()``) with ipyparmap's launcher in place of a start method's ``Popen``, as each
    ``multiprocessing`` context specialises it: the child is an ipyparmap worker
    (`_WorkerPopen`), so its ``print`` output shows in the cell that started it. If
    the target raises, the worker writes the traceback to its own ``sys.stderr`` (the
    cell, unless the target redirected it) and ``exitcode`` is 1 (``sys.exit(n)``
    gives ``n``), as with the standard library (dropins/calls.py ``ProcessCall``). Its
    arguments may hold queues, locks, shared values and pipes (dropins/handover.py).
    """

    _start_method = "spawn"

    def __init__(
        self,
        group=None,
        target: Callable | None = None,
        name: str | None = None,
        args: Iterable = (),
        kwargs: dict | None = None,
        *,
        daemon: bool | None = None,
    ):
        super().__init__(group, target, name, args, kwargs or {}, daemon=daemon)

    @staticmethod
    def _Popen(process_obj: Process) -> _WorkerPopen:  # BaseProcess calls it so
        return _WorkerPopen(process_obj)

    def __getstate__(self):  # a subclass instance travels to its own worker
        state = dict(self.__dict__)
        state.update(_popen=None)
        state.pop("_sentinel", None)
        return state


class _WorkerPopen:
    """One ipyparmap worker running one ``Process``: the ``Popen`` that ``BaseProcess``
    drives (``poll``, ``wait``, ``terminate``, ``kill``, ``close``, ``sentinel``)."""

    def __init__(self, process_obj: Process):
        # pickled as multiprocessing pickles for a spawned child: queues, locks, pipes
        if type(process_obj).run is multiprocessing.process.BaseProcess.run:
            what = (process_obj._target, process_obj._args, process_obj._kwargs)
        else:  # a subclass overriding run(): send the object itself
            what = process_obj
        self.name = process_obj.name
        self.returncode: int | None = None
        self._target_exitcode: int | None = None
        self._parcel = parcel = handover.pack(what)
        try:
            call = ProcessCall(self.name, bytes(process_obj.authkey), parcel)
            payload = pickle_function(call)
            blob = dumps([None])
            self._worker = worker = spawn_worker(worker_env())
        except BaseException:
            handover.release(parcel)
            raise
        self.pid = worker.pid
        self.sentinel = worker.sentinel
        worker.send_function(payload)
        worker.send(M.pack(M.RunChunk(0, payload.key, blob, star=False, stride=1, table=None)))
        payload.close()
        worker.send(M.pack(M.Stop()))
        self._reader = threading.Thread(
            target=contextvars.copy_context().run, args=(self._read,), daemon=True,
            name=f"ipyparmap-{self.name}",
        )  # fmt: skip
        self._reader.start()
        weakref.finalize(self, _release_worker, worker)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        """The exit code: the worker's, or the target's (``sys.exit(n)``, 1 after an
        uncaught exception) when the worker itself ended normally."""
        if self.returncode is None:
            code = self._worker.proc.poll()
            if code is None:
                return None
            self._reader.join(5)  # the target's exit code arrives just before EOF
            if code == 0 and self._target_exitcode is not None:
                code = self._target_exitcode
            self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if timeout is not None and timeout < 0:  # as multiprocessing: join(-1) polls
            timeout = 0
        try:
            self._worker.proc.wait(timeout)
        except Exception:  # subprocess.TimeoutExpired: still running, as multiprocessing
            return None
        return self.poll()

    def terminate(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.poll() is None:
            self._worker.kill()

    def close(self) -> None:
        self._worker.close()

    def _read(self) -> None:
        """Forward the target's output to this cell; note how the target ended."""
        try:
            self._read_messages()
        finally:
            handover.release(self._parcel)  # the worker is gone: nobody opens it now

    def _read_messages(self) -> None:
        while True:
            try:
                message, fds = self._worker.recv()
            except (EOFError, OSError):
                return
            for fd in fds:  # shared memory of a result nobody reads
                os.close(fd)
            if type(message) is M.Output:
                for _, stream, text in message.lines:
                    (sys.stdout if stream == "stdout" else sys.stderr).write(text)
            elif type(message) is M.ResultBatch:
                for _, stream, text in message.outputs:
                    (sys.stdout if stream == "stdout" else sys.stderr).write(text)
                self._target_exitcode = 1
                if message.errors:
                    self._target_exitcode = self._report(next(iter(message.errors.values())))
                elif message.table is None:
                    try:  # ProcessCall's exit code (it printed any traceback itself)
                        self._target_exitcode = int(loads(message.values)[0])
                    except Exception:
                        pass
            elif type(message) is M.LoadFailed:
                self._target_exitcode = self._report(message.info)

    def _report(self, info) -> int:
        """The call failed in the worker before the target ran (it could not load)."""
        if info is None:
            return 1
        exc = rebuild_exception(info)
        if isinstance(exc, SystemExit):
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        sys.stderr.write(f"Process {self.name}:\n{info[3]}")
        return 1


def _release_worker(worker) -> None:
    """A ``Process`` was garbage collected: close its worker's descriptors (the sentinel
    among them) if the worker has ended, as multiprocessing's Popen does."""
    if worker.proc.poll() is not None:
        worker.close()


def freeze_support() -> None:
    """Does nothing, as on every platform but frozen Windows programs (API parity)."""


# At exit, multiprocessing's own exit function terminates daemonic processes and joins
# the others: ours are among its children (BaseProcess.start adds them).
current_process = multiprocessing.current_process


# ------------------------------------------------------------------------------ executor helpers
#: The cause ``concurrent.futures`` gives a task's exception (its worker's traceback).
_FuturesTraceback = concurrent.futures.process._RemoteTraceback

_BROKEN = "A child process terminated abruptly, the process pool is not usable anymore"


def _spawn_context() -> Any:
    """The context an executor reports as its ``_mp_context`` when given none: how its
    workers start (``get_start_method()`` is ``"spawn"``, as the stdlib's default with
    ``max_tasks_per_child``)."""
    return multiprocessing.get_context("spawn")


def _check_mp_context(mp_context: Any) -> None:
    """A spawn context is what ipyparmap does anyway; any other is refused, not ignored."""
    if mp_context is None:
        return
    getter = getattr(mp_context, "get_start_method", None)
    if getter is None:
        raise TypeError(f"mp_context must be a multiprocessing context, not {mp_context!r}")
    try:
        method = getter(allow_none=False)
    except TypeError:
        method = getter()
    if method != "spawn":
        raise ValueError(
            f"mp_context with start method {method!r} is not supported: ipyparmap's "
            "workers are always fresh interpreters, as with 'spawn' (forking a Jupyter "
            "kernel or a threaded process is unsafe); pass mp_context=None or "
            "multiprocessing.get_context('spawn')"
        )


def _settle(setter: Callable, value: Any) -> None:
    """Set a future's outcome unless it was cancelled meanwhile (in the caller's thread)."""
    try:
        setter(value)
    except concurrent.futures.InvalidStateError:
        pass


def _pickling_failure(error: BaseException) -> BaseException:
    """What ``submit`` puts on the future when the call cannot be pickled: the pickling
    error itself (ipyparmap's message, naming the part that failed, as a note), with
    the traceback as ``concurrent.futures`` gives it for the same failure."""
    import traceback

    cause = error.__cause__ if isinstance(error, SerializationError) else None
    if isinstance(cause, BaseException):
        cause.add_note(str(error))
        error = cause
    text = "".join(traceback.format_exception(error))
    error.__cause__ = _FuturesTraceback(f'\n"""\n{text}"""')
    return error


def _unpickle_result(result: Any) -> Any:
    """A `ResultCall`'s outcome: the value, or the exception its pickling raised."""
    if not isinstance(result, PickledResult):
        return result
    if result.error is None:
        try:
            return loads(result.data)
        except (Exception, SystemExit) as exc:  # the stdlib breaks the pool; here only
            # this future fails
            raise BrokenProcessPool(f"the result could not be unpickled: {exc!r}") from exc
    error = loads(result.error)
    error.__cause__ = _FuturesTraceback(result.tb)
    raise error


_broken_classes: dict[type, type] = {}


def _broken_pool_error(error: BaseException) -> BaseException:
    """The same error as an instance of ``WorkerCrashed[BrokenProcessPool]`` (or
    ``SerializationError[...]``): a subclass of the error's own class (WorkerCrashed,
    MemoryLimitExceeded, SerializationError) and of the standard library's
    ``BrokenProcessPool``, with the error's attributes."""
    kind = type(error)
    cls = _broken_classes.get(kind)
    if cls is None:
        cls = type(
            f"{kind.__name__}[BrokenProcessPool]", (kind, BrokenProcessPool),
            {"__module__": kind.__module__,
             "__doc__": f"A {kind.__name__} that is also a BrokenProcessPool.",
             "__reduce__": _broken_reduce},
        )  # fmt: skip
        _broken_classes[kind] = cls
    made = cls.__new__(cls, *error.args)
    made.args = error.args
    made.__dict__.update(vars(error))
    made.__cause__ = error.__cause__
    return made.with_traceback(error.__traceback__)


def _broken_reduce(self):
    kind = type(self).__mro__[1]  # the crash's own class; its __reduce__ gives the args
    return (_rebuild_broken, (kind, kind.__reduce__(self)[1]))


def _rebuild_broken(kind: type, args: tuple) -> BaseException:
    return _broken_pool_error(kind(*args))


class _AtExit:
    """Live executors, finished at interpreter exit as the standard library's are (it
    joins them from ``threading._register_atexit``, before ``atexit`` handlers)."""

    def __init__(self):
        self.executors: weakref.WeakSet = weakref.WeakSet()
        self.started = False
        self.registered = False
        self.lock = threading.Lock()

    def run(self) -> None:
        self.started = True
        for executor in list(self.executors):
            executor._finish_at_exit()


_at_exit = _AtExit()


def _track_executor(executor: ProcessPoolExecutor) -> None:
    with _at_exit.lock:
        if not _at_exit.registered:
            try:
                threading._register_atexit(_at_exit.run)  # type: ignore[attr-defined]
            except RuntimeError:  # "can't register atexit after shutdown"
                _at_exit.started = True
            _at_exit.registered = True
        _at_exit.executors.add(executor)
