"""A run's lifecycle: one small state type instead of a handful of flags (layer: engine).

::

    RUNNING ──(first failure with errors="raise", abort, a broken executor)──> STOPPING
       │                                                                         │
       └──────────────────────(the engine is released)────────────────> CLOSED <─┘

RUNNING takes input and dispatches; STOPPING sends nothing new (what is in flight may
still report back, and is kept); CLOSED means the engine is given back and the outcome
is final. The one thing another thread may do is ask for a cancel (`request_cancel`:
a background Run, the panel's Cancel button); the run's own thread sees it at its next
loop turn (about 0.1 s).
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    CLOSED = "closed"


class RunState:
    """The phase of one run, moved only forward, plus a cross-thread cancel request."""

    __slots__ = ("cancel_requested", "phase")

    def __init__(self) -> None:
        self.phase = Phase.RUNNING
        # Written by other threads, read by the run's own: a plain attribute store is
        # atomic, and the reader polls it every loop turn (no Event needed).
        self.cancel_requested = False

    @property
    def running(self) -> bool:
        """Still taking input and dispatching."""
        return self.phase is Phase.RUNNING

    @property
    def stopping(self) -> bool:
        """Nothing new goes out (STOPPING or CLOSED)."""
        return self.phase is not Phase.RUNNING

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def stop(self) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.STOPPING

    def close(self) -> None:
        self.phase = Phase.CLOSED

    def request_cancel(self) -> None:
        self.cancel_requested = True

    def __repr__(self) -> str:
        cancel = ", cancel requested" if self.cancel_requested else ""
        return f"<RunState {self.phase.value}{cancel}>"
