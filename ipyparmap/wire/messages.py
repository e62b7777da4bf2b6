"""Messages between the parent and a worker, and the worker's status board (layer L0).

Every message is one pickled tuple sent with ``Connection.send_bytes`` over the worker's
own duplex pipe; its first element is one of the tags below. Items and the function
travel as separately pickled blobs so a blob that cannot be unpickled in the worker is
reported as such (``LOAD_ERROR``) rather than killing the message stream.

Parent -> worker::

    (INIT, settings)                          once, first message: sys.path etc.
    (FUNC, key, payload, sources)             the pickled function, cached by key
    (CHUNK, chunk_id, key, items_blob, star, stride, table, fresh_rss)
        run func(item) for every item in the blob, reading the clock every
        ``stride`` items (1: exact per-item durations; more: blocks of ``stride``
        items run with map(), see Board); ``fresh_rss``: report the current RSS
        read now (max_memory decides on it), not a reading up to 0.5 s old
    (STOP,)                                   exit cleanly

Worker -> parent::

    (READY, pid)
    (RESULTS, chunk_id, start, values_blob, table, errors, timings, began, outputs,
     memory_kb, done)
        results for positions start .. start+count-1 of the chunk, the values
        pickled on their own (a value that fails to unpickle in the parent can't make
        the rest of the message unreadable); ``errors``
        maps a position to an ErrorInfo tuple, ``timings`` is the plain tuple
        ``(stride, count, seconds)`` of a `Timings`,
        ``began`` is the wall-clock time the batch's first item started,
        ``memory_kb`` is the worker's (peak, current) RSS, ``done`` is True on the
        chunk's last batch
    (OUTPUT, chunk_id, lines)                 captured print output while items run:
        lines is a list of (position, stream, text)
    (LOAD_ERROR, what, ident, error_info)     the function ("func", key) or a chunk's
        items ("chunk", chunk_id) could not be unpickled; sent in answer to the CHUNK
        that needed them, so each report ends exactly one chunk

The **status board** is a small shared-memory block per worker, written by the worker
with plain stores (no syscall, so cheap enough for every item) and read by the parent:
which chunk the worker holds, which position it is running, and since when. The parent
reads it to enforce per-item timeouts, to show the current item, and, after a crash, to
know which item was running when the worker died.
"""

from __future__ import annotations

import mmap

INIT = "init"
FUNC = "func"
CHUNK = "chunk"
STOP = "stop"

READY = "ready"
RESULTS = "results"
OUTPUT = "output"
LOAD_ERROR = "load_error"

#: How many distinct functions a worker keeps loaded (the parent mirrors this LRU).
FUNCTION_CACHE = 8

#: Environment variable set in every worker: nested parmap calls run serially there.
WORKER_ENV = "IPYPARMAP_WORKER"

# An ErrorInfo is the tuple (exception_blob, type_name, message, traceback_text):
# the blob is the pickled exception, or None when the exception could not be pickled.


class Timings:
    """How long the items of one result batch ran, kept per timing block.

    ``seconds[j]`` is the time of block ``j``: items ``j*stride .. j*stride+stride-1``
    of the batch's ``count`` (the last block may be shorter). With stride 1 that is
    one figure per item; tiny items are timed in blocks, and a block's time is split
    evenly over its items only when someone asks (`per_item`): a million-item run
    sends and sums ~16,000 figures, not a million.
    """

    __slots__ = ("count", "seconds", "stride")

    def __init__(self, stride: int, count: int, seconds):
        self.stride, self.count, self.seconds = stride, count, seconds

    @classmethod
    def single(cls, seconds: float) -> Timings:
        return cls(1, 1, [seconds])

    def total(self) -> float:
        return sum(self.seconds)

    def per_item(self) -> list[float]:
        stride, count = self.stride, self.count
        if stride == 1:
            return list(self.seconds)
        spans: list[float] = []
        for block, seconds in enumerate(self.seconds):
            size = min(stride, count - block * stride)
            spans.extend([seconds / size] * size)
        return spans


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
