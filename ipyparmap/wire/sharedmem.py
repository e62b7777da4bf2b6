"""Anonymous shared memory: ``memfd`` files with no name anywhere (layer: wire).

Large buffers (NumPy arrays and anything else pickle protocol 5 hands out of band) are
written once into such a file, whose descriptor travels over a worker's channel; the
receiver maps it copy-on-write, so arrays are rebuilt in place, without copies, and
stay writable (writes touch private pages only). Nothing is ever named in ``/dev/shm``:
the memory is freed when the last descriptor and mapping are gone, also after a crash.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import mmap
import os
import sys
import threading

from ipyparmap import system

#: Buffers start at multiples of this (cache lines; any dtype's alignment).
ALIGN = 64


def anonymous_file(name: str, size: int) -> int:
    """A descriptor of ``size`` zero bytes of memory that no other process can open."""
    if system.has_memfd():
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:  # macOS: a temporary file (mode 0600), unlinked at once: private to us
        import tempfile

        fd, path = tempfile.mkstemp(prefix=name + "-")
        os.unlink(path)
    try:
        os.ftruncate(fd, max(1, size))
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_buffers(buffers: list) -> tuple[int, list[tuple[int, int]]]:
    """Copy ``buffers`` into one anonymous file: ``(fd, [(offset, length), ...])``."""
    table = []
    offset = 0
    for buffer in buffers:
        table.append((offset, buffer.nbytes))
        offset += -(-buffer.nbytes // ALIGN) * ALIGN
    fd = anonymous_file("ipyparmap-buffers", offset)
    # pwrite, not a store through a mapping: the kernel copies straight into the file's
    # pages, with no page fault per 4 KiB page (256 MB: ~3.9 GB/s here, against ~1.3).
    # A full file system (or a memory or file size limit) is an OSError here, where a
    # store through a mapping would be a SIGBUS: the caller falls back to pickling.
    try:
        for buffer, (start, length) in zip(buffers, table, strict=True):
            data = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
            written = 0
            while written < length:  # one call writes at most ~2 GiB
                written += os.pwrite(fd, data[written:], start + written)
    except BaseException:
        os.close(fd)
        raise
    return fd, table


def map_buffers(fds: list[int], table: list[tuple[int, int, int]]) -> list[memoryview]:
    """The buffers of ``table`` (``(descriptor index, offset, length)`` each), mapped
    copy-on-write from ``fds`` (which are closed): writes stay in this process.

    Only the span of a file that the buffers cover is mapped: an arena of shared arrays
    (below) may be far bigger than the few arrays of one message.
    """
    views = []
    try:
        spans: dict[int, tuple[int, int]] = {}
        for index, start, length in table:
            if length:
                low, high = spans.get(index, (start, start + length))
                spans[index] = (min(low, start), max(high, start + length))
        mappings: dict[int, tuple[int, memoryview]] = {}
        for index, (low, high) in spans.items():
            low -= low % mmap.ALLOCATIONGRANULARITY
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            mapping = mmap.mmap(fds[index], high - low, mmap.MAP_PRIVATE, prot, offset=low)
            mappings[index] = (low, memoryview(mapping))
        for index, start, length in table:
            if length == 0:
                views.append(memoryview(b""))
                continue
            low, whole = mappings[index]
            views.append(whole[start - low : start - low + length])
    finally:
        for fd in fds:
            os.close(fd)
    return views


# -- memory that is shared from the start (pm.shared_array) ---------------------------------
# Arrays are carved from a few big memfds, the arenas, so that any number of them holds a
# handful of descriptors (one memfd per array ran out of them: 1,024 by default on Linux,
# 256 on macOS). A buffer inside an arena travels as (arena descriptor, offset): no copy.
#
# Each new arena is at least as big as all open ones together (and ARENA_BYTES at least),
# so N arrays need O(log N) arenas; memfd pages cost nothing until touched, so a big arena
# is cheap. A request of ARENA_BYTES or more gets an arena of its own, sized to fit, as
# does any with ``dedicated`` (see `allocate`). Inside an arena, blocks come from a free
# list (best fit, neighbours merged on free). Free memory is always zero: a freed block is
# zeroed at once, its whole pages given back to the system (MADV_REMOVE), so an allocation
# needs no zeroing. An arena whose blocks are all free is unmapped and its descriptor
# closed; receivers keep their own mapping of it.
#
# What numpy holds as its buffer is a ctypes array over the block: it keeps the arena's
# mapping alive (an mmap cannot close under it), and a weak reference to it frees the
# block. Such callbacks run wherever the garbage collector does, also while this thread
# holds the lock: they queue the block and free it only if they get the lock at once;
# whoever holds the lock frees queued blocks after releasing it (`_unlock`).

#: The smallest arena; a request at least this big gets an arena of its own.
ARENA_BYTES = 64 * 1024 * 1024
_PAGE = mmap.PAGESIZE
_MMAP_OPTIONS = {"trackfd": False} if sys.version_info >= (3, 13) else {}  # no dup'd fd


class _Arena:
    """One memfd, mapped shared, and the free extents inside it."""

    __slots__ = ("address", "by_size", "dedicated", "ends", "fd", "free", "live", "mapping",
                 "serial", "size")  # fmt: skip

    def __init__(self, size: int, dedicated: bool):
        self.size, self.dedicated, self.live = size, dedicated, 0
        self.fd = anonymous_file("ipyparmap-shared", size)
        try:
            self.mapping = mmap.mmap(self.fd, size, **_MMAP_OPTIONS)
        except BaseException:
            os.close(self.fd)
            raise
        self.address = _address(self.mapping)
        self.serial = next(_serials)
        self.free: dict[int, int] = {}  # start -> length of each free extent
        self.ends: dict[int, int] = {}  # end -> start of each free extent
        self.by_size: list[tuple[int, int]] = []  # (length, start) of each, sorted
        self._add(0, size)

    def _add(self, start: int, length: int) -> None:
        self.free[start], self.ends[start + length] = length, start
        bisect.insort(self.by_size, (length, start))

    def _remove(self, start: int) -> int:
        length = self.free.pop(start)
        del self.ends[start + length]
        del self.by_size[bisect.bisect_left(self.by_size, (length, start))]
        return length

    def take(self, size: int) -> int | None:
        """The start of a free block of ``size`` bytes (the smallest extent that fits)."""
        i = bisect.bisect_left(self.by_size, (size, -1))
        if i == len(self.by_size):
            return None
        length, start = self.by_size[i]
        self._remove(start)
        if length > size:
            self._add(start + size, length - size)
        self.live += 1
        return start

    def give_back(self, start: int, size: int) -> None:
        """Free a block: merged with free neighbours and zeroed (see `_zero`)."""
        self.live -= 1
        low, high = start, start + size
        if high in self.free:
            high += self._remove(high)
        if low in self.ends:
            low = self.ends[low]
            self._remove(low)
        self._add(low, high - low)
        _zero(self, start, start + size, low, high)

    def close(self) -> None:
        os.close(self.fd)
        try:
            self.mapping.close()
        except BufferError:  # the dying block's view still holds it: it goes right after
            pass
        self.mapping = None


_lock = threading.Lock()
_pending: collections.deque = collections.deque()  # freed blocks not yet given back
_serials = itertools.count()
_pool: list[_Arena] = []  # arenas that take any small request, oldest first
_arenas: dict[int, _Arena] = {}  # start address -> arena, every open one
_starts: list[int] = []  # their start addresses, sorted (for find_segment)
_blocks: dict[int, tuple] = {}  # id(weak reference) -> (reference, arena, start, size)


def allocate(size: int, dedicated: bool = False) -> object:
    """``size`` zero bytes of anonymous shared memory; buffers inside it go to workers
    by descriptor and offset, without a copy. Freed with the last reference.

    ``dedicated``: in an arena of its own, never reused for another block. A sender
    must keep a block alive until its receiver is done with it; pass it when the sender
    drops the block right after sending (a worker returning an array it allocated).
    """
    import ctypes  # here, not on import: a worker that gets no arrays never needs them
    import weakref

    size = max(ALIGN, -(-size // ALIGN) * ALIGN)
    _lock.acquire()
    try:
        if dedicated or size >= ARENA_BYTES:
            arena, start = _open(-(-size // _PAGE) * _PAGE, dedicated=True), 0
            arena.live = 1
        else:
            for arena in _pool:
                start = arena.take(size)
                if start is not None:
                    break
            else:
                arena = _open(max(ARENA_BYTES, sum(a.size for a in _pool)), dedicated=False)
                start = arena.take(size)
        block = (ctypes.c_char * size).from_buffer(arena.mapping, start)
        reference = weakref.ref(block, _freed)
        _blocks[id(reference)] = (reference, arena, start, size)
    finally:
        _unlock()
    return block


def _open(size: int, dedicated: bool) -> _Arena:
    arena = _Arena(size, dedicated)
    _arenas[arena.address] = arena
    bisect.insort(_starts, arena.address)
    if not dedicated:
        _pool.append(arena)
    return arena


def _freed(reference, blocks=_blocks, pending=_pending) -> None:
    """Weak reference callback: a block is garbage (any thread, any moment)."""
    pending.append(blocks.pop(id(reference)))
    _drain()


def _unlock() -> None:
    _lock.release()
    _drain()


def _drain() -> None:
    """Give back queued blocks, unless another frame (or thread) holds the lock: it will."""
    while _pending and _lock.acquire(blocking=False):
        try:
            while _pending:
                _, arena, start, size = _pending.popleft()
                if arena.live > 1:
                    arena.give_back(start, size)
                    continue
                del _arenas[arena.address]  # its last block: no need to zero anything
                del _starts[bisect.bisect_left(_starts, arena.address)]
                if not arena.dedicated:
                    _pool.remove(arena)
                arena.close()
        finally:
            _lock.release()


def _zero(arena: _Arena, start: int, end: int, free_start: int, free_end: int) -> None:
    """Zero the freed block [start, end), now inside the free extent [free_start,
    free_end). Pages of the block that are wholly free go back to the system (a hole in
    the memfd reads as zeros); the rest is written with zeros (everywhere without
    MADV_REMOVE: on macOS the backing is a file)."""
    import ctypes

    global _punch
    low = max(start - start % _PAGE, -(-free_start // _PAGE) * _PAGE)
    high = min(-(-end // _PAGE) * _PAGE, free_end - free_end % _PAGE)
    if _punch and high > low:
        try:
            arena.mapping.madvise(mmap.MADV_REMOVE, low, high - low)
        except OSError:  # a file system without hole punching
            _punch = False
        else:
            if start < low:
                ctypes.memset(arena.address + start, 0, low - start)
            if high < end:
                ctypes.memset(arena.address + high, 0, end - high)
            return
    ctypes.memset(arena.address + start, 0, end - start)


_punch = hasattr(mmap, "MADV_REMOVE")


def _address(buffer) -> int | None:
    """Where a writable buffer's memory starts (None for read-only or empty ones)."""
    import ctypes

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    except (TypeError, ValueError, BufferError):
        return None


def find_segment(buffer: memoryview) -> tuple[int, int, int] | None:
    """``(descriptor, offset, serial)`` when ``buffer`` lies inside memory of `allocate`
    (``serial`` tells arenas apart even when a descriptor number is reused)."""
    if not _arenas:  # the common case: nobody allocated any
        return None
    address = _address(buffer)
    if address is None:
        return None
    _lock.acquire()  # the buffer keeps its own arena open, not the others
    try:
        i = bisect.bisect_right(_starts, address) - 1
        arena = _arenas[_starts[i]] if i >= 0 else None
        if arena is not None and address + buffer.nbytes <= arena.address + arena.size:
            return arena.fd, address - arena.address, arena.serial
        return None
    finally:
        _unlock()
