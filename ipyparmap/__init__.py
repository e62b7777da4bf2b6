"""ipyparmap: safe, fast parallel map for Jupyter, IPython and scripts.

``import ipyparmap`` is light: the engine (and cloudpickle, psutil, IPython) is
imported on first use of one of the names below.
"""

from __future__ import annotations

from ipyparmap.errors import (
    Interrupted,
    MemoryLimitExceeded,
    ParmapError,
    SerializationError,
    TaskError,
    TaskTimeout,
    WorkerCrashed,
)

__version__ = "0.1.0"

_LAZY = {
    "parmap": "api",
    "imap": "api",
    "shutdown": "api",
    "cpu_count": "api",
    "shared_array": "api",
    "set_idle_timeout": "api",
    "Results": "results",
    "Failure": "results",
    "RunStats": "results",
    "ItemOutput": "results",
    "PENDING": "results",
    "Cancelled": "errors",
    "Pool": "dropins.compat",
    "Process": "dropins.compat",
    "ProcessPoolExecutor": "dropins.compat",
    "AsyncResult": "dropins.compat",
    "TimeoutError": "dropins.compat",
    "freeze_support": "dropins.compat",
    "current_process": "dropins.compat",
    **dict.fromkeys(
        (
            "Queue",
            "SimpleQueue",
            "JoinableQueue",
            "Pipe",
            "Lock",
            "RLock",
            "Semaphore",
            "BoundedSemaphore",
            "Condition",
            "Event",
            "Barrier",
            "Value",
            "Array",
            "RawValue",
            "RawArray",
            "Manager",
            "AuthenticationError",
            "ProcessError",
            "BufferTooShort",
            "parent_process",
            "active_children",
            "get_context",
            "get_start_method",
            "get_all_start_methods",
            "set_start_method",
        ),
        "dropins.context",
    ),
    "Run": "engine.background",
    "parmap_async": "api",
    "register_pandas": "frames",
}

# multiprocessing names ipyparmap does not provide, and what to use instead
_INSTEAD = {
    "get_logger": "what workers log shows in the cell; for multiprocessing's own logger "
    "use multiprocessing.get_logger",
    "log_to_stderr": "what workers log shows in the cell; for multiprocessing's own "
    "logger use multiprocessing.log_to_stderr",
    "set_executable": "ipyparmap's workers run this interpreter; for the standard "
    "library's processes use multiprocessing.set_executable",
    "set_forkserver_preload": "ipyparmap never forks; use multiprocessing.set_forkserver_preload",
    "allow_connection_pickling": "not needed: connections passed to ipyparmap's workers "
    "pickle already; use multiprocessing.allow_connection_pickling",
    "reducer": "use multiprocessing.reducer",
    "SUBDEBUG": "use multiprocessing.SUBDEBUG",
    "SUBWARNING": "use multiprocessing.SUBWARNING",
    **{
        name: f"import multiprocessing.{name} (ipyparmap does not re-export submodules)"
        for name in (
            "connection",
            "context",
            "dummy",
            "heap",
            "managers",
            "pool",
            "process",
            "queues",
            "reduction",
            "resource_sharer",
            "resource_tracker",
            "shared_memory",
            "sharedctypes",
            "spawn",
            "synchronize",
            "util",
        )
    },
}

__all__ = [
    "PENDING",
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Cancelled",
    "Condition",
    "Event",
    "Failure",
    "Interrupted",
    "ItemOutput",
    "JoinableQueue",
    "Lock",
    "Manager",
    "MemoryLimitExceeded",
    "ParmapError",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "ProcessPoolExecutor",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Results",
    "Run",
    "RunStats",
    "Semaphore",
    "SerializationError",
    "SimpleQueue",
    "TaskError",
    "TaskTimeout",
    "TimeoutError",
    "Value",
    "WorkerCrashed",
    "active_children",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "imap",
    "parent_process",
    "parmap",
    "parmap_async",
    "register_pandas",
    "set_idle_timeout",
    "set_start_method",
    "shared_array",
    "shutdown",
]


def _hook_pandas() -> None:
    """The ``.parmap`` accessors of pandas: registered now if pandas is imported, else
    when it is (never in a worker, which has no use for them)."""
    import os

    if os.environ.get("IPYPARMAP_WORKER"):
        return
    from ipyparmap.frames import register_when_imported

    register_when_imported()


_hook_pandas()


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        message = f"module 'ipyparmap' has no attribute {name!r}"
        if name in _INSTEAD:
            message += f": ipyparmap does not provide multiprocessing.{name}; {_INSTEAD[name]}"
        raise AttributeError(message)
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ip) -> None:
    """``%load_ext ipyparmap``: register ``%%parmap``, ``%parmap`` and ``%parmap_pool``."""
    from ipyparmap.magics.commands import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip) -> None:
    """``%unload_ext ipyparmap``: remove the magics again."""
    from ipyparmap.magics.commands import unload_ipython_extension as unload

    unload(ip)
