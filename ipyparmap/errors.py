"""Exception classes of the public API (bottom layer: imports nothing from the package).

Every exception ipyparmap raises on purpose is a `ParmapError`. The ones raised
because an item failed carry the `Failure` (``.failure``) and
the partial `Results` (``.results``), so nothing computed is
lost when a run stops early.
"""

from __future__ import annotations

import threading
import types
from typing import Any


class ParmapError(Exception):
    """Base class of every error raised by ipyparmap."""

    #: The partial Results of the run that raised this (None when no run had started).
    results: Any = None
    #: The Failure that caused this error, where one item is to blame.
    failure: Any = None
    #: The notebook name the partial results were bound to (``%%parmap -o NAME``).
    bound_as: str | None = None

    def _render_traceback_(self) -> list[str]:
        """How IPython shows this error: like a local one, without ipyparmap's frames.

        The header names the failed item; then where the partial results are; then the
        worker's traceback, whose frames carry the notebook cell's source lines.
        """
        return render_error(self)


_RED, _BOLD, _RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


def render_error(exc: ParmapError) -> list[str]:
    lines = [f"{_RED}{_BOLD}{type(exc).__name__}{_RESET}: {exc}"]
    results = exc.results
    if results is not None:
        where = exc.bound_as or ".results of this exception"
        lines.append(f"  partial results: {results.summary()} -> in {where}")
    failure = exc.failure
    text = getattr(failure, "traceback", "") if failure is not None else ""
    if text and getattr(failure, "kind", None) == "error":
        body = text.splitlines()
        if body and body[0].startswith("Traceback"):
            body = body[1:]
        worker = getattr(failure, "worker", None)
        origin = f"worker {worker}" if worker else "the worker"
        lines.append(f"Traceback in {origin} (most recent call last):")
        lines.extend(body)
    return lines


class TaskError(ParmapError):
    """An item failed with ``errors="raise"``.

    The task's own exception is this error's ``__cause__`` (its remote traceback, in
    turn, is the cause's ``__cause__``), ``.failure`` says which item, and ``.results``
    holds every result finished before the run was cancelled.
    """

    def __init__(self, message: str, failure: Any = None, results: Any = None):
        super().__init__(message)
        self.failure = failure
        self.results = results

    def __reduce__(self):  # keep the attributes when pickled (e.g. nested runs)
        return (type(self), (self.args[0] if self.args else "", self.failure, self.results))


# ------------------------------------------------------------------ catchable by type
#: Exception types a TaskError never takes on, though Python would allow it: a worker's
#: ``sys.exit()`` or ``KeyboardInterrupt`` must not look like the kernel's own, and a
#: StopIteration raised inside a generator (``imap``) turns into a RuntimeError.
NOT_MIXED = (StopIteration, StopAsyncIteration)
#: Attributes of an exception that belong to how it was raised, not to what it says.
_NOT_COPIED = frozenset(
    {"args", "__traceback__", "__cause__", "__context__", "__suppress_context__",
     "__notes__", "__dict__", "__weakref__"}
)  # fmt: skip
_mixed_classes: dict[type, type | None] = {}  # the item's exception type -> its TaskError
_mixed_lock = threading.Lock()


def task_error(message: str, failure: Any, results: Any, exc: BaseException | None) -> TaskError:
    """The TaskError raised for an item whose function raised ``exc``.

    Where Python allows it, it is also an instance of ``type(exc)``, so
    ``except FileNotFoundError:`` around ``parmap`` catches a worker's
    FileNotFoundError: a subclass ``TaskError[FileNotFoundError]`` of both is made once
    per type. The instance is made without calling the type's ``__init__``; it carries
    the exception's ``args`` and attributes (``errno``, ``filename``, ``key``...),
    while ``str()`` is the TaskError's message. A plain TaskError is the fallback: for
    exceptions that are not an ``Exception`` (SystemExit, KeyboardInterrupt...),
    StopIteration, types that cannot be subclassed or mixed with TaskError, and a
    `RemoteException` (the type could not be rebuilt here).
    """
    cls = None if exc is None else _mixed_class(type(exc))
    if cls is not None:
        made = _mixed_instance(cls, exc, message)
        if made is not None:
            made.failure, made.results = failure, results
            return made
    return TaskError(message, failure, results)


def _mixed_class(kind: type) -> type | None:
    try:
        return _mixed_classes[kind]
    except KeyError:
        pass
    with _mixed_lock:
        if kind not in _mixed_classes:
            _mixed_classes[kind] = _make_mixed_class(kind)
        return _mixed_classes[kind]


def _make_mixed_class(kind: type) -> type | None:
    if (
        not issubclass(kind, Exception)
        or issubclass(kind, NOT_MIXED)
        or issubclass(kind, (ParmapError, RemoteException))
    ):
        return None
    namespace = {
        "__module__": __name__,
        "__qualname__": f"TaskError[{kind.__qualname__}]",
        "__doc__": f"A TaskError that is also a {kind.__qualname__} (see errors.task_error).",
        "__init__": _mixed_init,
        "__str__": _mixed_str,
        "__reduce__": _mixed_reduce,
        "_render_traceback_": ParmapError._render_traceback_,
    }
    # TaskError first, so its attributes win; some C types (MemoryError) only make
    # instances of subclasses whose first base is theirs.
    made = []
    for bases in ((TaskError, kind), (kind, TaskError)):
        try:
            cls = type("TaskError", bases, dict(namespace))
        except Exception:  # layout or metaclass conflict, __init_subclass__ refusing...
            continue
        try:
            cls.__new__(cls)
        except Exception:  # maybe its __new__ needs the exception's arguments
            made.append(cls)
            continue
        return cls
    return made[0] if made else None


def _mixed_instance(cls: type, exc: BaseException, message: str) -> TaskError | None:
    try:
        made = cls.__new__(cls, *exc.args)
    except Exception:
        try:
            made = cls.__new__(cls)
        except Exception:
            return None
    BaseException.__init__(made, *exc.args)
    for klass in type(exc).__mro__:
        if klass in (BaseException, object):
            continue
        for name, attr in vars(klass).items():
            descriptor = isinstance(attr, (types.MemberDescriptorType, types.GetSetDescriptorType))
            if descriptor and name not in _NOT_COPIED:
                try:
                    setattr(made, name, getattr(exc, name))
                except Exception:  # unset (BlockingIOError.characters_written), read-only
                    pass
    extra = {k: v for k, v in getattr(exc, "__dict__", {}).items() if k not in _NOT_COPIED}
    made.__dict__.update(extra)
    made._task_message = message
    return made


def _mixed_init(self, *args: Any) -> None:  # called by no one here; keep it harmless
    BaseException.__init__(self, *args)
    self._task_message = str(args[0]) if args else ""


def _mixed_str(self) -> str:
    return self._task_message


def _mixed_reduce(self):
    return (_rebuild_task_error, (self._task_message, self.failure, self.results))


def _rebuild_task_error(message: str, failure: Any, results: Any) -> TaskError:
    return task_error(message, failure, results, getattr(failure, "exception", None))


class WorkerCrashed(TaskError):
    """The worker process running an item died (segfault, ``os._exit``, SIGKILL...)."""

    def __init__(
        self,
        message: str,
        exitcode: int | None = None,
        signal_name: str | None = None,
        failure: Any = None,
        results: Any = None,
    ):
        super().__init__(message, failure, results)
        self.exitcode = exitcode
        self.signal_name = signal_name

    def __reduce__(self):
        return (
            type(self),
            (self.args[0], self.exitcode, self.signal_name, self.failure, self.results),
        )


class MemoryLimitExceeded(WorkerCrashed):
    """The worker running an item went over ``max_memory``; it was stopped (SIGKILL).

    ``.limit`` is the limit and ``.peak`` the worker's largest resident memory (RSS)
    seen, in bytes. The item's Failure has ``kind == "memory"``; a fresh worker takes
    its place and the run goes on (``retries=`` apply, as to a crash).
    """

    def __init__(
        self,
        message: str,
        limit: int | None = None,
        peak: int | None = None,
        failure: Any = None,
        results: Any = None,
    ):
        super().__init__(message, None, "SIGKILL", failure, results)
        self.limit = limit
        self.peak = peak

    def __reduce__(self):
        return (type(self), (self.args[0], self.limit, self.peak, self.failure, self.results))


class TaskTimeout(TaskError):
    """An item ran longer than ``timeout`` seconds; its worker was killed."""

    def __init__(
        self, message: str, timeout: float | None = None, failure: Any = None, results: Any = None
    ):
        super().__init__(message, failure, results)
        self.timeout = timeout

    def __reduce__(self):
        return (type(self), (self.args[0], self.timeout, self.failure, self.results))


class SerializationError(ParmapError):
    """Something could not be pickled or unpickled; the message names what and where."""

    #: True when an item (an argument) could not be pickled in the caller; its own
    #: pickling error is the ``__cause__`` (the drop-in classes raise that one).
    argument_error = False

    def __init__(self, message: str, failure: Any = None, results: Any = None):
        super().__init__(message)
        self.failure = failure
        self.results = results

    def __reduce__(self):
        return (type(self), (self.args[0], self.failure, self.results))


class Interrupted(ParmapError, KeyboardInterrupt):
    """The user interrupted a run (Ctrl-C, "interrupt kernel").

    Also a ``KeyboardInterrupt``, so code that handles interrupts keeps working;
    ``.results`` holds the partial Results (unfinished slots are ``cancelled`` failures).
    """

    def __init__(self, message: str = "interrupted", results: Any = None):
        super().__init__(message)
        self.results = results

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "interrupted", self.results))


class RemoteTraceback(Exception):
    """Carries the formatted traceback of an exception raised in a worker.

    It is set as the ``__cause__`` of the task's exception, the way
    ``concurrent.futures`` does, so a printed traceback shows where in the worker the
    exception was raised.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteException(Exception):
    """Stands in for a task exception that could not be pickled back from the worker."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.type_name, self.message))


def _make_cancelled():
    # concurrent.futures imports logging (~10 ms): only when someone needs Cancelled,
    # which a worker never does.
    from concurrent.futures import CancelledError

    class Cancelled(ParmapError, CancelledError):
        """The run was cancelled (``run.cancel()``, the panel's Cancel button).

        Also a ``concurrent.futures.CancelledError``, as a cancelled Future raises;
        ``.results`` holds the partial Results (unfinished slots are ``cancelled``).
        """

        def __init__(self, message: str = "cancelled", results: Any = None):
            super().__init__(message)
            self.results = results

        def __reduce__(self):
            return (type(self), (self.args[0] if self.args else "cancelled", self.results))

    Cancelled.__module__ = __name__
    Cancelled.__qualname__ = "Cancelled"  # pickled by reference, found through __getattr__
    return Cancelled


def __getattr__(name: str):
    if name == "Cancelled":
        globals()["Cancelled"] = cls = _make_cancelled()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
