"""Crash attribution: which item a lost worker or task is blamed on (layer: engine).

One policy for every engine. When a worker dies (local engine) or a task is lost
(an executor's worker died, Dask gave up on it), the engine says what it knows of
where the worker was, and the policy decides, per item the worker held:

- **pinned**: the worker was running this very item (its status board says so, or
  the item was alone): it fails as ``crashed``/``timeout`` (or is retried);
- **suspects**: it died inside a block of tiny items, loading a chunk or sending its
  results, or a task of several items was lost: each item runs again *alone*, so the
  next death is pinned on the item that causes it;
- **unpinned**: it died before it even looked at the chunk, or nobody can tell
  (another executor's worker).

Every death that is not pinned on an item still counts against each item that may have
caused it (`Pending.deaths`: the suspects, or every item of an unpinned death; the items
after a block of tiny items that died are not counted). An item held during
`MAX_UNPINNED_DEATHS` such deaths fails as ``crashed`` with a message that says so: no
input can make an engine respawn workers without end
(tests/test_faults.py::test_unpinned_deaths_end_in_a_clear_failure).
The other items of a chunk whose culprit is known go back to the feed unharmed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipyparmap.engine.feed import Chunk, Feed
from ipyparmap.errors import SerializationError, WorkerCrashed

#: Worker deaths an item may be held through, without being pinned, before it fails.
MAX_UNPINNED_DEATHS = 3

#: What the engine knows of where a worker was when it died: the status board's
#: ``(chunk_id, position, span, started)``, or None when it cannot know (a task).
Whereabouts = tuple[int, int, int, float] | None
#: Builds the failure of the item at a position: ``(kind, exception)``.
Blame = Callable[[int], tuple[str, BaseException]]


class CrashPolicy:
    """Decides what happens to the items of a chunk whose worker or task was lost."""

    def __init__(self, feed: Feed, sink: Any):
        self.feed = feed
        self.sink = sink  # engine.outcomes.OutcomeSink

    def worker_died(self, chunk: Chunk, where: Whereabouts, blame: Blame) -> int | None:
        """The worker running ``chunk`` died; returns the position blamed, if any."""
        remaining = list(chunk.unreported())
        if not remaining:
            return None
        if where is None or where[0] != chunk.id:  # it never looked at this chunk
            self.split(chunk, died=True)
            return None
        _, position, span, _ = where
        suspects: set = set()  # a set: with a list, a big chunk's death was quadratic
        if 0 <= position < len(chunk.items):
            pinned: int | None = position
            if span > 1:  # in a block of tiny items (see process/worker.py's run_items)
                end = min(position + span, len(chunk.items))
                suspects = set(range(max(position, chunk.reported), end))
                pinned = min(suspects) if len(suspects) == 1 else None
        elif chunk.solo or len(remaining) == 1:  # died loading items or sending results
            # (the board's position is LOADING, or len(items) while results are pickled)
            pinned = remaining[0]
        else:  # which item? run each alone to find out
            pinned, suspects = None, set(remaining)
        if pinned is None:
            for pos in reversed(remaining):
                suspect = pos in suspects
                self._requeue(chunk, pos, solo=chunk.solo or suspect, died=suspect)
            return None
        for pos in reversed(remaining):
            if pos != pinned:
                self._requeue(chunk, pos, solo=chunk.solo, died=False)
        kind, error = blame(pinned)
        self.sink.item_failed(chunk, pinned, kind, error)
        return pinned

    def task_lost(self, chunk: Chunk, error: BaseException) -> None:
        """A task of ``chunk`` was lost with its worker (which item did it is unknown):
        a suspect's own task (sent alone) fails as ``crashed``; any other task runs
        each of its items again alone (it may have been innocent: Dask also gives up
        on tasks that merely sat on the workers a bad one killed)."""
        if not chunk.solo:
            self.split(chunk, died=True)
            return
        for position in chunk.unreported():
            self.sink.item_failed(chunk, position, "crashed", error)

    def split(self, chunk: Chunk, *, died: bool) -> None:
        """Send every unreported item of ``chunk`` again, alone; ``died``: its worker
        died, unpinned, while holding them (an item past the limit fails instead)."""
        for position in reversed(chunk.unreported()):
            self._requeue(chunk, position, solo=True, died=died)

    def _requeue(self, chunk: Chunk, position: int, *, solo: bool, died: bool) -> None:
        pending = chunk.pending(position, solo=solo, died=died)
        if died and pending.deaths >= MAX_UNPINNED_DEATHS:
            error = WorkerCrashed(
                f"item {self.feed.label(pending.index)} was held by {pending.deaths} workers "
                "that died before they could say which item killed them (while receiving "
                "or loading it, or as a task of another executor); giving up on it"
            )
            self.sink.final_failure(
                pending.index, pending.item, "crashed", error, chunk.worker_id,
                pending.attempts + 1,
            )  # fmt: skip
            return
        self.feed.put_back(pending)

    # -- what could not be unpickled ------------------------------------------------------
    def items_unloadable(self, chunk: Chunk, cause: BaseException | None) -> None:
        """A worker could not unpickle the chunk's items: one item fails, several run
        alone to find the culprit."""
        if len(chunk.items) == 1:
            error = SerializationError(
                f"item {self.feed.label(chunk.indices[0])} could not be unpickled in the "
                f"worker: {_describe(cause)}"
            )
            error.__cause__ = cause
            self.sink.item_failed(chunk, 0, "error", error)
        else:
            self.split(chunk, died=False)

    def results_unloadable(self, chunk: Chunk, start: int, count: int, cause) -> None:
        """A batch of results could not be unpickled here: the same, for results."""
        if count == 1:
            error = SerializationError(
                f"the result of item {self.feed.label(chunk.indices[start])} could not be "
                f"unpickled here: {_describe(cause)}"
            )
            self.sink.item_failed(chunk, start, "error", error)
            return
        for position in reversed(range(start, start + count)):
            self.feed.put_back(chunk.pending(position, solo=True))


def function_unloadable(name: str, cause: BaseException | None) -> SerializationError:
    """The error for a function that could not be unpickled in a worker."""
    error = SerializationError(
        f"the function {name} could not be unpickled in a worker"
        + (f": {_describe(cause)}" if cause is not None else "")
    )
    error.__cause__ = cause
    return error


def _describe(error: BaseException | None) -> str:
    return "unknown error" if error is None else f"{type(error).__name__}: {error}"
