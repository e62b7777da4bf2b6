"""The UI-free progress model of a run (layer L1).

The runner feeds it (items finished, worker states); views subscribe and render it (a
text bar, the ipywidgets panel). Refreshes are throttled to ``max_rate`` per second with
an injectable clock, and the clock is only read when a cheap counter says enough has
changed since the last refresh, so feeding the model per item costs next to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

IDLE, BUSY, STARTING, DEAD = "idle", "busy", "starting", "dead"


@dataclass
class WorkerState:
    pid: int
    state: str = STARTING
    current: int | None = None  # index of the item being run
    done: int = 0
    rss: int | None = None  # bytes
    restarts: int = 0


@dataclass
class ProgressModel:
    total: int | None = None
    clock: Callable[[], float] = time.monotonic
    max_rate: float = 10.0  # refreshes per second
    done: int = 0  # finished items, successful or failed
    failed: int = 0
    rate: float = 0.0  # smoothed items per second
    started: float = 0.0
    ended: float | None = None
    workers: dict = field(default_factory=dict)  # pid -> WorkerState
    listeners: list = field(default_factory=list)  # callables(model, final: bool)
    cancel: Callable[[], None] | None = None  # set while a run can be cancelled
    _last_refresh: float = 0.0
    _last_done: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._last_refresh = self.started

    # -- feeding ----------------------------------------------------------------------
    def add(self, done: int = 0, failed: int = 0) -> None:
        """``done`` items finished, ``failed`` of them failed."""
        self.done += done
        self.failed += failed
        self.maybe_refresh()

    def worker(self, pid: int) -> WorkerState:
        state = self.workers.get(pid)
        if state is None:
            state = self.workers[pid] = WorkerState(pid)
        return state

    def maybe_refresh(self) -> bool:
        """Notify listeners if at least 1/max_rate seconds passed since the last time."""
        now = self.clock()
        if now - self._last_refresh < 1.0 / self.max_rate:
            return False
        self._update_rate(now)
        self._notify(False)
        return True

    def finish(self) -> None:
        self.ended = self.clock()
        self._update_rate(self.ended)
        self._notify(True)

    # -- derived figures --------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        end = self.ended if self.ended is not None else self.clock()
        return max(0.0, end - self.started)

    @property
    def running(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == BUSY)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None when unknown)."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def _update_rate(self, now: float) -> None:
        interval = now - self._last_refresh
        if interval <= 0:
            return
        sample = (self.done - self._last_done) / interval
        # Smooth, but let the first samples count fully so the rate starts right.
        self.rate = sample if self.rate == 0 else 0.7 * self.rate + 0.3 * sample
        self._last_done = self.done
        self._last_refresh = now

    def _notify(self, final: bool) -> None:
        for listener in list(self.listeners):
            listener(self, final)
