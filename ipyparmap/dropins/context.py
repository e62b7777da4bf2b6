"""The rest of ``multiprocessing``'s surface, for ``import ipyparmap as multiprocessing``
(layer: api).

Queues, locks, shared values and ``Manager`` are the standard library's own, from its
**spawn** context (their semaphores then have names a spawned process can open), so they
behave exactly as documented there. What ipyparmap adds is that they can be passed to
its workers: ``Process(args=...)``, ``Pool``/``ProcessPoolExecutor(initargs=...)``
pickle them as ``multiprocessing`` does for a spawned child (dropins/handover.py), and
workers share this process's authkey (``Manager`` proxies authenticate with it, also as
per-task arguments).

ipyparmap's workers are always fresh interpreters: ``get_context`` and
``set_start_method`` accept only ``"spawn"`` (or ``None``).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from ipyparmap.dropins import compat

_spawn = multiprocessing.get_context("spawn")

Queue = _spawn.Queue
SimpleQueue = _spawn.SimpleQueue
JoinableQueue = _spawn.JoinableQueue
Pipe = _spawn.Pipe
Lock = _spawn.Lock
RLock = _spawn.RLock
Semaphore = _spawn.Semaphore
BoundedSemaphore = _spawn.BoundedSemaphore
Condition = _spawn.Condition
Event = _spawn.Event
Barrier = _spawn.Barrier
Value = _spawn.Value
Array = _spawn.Array
RawValue = _spawn.RawValue
RawArray = _spawn.RawArray
Manager = _spawn.Manager

AuthenticationError = multiprocessing.AuthenticationError
ProcessError = multiprocessing.ProcessError
BufferTooShort = multiprocessing.BufferTooShort
parent_process = multiprocessing.parent_process  # set in workers (process/worker.py init)

_METHOD = "spawn"


# ipyparmap's ``Process`` is a ``BaseProcess``: the standard library's own list holds it,
# beside its own children (a ``Manager``'s server process, for one).
active_children = multiprocessing.active_children


def _check_method(method: str | None) -> None:
    if method in (None, _METHOD):
        return
    if method in ("fork", "forkserver"):
        raise ValueError(
            f"ipyparmap's workers are always spawned (fresh interpreters), not {method!r}; "
            f"use multiprocessing.get_context({method!r}) for the standard library's"
        )
    raise ValueError(f"cannot find context for {method!r}")


def get_start_method(allow_none: bool = False) -> str:
    """Always ``"spawn"``: how ipyparmap starts its workers."""
    return _METHOD


def get_all_start_methods() -> list[str]:
    return [_METHOD]


def set_start_method(method: str | None, force: bool = False) -> None:
    """Accepts ``"spawn"`` (what ipyparmap always does); other methods raise
    ``ValueError``. The standard library's own start method is left alone."""
    _check_method(method)


class Context:
    """What ``get_context()`` returns: the names of ``ipyparmap`` as attributes, like a
    ``multiprocessing`` context (``ctx.Process``, ``ctx.Queue()``, ``ctx.Pool()``...)."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            for where in (globals(), vars(compat)):
                if name in where:
                    return where[name]
        raise AttributeError(f"ipyparmap's context has no attribute {name!r}")

    def get_start_method(self, allow_none: bool = False) -> str:
        return _METHOD

    def get_context(self, method: str | None = None) -> Context:
        return get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        set_start_method(method, force)

    def __repr__(self) -> str:
        return "<ipyparmap context (spawn)>"


_context = Context()


def get_context(method: str | None = None) -> Context:
    """ipyparmap's only context, ``"spawn"``; ``"fork"``/``"forkserver"`` raise
    ``ValueError`` (ipyparmap never forks)."""
    _check_method(method)
    return _context
