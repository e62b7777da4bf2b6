"""The worker's status board: what it is doing, in shared memory (layer: wire).

A small block of anonymous shared memory per worker, written by the worker with plain
stores (no syscall, so cheap enough for every item) and read by the parent: which chunk
the worker holds, which position it is running, and since when. The parent reads it to
enforce per-item timeouts, to show the current item, and, after a crash, to know which
item was running when the worker died (engine/attribution.py).
"""

from __future__ import annotations

import mmap

BOARD_SIZE = 64
# Layout: int64 chunk_id, int64 position, int64 span, float64 start (time.monotonic()).

#: Board position while the worker unpickles a chunk (no item has started yet).
LOADING = -1
#: Board chunk id when the worker holds no chunk.
IDLE = -1


class Board:
    """One worker's status board: a view over a shared ``mmap``.

    The worker calls `begin_chunk`, then stores each item's position in
    ``ints[1]`` (and the start time in ``times[0]``) before running it; position
    ``len(items)`` marks "pickling the results". Tiny items run a block at a time
    (``map()`` over a slice, without a store per item): then ``ints[1]`` is the block's
    first position and ``ints[2]`` (the span, else 1) its length, and a crash is pinned
    to the block, not the item. The parent calls `read`. Writes are aligned 8-byte
    stores, so a read never sees half a number.
    """

    __slots__ = ("_mm", "ints", "times")

    def __init__(self, mm: mmap.mmap):
        self._mm = mm
        view = memoryview(mm)
        self.ints = view[:24].cast("q")
        self.times = view[24:32].cast("d")

    @classmethod
    def from_fd(cls, fd: int) -> Board:
        return cls(mmap.mmap(fd, BOARD_SIZE))

    def reset(self) -> None:
        """Parent side, before the worker starts: a fresh board reads "idle", not chunk 0."""
        self.times[0] = 0.0
        self.ints[2] = 1
        self.ints[1] = LOADING
        self.ints[0] = IDLE

    def begin_chunk(self, chunk_id: int) -> None:
        self.ints[2] = 1
        self.ints[1] = LOADING
        self.ints[0] = chunk_id

    def begin_item(self, position: int, now: float) -> None:
        self.times[0] = now
        self.ints[2] = 1
        self.ints[1] = position

    def end_chunk(self) -> None:
        self.ints[0] = IDLE

    def read(self) -> tuple[int, int, int, float]:
        """Return ``(chunk_id, position, span, started)``, retrying a read torn by a
        write (``span`` > 1: running one of positions ``position .. position+span-1``)."""
        for _ in range(3):
            chunk_id, position, span = self.ints[0], self.ints[1], self.ints[2]
            started = self.times[0]
            if self.ints[1] == position and self.ints[0] == chunk_id and self.ints[2] == span:
                break
        return chunk_id, position, span, started

    def close(self) -> None:
        self.ints.release()
        self.times.release()
        try:
            self._mm.close()
        except BufferError:  # a view is still exported somewhere; the GC will do it
            pass
