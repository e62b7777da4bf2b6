"""The outcome sink: where finished items go (layer: engine).

Engines hand every result batch to `OutcomeSink.fold` and every lost item to
`item_failed`; the sink decides what an outcome means (a retry goes back to the feed,
``errors="raise"`` stops the run at its first failure), keeps the run's statistics
(`RunStats`) and feeds the progress model's counts. `ResultsSink` collects outcomes
for ``parmap`` and ``imap`` (slots in input order, captured output, cancelled items)
and builds the `Results`; the drop-ins' `engine.jobs.JobSink` routes each outcome to
the job it belongs to.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from ipyparmap.engine.feed import Chunk, Feed, ItemFeed, Pending
from ipyparmap.engine.state import RunState
from ipyparmap.errors import SerializationError
from ipyparmap.options import Options, describe
from ipyparmap.results import (
    DisplayData,
    Failure,
    ItemOutput,
    Results,
    ResultSlots,
    RunStats,
    log_record,
)
from ipyparmap.wire.codec import PICKLING_ERRORS, loads
from ipyparmap.wire.messages import Timings
from ipyparmap.wire.serialize import Incoming, rebuild_exception


class OutcomeSink:
    """What every sink does with result batches and failures; a subclass says where
    successes and final failures go."""

    def __init__(self, feed: Feed, state: RunState, options: Options, stats: RunStats,
                 progress: Any = None):  # fmt: skip
        self.feed = feed
        self.state = state
        self.options = options
        self.stats = stats
        self.progress = progress  # a views.progress.ProgressModel, or None
        self.policy: Any = None  # engine.attribution.CrashPolicy, set by the run
        self.outcomes: deque = deque()  # batches (indices, values), ready to hand out
        self.first_failure: Failure | None = None  # errors="raise": stop at this one
        self.keep_details = False  # per-index durations and outputs, for Results

    # -- what a subclass supplies -------------------------------------------------------
    def succeeded(self, indices, values: list, worker_id: Any) -> None:
        raise NotImplementedError

    def final_failure(self, index, item, kind: str, exc, worker_id, attempts: int,
                      tb_text: str = "") -> None:  # fmt: skip
        raise NotImplementedError

    def function_failed(self, key: bytes, error: BaseException) -> None:
        """The function ``key`` could not be loaded in a worker."""
        raise NotImplementedError

    def output(self, chunk: Chunk, lines: list) -> None:
        """What the chunk's items produced: ``[(position, stream, payload)]``, where
        ``stream`` is "stdout" or "stderr" (text), "log" (a log record's fields) or
        "display" (a `wire.messages.Display`)."""
        raise NotImplementedError

    def cancel_item(self, index, item) -> None:
        """An item that will not run (the run stopped before it finished)."""

    def timing(self, indices, timings: Timings, worker_id: Any, began: float | None) -> None:
        """How long the items of a batch ran (only where details are kept)."""

    # -- shared -------------------------------------------------------------------------
    def fold(self, chunk: Chunk, start: int, values_blob, errors: dict, timings: tuple,
             memory_kb: tuple, began: float | None = None) -> None:  # fmt: skip
        """Fold one result batch (positions ``start``.. of ``chunk``) into the run;
        ``timings`` is the wire form of a `Timings`."""
        timings = Timings(*timings)
        count = timings.count
        busy = timings.total()
        stats = self.stats
        stats.task_time += busy
        worker_id = chunk.worker_id
        stats.busy[worker_id] = stats.busy.get(worker_id, 0.0) + busy
        if self.progress is not None:
            self.progress.worker(worker_id).busy += busy
        peak_kb = memory_kb[0] if memory_kb else None
        if peak_kb:
            peak = peak_kb * 1024
            stats.peak_rss = max(stats.peak_rss or 0, peak)
            stats.worker_peak_rss[worker_id] = max(stats.worker_peak_rss.get(worker_id, 0), peak)
        chunk.planner.record(count, busy)
        indices = chunk.indices[start : start + count]
        if self.keep_details:
            self.timing(indices, timings, worker_id, began)
        try:
            if type(values_blob) is list:  # from a thread of this process: as they are
                values = values_blob
            elif isinstance(values_blob, Incoming):
                values = values_blob.load()
            else:
                values = loads(values_blob)
        except PICKLING_ERRORS as exc:
            self.policy.results_unloadable(chunk, start, count, exc)
        else:
            if errors:
                self._failed_in_batch(chunk, start, values, errors)
            else:
                self._count_done(worker_id, indices)
                self.succeeded(indices, values, worker_id)
        chunk.reported = start + count

    def _count_done(self, worker_id: Any, indices) -> None:
        if self.progress is not None:
            self.progress.worker(worker_id).done += len(indices)
            self.progress.add(len(indices), indices=indices)

    def _failed_in_batch(self, chunk: Chunk, start: int, values: list, errors: dict) -> None:
        """A batch with failed items: hand out the successes, handle each failure."""
        ok_indices, ok_values = [], []
        for offset, value in enumerate(values):
            position = start + offset
            info = errors.get(offset)
            if info is None:
                ok_indices.append(chunk.indices[position])
                ok_values.append(value)
            else:
                self.item_failed(chunk, position, "error", rebuild_exception(info), info[3])
        if ok_values:
            self._count_done(chunk.worker_id, ok_indices)
            self.succeeded(ok_indices, ok_values, chunk.worker_id)

    def item_failed(self, chunk: Chunk, position: int, kind: str, exc,
                    tb_text: str = "") -> None:  # fmt: skip
        """An item failed: run it again if retries are left, else record the failure."""
        index, item = chunk.indices[position], chunk.items[position]
        attempts = chunk.attempts_at(position) + 1
        if attempts <= self.options.retries and not self.state.stopping:
            self.stats.retries += 1
            retry = Pending(index, item, attempts, chunk.deaths_at(position), kind != "error")
            self.feed.put_back(retry)
            return
        self.final_failure(index, item, kind, exc, chunk.worker_id, attempts, tb_text)

    def unpicklable_item(self, index, item, error: BaseException) -> None:
        """An item that could not be pickled to send it to a worker fails alone."""
        failure = SerializationError(
            f"cannot pickle item {self.feed.label(index)} ({describe(item)}) to send it "
            f"to a worker: {type(error).__name__}: {error}"
        )
        failure.__cause__ = error
        failure.argument_error = True  # the drop-ins re-raise the pickling error itself
        self.final_failure(index, item, "error", failure, None, 1)

    def cancel_rest(self, chunk: Chunk) -> None:
        """The chunk's items that have not come back become ``cancelled``."""
        for position in chunk.unreported():
            self.cancel_item(chunk.indices[position], chunk.items[position])


class ResultsSink(OutcomeSink):
    """Outcomes of one ``parmap``/``imap`` call: in-order slots, outputs, the Results."""

    def __init__(self, feed: ItemFeed, state: RunState, options: Options, stats: RunStats,
                 progress: Any = None, keep_details: bool = True):  # fmt: skip
        super().__init__(feed, state, options, stats, progress)
        self.feed: ItemFeed = feed
        self.keep_details = keep_details
        # called with (index, stream, payload) as output comes: text, a LogRecord (only
        # those the kernel's logging lets through) or a DisplayData; views/textui.py's
        # OutputPrinter also hears when items end (it finishes their unfinished lines)
        self.on_output: Any = None
        self.slots = ResultSlots()  # parmap: everything handed out, in input order
        self.lock = threading.Lock()  # guards slots against snapshot() from other threads
        self.stdout: dict[int, list] = {}
        self.stderr: dict[int, list] = {}
        self.displays: dict[int, list] = {}
        self.logs: dict[int, list] = {}
        self.cancelled: dict[int, Any] = {}  # index -> item, for unfinished items

    def succeeded(self, indices, values: list, worker_id: Any) -> None:
        self.outcomes.append((indices, values))
        if getattr(self.on_output, "partial", None):  # unfinished lines wait for their end
            self.on_output.items_ended(indices)

    def final_failure(self, index, item, kind, exc, worker_id, attempts, tb_text="") -> None:
        failure = Failure(
            index, item, kind, exc, tb_text or _traceback_text(exc), worker_id, attempts
        )
        self.outcomes.append(([index], [failure]))
        if getattr(self.on_output, "partial", None):
            self.on_output.items_ended((index,))
        self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
        if self.progress is not None:
            self.progress.add(1, 1, indices=(index,))
        if self.options.errors == "raise" and not self.state.stopping:
            self.state.stop()
            self.first_failure = failure

    def function_failed(self, key: bytes, error: BaseException) -> None:
        raise error  # nothing of this run can run; the run's loop aborts on the way out

    def output(self, chunk: Chunk, lines: list) -> None:
        keep = self.keep_details
        for position, stream, payload in lines:
            index = chunk.indices[position] if 0 <= position < len(chunk.indices) else -1
            if stream == "stdout" or stream == "stderr":
                store = self.stdout if stream == "stdout" else self.stderr
            elif stream == "log":
                # as if logged here: the kernel's levels decide (handlers and format
                # apply when the view hands it on)
                payload = log_record(payload)
                if not logging.getLogger(payload.name).isEnabledFor(payload.levelno):
                    continue
                payload.parmap_item = index
                store = self.logs
            elif stream == "display":
                payload = DisplayData.from_message(payload)
                store = self.displays
            else:
                continue
            if keep and index >= 0:
                store.setdefault(index, []).append(payload)
            if self.on_output is not None:
                self.on_output(index, stream, payload)

    def cancel_item(self, index, item) -> None:
        self.cancelled[index] = item
        if getattr(self.on_output, "partial", None):
            self.on_output.items_ended((index,))

    def timing(self, indices, timings: Timings, worker_id: Any, began: float | None) -> None:
        self.slots.timing(indices, timings, worker_id, began)

    def place(self, indices, values: list) -> None:
        """Keep a batch that was handed out (parmap keeps everything)."""
        with self.lock:
            self.slots.place(indices, values)

    def snapshot(self) -> Results:
        """The results so far, safe to call from another thread (unfinished: PENDING)."""
        with self.lock:
            feed = self.feed
            size = feed.total if feed.total is not None else feed.pulled
            return self.slots.snapshot(size, self.stats)

    def build(self) -> Results:
        """The Results so far; unfinished items are ``cancelled`` failures."""
        while self.outcomes:  # finished but not handed out when the run stopped
            self.slots.place(*self.outcomes.popleft())
        feed = self.feed
        cancelled = self.cancelled
        n_cancelled = 0

        def missing(index: int) -> Failure:
            nonlocal n_cancelled
            n_cancelled += 1
            item = cancelled[index] if index in cancelled else feed.item_at(index)
            return Failure(index, item, "cancelled")

        close = getattr(self.on_output, "close", None)
        if close is not None:  # lines still unfinished (a worker's, not an item's)
            close()
        outputs = {
            index: ItemOutput(
                "".join(self.stdout.get(index, ())),
                "".join(self.stderr.get(index, ())),
                tuple(self.displays.get(index, ())),
                tuple(self.logs.get(index, ())),
            )
            for index in sorted(set(self.stdout).union(self.stderr, self.displays, self.logs))
        }
        results = self.slots.build(feed.size(), missing, self.stats, outputs)
        results.inputs = feed.sequence
        self.stats.items = len(results)
        if n_cancelled:
            self.stats.failures["cancelled"] = n_cancelled
        return results


def _traceback_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    cause = exc.__cause__
    return getattr(cause, "tb", "") or f"{type(exc).__name__}: {exc}\n"
