"""The UI-free progress model of a run (layer L1).

The runner feeds it (items finished, worker states, busy time); views subscribe and
render it (a text bar, the ipywidgets panel). Refreshes are throttled to ``max_rate``
per second with an injectable clock, so feeding the model per batch costs next to
nothing: a listener runs at most ``max_rate`` times a second, plus once at the end.

Worker memory (``WorkerState.rss``) is sampled by the local engine (``local.py``), which
also needs it for ``max_memory`` and crash reports.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipyparmap.figures import format_seconds

IDLE, BUSY, STARTING, DEAD = "idle", "busy", "starting", "dead"
#: Runs shorter than this (seconds) show no speedup: start-up noise dominates it (the
#: same rule as ``results.SPEEDUP_MIN_WALL``; L1 siblings do not import each other).
SPEEDUP_MIN_ELAPSED = 0.5


@dataclass
class WorkerState:
    pid: Any  # the local pool's PID; an executor's worker id ("host:pid", a Dask address)
    state: str = STARTING
    current: int | None = None  # index of the item being run
    done: int = 0  # items this worker finished (successful ones)
    busy: float = 0.0  # seconds spent running items
    rss: int | None = None  # bytes, last sample (set by the local engine)
    restarts: int = 0  # workers replaced during the run when this one started


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
    workers: dict = field(default_factory=dict)  # worker id (pid) -> WorkerState
    listeners: list = field(default_factory=list)  # callables(model, final: bool)
    cancel: Callable[[], None] | None = None  # set while a run can be cancelled
    background: bool = False  # a parmap_async run: the kernel's main thread is free
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

    def worker(self, pid: Any) -> WorkerState:
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
    def live_workers(self) -> int:
        return sum(1 for w in self.workers.values() if w.state != DEAD)

    @property
    def size(self) -> int:
        """Workers the run used at a time: every worker seen, less the replacements."""
        restarts = max((w.restarts for w in self.workers.values()), default=0)
        return max(0, len(self.workers) - restarts)

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

    @property
    def complete(self) -> bool:
        """Every item finished (for an input of unknown length: the run ended)."""
        if self.total is None:
            return self.ended is not None
        return self.done >= self.total

    @property
    def task_time(self) -> float:
        """Seconds the workers spent running items, summed."""
        return sum(w.busy for w in self.workers.values())

    @property
    def speedup(self) -> float | None:
        """Achieved speedup: task time / elapsed time (None before anything ran)."""
        elapsed = self.elapsed
        task_time = self.task_time
        return task_time / elapsed if elapsed > 0 and task_time > 0 else None

    @property
    def average_rate(self) -> float:
        """Items per second over the whole run so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def status_parts(self) -> list[str]:
        """The running status in pieces: ``45/100 done``, ``2 failed``, ``12.3 items/s``,
        ``3.1 s`` and, while running with a known length, ``ETA 4.2 s``."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        rate = self.average_rate if self.ended is not None else self.rate
        parts = [f"{count} done", f"{self.failed} failed", f"{rate:.1f} items/s"]
        parts.append(format_seconds(self.elapsed))
        if self.ended is None and self.eta is not None:
            parts.append(f"ETA {format_seconds(self.eta)}")
        return parts

    def summary(self) -> str:
        """One line for the end of a run: ``100/100 done, 0 failed, 3.2 s, speedup 1.9x ...``

        The speedup (task time / elapsed) is left out of runs shorter than 0.5 s.
        """
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{count} done", f"{self.failed} failed"]
        if self.ended is not None and not self.complete:
            parts.append("stopped")
        parts.append(format_seconds(self.elapsed))
        workers = self.size
        on = f"on {workers} worker{'s' * (workers != 1)}"
        speedup = self.speedup
        if speedup is not None and self.elapsed >= SPEEDUP_MIN_ELAPSED:
            parts.append(f"speedup {speedup:.2f}x {on}")
        elif workers:
            parts.append(on)
        return ", ".join(parts)

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
            try:
                listener(self, final)
            except Exception as exc:  # a broken view must never break the run
                self.listeners.remove(listener)
                warnings.warn(
                    f"the progress view {type(listener).__name__} failed and was switched "
                    f"off: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
