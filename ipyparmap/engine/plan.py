"""Adaptive chunk sizing (layer: engine, its lowest part with state.py).

Two forces pull on the chunk size. Tiny tasks drown in per-message costs unless many
items share a message; long or uneven tasks need small chunks so no worker idles while
another still holds a long queue. The planner starts with single items to measure,
grows chunks toward `TARGET_SECONDS` of work (at most `GROWTH` times the
largest chunk so far, so one fast first item can't produce a huge chunk of slow ones),
and, when the input length is known, never hands out more than a fair share of what is
left (guided self-scheduling), which shrinks chunks near the end.

Two exceptions make small calls cheap. What is left of an input that is estimated to
take less than `SPLIT_SECONDS` in all goes as one chunk: splitting it over workers
would cost more in messages and wake-ups (each woken worker can preempt the parent on
a busy machine) than it could save. And a call starts from what the last call of the
same function (its payload key) measured (`recall`), so a repeated small call of a
tiny function is one message to one worker, not one per item.
"""

from __future__ import annotations

import math
from collections import OrderedDict

#: Aim for chunks of about this much work: per-chunk overhead (~0.1 ms) stays < 1%.
TARGET_SECONDS = 0.02
#: A chunk is at most this many times larger than the largest one so far.
GROWTH = 4
#: With a known length, a chunk is at most remaining / (TAIL_SHARE * workers).
TAIL_SHARE = 2
#: Near the end chunks shrink, but not below this much work: smaller ones cost more in
#: round trips than any imbalance they could prevent.
MIN_CHUNK_SECONDS = 0.002
#: Weight of the newest measurement in the running per-item time estimate.
SMOOTHING = 0.3
#: Items faster than this are timed in blocks (a clock read, a board store and a slice
#: per item would cost more than such an item): blocks of about BLOCK_SECONDS of work,
#: FAST_STRIDE to MAX_STRIDE items. Not more: a crash inside a block runs each of its
#: items again alone to find the culprit.
FAST_ITEM_SECONDS = 20e-6
FAST_STRIDE = 64
MAX_STRIDE = 512
#: About this much work between two clock reads in a block of tiny items: the block
#: overhead (~1 us) stays a few % of it (W1: 64-item blocks of `x*x` spent ~18% of a
#: worker's loop in block bookkeeping, 512-item blocks ~0).
BLOCK_SECONDS = 20e-6
#: What is left goes as one chunk when its estimated work is below this: less than a
#: second worker's wake-up and messages cost (~50-100 us on a busy 2-core machine).
SPLIT_SECONDS = 100e-6
#: Functions whose per-item time is remembered between calls (least recent dropped).
REMEMBERED = 64

# payload key -> smoothed seconds per item at the end of its last call
_per_item_by_key: OrderedDict[bytes, float] = OrderedDict()


class ChunkPlanner:
    """Chooses the size of each next chunk from measured per-item times."""

    def __init__(self, workers: int, chunksize: int | None = None):
        self.workers = max(1, workers)
        self.fixed = chunksize
        self.per_item: float | None = None  # smoothed seconds per item
        self.largest = 1

    def next_size(self, remaining: int | None = None) -> int:
        """Items for the next chunk; ``remaining`` is how many are left, if known."""
        if self.fixed is not None:
            return self.fixed
        if self.per_item is None:
            size = 1
        elif self.per_item <= 0:
            size = self.largest * GROWTH
        else:
            size = min(int(TARGET_SECONDS / self.per_item), self.largest * GROWTH)
        if remaining is not None:
            if self.per_item is not None and remaining * self.per_item < SPLIT_SECONDS:
                # not worth a second message (GROWTH still bounds a misleading estimate)
                size = max(1, min(remaining, self.largest * GROWTH))
                self.largest = max(self.largest, size)
                return size
            tail = math.ceil(remaining / (TAIL_SHARE * self.workers))
            floor = int(MIN_CHUNK_SECONDS / self.per_item) if self.per_item else 1
            # ...but never more than an even split of what is left: if the last items
            # are slower than measured, each worker still gets its share of them
            floor = min(floor, math.ceil(remaining / self.workers))
            size = min(size, max(tail, floor))
        size = max(1, size)
        self.largest = max(self.largest, size)
        return size

    def recall(self, key: bytes) -> None:
        """Start from the per-item time the last call of function ``key`` measured."""
        if self.fixed is None and self.per_item is None:
            self.per_item = _per_item_by_key.get(key)

    def remember(self, key: bytes) -> None:
        """Keep this run's per-item time for the next call of function ``key``."""
        if self.per_item is None:
            return
        _per_item_by_key[key] = self.per_item
        _per_item_by_key.move_to_end(key)
        while len(_per_item_by_key) > REMEMBERED:
            _per_item_by_key.popitem(last=False)

    def timing_stride(self) -> int:
        """How many items a worker runs between clock reads (1 unless items are tiny)."""
        if self.per_item is not None and self.per_item < FAST_ITEM_SECONDS:
            if self.per_item <= 0:
                return MAX_STRIDE
            return max(FAST_STRIDE, min(MAX_STRIDE, int(BLOCK_SECONDS / self.per_item)))
        return 1

    def record(self, items: int, seconds: float) -> None:
        """Fold in that ``items`` items took ``seconds`` of worker time."""
        if items <= 0:
            return
        sample = max(0.0, seconds) / items
        if self.per_item is None:
            self.per_item = sample
        else:
            self.per_item += SMOOTHING * (sample - self.per_item)
