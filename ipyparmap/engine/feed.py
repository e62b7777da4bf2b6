"""The feed: where a run's chunks come from (layer: engine).

A feed takes items from the input with a bounded look-ahead, groups them into chunks
sized by the planner, pickles each chunk (an item that cannot be pickled fails alone,
before anything is sent), and keeps the *requeue*: items to send again after a crash
split, a retry or a load error, which go out before new input. An engine asks
`Feed.next_chunk` whenever a worker can take one; it never looks at the input itself.

`ItemFeed` runs one function over one iterable (``parmap``, ``imap``); the drop-ins'
`engine.jobs.JobFeed` takes items from a queue of jobs, each with its own function.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ipyparmap.engine.plan import ChunkPlanner
from ipyparmap.wire.serialize import FunctionPayload, ItemPicklingError, pickle_items

#: Chunks of items holding large buffers carry at most about this many bytes of them,
#: so copying the next chunk into shared memory overlaps the current one's run.
CHUNK_BYTES = 4 * 1024 * 1024

#: How a feed packs a chunk's items for its engine: pickled with large buffers apart,
#: for shared memory (local workers); pickled whole (another executor's tasks); or
#: passed as they are (threads of this process: nothing is copied, anything goes).
SHARED_MEMORY, PICKLED, AS_IS = "shared memory", "pickled", "as is"

# Chunk ids are unique in the process, so a warm worker's board can never show a
# chunk of an earlier run under an id this run uses.
_chunk_ids = itertools.count()


@dataclass
class Pending:
    """An item waiting to be dispatched again (after a crash split, or for a retry)."""

    index: Any
    item: Any
    attempts: int = 0  # runs that ended in a failure (raised, crashed, timed out)
    deaths: int = 0  # worker deaths while it was held but not pinned on any item
    solo: bool = False  # send it alone, to pin down which item kills its worker


@dataclass
class Chunk:
    """Items on their way to (or running in) one worker or task."""

    id: int
    indices: Sequence[Any]  # a range for new input, a list for requeued items
    items: Sequence[Any]  # a list, or a slice of a range input (a range)
    attempts: list | None  # per position, made before this dispatch; None: all 0
    deaths: list | None  # per position, unpinned worker deaths so far; None: all 0
    solo: bool
    owner: Any  # the engine's handle: a WorkerHandle, a Future...
    payload: FunctionPayload | None  # the function it runs
    planner: ChunkPlanner  # learns from its timings
    blob: Any = None  # the pickled items, until sent
    worker_id: Any = None  # the worker's PID (or address), where known
    reported: int = 0  # positions below this have come back
    shared: bool = False  # its large buffers went through shared memory

    def attempts_at(self, position: int) -> int:
        return 0 if self.attempts is None else self.attempts[position]

    def deaths_at(self, position: int) -> int:
        return 0 if self.deaths is None else self.deaths[position]

    def unreported(self) -> range:
        return range(self.reported, len(self.items))

    def pending(self, position: int, *, solo: bool, died: bool = False) -> Pending:
        """The item at ``position`` to send again; ``died``: its worker died while it
        was held, and nobody can tell which item did it (counts toward giving up)."""
        return Pending(
            self.indices[position],
            self.items[position],
            self.attempts_at(position),
            self.deaths_at(position) + died,
            solo,
        )


UnpicklableCallback = Callable[[Any, Any, BaseException], None]


class Feed:
    """The requeue and chunk making shared by every feed; a subclass says where new
    items come from (`take_new`), which function a chunk runs and how items are named."""

    def __init__(self, planner: ChunkPlanner, packing: str = PICKLED):
        self.planner = planner
        self.packing = packing  # SHARED_MEMORY, PICKLED or AS_IS
        self.requeue: deque[Pending] = deque()
        self.exhausted = False  # no new input will come
        self.item_bytes = 0  # large buffers per item in the last chunk that had any
        self.chunks = 0  # chunks made (run statistics)
        # told about an item that cannot be pickled: (index, item, error); set by the run
        self.on_unpicklable: UnpicklableCallback | None = None

    # -- what a subclass supplies -------------------------------------------------------
    def take_new(self, stopping: bool) -> tuple | None:
        """``(indices, items, payload, planner)`` of new input, or None for now."""
        raise NotImplementedError

    def payload_for(self, chunk: Chunk) -> FunctionPayload | None:
        """The function ``chunk`` runs, or None when nobody wants its results any more."""
        return chunk.payload

    def label(self, index: Any) -> str:
        """How messages name the item at ``index``."""
        return str(index)

    def same_batch(self, first: Pending, other: Pending) -> bool:
        """Whether two requeued items may share a chunk (always, with one function)."""
        return True

    def requeued_payload(self, pending: Pending) -> tuple | None:
        """``(payload, planner)`` for requeued items like ``pending``; None: drop it."""
        raise NotImplementedError

    # -- chunks -------------------------------------------------------------------------
    def next_chunk(self, owner: Any, stopping: bool = False) -> Chunk | None:
        """The next chunk for ``owner`` (requeued items first), pickled; None: nothing now."""
        while True:
            if self.requeue:
                taken = self._take_requeued()
                if taken is None:  # it dropped items of a job that ended: look again
                    continue
            else:
                taken = self.take_new(stopping)
                if taken is None:
                    return None
            indices, items, attempts, deaths, solo, payload, planner = taken
            try:
                if self.packing is AS_IS:
                    blob: Any = items
                else:
                    blob = pickle_items(items, share=self.packing is SHARED_MEMORY)
            except ItemPicklingError as bad:
                self._unpicklable(indices, items, attempts, deaths, bad)
                continue
            self.chunks += 1
            buffers = getattr(blob, "buffers", None)
            if buffers:  # large arrays: how big is an item, to size the next chunks
                self.item_bytes = sum(b.nbytes for b in buffers) // len(items)
            return Chunk(
                next(_chunk_ids), indices, items, attempts, deaths, solo, owner, payload,
                planner, blob,
            )  # fmt: skip

    def size_for(self, planner: ChunkPlanner, remaining: int | None) -> int:
        size = planner.next_size(remaining)
        if self.item_bytes:  # copying big arrays into shared memory is the parent's work:
            # small chunks let the copy of the next one overlap this one's run
            size = max(1, min(size, CHUNK_BYTES // self.item_bytes))
        return size

    def _take_requeued(self) -> tuple | None:
        first = self.requeue[0]
        found = self.requeued_payload(first)
        if found is None:
            self.requeue.popleft()
            return None
        payload, planner = found
        if first.solo:
            pending = [self.requeue.popleft()]
        else:
            size = planner.next_size(len(self.requeue))
            pending = []
            while (
                self.requeue
                and len(pending) < size
                and not self.requeue[0].solo
                and self.same_batch(first, self.requeue[0])
            ):
                pending.append(self.requeue.popleft())
        return (
            [p.index for p in pending],
            [p.item for p in pending],
            [p.attempts for p in pending],
            [p.deaths for p in pending],
            len(pending) == 1 and pending[0].solo,
            payload,
            planner,
        )

    def _unpicklable(self, indices, items, attempts, deaths, bad: ItemPicklingError) -> None:
        position = bad.position
        if self.on_unpicklable is not None:
            self.on_unpicklable(indices[position], items[position], bad.error)
        rest = [
            Pending(
                indices[p],
                items[p],
                0 if attempts is None else attempts[p],
                0 if deaths is None else deaths[p],
            )
            for p in range(len(items))
            if p != position
        ]
        self.requeue.extendleft(reversed(rest))

    # -- the requeue ----------------------------------------------------------------------
    def put_back(self, pending: Pending) -> None:
        """Send ``pending`` again, before anything else."""
        self.requeue.appendleft(pending)

    def suspect_next(self) -> bool:
        """Whether the next requeued item must run alone (nothing else in flight)."""
        return bool(self.requeue) and self.requeue[0].solo

    def more_work(self) -> bool:
        """Whether anything is left to send (a replacement worker is worth starting)."""
        return bool(self.requeue) or not self.exhausted

    def drained(self, stopping: bool) -> bool:
        """Nothing more will be sent."""
        return not self.requeue and (self.exhausted or stopping)

    def drop_requeued(self) -> list[Pending]:
        """Empty the requeue (the run stops): what was waiting in it."""
        dropped = list(self.requeue)
        self.requeue.clear()
        return dropped


class ItemFeed(Feed):
    """One function over one iterable, lazily, with a bounded look-ahead."""

    def __init__(self, func: Callable, iterable: Iterable, planner: ChunkPlanner,
                 packing: str = PICKLED):  # fmt: skip
        super().__init__(planner, packing)
        self.func = func
        try:
            self.total: int | None = len(iterable)  # type: ignore[arg-type]
        except Exception:
            self.total = None
        self.sequence = iterable if isinstance(iterable, Sequence) else None
        self.source = iter(iterable)
        # A list or range input is sliced, not iterated item by item (a list slice is one
        # copy of pointers; islice + extend costs ~5 ns an item more). A range's slice is
        # a range: it travels as such (the worker iterates it as it would the list), not
        # as thousands of pickled ints.
        self.span: list | range | None = iterable if type(iterable) in (list, range) else None
        self.payload: FunctionPayload | None = None  # pickled when the run starts
        self.pulled = 0  # items taken from the input so far
        self.input_error: tuple[int, BaseException] | None = None  # (index, error)
        # ordered imap: don't run far ahead of the consumer, who has everything below
        # ``floor()``; None: no bound
        self.floor: Callable[[], int] | None = None
        self.window = 1024

    def take_new(self, stopping: bool) -> tuple | None:
        if self.exhausted or stopping:
            return None
        remaining = None if self.total is None else self.total - self.pulled
        size = self.size_for(self.planner, remaining)
        if self.floor is not None:
            window = max(self.window, 4 * self.planner.workers * self.planner.largest)
            size = min(size, self.floor() + window - self.pulled)
            if size <= 0:
                return None
        start = self.pulled
        items: Sequence[Any]
        if self.span is not None:
            items = self.span[start : start + size]
        else:
            items = []
            try:
                items.extend(itertools.islice(self.source, size))  # keeps items on error
            except Exception as exc:  # the input iterable itself raised
                self.input_error = (self.pulled + len(items), exc)
                self.exhausted = True
        self.pulled += len(items)
        if len(items) < size or self.pulled == self.total:  # (no empty read to find out)
            self.exhausted = True
        if not items:
            return None
        return range(start, self.pulled), items, None, None, False, self.payload, self.planner

    def requeued_payload(self, pending: Pending) -> tuple:
        return self.payload, self.planner

    def item_at(self, index: int) -> Any:
        """The input item at ``index`` if the input is a sequence (for cancelled slots)."""
        return self.sequence[index] if self.sequence is not None else None

    def size(self) -> int:
        """How many slots the Results have."""
        return self.total if self.sequence is not None else self.pulled
