"""The worker's status board: what it is doing, in shared memory (layer: wire).

A small block of anonymous shared memory per worker, written by the worker with plain
stores (no syscall, so cheap enough for every item) and read by the parent: which chunk
the worker holds, which position it is running, and since when. The parent reads it to
enforce per-item timeouts, to show the current item, and, after a crash, to know which
item was running when the worker died (engine/attribution.py).

The same memory holds the worker's **output log**: what its items printed (and logged)
that has not reached the parent in a message yet. The worker appends to it on every
write (a copy into shared memory, no syscall) and empties it each time a message
carries that text away; a worker that dies (``os._exit``, a segfault, SIGKILL, the OOM
killer, a timeout) leaves the rest there for the parent to read
(tests/test_output_capture.py::test_a_line_printed_right_before_the_worker_dies_is_kept).
Which message emptied the log is told by a sequence number that every message with
output carries: the parent skips a log whose number it has already received, so
nothing is shown twice.
"""

from __future__ import annotations

import mmap
import struct

BOARD_SIZE = 64 * 1024  # pages are only allocated when written: the log's, on first print
# Layout: int64 chunk_id, int64 position, int64 span, float64 start (time.monotonic());
# int64 forwarding (0: off, else the version of the logging levels below), int64 log
# sequence number, int64 log length, int64 levels length; from LEVELS_START, the
# kernel's logging levels (pickled by the parent, process/capture.py); from LOG_START to
# the end, the output log: entries of _ENTRY (chunk id, position, kind, length)
# followed by that many bytes.
LEVELS_START = 64
LEVELS_SIZE = 1024
LOG_START = LEVELS_START + LEVELS_SIZE
_ENTRY = struct.Struct("<qqBI")
#: What a log entry holds: text of a stream (UTF-8), or a pickled log record.
LOG_KINDS = ("stdout", "stderr", "log")
_KIND_CODE = {kind: code for code, kind in enumerate(LOG_KINDS)}

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

    __slots__ = ("_mm", "ints", "seen", "shared", "times")

    def __init__(self, mm: mmap.mmap):
        self._mm = mm
        view = memoryview(mm)
        self.ints = view[:24].cast("q")
        self.times = view[24:32].cast("d")
        # forwarding (levels version), log sequence number, log length, levels length
        self.shared = view[32:64].cast("q")
        self.seen = -1  # parent side: the log sequence number the last message carried

    @classmethod
    def from_fd(cls, fd: int) -> Board:
        return cls(mmap.mmap(fd, BOARD_SIZE))

    def reset(self) -> None:
        """Parent side, before the worker starts: a fresh board reads "idle", not chunk 0."""
        self.shared[0] = self.shared[1] = self.shared[2] = self.shared[3] = 0
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

    # -- what the worker's items produce besides results (process/capture.py) -----------
    def set_forwarding(self, version: int, levels: bytes) -> None:
        """Parent side, while the worker holds no chunk: forward log records and rich
        displays to the parent, with the kernel's logging ``levels`` (their
        ``version``, > 0, tells a worker whether to apply them again). Version 0: the
        worker keeps Python's defaults (a drop-in Process: `reset` leaves it so)."""
        if self.shared[0] == version:
            return
        if len(levels) > LEVELS_SIZE:
            raise ValueError(f"{len(levels)} bytes of logging levels; a board holds {LEVELS_SIZE}")
        self._mm[LEVELS_START : LEVELS_START + len(levels)] = levels
        self.shared[3] = len(levels)
        self.shared[0] = version  # last: the worker reads the levels once it sees it

    def forwarding(self) -> int:
        """Worker side: the version of the levels set by `set_forwarding` (0: none)."""
        return self.shared[0]

    def levels(self) -> bytes:
        """Worker side: the levels set by `set_forwarding`."""
        return self._mm[LEVELS_START : LEVELS_START + self.shared[3]]

    def log_append(self, chunk_id: int, position: int, kind: str, data: bytes) -> bool:
        """Worker side, under the output lock: keep an entry until a message carries it
        away; False when the log is full (the caller sends what is pending, then the
        log starts over). The length is stored last: a worker killed halfway through
        leaves the log as it was."""
        start = LOG_START + self.shared[2]
        size = len(data)
        end = start + _ENTRY.size + size
        if end > BOARD_SIZE:
            return False
        self._mm[start:end] = _ENTRY.pack(chunk_id, position, _KIND_CODE[kind], size) + data
        self.shared[2] = end - LOG_START
        return True

    def log_sequence(self) -> int:
        """The number of the log's current content (messages carry it)."""
        return self.shared[1]

    def log_sent(self) -> None:
        """Worker side, under the output lock, after a message carried the log's
        content: empty it (its length first, so a death in between loses nothing and
        repeats nothing)."""
        self.shared[2] = 0
        self.shared[1] += 1

    def unsent(self) -> list[tuple[int, int, str, bytes]]:
        """Parent side, after the worker died and its messages were read: the entries
        ``(chunk_id, position, kind, data)`` no message brought."""
        if self.shared[1] == self.seen:
            return []
        length = min(self.shared[2], len(self._mm) - LOG_START)
        entries = []
        offset = LOG_START
        while offset + _ENTRY.size <= LOG_START + length:
            chunk_id, position, code, size = _ENTRY.unpack_from(self._mm, offset)
            offset += _ENTRY.size
            if code >= len(LOG_KINDS) or offset + size > LOG_START + length:
                break  # torn: it died writing this one
            entries.append((chunk_id, position, LOG_KINDS[code], self._mm[offset : offset + size]))
            offset += size
        return entries

    def close(self) -> None:
        self.ints.release()
        self.times.release()
        self.shared.release()
        try:
            self._mm.close()
        except BufferError:  # a view is still exported somewhere; the GC will do it
            pass
