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
    "Run": "engine.background",
    "parmap_async": "api",
    "register_pandas": "frames",
}

__all__ = [
    "PENDING",
    "Cancelled",
    "Failure",
    "Interrupted",
    "ItemOutput",
    "MemoryLimitExceeded",
    "ParmapError",
    "Pool",
    "Process",
    "ProcessPoolExecutor",
    "Results",
    "Run",
    "RunStats",
    "SerializationError",
    "TaskError",
    "TaskTimeout",
    "WorkerCrashed",
    "cpu_count",
    "imap",
    "parmap",
    "parmap_async",
    "register_pandas",
    "set_idle_timeout",
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
        raise AttributeError(f"module 'ipyparmap' has no attribute {name!r}")
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
