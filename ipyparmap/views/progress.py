"""The UI-free progress model of a run (layer: results, beside ipyparmap.results).

The engine's parts feed it (the outcome sink: items finished, busy time; the run and
its engine: worker states); views subscribe and render it (a text bar, the ipywidgets
panel). Refreshes are throttled to ``max_rate`` per second with an injectable clock, so
feeding the model per batch costs next to nothing: a listener runs at most ``max_rate``
times a second, plus once at the end.

Worker memory (``WorkerState.rss``) is sampled by the local engine (engine/local.py),
which also needs it for ``max_memory`` and crash reports.

While running, the figures are the model's own counts. At the end the `Runner` hands
`finish` the run's ``RunStats``, and the final line is drawn from those (items, failures
by kind including the cancelled ones, wall time, busy workers), so the panel, the text bar,
``Results.summary()`` and a failed run's exception read the same. Every line is worded
by ``ipyparmap.figures``.

A model may count something other than items: `count_by` gives each item a weight (the
pandas accessors send pieces of a frame as items and count their rows, or groups), and
units finished before the run began (rows the kernel ran itself). Then every figure,
the final line included, is in those units; the model's ``items_done`` still counts
items, for the run's own bookkeeping.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipyparmap import figures

IDLE, BUSY, STARTING, DEAD = "idle", "busy", "starting", "dead"


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
    done: int = 0  # finished items, successful or failed (what the bar shows)
    failed: int = 0  # of those, the failed ones
    rate: float = 0.0  # smoothed items per second
    started: float = 0.0
    ended: float | None = None
    workers: dict = field(default_factory=dict)  # worker id (pid) -> WorkerState
    listeners: list = field(default_factory=list)  # callables(model, final: bool)
    cancel: Callable[[], None] | None = None  # set while a run can be cancelled
    background: bool = False  # a parmap_async run: the kernel's main thread is free
    # The run's RunStats, given to finish(): the source of the final line. Typed Any
    # because ipyparmap.results is its sibling in the layers: this module must not import it.
    stats: Any = None
    unit: str = "items"  # what done/total count (`count_by`)
    weights: Any = None  # item index -> units it counts for; None: 1 each
    before: int = 0  # units finished before the run's first item (counted in done)
    items_done: int = 0  # finished items, whatever their weights
    _last_refresh: float = 0.0
    _last_done: int = 0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self._last_refresh = self.started

    # -- feeding ----------------------------------------------------------------------
    def count_by(self, weights: Any, unit: str, before: int = 0) -> None:
        """Count ``weights[i]`` units for item ``i`` (and ``before`` units already
        done) instead of one per item; call before the run starts."""
        self.weights, self.unit, self.before = weights, unit, before
        self.done = self._last_done = before

    def set_items(self, items: int | None) -> None:
        """The run's item count (None: unknown); in units where the model weighs items."""
        if self.weights is not None and items is not None:
            self.total = self.before + sum(self.weights[i] for i in range(items))
        else:
            self.total = items

    def add(self, done: int = 0, failed: int = 0, indices: Any = None) -> None:
        """``done`` items finished, ``failed`` of them failed (all or none of them);
        ``indices`` says which, for a model that weighs its items."""
        self.items_done += done
        if self.weights is not None and indices is not None:
            units = sum(self.weights[i] for i in indices)
            done, failed = units, units if failed else 0
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

    def finish(self, stats: Any = None) -> None:
        """The run ended. ``stats`` (its ``RunStats``, final by now) gives the figures of
        the final line; without it (a model driven by hand) the model's counts do."""
        self.stats = stats
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
    def ok(self) -> int:
        """Items that succeeded so far (``done`` less ``failed``): what lines call done."""
        return self.done - self.failed

    @property
    def complete(self) -> bool:
        """Every item finished (for an input of unknown length: the run ended)."""
        if self.stats is not None:  # the run's own count of what never finished
            return not self.stats.failures.get(figures.CANCELLED)
        if self.total is None:
            return self.ended is not None
        return self.done >= self.total

    @property
    def task_time(self) -> float:
        """Seconds the workers spent running items, summed."""
        return sum(w.busy for w in self.workers.values())

    @property
    def busy_workers(self) -> float | None:
        """How many workers were running items, on average: task time / elapsed time
        (None before anything ran, or before half a second: see figures.busy_value)."""
        return figures.busy_value(self.task_time, self.elapsed, self.size)

    speedup = busy_workers  # its old, misleading name (it never was a speedup over serial)

    @property
    def average_rate(self) -> float:
        """Items (units) per second over the whole run so far."""
        elapsed = self.elapsed
        return (self.done - self.before) / elapsed if elapsed > 0 else 0.0

    def status_parts(self) -> list[str]:
        """The running status in pieces: ``43/100 done``, ``2 failed``, ``12.3 items/s``,
        ``3.1 s`` and, while running with a known length, ``ETA 4.2 s``."""
        rate = self.average_rate if self.ended is not None else self.rate
        eta = self.eta if self.ended is None else None
        return figures.status_parts(
            self.ok, self.total, self.failed, rate, self.elapsed, eta, unit=self.unit
        )

    def summary_parts(self) -> list[str]:
        """The end of the run in pieces (see `summary`)."""
        if self.stats is not None and self.weights is None:
            return self.stats.summary_parts()
        # Driven by hand, without stats, or counting units the stats do not know (rows):
        # the model's counts, worded the same way (units left when it ended are the
        # cancelled ones).
        failures = {"failed": self.failed}
        if self.total is not None and self.ended is not None:
            failures[figures.CANCELLED] = max(0, self.total - self.done)
        return figures.summary_parts(
            self.ok, self.total, failures, self.elapsed, self.size, self.busy_workers,
            unit=self.unit,
        )  # fmt: skip

    def summary(self) -> str:
        """One line for the end of a run, as ``Results.summary()`` words it:
        ``80/100 done, 1 error, 3.2 s, workers busy 1.90 of 2``."""
        return ", ".join(self.summary_parts())

    def failure_parts(self) -> list[str]:
        """The pieces of the current line that count failed items (views colour them):
        each failure kind but ``cancelled`` at the end, ``2 failed`` while running."""
        if self.ended is not None and self.stats is not None and self.weights is None:
            return figures.failed_parts(self.stats.failures)
        return [f"{self.failed} failed"] if self.failed else []

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
