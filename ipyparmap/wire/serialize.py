"""Pickling functions, items and results; naming what can't be pickled (layer: wire).

Underneath is cloudpickle (wire/codec.py); the caller's own modules travel by value
(wire/localmodules.py). Here: a function's payload, pickled once and reused while
nothing it reaches changed; big buffers (NumPy arrays) in shared memory beside the
pickle (`Packed`); the modules a pickled function will import (`preload_modules`, for
the template process); exceptions and notebook source lines carried back and forth.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import threading
import types
from typing import Any, ClassVar

from ipyparmap.errors import RemoteException, RemoteTraceback, SerializationError
from ipyparmap.options import describe
from ipyparmap.wire.codec import (
    PICKLING_ERRORS,
    PROTOCOL,
    cloudpickle_module,
    dumps,
    error_text,
    loads,
)
from ipyparmap.wire.fingerprint import fingerprint, global_names, same
from ipyparmap.wire.localmodules import (
    by_reference,
    is_local_module,
    reachable,
    register_local_modules,
)

#: Buffers at least this big (NumPy arrays...) travel in shared memory, not in the pickle.
SHARE_BYTES = 64 * 1024


class Packed:
    """A pickle whose large buffers are kept apart, to travel in shared memory.

    ``blob`` is the pickle stream; ``buffers`` the out-of-band buffers (views of the
    pickled objects' own memory: nothing copied yet). :meth:`share` copies them, once,
    into an anonymous memfd whose descriptor can go to any number of workers.
    """

    __slots__ = ("blob", "buffers", "fd", "fds", "table")

    def __init__(self, blob: bytes, buffers: list | None = None):
        self.blob = blob
        self.buffers = buffers or []
        self.fd: int | None = None  # the memfd we made for the copies (ours to close)
        self.fds: tuple[int, ...] = ()  # what to send: that memfd, then shared segments
        self.table: list | None = None

    @property
    def nbytes(self) -> int:
        return len(self.blob) + sum(b.nbytes for b in self.buffers)

    def share(self) -> tuple[tuple[int, ...], list | None]:
        """``(descriptors to send, table)``: nothing when there are no large buffers.

        The table has ``(descriptor index, offset, length)`` per buffer. Buffers inside
        memory shared from the start (`sharedmem.allocate`, ``pm.shared_array``) go as
        their arena's descriptor and offset; the others are copied once into a new
        memfd. Never more than `channel.MAX_FDS` descriptors: past it, the arenas that
        carry the fewest bytes are copied too (correct, only slower).
        """
        if not self.buffers:
            return (), None
        if self.table is None:
            from ipyparmap.wire.sharedmem import find_segment, write_buffers

            found = [find_segment(buffer) for buffer in self.buffers]
            places = _within_limit(found, self.buffers)
            copies = [b for b, place in zip(self.buffers, places, strict=True) if place is None]
            fds: list[int] = []
            copied: list = []
            if copies:
                try:
                    self.fd, copied = write_buffers(copies)
                except OSError:  # no room for shared memory (ENOSPC, ENOMEM, EFBIG...)
                    self._inline()
                    return (), None
                fds.append(self.fd)
            table, next_copy = [], iter(copied)
            for buffer, place in zip(self.buffers, places, strict=True):
                if place is None:
                    table.append((0, *next(next_copy)))
                else:
                    fd, offset, _ = place
                    if fd not in fds:
                        fds.append(fd)
                    table.append((fds.index(fd), offset, buffer.nbytes))
            self.fds, self.table = tuple(fds), table
        return self.fds, self.table

    def _inline(self) -> None:
        """Put the large buffers back into the pickle itself: what travels when shared
        memory cannot be had (a full tmpfs, a memory limit, a file size limit). Loading
        the pickle over the buffers rebuilds the objects as views of them, without a
        copy; pickling those again without a buffer callback writes the bytes in-band."""
        import pickle

        whole = pickle.loads(self.blob, buffers=self.buffers)
        self.blob = cloudpickle_module().dumps(whole, protocol=PROTOCOL)
        self.buffers = []

    def close(self) -> None:
        """Release our descriptor (receivers that mapped the memory keep theirs)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.buffers = []


def _within_limit(places: list, buffers: list) -> list:
    """``places`` (`find_segment` per buffer, None: to copy) with at most `MAX_FDS`
    descriptors among them and the copy memfd; the arenas holding the most bytes keep
    theirs, the others' buffers become copies."""
    from ipyparmap.wire.channel import MAX_FDS

    carried: dict[int, int] = {}  # descriptor -> bytes it carries
    for buffer, place in zip(buffers, places, strict=True):
        if place is not None:
            carried[place[0]] = carried.get(place[0], 0) + buffer.nbytes
    copy_memfd = 1 if None in places else 0
    if len(carried) + copy_memfd <= MAX_FDS:
        return places
    kept = set(sorted(carried, key=carried.__getitem__, reverse=True)[: MAX_FDS - 1])
    return [place if place is not None and place[0] in kept else None for place in places]


def _share_large(buffers: list):
    """A pickle ``buffer_callback``: large contiguous buffers go out of band."""

    def callback(buffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in the pickle
            return True
        if raw.nbytes < SHARE_BYTES:
            return True
        buffers.append(raw)
        return False

    return callback


#: Types the C pickler handles exactly as cloudpickle does (no classes, no buffers).
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), complex})
#: Lists up to this long are checked for plain types (the check costs more than it
#: saves for long ones, where cloudpickle's per-call set-up is paid once anyway).
_PLAIN_CHECK_ITEMS = 16


def dumps_packed(obj: Any) -> Packed:
    """Pickle ``obj`` with its large buffers apart (see Packed)."""
    if (
        type(obj) is list
        and len(obj) <= _PLAIN_CHECK_ITEMS
        and all(type(x) in _PLAIN_TYPES for x in obj)
    ):  # a small call's items or results: the C pickler, without cloudpickle's set-up
        import pickle

        return Packed(pickle.dumps(obj, PROTOCOL))
    buffers: list = []
    blob = cloudpickle_module().dumps(obj, protocol=PROTOCOL, buffer_callback=_share_large(buffers))
    return Packed(blob, buffers)


class Incoming:
    """A received pickle with its shared-memory descriptors, loaded on demand."""

    __slots__ = ("blob", "fds", "table")

    def __init__(self, blob: bytes, fds: list[int], table: list | None):
        self.blob, self.fds, self.table = blob, fds, table

    def load(self) -> Any:
        fds, self.fds = self.fds, []
        return loads_shared(self.blob, fds, self.table)

    def discard(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def loads_shared(blob: bytes, fds: list[int], table: list | None) -> Any:
    """Unpickle a Packed that arrived with its shared-memory descriptor."""
    import pickle

    if not table:
        for fd in fds:
            os.close(fd)
        return pickle.loads(blob)
    from ipyparmap.wire.sharedmem import map_buffers

    return pickle.loads(blob, buffers=map_buffers(fds, table))


_function_pickler = None


def dumps_function(func: Any, buffers: list | None = None) -> bytes:
    """Like `dumps`, but code objects keep their file names (`function_pickler`)."""
    import io

    stream = io.BytesIO()
    callback = _share_large(buffers) if buffers is not None else None
    function_pickler()(stream, protocol=PROTOCOL, buffer_callback=callback).dump(func)
    return stream.getvalue()


def function_pickler() -> type:
    """cloudpickle's Pickler, but code objects pickled by value keep their file names.

    cloudpickle 3.1 replaces ``co_filename`` by ``<dynamic-code>`` (for deterministic
    pickles); we need the real name, since a worker's traceback finds the notebook
    cell's source lines (shipped with `cell_sources`) by that name, and a drop-in
    ``Process``'s traceback names the target's file as the standard library's does.
    """
    global _function_pickler
    if _function_pickler is None:
        _function_pickler = _make_function_pickler()
    return _function_pickler


def _make_function_pickler():
    from collections import ChainMap

    cp = cloudpickle_module()
    code_reduce = getattr(getattr(cp, "cloudpickle", None), "_code_reduce", None)
    if code_reduce is None:  # a cloudpickle without it: names are lost, nothing breaks
        return cp.Pickler

    def reduce_keeping_filename(code: types.CodeType):
        constructor, args = code_reduce(code)
        args = tuple(
            code.co_filename if isinstance(arg, str) and arg == "<dynamic-code>" else arg
            for arg in args
        )
        return constructor, args

    class FunctionPickler(cp.Pickler):
        dispatch_table: ClassVar = ChainMap(
            {types.CodeType: reduce_keeping_filename}, cp.Pickler.dispatch_table
        )

    return FunctionPickler


def dumps_message(message: tuple) -> bytes:
    """A wire message (the plain tuple of a wire/messages.py record): plain data around
    already pickled blobs, so the C pickler does (cloudpickle would build a Pickler
    object for every small message)."""
    import pickle

    return pickle.dumps(message, PROTOCOL)


class FunctionPayload:
    """The pickled function, its content hash, and the notebook source lines it needs.

    Large buffers among its globals (a big array the function uses) are in ``packed``,
    shared with every worker through one memfd instead of copied through each pipe.
    ``code_key`` is the hash of the pickle alone; ``key`` also covers those buffers'
    data (`_buffers_key`), found on first use: a run asks for it only once its workers
    are starting, so they boot while a big global is hashed and copied.
    """

    __slots__ = ("_key", "_version", "blob", "code_key", "packed", "sources")

    def __init__(self, key: bytes, blob: bytes, sources: dict, packed: Packed | None = None):
        self.code_key, self.blob, self.sources, self.packed = key, blob, sources, packed
        self._key: bytes | None = key if packed is None else None
        self._version: _SentGlobals | None = None  # a first version: its CRCs come from the copy

    @property
    def key(self) -> bytes:
        """What a worker caches the function under: a changed global array is resent."""
        if self._key is None:
            self._key, self._version = _buffers_key(self.code_key, self.packed.buffers)  # type: ignore[union-attr]
        return self._key

    def share(self) -> tuple[tuple[int, ...], list | None]:
        """The descriptors and table of its large buffers (copied once, `Packed.share`).
        A function's first version has its CRCs computed from that copy meanwhile, in
        a thread: the next call compares its data with what the workers got."""
        if self.packed is None:
            return (), None
        fds, table = self.packed.share()
        version, self._version = self._version, None
        if version is not None:
            version.learn(self.packed, table)
        return fds, table

    def content_key(self) -> bytes:
        """A key from the data itself (for executors, whose workers cache functions by
        it but get no copy this process could hash)."""
        if self.packed is None:
            return self.code_key
        parts = _buffer_parts(self.packed.buffers)
        return _blake2b(self.code_key + b"".join(parts)).digest()

    def in_band(self, func: Any) -> bytes:
        """The pickle of ``func`` with its large buffers inside, for workers that get no
        shared memory (another executor's); ``blob`` itself when it has none."""
        return self.blob if self.packed is None else dumps_function(func)

    def preload(self) -> tuple[str, ...]:
        """Installed modules the pickle refers to (`preload_modules`)."""
        return preload_modules(self.blob)

    def close(self) -> None:
        if self.packed is not None:
            self.packed.close()


_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_SUBIMPORTS = frozenset({"subimport", "dynamic_subimport"})
_CLOUDPICKLE_MODULES = frozenset({"cloudpickle", "cloudpickle.cloudpickle"})
_SUBIMPORT = object()  # (a marker: cloudpickle's subimport is on the pickle's stack)
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def preload_modules(blob: bytes) -> tuple[str, ...]:
    """The installed modules (not the user's own, not ``__main__``) the pickle imports,
    top-level names, in order: those its GLOBAL and STACK_GLOBAL opcodes name, and
    those cloudpickle's ``subimport`` calls name (a module among a function's globals:
    ``np`` after ``import numpy as np``). A worker may import them ahead of the function
    (their import is what unpickling it would start with). Other strings in the pickle
    (a function's constants and names) are not modules. Only modules this process has
    imported count."""
    import pickletools

    found: dict[str, None] = {}
    memo: list = []
    # the last two values pushed, as far as they matter here: a string, _SUBIMPORT (the
    # function cloudpickle rebuilds a module with), or None (anything else)
    recent: list = [None, None]

    def push(value) -> None:
        if isinstance(value, str) and recent[1] is _SUBIMPORT:  # subimport("numpy")
            found[value.partition(".")[0]] = None
        recent[:] = [recent[1], value]

    try:
        for op, arg, _ in pickletools.genops(blob):
            name = op.name
            if name in _STRING_OPS:
                push(arg)
            elif name in _MEMO_GETS:
                push(memo[arg] if arg < len(memo) else None)
            elif name == "MEMOIZE":
                memo.append(recent[1])
            elif name in ("STACK_GLOBAL", "GLOBAL"):
                module, attr = recent if name == "STACK_GLOBAL" else (str(arg).partition(" ")[::2])
                if isinstance(module, str):
                    found[module.partition(".")[0]] = None
                is_subimport = module in _CLOUDPICKLE_MODULES and attr in _SUBIMPORTS
                if name == "STACK_GLOBAL":
                    recent[:] = [None, None]  # its two strings were popped
                push(_SUBIMPORT if is_subimport else None)
            elif name not in ("FRAME", "PROTO"):
                push(None)  # something else is on top now
    except Exception:  # never fail a run over a hint
        return ()
    modules = []
    for top in found:
        module = sys.modules.get(top)
        if module is None or top in ("__main__", "builtins") or top in sys.builtin_module_names:
            continue
        if isinstance(module, types.ModuleType) and not is_local_module(module):
            modules.append(top)
    return tuple(modules)


class _SentGlobals:
    """What the workers were sent of a function's large buffers: its ``key`` and the
    data's CRCs, which for a first version a thread reads from the copy itself."""

    __slots__ = ("done", "key", "parts")

    def __init__(self, key: bytes, parts: list | None = None):
        self.key, self.parts = key, parts
        self.done: threading.Event | None = None  # set when a thread filled ``parts``

    def learn(self, packed: Packed, table: list | None) -> None:
        """Find the CRCs of what ``packed.share`` made (what every worker maps)."""
        import mmap

        from ipyparmap.wire.sharedmem import find_segment

        if not table or packed.fd is None:  # nothing copied: all in shared arenas
            self.parts = _buffer_parts(packed.buffers)
            return
        places = [find_segment(buffer) for buffer in packed.buffers]
        size = max(offset + length for index, offset, length in table if index == 0)
        copy = mmap.mmap(packed.fd, size, prot=mmap.PROT_READ)  # (outlives the fd)
        done = self.done = threading.Event()

        def crcs() -> None:
            import zlib

            try:
                view = memoryview(copy)
                parts = []
                for (_, offset, length), place in zip(table, places, strict=True):
                    if place is not None:
                        parts.append(repr((place[1:], length)).encode())
                    else:  # a copy, in our memfd (index 0 of the table)
                        crc = zlib.crc32(view[offset : offset + length])
                        parts.append(repr(("crc32", crc, length)).encode())
                view.release()
                self.parts = parts
            finally:
                copy.close()
                done.set()

        threading.Thread(target=crcs, name="ipyparmap-crc", daemon=True).start()

    def wait(self) -> list | None:
        if self.done is not None:
            self.done.wait()
        return self.parts


#: Functions with large globals: code_key -> the _SentGlobals its workers were last sent.
_sent_globals: dict[bytes, _SentGlobals] = {}
SENT_GLOBALS = 8


def _buffers_key(code_key: bytes, buffers: list) -> tuple[bytes, _SentGlobals | None]:
    """The key of a function whose pickle hashes to ``code_key`` and whose large
    globals are ``buffers``, and the `_SentGlobals` to fill, if it is a first one.

    The first time, nothing is hashed: the key is new (random), and the CRCs of the
    data come from the copy made for the workers, in a thread, while they run. Later
    calls hash their data (CRC-32 with its length: zlib's runs at ~7 GB/s here,
    against ~2 GB/s for SHA-1) and keep the key when it matches what was sent: a
    changed array goes unnoticed with odds of 2**-32 per change. A ``pm.shared_array``
    is seen live by the workers, so where it lives is enough.
    """
    last = _sent_globals.get(code_key)
    known = last.wait() if last is not None else None
    if known is None:
        version = _SentGlobals(_blake2b(code_key + os.urandom(16)).digest())
        _remember_sent(code_key, version)
        return version.key, version
    parts = _buffer_parts(buffers)
    if parts == known:
        return last.key, None  # type: ignore[union-attr]
    version = _SentGlobals(_blake2b(code_key + b"".join(parts)).digest(), parts)
    _remember_sent(code_key, version)
    return version.key, None


def _remember_sent(code_key: bytes, version: _SentGlobals) -> None:
    _sent_globals.pop(code_key, None)
    _sent_globals[code_key] = version
    while len(_sent_globals) > SENT_GLOBALS:
        del _sent_globals[next(iter(_sent_globals))]


def _buffer_parts(buffers: list) -> list[bytes]:
    """Per buffer: its CRC-32 and length, or its place in a shared arena."""
    import zlib

    from ipyparmap.wire.sharedmem import find_segment

    parts = []
    for buffer in buffers:
        place = find_segment(buffer)
        if place is None:
            parts.append(repr(("crc32", zlib.crc32(buffer), buffer.nbytes)).encode())
        else:
            parts.append(repr((place[1:], buffer.nbytes)).encode())
    return parts


def _blake2b(data: bytes):
    try:  # hashlib's own blake2b, without hashlib loading OpenSSL (3-7 ms on a cold start)
        from _blake2 import blake2b
    except ImportError:
        from hashlib import blake2b
    return blake2b(data, digest_size=16)


#: Payloads of recently pickled functions that have a fingerprint (see wire/fingerprint.py):
#: id(func) -> (fingerprint, payload). A repeated call with an unchanged function and
#: unchanged globals then costs a fingerprint check (a few µs) instead of a pickle.
_payloads: dict = {}
PAYLOAD_CACHE = 8


def pickle_function(func: Any) -> FunctionPayload:
    """Pickle ``func`` (with the globals it uses) once per run, or reuse the payload of
    an earlier call when nothing it reaches can have changed.

    Raises SerializationError naming the unpicklable part (a global, a closure variable,
    an attribute of ``self``, a partial's argument...).
    """
    mark = fingerprint(func, by_reference)
    if mark is not None:
        cached = _payloads.get(id(func))
        if cached is not None and same(cached[0], mark):
            return cached[1]
    payload = _pickle_function(func)
    if mark is not None:  # again: pickling may have imported modules (cloudpickle...)
        mark = fingerprint(func, by_reference)
    if mark is not None and payload.packed is None:  # big buffers are never cached
        _payloads.pop(id(func), None)
        _payloads[id(func)] = (mark, payload)  # the mark holds func: its id stays its own
        while len(_payloads) > PAYLOAD_CACHE:
            del _payloads[next(iter(_payloads))]
    return payload


def _pickle_function(func: Any) -> FunctionPayload:
    register_local_modules(func)
    buffers: list = []
    try:
        blob = dumps_function(func, buffers)
    except PICKLING_ERRORS:
        name = _callable_name(func)
        path, culprit, error = find_unpicklable(func, name)
        where = "" if path == name else f" {path} is {describe(culprit)}, and"
        raise SerializationError(
            f"cannot pickle the function {name}:{where} {error_text(error)}"
        ) from error
    packed = Packed(blob, buffers) if buffers else None
    return FunctionPayload(_blake2b(blob).digest(), blob, cell_sources(func), packed)


class ItemPicklingError(Exception):
    """Raised by `pickle_items`: item number ``position`` of the list can't be pickled."""

    def __init__(self, position: int, error: BaseException):
        super().__init__(position, error)
        self.position = position
        self.error = error


def pickle_items(items: list, share: bool = False) -> bytes | Packed:
    """Pickle a chunk's items (``share``: large buffers apart, as a Packed); on failure
    find the first bad one (ItemPicklingError)."""
    try:
        return dumps_packed(items) if share else dumps(items)
    except PICKLING_ERRORS as exc:
        for position, item in enumerate(items):
            try:
                dumps(item)
            except PICKLING_ERRORS as item_exc:
                raise ItemPicklingError(position, item_exc) from None
        raise ItemPicklingError(0, exc) from None


def _callable_name(func: Any) -> str:
    if isinstance(func, functools.partial):
        return f"functools.partial({_callable_name(func.func)}, ...)"
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        return f"object of type {type(func).__name__}"
    return f"'{name}'"


def find_unpicklable(obj: Any, label: str, depth: int = 0) -> tuple[str, Any, BaseException]:
    """Return ``(path, part, error)`` for the innermost part of ``obj`` that won't pickle.

    Only called after pickling ``obj`` failed, so the cost (pickling parts again) is paid
    on the error path alone.
    """
    try:
        dumps(obj)
        error: BaseException | None = None
    except PICKLING_ERRORS as exc:
        error = exc
    if error is None:
        return label, obj, ValueError("pickles fine on its own")
    if depth < 4:
        for child_label, child in _parts(obj, label):
            try:
                dumps(child)
            except PICKLING_ERRORS:
                return find_unpicklable(child, child_label, depth + 1)
    return label, obj, error


def _parts(obj: Any, label: str):
    """The labelled parts pickling ``obj`` would pickle too, most telling first."""
    if isinstance(obj, functools.partial):
        yield f"{label}.func", obj.func
        for i, arg in enumerate(obj.args):
            yield f"the partial's argument {i}", arg
        for key, value in (obj.keywords or {}).items():
            yield f"the partial's keyword argument {key!r}", value
    elif isinstance(obj, types.MethodType):
        yield f"{label}.__self__", obj.__self__
        yield f"{label}.__func__", obj.__func__
    elif isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield f"closure variable {name!r}", cell.cell_contents
            except ValueError:  # empty cell
                continue
        for name in global_names(code):  # sorted
            if name in obj.__globals__:
                yield f"global {name!r}", obj.__globals__[name]
        for i, default in enumerate(obj.__defaults__ or ()):
            yield f"default argument {i}", default
        for key, default in (obj.__kwdefaults__ or {}).items():
            yield f"default of argument {key!r}", default
    elif isinstance(obj, dict):
        for key, value in list(obj.items())[:100]:
            yield f"{label}[{key!r}]", value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(list(obj)[:100]):
            yield f"{label}[{i}]", value
    else:
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            for key, value in attrs.items():
                yield f"{label}.{key}", value


def _code_objects(func: Any):
    """Code objects of ``func``, its nested functions, and the functions it refers to."""
    for obj in reachable(func):
        code = getattr(obj, "__code__", None)
        stack = [code] if isinstance(code, types.CodeType) else []
        while stack:
            current = stack.pop()
            yield current
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))


def cell_sources(func: Any) -> dict:
    """Linecache entries of notebook cells (files that don't exist on disk) ``func`` uses.

    Workers install them so their tracebacks show the cell's source lines, not just
    ``<ipython-input-...>`` line numbers.
    """
    sources = {}
    for code in _code_objects(func):
        filename = code.co_filename
        if filename in sources or filename not in linecache.cache:
            continue
        if os.path.exists(filename):
            continue
        entry = linecache.cache[filename]
        if len(entry) == 4 and entry[2]:
            size, _mtime, lines, fullname = entry
            sources[filename] = (size, None, list(lines), fullname)
    return sources


def install_sources(sources: dict) -> None:
    """Worker side of `cell_sources`. A ``None`` mtime keeps linecache from dropping them."""
    linecache.cache.update(sources)


def exception_info(exc: BaseException, skip_frames: int = 1) -> tuple:
    """Worker side: an ErrorInfo tuple ``(blob, type_name, message, traceback_text)``.

    ``skip_frames`` drops the worker's own frames, so the traceback starts in user code.
    """
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        blob: bytes | None = dumps(exc)
    except PICKLING_ERRORS:
        blob = None
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    return (blob, f"{type(exc).__module__}.{type(exc).__qualname__}", message, text)


def rebuild_exception(info: tuple) -> BaseException:
    """Parent side: the task's exception, with its remote traceback as ``__cause__``.

    An exception that cannot be unpickled here (say, its ``__init__`` needs arguments it
    did not pass to ``Exception.__init__``) is replaced by a RemoteException carrying its
    type name and message.
    """
    blob, type_name, message, text = info
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = loads(blob)
        except PICKLING_ERRORS:
            exc = None
    if not isinstance(exc, BaseException):
        short = type_name.rsplit(".", 1)[-1] if type_name.startswith("builtins.") else type_name
        exc = RemoteException(short, message)
    exc.__cause__ = RemoteTraceback(text)
    return exc
