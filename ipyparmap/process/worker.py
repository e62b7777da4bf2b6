"""The worker process: load the function once, run chunks, report back (layer: process).

Child side: imports only the wire layer, ``errors``, ``options``, the standard library
and cloudpickle, never the engine or IPython (a positive rule:
tests/test_architecture.py::test_worker_imports_only_what_the_positive_rule_allows).
Started by process/pool.py as ``python -c ... <conn fd> <lifeline fd> <board fd>``: a fresh
interpreter (never a fork of the kernel) that does not re-import the parent's
``__main__``, so a script without an ``if __name__ == "__main__"`` guard does not spawn
pools recursively.

Per item the worker only stores its position and start time on the status board (shared
memory, no syscall); results, errors, durations and captured output go back in one
message per chunk, or every `FLUSH_SECONDS` for long chunks. A background thread
watches the lifeline to the parent (the worker exits when the parent is gone) and
streams captured output while an item runs; what items print, log and display is
captured by process/capture.py.
"""

from __future__ import annotations

import _thread
import os
import select
import signal
import sys
import time
from array import array
from collections import OrderedDict
from itertools import islice

from ipyparmap import system
from ipyparmap.errors import SerializationError
from ipyparmap.options import describe
from ipyparmap.process import capture
from ipyparmap.process.capture import CapturedStream as _CapturedStream
from ipyparmap.process.capture import OutputSink as _OutputSink
from ipyparmap.wire import board as B
from ipyparmap.wire import messages as M
from ipyparmap.wire.channel import Channel, FrameError
from ipyparmap.wire.codec import PICKLING_ERRORS, dumps, loads
from ipyparmap.wire.localmodules import install_modules
from ipyparmap.wire.serialize import (
    dumps_message,
    dumps_packed,
    exception_info,
    install_sources,
    loads_shared,
)

#: Send finished results of a long chunk at least this often (seconds).
FLUSH_SECONDS = 0.1
#: Stream captured output at least this often while an item runs (seconds).
OUTPUT_SECONDS = 0.1


#: Read this process's memory from /proc (a file read: ~15 µs warm, more in a worker just
#: woken) at most this often, unless getrusage's peak grew or the parent asks for it.
MEMORY_READ_SECONDS = 0.5
_memory = {"rusage": None, "peak": None, "current": None, "read_at": float("-inf")}


def _memory_kb(fresh: bool = False) -> tuple[int | None, int | None]:
    """(peak, current) resident memory of this process in KiB (None where unknown).

    Both are re-read when ``fresh`` (the parent enforces max_memory and decides on
    it), when getrusage's peak grew, or every MEMORY_READ_SECONDS; otherwise the last
    reading stands (it is for the progress view and crash messages). The peak is the
    high-water mark of this process's own memory (VmHWM), not getrusage's: on Linux
    that one starts at the spawning process's peak (the kernel counts the parent's
    memory up to exec), so every worker of a 4 GB kernel would report 4 GB. Without
    /proc (macOS) getrusage's peak is all there is, and the parent measures the
    current RSS itself where max_memory needs it.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None, None
    rusage = system.maxrss_kib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if not system.has_proc():  # macOS: no /proc
        return rusage, None
    now = time.monotonic()
    if not fresh and rusage == _memory["rusage"] and now - _memory["read_at"] < MEMORY_READ_SECONDS:
        return _memory["peak"], _memory["current"]
    try:
        with open("/proc/self/status", "rb") as status:
            text = status.read()
        peak = int(text.split(b"VmHWM:", 1)[1].split(None, 1)[0])
        current = int(text.split(b"VmRSS:", 1)[1].split(None, 1)[0])
    except (OSError, ValueError, IndexError):
        peak, current = rusage, None
    _memory.update(rusage=rusage, peak=peak, current=current, read_at=now)
    return peak, current


#: The standard library's modules in which a worker sets what a spawned child of the
#: parent would have (`Worker.init`), when they are loaded.
_MULTIPROCESSING_MODULES = (
    "multiprocessing.process",
    "multiprocessing.util",
    "multiprocessing.resource_tracker",
)


class _LoadFailure:
    """Stands in the function cache for a function that could not be unpickled."""

    __slots__ = ("info",)

    def __init__(self, info: tuple):
        self.info = info


class Worker:
    def __init__(self, conn: Channel, lifeline: int, board: B.Board, watch_ppid: bool = True):
        self.conn = conn
        self.board = board
        # A second sign of the parent's death besides the lifeline: we were reparented.
        # Not for a worker forked by the template (process/template.py): its parent is
        # the template, whose death must not take the worker with it.
        self.parent_pid = os.getppid() if watch_ppid else None
        self.functions: OrderedDict = OrderedDict()
        self.modules: dict = {}  # the caller's local module versions held (apply_world)
        # what items write: pending for the next message, and in the board's output log
        self.sink = _OutputSink(board.ints, board, self._send_locked)
        self.fresh_rss = False  # the parent wants the current RSS with every result
        self.multiprocessing_settings: dict = {}  # the parent's, as in `init`
        # A bare thread, not a threading.Thread: in a worker just forked from the
        # template, Thread().start() costs ~0.8 ms of CPU and ~0.25 MB of copied pages
        # (its registry, events and conditions write to pages it shares with the
        # template; it waits for the thread to say it started), this ~0.15 ms. It is a
        # daemon either way, and the items' code sees no thread of ours in
        # threading.enumerate().
        _thread.start_new_thread(self._watch, (lifeline,))

    # -- sending ---------------------------------------------------------------------
    def _send_locked(self, message: tuple, fds: tuple[int, ...] = ()) -> None:
        """Send one message; the caller holds ``sink.lock`` (it orders all sends)."""
        self.conn.send(dumps_message(message), fds)

    def _send(self, message: tuple) -> None:
        with self.sink.lock:
            self._send_locked(message)

    # -- background thread -------------------------------------------------------------
    def _watch(self, lifeline: int) -> None:
        """Exit when the parent dies; stream captured output while items run."""
        while True:
            readable, _, _ = select.select([lifeline], [], [], OUTPUT_SECONDS)
            if readable or (self.parent_pid is not None and os.getppid() != self.parent_pid):
                os._exit(0)  # the parent is gone: nobody wants our results
            if self.sink.pending:
                with self.sink.lock:
                    try:
                        self.sink.flush_locked()
                    except OSError:
                        os._exit(0)

    # -- main loop ---------------------------------------------------------------------
    def serve(self) -> None:
        self._send(M.pack(M.Ready(os.getpid())))
        while True:
            try:
                payload, fds = self.conn.recv()
            except FrameError as bad:  # the frame came whole, its descriptors did not
                self.refuse(bad)
                continue
            except (EOFError, OSError):
                return  # the parent is gone (or closed our pipe): nothing left to do
            message = M.unpack(loads(payload))
            if type(message) is M.RunChunk:
                self.run_chunk(fds, message)
            elif type(message) is M.World:
                self.apply_world(message)
            elif type(message) is M.LoadFunction:
                self.load_function(fds, message)
            elif type(message) is M.Preload:
                preload(message.modules)
            elif type(message) is M.Init:
                self.init(message.settings, fds)
            elif type(message) is M.Stop:
                return

    def refuse(self, bad: FrameError) -> None:
        """A frame lost its descriptors on the way (the parent is alive: the stream is
        in sync). Say so in answer to the chunk it carried, as a load failure, rather
        than dying: a worker that dies on every such chunk would be respawned forever
        (tests/test_frame_limits.py::test_a_worker_answers_a_malformed_frame)."""
        message = M.unpack(loads(bad.payload))
        info = exception_info(bad, skip_frames=0)
        if type(message) is M.RunChunk:
            self._send(M.pack(M.LoadFailed("chunk", message.chunk_id, info)))
        elif type(message) is M.LoadFunction:  # reported by each chunk that needs it
            self.functions[message.key] = _LoadFailure(info)

    def init(self, settings: dict, fds: list[int]) -> None:
        sys.path[:] = settings.get("sys_path", sys.path)
        parent = settings.get("parent")
        if parent is None:
            return
        # Act as the parent's spawned multiprocessing child, for code that asks: at
        # once where multiprocessing is loaded, else when something imports it (a
        # worker need not load it: ~10 ms of its boot, ~0.6 MB).
        pending = self.multiprocessing_settings
        pending.update(parent)  # a later word (the authkey) adds to the first
        if parent.get("resource_tracker") and fds:
            pending["tracker_fd"] = fds[0]
        for name in _MULTIPROCESSING_MODULES:
            module = sys.modules.get(name)
            if module is not None:
                self._as_spawned_child(name, module, parent, fds)
            else:
                capture.on_import(name, self._multiprocessing_hook(name))

    def _multiprocessing_hook(self, name: str):
        def hook(module) -> None:
            settings = self.multiprocessing_settings
            fds = [settings["tracker_fd"]] if "tracker_fd" in settings else []
            self._as_spawned_child(name, module, settings, fds)

        return hook

    def _as_spawned_child(self, name: str, module, parent: dict, fds: list[int]) -> None:
        """Set in ``module`` (one of `_MULTIPROCESSING_MODULES`) what a child spawned by
        our parent has: its authkey, a pool worker's name, its logger's level, its
        resource tracker, ``parent_process()``."""
        if name == "multiprocessing.util":
            if "log_level" in parent:  # as multiprocessing.spawn.prepare
                module.get_logger().setLevel(parent["log_level"])
            return
        if name == "multiprocessing.resource_tracker":
            if parent.get("resource_tracker") and fds:  # the parent's, as spawn.prepare
                module._resource_tracker._fd = fds[0]
            return
        me = module.current_process()
        if "authkey" in parent:  # (sent once the parent has loaded multiprocessing)
            me.authkey = parent["authkey"]
        if "number" in parent:  # as a multiprocessing pool's worker, not "MainProcess"
            me.name = f"SpawnPoolWorker-{parent['number']}"
            me._identity = (parent["number"],)
        if "pid" not in parent:  # a later word on the parent's multiprocessing
            return
        # parent_process(): the standard library's stand-in, whose sentinel is ready
        # once the parent is gone: its pidfd, else a pipe nobody writes to (this
        # worker exits when the parent does: _watch)
        try:
            if not system.has_pidfd():
                raise OSError("no pidfd")
            sentinel = os.pidfd_open(parent["pid"])
        except (AttributeError, OSError):
            sentinel, self._parent_pipe = os.pipe()
        maker = getattr(module, "_ParentProcess", None)
        if maker is not None:
            name = parent.get("name", "MainProcess")
            module._parent_process = maker(name, parent["pid"], sentinel)

    def apply_world(self, world: M.World) -> None:
        """Take the caller's working directory, environment, ``sys.path`` and module
        versions: what changed since the last chunk (process/pool.py
        ``WorkerHandle.sync_world``), before the next chunk loads and runs."""
        if world.cwd is not None:
            try:
                os.chdir(world.cwd)
            except OSError:  # gone meanwhile: the items' own paths will say so
                pass
        environ = os.environ
        for name in world.env_unset:
            if name != M.WORKER_ENV:
                environ.pop(name, None)
        for name, value in world.env_set.items():
            if name != M.WORKER_ENV:
                environ[name] = value
        if world.sys_path is not None:
            sys.path[:] = world.sys_path
        if world.modules:
            install_modules(world.modules, world.values, self.modules)
        elif world.cwd is not None or world.sys_path is not None:
            import importlib

            importlib.invalidate_caches()  # new folders to look in

    def load_function(self, fds, message: M.LoadFunction) -> None:
        key = message.key
        install_sources(message.sources)
        try:
            func = loads_shared(message.blob, fds, message.table)  # big globals: mapped
        except PICKLING_ERRORS as exc:
            # reported by each chunk that needs it, so every report answers one chunk
            func = _LoadFailure(exception_info(exc, skip_frames=0))
        self.functions[key] = func
        self.functions.move_to_end(key)
        while len(self.functions) > M.FUNCTION_CACHE:
            self.functions.popitem(last=False)

    def run_chunk(self, fds, message: M.RunChunk) -> None:
        chunk_id = message.chunk_id
        self.fresh_rss = message.fresh_rss
        board = self.board
        board.begin_chunk(chunk_id)
        func = self.functions.get(message.key)
        if func is not None:  # used: the most recent, as the parent's mirror has it
            self.functions.move_to_end(message.key)
        if func is None or isinstance(func, _LoadFailure):  # failed to load, or evicted
            for fd in fds:
                os.close(fd)
            info = func.info if func is not None else None
            self._send(M.pack(M.LoadFailed("func", message.key, info)))
            board.end_chunk()
            return
        try:
            items = loads_shared(message.items, fds, message.table)  # big buffers: mapped
        except PICKLING_ERRORS as exc:
            info = exception_info(exc, skip_frames=0)
            self._send(M.pack(M.LoadFailed("chunk", chunk_id, info)))
            board.end_chunk()
            return
        self.sink.begin(chunk_id)
        saved = sys.stdout, sys.stderr
        sys.stdout = _CapturedStream(self.sink, "stdout", saved[0])
        sys.stderr = _CapturedStream(self.sink, "stderr", saved[1])
        try:
            self._run_items(chunk_id, func, items, message.star, message.stride)
        finally:
            sys.stdout, sys.stderr = saved
            self.sink.chunk_id = B.IDLE
            board.end_chunk()

    def _run_items(self, chunk_id: int, func, items: list, star: bool, stride: int) -> None:
        board = self.board

        def flush(start, values, errors, timings, began) -> None:  # a long chunk's first part
            self._send_results(chunk_id, start, values, errors, timings, began, False)

        batch = run_items(func, items, star, stride, board.ints, board.times, flush, self.sink)
        board.begin_item(len(items), board.times[0])  # position len(items): pickling results
        self._send_results(chunk_id, *batch, True)

    def _send_results(self, chunk_id, start, values, errors, timings, began, done) -> None:
        with self.sink.lock:
            packed, errors = pickle_values(values, errors, share=True)
            fds, table = packed.share()
            message = M.ResultBatch(
                chunk_id, start, packed.blob, table, errors, timings, began,
                self.sink.take(), _memory_kb(self.fresh_rss), done, self.sink.sequence(),
            )  # fmt: skip
            try:
                self._send_locked(M.pack(message), fds)
            finally:
                packed.close()  # the parent has its own descriptor now
            self.sink.sent()


def run_items(func, items: list, star: bool, stride: int, positions, times, flush=None,
              sink: _OutputSink | None = None):  # fmt: skip
    """Run ``func`` over ``items``; return the last batch.

    A batch is ``(start, values, errors, timings, began)``: ``timings`` the plain tuple
    of a `messages.Timings`, ``began`` the wall-clock time (``time.time()``, comparable
    across machines, unlike the monotonic clock) at which its first item started.

    With ``stride`` 1 each item runs on its own: ``positions[1]`` is set to its position
    before it runs (so a crash or a timeout is pinned to it) and the clock is read
    after it. For tiny items the parent asks for a larger stride: the items then run a
    block of ``stride`` at a time with ``map()`` (what a stored position and a clock read
    per item would cost is more than such an item), ``positions[1]``/``positions[2]``
    hold the block's first position and length, one duration is kept per block, and a
    failing item is found from how many results the block produced before it.
    ``times[0]`` is the start of the running item or block. ``positions`` and
    ``times`` are the status board in a pool worker, plain lists elsewhere.
    ``flush(*batch)``, if given, sends finished results every FLUSH_SECONDS. ``sink``
    gets told where a block is, so captured output names its item.
    """
    if star:
        plain = func

        def func(item):
            return plain(*(item if type(item) is tuple else _star_args(item)))

    if stride > 1:
        return _run_blocks(func, items, star, stride, positions, times, flush, sink)
    clock = time.monotonic
    values: list = []
    append = values.append
    errors: dict = {}
    seconds = array("d")
    start = 0  # position of the first result not sent yet
    last = len(items) - 1
    began = time.time()
    now = times[0] = clock()
    flush_at = now + FLUSH_SECONDS if flush is not None else float("inf")
    for position, item in enumerate(items):
        positions[1] = position
        try:
            append(func(item))
        except BaseException as exc:  # SystemExit too: one item must not end the worker
            append(None)
            errors[position - start] = exception_info(exc, skip_frames=2 if star else 1)
        done = clock()
        seconds.append(done - now)
        now = times[0] = done
        if now >= flush_at and position < last:
            flush(start, values, errors, (1, len(values), seconds), began)
            began = time.time()
            values, errors, seconds = [], {}, array("d")
            append = values.append
            start = position + 1
            flush_at = now + FLUSH_SECONDS
    return start, values, errors, (1, len(values), seconds), began


def _run_blocks(func, items: list, star: bool, stride: int, positions, times, flush, sink):
    """`run_items` for tiny items: blocks of ``stride`` items through ``map()``."""
    clock = time.monotonic
    values: list = []
    errors: dict = {}
    seconds = array("d")  # one figure per block
    start = 0
    size = len(items)
    began = time.time()
    now = times[0] = clock()
    flush_at = now + FLUSH_SECONDS if flush is not None else float("inf")
    skip = 2 if star else 1
    # One iterator for the chunk, `islice` per block: a slice per block would be a list
    # built and freed each time, an incref and a decref per item on memory that has
    # gone cold by then (W1: ~10% of a worker's time in list_dealloc under perf).
    pending = iter(items)
    for block in range(0, size, stride):
        end = min(block + stride, size)
        position = block
        while position < end:  # once, unless an item raises
            base = len(values)
            if sink is not None:
                sink.block = (values, base)
            positions[2] = end - position
            positions[1] = position
            try:
                values.extend(map(func, islice(pending, end - position)))
                position = end
            except BaseException as exc:  # extend kept the results before the failure
                position += len(values) - base
                values.append(None)
                errors[position - start] = exception_info(exc, skip_frames=skip)
                position += 1
        done = clock()
        seconds.append(done - now)
        now = times[0] = done
        if now >= flush_at and end < size:
            flush(start, values, errors, (stride, len(values), seconds), began)
            began = time.time()
            values, errors, seconds = [], {}, array("d")
            start = end  # a block boundary: the next batch's blocks line up with stride
            flush_at = now + FLUSH_SECONDS
    if sink is not None:
        sink.block = None
    positions[2] = 1
    return start, values, errors, (stride, len(values), seconds), began


def pickle_values(values: list, errors: dict, share: bool = False):
    """Pickle a batch's values (``share``: a Packed, large buffers apart); unpicklable
    ones become SerializationErrors of their item."""
    pickle = dumps_packed if share else dumps
    try:
        return pickle(values), errors
    except PICKLING_ERRORS:
        values, errors = _isolate_unpicklable(values, errors)
        return pickle(values), errors


# -- chunks as tasks of a concurrent.futures executor or Dask (see engine/executor.py) -----
_task_functions: OrderedDict = OrderedDict()


def run_task(payload, blob: bytes, star: bool, capture: bool) -> M.TaskDone | M.TaskFailed:
    """Run one chunk where an executor put it; never raises for the items' sake.

    ``payload`` is the function itself (thread executors) or the pickled
    ``(key, blob, sources)`` (process executors, Dask), loaded once per process.
    Returns a `messages.TaskDone`, or a `messages.TaskFailed` when the function or
    the items could not be unpickled.
    """
    try:
        func = payload if callable(payload) else _task_function(*payload)
    except PICKLING_ERRORS as exc:
        return M.TaskFailed("func", exception_info(exc, skip_frames=0))
    try:
        items = loads(blob)
    except PICKLING_ERRORS as exc:
        return M.TaskFailed("chunk", exception_info(exc, skip_frames=0))
    positions, times = [B.IDLE, B.LOADING, 1], [0.0]
    sink = _OutputSink(positions)
    saved = sys.stdout, sys.stderr
    if capture:  # not in threads: sys.stdout is shared by every thread of the process
        sys.stdout = _CapturedStream(sink, "stdout", saved[0])
        sys.stderr = _CapturedStream(sink, "stderr", saved[1])
    try:
        _, values, errors, timings, began = run_items(func, items, star, 1, positions, times)
    finally:
        if capture:
            sys.stdout, sys.stderr = saved
    values_blob, errors = pickle_values(values, errors)
    with sink.lock:
        outputs = sink.take()
    return M.TaskDone(values_blob, errors, timings, began, outputs, _memory_kb(), _task_worker())


def _task_function(key: bytes, blob: bytes, sources: dict):
    func = _task_functions.get(key)
    if func is None:
        install_sources(sources)
        func = _task_functions[key] = loads(blob)
        while len(_task_functions) > M.FUNCTION_CACHE:
            _task_functions.popitem(last=False)
    return func


def _task_worker() -> str:
    """Who ran the task: a Dask worker's address, else host and PID."""
    if "distributed" in sys.modules:  # on a Dask worker it is loaded; never import it here
        try:
            return sys.modules["distributed"].get_worker().address
        except (AttributeError, ValueError):
            pass
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _star_args(item) -> tuple:
    try:
        return tuple(item)
    except TypeError:
        raise TypeError(
            f"the item is {describe(item)}, but star=True needs a tuple of arguments"
        ) from None


def _isolate_unpicklable(values: list, errors: dict) -> tuple[list, dict]:
    """Replace each result that cannot be pickled by a SerializationError for its item."""
    values = list(values)
    errors = dict(errors)
    for offset, value in enumerate(values):
        try:
            dumps(value)
        except PICKLING_ERRORS as exc:
            values[offset] = None
            error = SerializationError(
                f"the result {describe(value)} cannot be pickled to send it back: "
                f"{type(exc).__name__}: {exc}"
            )
            errors[offset] = exception_info(error, skip_frames=0)
    return values, errors


def _reseed_forked() -> None:
    """A forked worker starts with its template's random state: give NumPy's global
    generator fresh entropy, as each spawned worker has (``random`` reseeds itself at
    fork). Only if the template had NumPy loaded: a worker never imports it for this."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # an odd NumPy: its state stays the template's
            pass


def preload(modules: tuple) -> None:
    """Import installed modules a function about to come needs (`messages.Preload`):
    what unpickling it would do first, done while the parent still copies its big
    globals. A module that fails to import is left for the unpickling to report."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:  # (SystemExit too) the function's loading says what is wrong
            pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def main(argv: list[str], forked: bool = False) -> None:
    """Run a worker on the descriptors of ``argv`` (channel, lifeline, board): started
    as a new interpreter by process/pool.py, or ``forked`` by process/template.py."""
    # A Jupyter interrupt signals the kernel's whole process group; the parent decides
    # what to stop, so workers ignore SIGINT (they also run in their own session;
    # tests/test_interrupt.py::test_workers_ignore_sigint_sent_to_them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn_fd, lifeline_fd, board_fd = (int(arg) for arg in argv[:3])
    for fd in (conn_fd, lifeline_fd):  # processes a task starts must not hold our pipes
        os.set_inheritable(fd, False)
    # ...nor processes an item forks (os.fork, multiprocessing's "fork"): without pidfd
    # the lifeline is the parent's death sentinel, and a child holding it would hide
    # this worker's death for as long as that child lives.
    os.register_at_fork(after_in_child=lambda: _close_quietly(lifeline_fd))
    board = B.Board.from_fd(board_fd)
    os.close(board_fd)
    worker = Worker(Channel.from_fd(conn_fd), lifeline_fd, board, watch_ppid=not forked)
    capture.install(worker.sink)  # display(), IPython's and pyplot's, for user code
    import cloudpickle  # noqa: F401  # load it now, while the parent prepares the run

    if forked:
        _reseed_forked()

    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the parent is gone while we answered: nobody wants our results
