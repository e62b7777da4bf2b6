"""Results, failures and run statistics (layer: results, beside views.progress).

``Results`` is a plain ``list`` subclass (one slot per input, in input order) so it
works everywhere a list does; a failed slot holds a `Failure` instead of a value.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ipyparmap import figures
from ipyparmap.options import short_repr
from ipyparmap.wire.messages import Timings


@dataclass(eq=False)
class Failure:
    """What went wrong with one item. Sits in the item's slot of `Results`."""

    index: int
    item: Any
    kind: str  # "error", "crashed", "timeout", "memory" (over max_memory) or "cancelled"
    exception: BaseException | None = None
    traceback: str = ""
    worker: int | None = None  # the worker's PID
    attempts: int = 1

    def __repr__(self) -> str:
        exc = "" if self.exception is None else f": {_exc_text(self.exception)}"
        return f"<Failure item {self.index} {self.kind}{exc}>"

    def describe(self) -> str:
        """One line: which item, what kind of failure, why."""
        exc = "" if self.exception is None else f": {_exc_text(self.exception)}"
        return f"item {self.index} ({short_repr(self.item)}) {self.kind}{exc}"


def _exc_text(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{name}({text!r})" if text else name


@dataclass(frozen=True)
class ItemOutput:
    """What an item printed, displayed and logged in its worker.

    ``stdout`` and ``stderr`` hold the text exactly as the item wrote it, ``\r``
    included (a progress bar's every update; the cell shows each line's final state).
    ``displays`` holds its rich displays (`DisplayData`, in order; in a notebook,
    ``display(out.displays[0])`` shows one again), ``logs`` the ``logging.LogRecord``
    objects it logged that the kernel's logging let through, message formatted.
    """

    stdout: str = ""
    stderr: str = ""
    displays: tuple = ()
    logs: tuple = ()

    def __str__(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True, eq=False)
class DisplayData:
    """A rich display an item made in its worker (``display(obj)``, ``plt.show()``):
    a MIME bundle, binary types as base64 text (as a notebook stores them)."""

    data: dict
    metadata: dict = field(default_factory=dict)
    display_id: str | None = None
    update: bool = False  # it updates the display ``display_id`` in place

    @classmethod
    def from_message(cls, message) -> DisplayData:
        """From a `wire.messages.Display` record (or a DisplayData: itself)."""
        if isinstance(message, DisplayData):
            return message
        data = dict(message.data)
        if not isinstance(data.get("text/plain"), str):  # a saved notebook reads it
            data["text/plain"] = f"<{', '.join(data) or 'empty'} display>"
        return cls(data, dict(message.metadata or {}), message.display_id, message.update)

    @property
    def text(self) -> str:
        return self.data["text/plain"]

    def kind(self) -> str:
        """The richest MIME type of the bundle (``text/plain`` when it has no other)."""
        return next((mime for mime in self.data if mime != "text/plain"), "text/plain")

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> tuple[dict, dict]:
        return dict(self.data), dict(self.metadata)

    def __repr__(self) -> str:
        return f"<DisplayData {', '.join(self.data)}>"


def log_record(fields) -> logging.LogRecord:
    """A log record shipped by a worker, rebuilt (a LogRecord given: itself)."""
    if isinstance(fields, logging.LogRecord):
        return fields
    record = logging.makeLogRecord(fields)
    started = getattr(logging, "_startTime", None)  # relative to this process's logging
    if started is not None and isinstance(record.created, float):
        record.relativeCreated = (record.created - started) * 1000
    return record


@dataclass
class RunStats:
    """Where the time of a run went, and its counts: the figures every view shows at the
    end of a run (the panel, the text bar, ``Results.summary()``, a failed run's
    exception, the report)."""

    items: int = 0
    workers: int = 0
    wall: float = 0.0  # seconds from the call to the last result
    task_time: float = 0.0  # sum of the items' run times in the workers
    busy: dict = field(default_factory=dict)  # worker PID -> seconds spent running items
    peak_rss: int | None = None  # bytes, largest worker RSS seen
    failures: dict = field(default_factory=dict)  # kind -> count, "cancelled" included
    retries: int = 0  # extra attempts made
    restarts: int = 0  # workers replaced after a crash or timeout
    chunks: int = 0  # messages of items sent to workers
    recycled: int = 0  # workers replaced on purpose (max_memory)
    worker_peak_rss: dict = field(default_factory=dict)  # worker -> bytes, peak seen
    started: float | None = None  # wall-clock time (time.time()) the run began

    @property
    def busy_workers(self) -> float | None:
        """How many workers were running items, on average: ``task_time / wall`` (at most
        ``workers``). None where that would not be true: runs shorter than half a second
        (start-up noise), runs where nothing was timed, runs with cancelled items (the
        time spent on them is unknown).

        Not a speedup over serial: items side by side may each run slower than alone
        (shared cores, memory bandwidth), so 1.9 busy workers can mean a 1.3x gain.
        """
        if self.failures.get(figures.CANCELLED):
            return None
        return figures.busy_value(self.task_time, self.wall, self.workers)

    @property
    def speedup(self) -> float:
        """Deprecated: this was ``task_time / wall``, which is not a speedup over serial;
        use `busy_workers`. Still returns ``task_time / wall`` (0.0 when unknown)."""
        import warnings

        warnings.warn(
            "RunStats.speedup is deprecated: it is task time / wall time, how many workers "
            "were busy on average, not the gain over a serial run; use busy_workers",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.task_time / self.wall if self.wall > 0 else 0.0

    @property
    def ideal_speedup(self) -> int:
        """The number of workers: the most `busy_workers` can be."""
        return self.workers

    @property
    def efficiency(self) -> float:
        """The share of the workers' time spent inside items, ``task_time / (workers *
        wall)``: 1.0 means every worker ran items all the time (0.0 when unknown). The
        views show it only where `busy_workers` is shown."""
        if self.wall <= 0 or not self.workers:
            return 0.0
        return min(1.0, self.task_time / (self.workers * self.wall))

    @property
    def overhead(self) -> float:
        """Worker-seconds not spent running items (start-up, messaging, idle at the end):
        ``workers * wall - task_time``, an estimate of what parallelism cost."""
        return max(0.0, self.workers * self.wall - self.task_time)

    @property
    def items_per_second(self) -> float:
        return self.items / self.wall if self.wall > 0 else 0.0

    def summary_parts(self) -> list[str]:
        """The pieces of `summary` (views lay them out and colour the failures)."""
        failures = self.failures
        done = self.items - sum(failures.values())
        return figures.summary_parts(
            done, self.items, failures, self.wall, self.workers, self.busy_workers
        )

    def summary(self) -> str:
        """``80/100 done, 1 error, 3.2 s, workers busy 1.90 of 2``: items that succeeded,
        the others by failure kind, wall time, and how many workers were running items
        on average (see `busy_workers`; ``on 2 workers`` where it is left out)."""
        return ", ".join(self.summary_parts())


class Results(list):
    """The results of a run, in input order; failed slots hold a `Failure`.

    Extra attributes: ``ok``, ``failures``, ``stats`` (`RunStats`), ``outputs``
    (``{index: ItemOutput}`` for items that printed), ``durations`` (seconds per item,
    None where it did not run).
    """

    def __init__(
        self,
        values=(),
        stats: RunStats | None = None,
        outputs: dict | None = None,
        durations: list | None = None,
        workers: list | None = None,
    ):
        super().__init__(values)
        if stats is None:  # made by hand: count what the slots hold, summary() reads it
            kinds = Counter(v.kind for v in self if isinstance(v, Failure))
            stats = RunStats(items=len(self), failures=dict(kinds))
        self.stats = stats
        self.outputs: dict[int, ItemOutput] = outputs if outputs is not None else {}
        self._durations: list | None = durations if durations is not None else []
        self._workers: list | None = workers if workers is not None else []
        self._starts: list | None = []
        # (indices, Timings, worker, began) per result batch: the three lists above
        # are built from them on first use (a million-item run should not pay for
        # per-item timing lists unless someone reads them)
        self._timing_batches: list = []

    @property
    def failures(self) -> list[Failure]:
        return [value for value in self if isinstance(value, Failure)]

    @property
    def ok(self) -> bool:
        """True when no item failed."""
        return not any(isinstance(value, Failure) for value in self)

    #: The input sequence (a reference, not a copy) when the input was a list, range...
    inputs: Any = None

    def _timings(self) -> None:
        """Build durations, worker_of and starts from the batch records."""
        durations: list = []
        workers: list = []
        starts: list = []
        for indices, timings, worker, began in self._timing_batches:
            spans = timings.per_item()
            _assign(durations, indices, spans, None)
            _assign(workers, indices, [worker] * len(spans), None)
            if began is not None:
                times = list(itertools.accumulate(spans[:-1], initial=began))
                _assign(starts, indices, times, None)
        size = len(self)
        self._durations = (durations + [None] * size)[:size]
        self._workers = (workers + [None] * size)[:size]
        self._starts = (starts + [None] * size)[:size]
        self._timing_batches = []

    @property
    def durations(self) -> list:
        """Seconds each item ran (None where it did not run)."""
        if self._durations is None:
            self._timings()
        return self._durations

    @durations.setter
    def durations(self, values: list) -> None:
        self._durations = list(values)

    @property
    def worker_of(self) -> list:
        """The worker (PID, or a Dask address) that ran each item."""
        if self._workers is None:
            self._timings()
        return self._workers

    @worker_of.setter
    def worker_of(self, values: list) -> None:
        self._workers = list(values)

    @property
    def starts(self) -> list:
        """Wall-clock start (``time.time()``) of each item, None where it did not run."""
        if self._starts is None:
            self._timings()
        return self._starts

    @starts.setter
    def starts(self, values: list) -> None:
        self._starts = list(values)

    def outcomes(self) -> list[str]:
        """Per item: ``"ok"`` or the Failure kind."""
        return [v.kind if isinstance(v, Failure) else "ok" for v in self]

    def timeline(self, width: int = 880):
        """A chart of the run: one lane per worker, a bar per item coloured by outcome.

        Shows as SVG in a notebook; ``.svg`` is the text, ``.save(path)`` writes it.
        """
        from ipyparmap.views.report import Timeline

        return Timeline(self, width)

    def report(self):
        """Summary, where the time went, the first failures and the timeline (HTML)."""
        from ipyparmap.views.report import Report

        return Report(self)

    def to_dataframe(self):
        """A pandas DataFrame, one row per item: item, status, value, error, start,
        duration, worker, attempts, output (pandas is needed for this one)."""
        from ipyparmap.views.report import dataframe

        return dataframe(self)

    def values(self, default: Any = None) -> list:
        """The results as a plain list, with ``default`` in place of each failure."""
        return [default if isinstance(v, Failure) else v for v in self]

    def summary(self) -> str:
        """The run in one line, from its `RunStats`: the same line as the progress
        panel's and the text bar's last one (see `RunStats.summary`)."""
        return self.stats.summary()

    def __reduce__(self):
        return (
            _rebuild_results,
            (list(self), self.stats, self.outputs, self.durations, self.worker_of, self.starts),
        )

    def _repr_html_(self) -> str:
        from ipyparmap.views.report import summary_html

        return summary_html(self)


def _rebuild_results(values, stats, outputs, durations, workers, starts=()) -> Results:
    results = Results(values, stats, outputs, durations, workers)
    results.starts = list(starts)
    return results


_MISSING = object()  # a slot whose outcome has not arrived


class _Pending:
    """The value of a slot whose item has not finished yet (in ``run.results``)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<pending>"

    def __reduce__(self):
        return (_Pending, ())


PENDING = _Pending()


def _assign(store: list, indices, values: list, fill) -> None:
    """``store[i] = v`` for each index/value pair, growing ``store`` with ``fill``.

    A ``range`` of indices (the common case: a chunk of new input) is one slice
    assignment, so folding a million tiny results costs milliseconds, not a Python
    loop per item.
    """
    contiguous = type(indices) is range and indices.step == 1
    if contiguous and indices.start == len(store):  # the next batch in order: append
        store.extend(values)
        return
    stop = indices.stop if contiguous else max(indices, default=-1) + 1
    if len(store) < stop:
        store.extend([fill] * (stop - len(store)))
    if contiguous:
        store[indices.start : indices.stop] = values
    else:
        for index, value in zip(indices, values, strict=True):
            store[index] = value


class ResultSlots:
    """Collects outcomes that arrive in batches, out of order, into input order."""

    def __init__(self) -> None:
        # The Results itself, filled in place: `build` hands it out without copying
        # (a million-slot list copy costs ~4 ms).
        self.slots: Results = Results()
        self.filled = 0
        self.timing_batches: list = []  # (indices, durations, worker, began) per batch

    def place(self, indices, values: list) -> None:
        _assign(self.slots, indices, values, _MISSING)
        self.filled += len(values)

    def timing(self, indices, timings: Timings, worker: Any, began: float | None = None) -> None:
        """Record how long the items of a batch ran, on which worker, and when the batch
        began (kept per batch; Results builds per-item lists when they are read)."""
        self.timing_batches.append((indices, timings, worker, began))

    def snapshot(self, size: int, stats: RunStats) -> Results:
        """A copy of the results so far; unfinished slots hold PENDING."""
        values = list(self.slots)
        values.extend([PENDING] * (size - len(values)))
        values = [PENDING if v is _MISSING else v for v in values]
        # Its own figures, so its summary() reads "12/100 done, 88 pending, ..." (the
        # run's stats are not final yet: no items count, no cancelled, no wall time).
        now = copy.copy(stats)
        now.items = size
        now.failures = dict(stats.failures)
        pending = sum(1 for v in values if v is PENDING)
        if pending:
            now.failures[figures.PENDING] = pending
        if stats.started is not None:
            now.wall = max(0.0, time.time() - stats.started)
        return Results(values, now)

    def build(self, size: int, missing, stats: RunStats, outputs: dict) -> Results:
        """Results with ``size`` slots; ``missing(index)`` fills each slot never filled."""
        slots = self.slots
        if len(slots) < size:
            slots.extend([_MISSING] * (size - len(slots)))
        if self.filled < len(slots):  # scan only when something is missing
            for index, value in enumerate(slots):
                if value is _MISSING:
                    slots[index] = missing(index)
        slots.stats, slots.outputs = stats, outputs
        slots._durations = slots._workers = slots._starts = None  # built when read
        slots._timing_batches = self.timing_batches
        return slots
