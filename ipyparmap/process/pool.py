"""The local worker pool: spawned processes, each with its own pipe (layer: process).

A worker is a fresh interpreter started with ``subprocess`` (never a fork of the
kernel; where it can, the pool forks its workers from its template process,
process/template.py, which is such an interpreter too) in its own session, so a terminal Ctrl-C or a
Jupyter interrupt aimed at the kernel's process group never reaches it. Each worker has:

- a duplex pipe (a socketpair framed by ``wire.channel.Channel``, which passes
  descriptors),
  so the parent always knows which worker holds which items, and one death never
  corrupts a queue shared with other workers;
- a death sentinel (a pidfd on Linux; elsewhere the lifeline below), readable once
  the process has exited, waited on together with all pipes;
- a lifeline socketpair: the worker exits when the parent's end closes (the parent
  died; tests/test_interrupt.py::test_workers_exit_when_the_parent_is_killed);
- a status board (wire/board.py) in anonymous shared memory (``memfd``): never has a
  name in any filesystem, so it can't leak or be opened by another user
  (tests/faults/test_cleanup.py::test_no_shared_memory_segment_is_ever_named).

The pool only manages processes and owns no run state; which chunk goes where is the
engine's business (engine/local.py). A run leases workers with `acquire` and gives them
back with `release`; idle workers stay warm for the next call.

Warm workers see the caller's world as it is at each call: a run takes `caller_world()`
(working directory, environment, ``sys.path``, the versions of the local modules it has
loaded) and `WorkerHandle.sync_world` sends each worker a `messages.World` with what
changed since that worker last heard, before its next chunk, only when something did.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ipyparmap import system
from ipyparmap.process.template import ForkedProcess, Launcher, PendingFork
from ipyparmap.wire import board as B
from ipyparmap.wire import messages as M
from ipyparmap.wire.channel import Channel
from ipyparmap.wire.codec import loads
from ipyparmap.wire.localmodules import EMPTY_MODULES, ModuleTable, module_table
from ipyparmap.wire.serialize import FunctionPayload, dumps_message
from ipyparmap.wire.sharedmem import anonymous_file

#: Seconds a stopping worker gets to exit before it is killed.
STOP_GRACE = 1.0
#: Seconds the thread that waits for retired workers stays for more before it ends.
STOPPER_LINGER = 0.5

_WORKER_CODE = "import sys; from ipyparmap.process.worker import main; main(sys.argv[1:])"


def _package_root() -> str:
    """The folder that holds the ``ipyparmap`` package (this file is ipyparmap/process/,
    pinned by test_architecture.py::test_workers_import_this_very_package)."""
    here = os.path.abspath(__file__)
    return os.path.dirname(os.path.dirname(os.path.dirname(here)))


class CallerWorld:
    """What a call's workers must see of the caller (`caller_world`): the working
    directory, the environment (``os.environ``'s own mapping: bytes on POSIX), the
    ``sys.path`` list and the local modules' versions."""

    __slots__ = ("cwd", "env", "modules", "path")

    def __init__(self, cwd: str | None, env: dict, path: list, modules: ModuleTable):
        self.cwd, self.env, self.path, self.modules = cwd, env, path, modules


def _environ() -> dict:
    data = getattr(os.environ, "_data", None)  # compared whole at each call: ~0.3 µs
    return data if isinstance(data, dict) else dict(os.environ)


def _env_text(value: Any) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


_last_world: CallerWorld | None = None


def caller_world() -> CallerWorld:
    """The caller's world now; the very object of the last call when nothing changed
    (a worker that has it then needs no message). ~3 µs, plus now and then a ``stat``
    per local module the caller has loaded (wire/localmodules.py `module_table`)."""
    global _last_world
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the directory was removed: the workers stay where they are
        cwd = None
    env = _environ()
    modules = module_table()
    last = _last_world
    if (
        last is not None
        and last.modules is modules
        and last.cwd == cwd
        and last.path == sys.path
        and last.env == env
    ):
        return last
    world = _last_world = CallerWorld(cwd, dict(env), list(sys.path), modules)
    return world


class WorkerHandle:
    """The parent's side of one worker process."""

    def __init__(self, proc: subprocess.Popen | ForkedProcess, conn: Channel,
                 lifeline: socket.socket, board: B.Board, sentinel: int,
                 owns_sentinel: bool):  # fmt: skip
        self.proc = proc
        self.pid = proc.pid
        self.conn = conn
        self.lifeline = lifeline
        self.board = board
        self.sentinel = sentinel
        self._owns_sentinel = owns_sentinel
        self.functions: OrderedDict = OrderedDict()  # keys loaded, mirrors the worker's LRU
        self.ready = False  # it said READY: it booted fine
        self.idle_since = 0.0  # when it was last given back to the pool (time.monotonic())
        self.last_rss: int | None = None  # bytes, as the worker last reported
        self.fits = 64 * 1024  # bytes a send surely fits in its pipe while it is busy
        self.closed = False
        self.world: CallerWorld | None = None  # the caller's world it has (see sync_world)
        self.own_env: frozenset = frozenset()  # variables the pool set for it (encoded)
        self.modules: dict = {}  # local module name -> the version number it was told
        self.launcher: Launcher | None = None  # of its pool, if it has one
        self.preloaded: set[str] = set()  # modules it was told to import (messages.Preload)
        # It has our multiprocessing authkey (see _parent_settings): loaded here when it
        # started, or since.
        self.knows_multiprocessing = True

    def sync_world(self, world: CallerWorld) -> None:
        """Bring the worker to ``world`` before its next chunk: one `messages.World` with
        what differs from the world it has, or nothing when nothing does.

        The worker's own environment variables (``own_env``: its `WORKER_ENV` flag, the
        thread limits and ``PYTHONPATH`` the pool set when it started) keep the worker's
        values: a change to them in the caller reaches only new workers.
        """
        if not self.knows_multiprocessing and "multiprocessing.process" in sys.modules:
            parent, fds = _parent_settings(first=False)  # loaded here since it started
            self.send(M.pack(M.Init({"parent": parent})), fds)
            self.knows_multiprocessing = True
        old = self.world
        if old is world:
            return
        cwd = world.cwd if world.cwd is not None and world.cwd != old.cwd else None
        env_set: dict = {}
        env_unset: tuple = ()
        if world.env != old.env:
            own, was, now = self.own_env, old.env, world.env
            env_set = {
                _env_text(name): _env_text(value)
                for name, value in now.items()
                if name not in own and was.get(name) != value
            }
            env_unset = tuple(
                _env_text(name) for name in was if name not in now and name not in own
            )
        path = world.path if world.path != old.path else None
        modules, values = {}, None
        if world.modules is not old.modules:
            modules, values = world.modules.changes(self.modules)
        if cwd is not None or env_set or env_unset or path is not None or modules:
            self.send(M.pack(M.World(cwd, env_set, env_unset, path, modules, values)))
        self.world = world
        if modules:
            self.modules = dict(world.modules.numbers)

    def __repr__(self) -> str:
        return f"<WorkerHandle pid={self.pid}{' closed' if self.closed else ''}>"

    def send(self, message: tuple, fds: tuple[int, ...] = ()) -> None:
        self.conn.send(dumps_message(message), fds)

    def recv(self) -> tuple[Any, list[int]]:
        """The next message (a `messages` record), and the descriptors that came with
        it (EOFError: gone)."""
        payload, fds = self.conn.recv()
        return M.unpack(loads(payload)), fds

    def send_function(self, payload: FunctionPayload) -> None:
        """Send the function unless this worker already has it loaded."""
        key = payload.key
        if key in self.functions:
            self.functions.move_to_end(key)
            return
        fds, table = payload.share()
        self.send(M.pack(M.LoadFunction(key, payload.blob, payload.sources, table)), fds)
        self.functions[key] = True
        while len(self.functions) > M.FUNCTION_CACHE:
            self.functions.popitem(last=False)
        if self.launcher is not None:  # its template preloads what the function uses
            self.launcher.note_function(key, payload.blob)

    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None and not self._lost()

    def _lost(self) -> bool:
        """Forked by a template that died before telling how the worker ended."""
        return getattr(self.proc, "lost", False)

    def kill(self) -> None:
        """SIGKILL the worker and anything it started."""
        if self.proc.poll() is None and not self._lost():
            from ipyparmap.process.resources import kill_group

            kill_group(self.pid)

    def reap(self, timeout: float = 5.0) -> int | None:
        """Wait for the process to end; return its exit status (negative: signal)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None

    def close(self) -> None:
        """Release the descriptors (the process must be dead or told to stop)."""
        if self.closed:
            return
        self.closed = True
        for release in (self.conn.close, self.lifeline.close, self.board.close):
            try:
                release()
            except OSError:
                pass
        if self._owns_sentinel:
            if isinstance(self.proc, ForkedProcess):
                self.proc.release()  # its pidfd is the sentinel
            try:
                os.close(self.sentinel)
            except OSError:
                pass


#: Selectors a pool keeps for the worker sets of recent runs.
SELECTOR_CACHE = 4
#: Send buffer asked for each worker's pipe: a chunk queued behind a busy worker goes
#: out at once only if it fits (see engine/local.py), so bigger chunks of tiny items can.
SEND_BUFFER_BYTES = 1024 * 1024


def spawn_worker(env: dict[str, str], launcher: Launcher | None = None,
                 start_template: bool = False, wait_template: float = 0.0,
                 ) -> WorkerHandle:  # fmt: skip
    """Start one worker process; returns at once (the worker boots in the background).

    With a ``launcher``, the worker is forked from its template process when one is up
    for ``env`` (process/template.py: milliseconds, not an interpreter start), and
    ``start_template`` starts one in the background for the next workers if there is
    none; ``wait_template``: seconds to wait for a template still booting. Otherwise,
    and where the template cannot be used, it is a new interpreter.
    """
    new = _NewWorker()
    try:
        forked = (
            launcher.fork(env, new.world.cwd, new.child_fds, start_template, wait_template)
            if launcher
            else None
        )
        if forked is not None:
            proc: Any = forked
        else:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, *map(str, new.child_fds)],
                pass_fds=new.child_fds,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=new.world.cwd,
            )
    except BaseException:
        new.close()
        raise
    finally:
        new.close_child_ends()
    return new.handle(proc, env, launcher)


class _NewWorker:
    """The parent's makings of one new worker: its channel, lifeline and status board
    (the child's ends go to the new process), and the caller's world it starts with."""

    def __init__(self) -> None:
        self.world = CallerWorld(os.getcwd(), dict(_environ()), list(sys.path), EMPTY_MODULES)
        parent_sock, child_sock = socket.socketpair()
        parent_life, child_life = socket.socketpair()
        self.child_ends: list = [child_sock, child_life]
        self.lifeline = parent_life
        self.board_fd = anonymous_file("ipyparmap-board", B.BOARD_SIZE)
        self.child_fds = (child_sock.fileno(), child_life.fileno(), self.board_fd)
        self.conn = Channel(parent_sock)
        self.board: B.Board | None = None
        self.init_sent = False
        self.knows_multiprocessing = False

    def close_child_ends(self) -> None:
        """The new process has its own copies now (or was never made): map the board,
        close the child's ends here."""
        for end in self.child_ends:
            end.close()
        self.child_ends = []
        if self.board_fd >= 0:
            try:
                self.board = B.Board.from_fd(self.board_fd)
                self.board.reset()
            finally:
                os.close(self.board_fd)
                self.board_fd = -1

    def close(self) -> None:
        """No worker after all (or nobody wants it): close everything."""
        self.close_child_ends()
        for release in (self.conn.close, self.lifeline.close):
            release()
        if self.board is not None:
            self.board.close()

    def send_init(self) -> None:
        """The worker's first message (it reads it once it has booted)."""
        parent, fds = _parent_settings()
        message = M.Init({"sys_path": self.world.path, "parent": parent})
        self.conn.send(dumps_message(M.pack(message)), fds)
        self.init_sent = True
        # (without multiprocessing loaded here, it gets our authkey later: sync_world)
        self.knows_multiprocessing = "authkey" in parent

    def handle(self, proc: Any, env: dict[str, str], launcher: Launcher | None) -> WorkerHandle:
        """The `WorkerHandle` of the process started (``proc``), told its `Init`."""
        conn = self.conn
        fits = conn.grow_send_buffer(SEND_BUFFER_BYTES)
        parent_life = self.lifeline
        try:
            if isinstance(proc, ForkedProcess):  # the template sent one, opened before
                sentinel, owns = proc.pidfd, True  # it could reap it
            elif isinstance(proc, _NotForkedYet):  # (set when it is: PendingWorker.take)
                sentinel, owns = -1, False
            elif not system.has_pidfd():
                raise OSError("no pidfd")
            else:
                sentinel, owns = os.pidfd_open(proc.pid), True
        except (AttributeError, OSError):  # no pidfd: the lifeline reads EOF when it dies
            sentinel, owns = parent_life.fileno(), False
        worker = WorkerHandle(proc, conn, parent_life, self.board, sentinel, owns)
        worker.launcher = launcher
        worker.fits = fits
        worker.world = self.world
        worker.own_env = _own_env(env)
        if not self.init_sent:
            self.send_init()
        worker.knows_multiprocessing = self.knows_multiprocessing
        return worker


_own_env_memo: tuple = (None, None, frozenset())


def _own_env(env: dict[str, str]) -> frozenset:
    """The variables (encoded) the pool set, changed or left out for a worker with
    environment ``env``, compared with ours (remembered for the last ``env``: a
    replacement every few milliseconds need not decode the whole environment again)."""
    global _own_env_memo
    last_env, last_ours, own = _own_env_memo
    ours = _environ()
    if env is last_env and ours == last_ours:
        return own
    encode = getattr(os.environ, "encodekey", lambda name: name)
    decoded = os.environ
    own = frozenset(
        encode(name)
        for name in {*env, *decoded}
        if env.get(name) != decoded.get(name)  # set, changed or left out by worker_env
    )
    _own_env_memo = (env, dict(ours), own)
    return own


class PendingWorker:
    """A worker forked ahead of need (`order_worker`): the template forks it, and it
    boots and takes its `Init`, while the caller does other things; `take` turns it into
    a `WorkerHandle` when it is wanted (a replacement that does not wait for a fork),
    `cancel` ends it unused."""

    def __init__(self, new: _NewWorker, pending: PendingFork, env: dict[str, str],
                 launcher: Launcher):  # fmt: skip
        self._new: _NewWorker | None = new
        self._pending = pending
        self.env = env
        self._launcher = launcher
        self._lock = threading.Lock()  # taken, or cancelled (a shutdown), once
        self._primed: WorkerHandle | None = None  # its handle, once `prime` sent it things

    def prime(self, world: CallerWorld, payload: FunctionPayload) -> None:
        """Send the spare what its first chunk needs, the caller's ``world`` and the
        function, now: it loads them while the current worker runs, and its first chunk
        finds them loaded. Only what surely fits in its pipe's buffer: it may not be
        forked yet, and a send must never wait for it (nor for a fork that fails)."""
        with self._lock:
            new = self._new
            if new is None or self._primed is not None:
                return
            worker = new.handle(_NotForkedYet(), self.env, self._launcher)
            self._primed = worker
            room = worker.fits - len(payload.blob) - 64 * 1024  # (the world's message)
            if world.modules.moved or room <= 0:
                return  # pickled modules or a big function: sent with the first chunk
            try:
                worker.sync_world(world)
                worker.send_function(payload)
            except OSError:  # (a closed channel: its take or cancel says what happened)
                pass

    def _claim(self) -> _NewWorker | None:
        with self._lock:
            new, self._new = self._new, None
        return new

    def take(self) -> WorkerHandle | None:
        """The worker (its fork's answer read now, if it was not yet), or None if the
        template could not make it (everything of it is closed then)."""
        new = self._claim()
        if new is None:
            return None
        forked = self._pending.result()
        if forked is None:
            new.close()
            return None
        worker = self._primed
        if worker is None:
            return new.handle(forked, self.env, self._launcher)
        worker.proc, worker.pid = forked, forked.pid  # now it is
        worker.sentinel, worker._owns_sentinel = forked.pidfd, True
        return worker

    def cancel(self) -> None:
        """End it unused: with its channel and lifeline closed, the worker exits as soon
        as it reads from them; its template reaps it (and lingers until it has)."""
        new = self._claim()
        if new is not None:
            self._pending.cancel()
            new.close()


class _NotForkedYet:
    """The process of a primed spare whose fork's answer has not been read yet."""

    pid = 0
    returncode = None

    def poll(self) -> None:
        return None


def order_worker(env: dict[str, str], launcher: Launcher) -> PendingWorker | None:
    """Fork a worker for ``env`` ahead of need from the launcher's template, without
    waiting for it; None when no template is up for ``env`` (nothing is started then)."""
    new = _NewWorker()
    try:
        pending = launcher.order(env, new.world.cwd, new.child_fds)
    except BaseException:
        new.close()
        raise
    if pending is None:
        new.close()
        return None
    new.close_child_ends()  # sent: the template's message holds its own copies
    try:
        new.send_init()
    except OSError:  # (cannot happen before the peer even exists; stay safe)
        pending.cancel()
        new.close()
        return None
    return PendingWorker(new, pending, env, launcher)


#: Numbers the workers as multiprocessing numbers a pool's (its name and ``_identity``).
_worker_numbers = itertools.count(1)


def _parent_settings(first: bool = True) -> tuple[dict, tuple[int, ...]]:
    """What a worker needs to act as a spawned ``multiprocessing`` child of ours: our
    authkey (``Manager`` proxies and listeners authenticate with it), pid and name, the
    level of ``multiprocessing``'s logger, and our resource tracker if it runs (shared
    memory a worker attaches to must outlive the worker, as it does for a spawned
    child: tests/stdlib, ``test_shared_memory_across_processes``).

    Only what exists: while this process has not loaded ``multiprocessing`` (a script's
    first ``parmap``), there is no authkey, logger or tracker yet, and loading it just
    for that would cost ~0.6 MB here; the worker hears of them once we have
    (`WorkerHandle.sync_world`). ``first``: for a new worker (its pid and number too),
    else that later word."""
    settings: dict = {"pid": os.getpid(), "number": next(_worker_numbers)} if first else {}
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return settings, ()
    me = process.current_process()
    settings["authkey"] = bytes(me.authkey)
    settings["name"] = me.name
    util = sys.modules.get("multiprocessing.util")
    if util is not None and util._logger is not None:  # as spawn.get_preparation_data
        settings["log_level"] = util._logger.getEffectiveLevel()
    fds: tuple[int, ...] = ()
    if os.name == "posix" and "multiprocessing.resource_tracker" in sys.modules:
        tracker_fd = sys.modules["multiprocessing.resource_tracker"]._resource_tracker._fd
        if tracker_fd is not None:
            settings["resource_tracker"] = True
            fds = (tracker_fd,)
    return settings, fds


#: Extra environment for new workers, or a function that builds it (called only when a
#: worker is actually spawned: a warm call should not pay for it).
EnvExtra = dict | Callable[[], dict] | None


def worker_env(extra: EnvExtra = None) -> dict[str, str]:
    """The environment of a new worker: ours, plus the worker flag and thread limits."""
    if callable(extra):
        extra = extra()
    env = dict(os.environ)
    env[M.WORKER_ENV] = "1"
    # The worker must import this very ipyparmap, also when it was put on sys.path by
    # hand (a source checkout, a notebook's sys.path.insert) rather than installed.
    root = _package_root()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    env.update(extra or {})
    return env


#: Seconds a call that needs new workers waits for the template process to boot before
#: it starts them as interpreters instead: about what an interpreter start takes (the
#: template is one), so the first call of a pool is not slower than with spawned workers.
TEMPLATE_BOOT_WAIT = 0.5

#: Idle workers beyond the pool's warm count (the usable CPUs) stop after this many
#: seconds: a run with ``workers=50`` must not leave 50 processes up for good.
IDLE_SECONDS = 60.0


class Pool:
    """Warm worker processes shared by runs; a run leases workers for its duration.

    ``keep_warm`` idle workers (default: the usable CPUs) stay up for the next call;
    idle workers beyond them stop after ``idle_seconds`` (None: never).
    """

    def __init__(self, keep_warm: int | None = None, idle_seconds: float | None = IDLE_SECONDS):
        self._lock = threading.Lock()
        self._idle: list[WorkerHandle] = []
        self._leased: set[WorkerHandle] = set()
        self.keep_warm = keep_warm
        self.idle_seconds = idle_seconds
        self._reaper: threading.Thread | None = None  # stops surplus idle workers
        self._wake_reaper = threading.Event()
        # Selectors watching a set of workers' pipes and sentinels, kept between runs:
        # a warm call on the same workers skips creating and filling an epoll set
        # (five system calls, ~18 us of a ~250 us small call).
        self._selectors: dict[frozenset, Any] = {}
        # Forks replacement workers from a template process (process/template.py).
        self.launcher = Launcher()
        self._spares: set[PendingWorker] = set()  # forked ahead of need (order_spare)
        self._env_memo: tuple = (None, None, None)  # (extra, our environment, worker_env)
        # Workers retired with release(wait=False), told to stop and waited for by one
        # thread (not a thread each: starting one costs the caller ~0.3 ms, a
        # replacement's worth), which ends once none came for STOPPER_LINGER seconds.
        self._stopping: list[WorkerHandle] = []
        self._stopper: threading.Thread | None = None
        self._stop_news = threading.Condition(self._lock)
        self.closed = False  # shut down: a prewarm that ends after it stops its workers
        self._prewarming = 0  # workers a prewarm thread is still forking
        self._prewarm_news = threading.Condition(self._lock)

    def prewarm(self, count: int, env_extra: EnvExtra = None) -> int:
        """Start workers until ``count`` are up, idle, for the next call; return how
        many are being started. This returns in milliseconds, the workers boot in the
        background: forks of the template process where it can be used (started now;
        a short-lived thread forks them once it has booted, and a call arriving before
        that waits for them, `acquire`), else interpreters, in the pool at once.
        """
        with self._lock:
            missing = count - len(self._idle) - len(self._leased) - self._prewarming
            if missing <= 0 or self.closed:
                return 0
            self._prewarming += missing
        env = worker_env(env_extra)
        if self.launcher.enabled:
            self.launcher.start(env)  # it boots while the user writes the next cell
            forker = threading.Thread(
                target=self._prewarm_forks, args=(missing, env), name="ipyparmap-prewarm",
                daemon=True,
            )  # fmt: skip
            try:
                forker.start()
                return missing
            except RuntimeError:  # the interpreter is shutting down: no thread
                pass
        return self._prewarmed([spawn_worker(env) for _ in range(missing)], missing)

    def _prewarm_forks(self, missing: int, env: dict[str, str]) -> None:
        started: list[WorkerHandle] = []
        try:
            for _ in range(missing):
                if self.closed:
                    break
                started.append(spawn_worker(env, self.launcher, True, TEMPLATE_BOOT_WAIT))
        except OSError:  # out of processes or descriptors: the next call starts its own
            pass
        finally:
            self._prewarmed(started, missing)

    def _prewarmed(self, started: list[WorkerHandle], missing: int) -> int:
        """Put prewarmed workers in the pool (stop them if it was shut down meanwhile)."""
        with self._lock:
            self._prewarming -= missing
            self._prewarm_news.notify_all()
            if not self.closed:
                now = time.monotonic()
                for worker in started:
                    worker.idle_since = now
                self._idle.extend(started)
                self._start_reaper()
                return len(started)
        _stop_all(started)
        return 0

    def _wait_for_prewarm(self) -> None:
        """A call that finds workers being prewarmed waits for them (rather than start
        more of its own): at most a template's boot and the forks."""
        with self._lock:
            if self._prewarming:
                self._prewarm_news.wait_for(
                    lambda: not self._prewarming, timeout=TEMPLATE_BOOT_WAIT + 1.0
                )

    def acquire(self, count: int, env_extra: EnvExtra = None) -> list[WorkerHandle]:
        """Lease ``count`` workers: warm idle ones first, new ones for the rest.

        New workers are forked from the template process, which the first of them
        starts (one interpreter start for the pool, not one per worker, and workers
        that share its pages); if it is not up within `TEMPLATE_BOOT_WAIT` (about what
        a spawned worker would take to boot), they are started as interpreters."""
        self._wait_for_prewarm()
        with self._lock:
            warm = []
            for worker in self._idle:
                if worker.alive():
                    warm.append(worker)
                else:
                    worker.reap(0.1)
                    worker.close()
            taken, self._idle = warm[:count], warm[count:]
            self._leased.update(taken)
        if len(taken) == count:  # all warm: no environment to build, nothing to spawn
            return taken
        env = self._worker_env(env_extra)
        wait = TEMPLATE_BOOT_WAIT  # for the first only: the others go the same way
        try:
            while len(taken) < count:
                worker = spawn_worker(env, self.launcher, True, wait)
                wait = 0.0
                taken.append(worker)
                with self._lock:
                    self._leased.add(worker)
        except BaseException:
            self.release(taken)
            raise
        return taken

    def start_template(self, count: int, env_extra: EnvExtra = None) -> None:
        """Start the template process in the background if a call leasing ``count``
        workers would need new ones and none is up: the caller (the first call of a
        script) then loads the rest of the engine while it boots, instead of waiting
        for it in `acquire`. Returns at once."""
        if self._needs_new_workers(count):
            self.launcher.start(worker_env(env_extra))

    def prepare(self, count: int, payload: FunctionPayload) -> None:
        """Before a call leasing ``count`` workers starts new ones for ``payload``'s
        function: have the template import the installed modules the function needs
        (NumPy: once, there, instead of in each new worker after its fork), and copy the
        function's big globals into shared memory now, while the template boots and
        imports (W6b: a 200 MB global, ~75 ms of copying, overlaps them)."""
        if not self._needs_new_workers(count):
            return  # warm: the workers have the modules; the copy waits for them
        self.launcher.note_function(payload.code_key, payload.blob)
        if payload.packed is not None:
            payload.share()

    def _needs_new_workers(self, count: int) -> bool:
        """Whether a call leasing ``count`` workers now would start new ones."""
        with self._lock:
            return not self.closed and len(self._idle) < count

    def drop_template_if_unused(self) -> None:
        """Stop the template process if this pool has no worker at all: a call started
        it ahead (`start_template`) and failed before leasing any (its function could
        not be pickled). The next call that needs workers starts another."""
        with self._lock:
            if self._idle or self._leased:
                return
        self.launcher.close()

    def spawn(self, env_extra: EnvExtra = None, spare: PendingWorker | None = None
              ) -> WorkerHandle:  # fmt: skip
        """A new leased worker (a replacement after a crash, a timeout, a recycle):
        ``spare``, if it was forked for the same environment and is fine, else one
        forked from the template process now (the first replacement starts it)."""
        env = self._worker_env(env_extra)
        worker = None
        if spare is not None:
            with self._lock:
                self._spares.discard(spare)
            if spare.env is env or spare.env == env:
                worker = spare.take()
            else:  # the caller's environment changed since: the spare has the old one
                spare.cancel()
        if worker is None:
            worker = spawn_worker(env, self.launcher, start_template=True)
        with self._lock:
            self._leased.add(worker)
        return worker

    def order_spare(self, env_extra: EnvExtra = None) -> PendingWorker | None:
        """Fork a worker ahead of need, when a replacement is known to be coming (a
        worker retires after its chunk): the template forks it and it boots while the
        current one works, and `spawn` takes it. None if no template is up (the
        replacement is forked when it is wanted). `cancel_spare` ends an unused one;
        `shutdown` ends them all."""
        if self.closed:
            return None
        spare = order_worker(self._worker_env(env_extra), self.launcher)
        if spare is None:
            return None
        with self._lock:
            if not self.closed:
                self._spares.add(spare)
                return spare
        spare.cancel()  # shut down meanwhile
        return None

    def cancel_spare(self, spare: PendingWorker) -> None:
        with self._lock:
            self._spares.discard(spare)
        spare.cancel()

    def _worker_env(self, env_extra: EnvExtra) -> dict[str, str]:
        """`worker_env`, the same dict as last time while neither our environment nor
        ``env_extra`` changed (decoding the environment costs ~0.1 ms a replacement;
        the same object also makes the template's environment check an identity)."""
        if callable(env_extra):
            env_extra = env_extra()
        last_extra, last_ours, env = self._env_memo
        ours = _environ()
        if env is not None and last_extra == env_extra and last_ours == ours:
            return env
        env = worker_env(env_extra)
        self._env_memo = (env_extra, dict(ours), env)
        return env

    def release(self, workers, keep: int | None = None, wait: bool = True) -> None:
        """Give leased workers back. Dead ones are reaped; idle ones stay warm.

        ``keep`` caps how many idle workers the pool keeps (the rest are stopped).
        ``wait=False``: the stopped ones are waited for in the background (a worker
        retired in a run: its replacement, forked in milliseconds, need not wait for
        its interpreter to finish exiting); `shutdown` waits for them.
        """
        surplus = []
        with self._lock:
            now = time.monotonic()
            for worker in workers:
                self._leased.discard(worker)
                if worker.alive():
                    worker.idle_since = now
                    self._idle.append(worker)
                else:
                    surplus.append(worker)
            if keep is not None and len(self._idle) > keep:
                surplus += self._idle[keep:]
                self._idle = self._idle[:keep]
            self._start_reaper()
        if wait or not surplus:
            _stop_all(surplus)
            return
        self._drop_selectors_of(surplus)
        _tell_to_stop(surplus)  # at once: they exit while we go on
        with self._lock:
            self._stopping += surplus
            if self._stopper is not None:
                self._stop_news.notify()
                return
            stopper = self._stopper = threading.Thread(
                target=self._stop_in_background, name="ipyparmap-stop", daemon=True
            )
        stopper.start()

    def _stop_in_background(self) -> None:
        """Wait for the workers retired with ``release(wait=False)`` (killing those that
        linger, as `_stop_all`); end when none came for `STOPPER_LINGER` seconds, or at
        shutdown once those are done."""
        while True:
            with self._lock:
                if not self._stopping and not self.closed:
                    self._stop_news.wait(STOPPER_LINGER)
                workers, self._stopping = self._stopping, []
                if not workers:
                    self._stopper = None
                    return
            _reap_all(workers)

    # -- idle workers beyond the warm count stop after a while --------------------------------
    def _warm_count(self) -> int:
        if self.keep_warm is None:
            from ipyparmap.process.resources import cpu_count

            self.keep_warm = cpu_count()
        return self.keep_warm

    def _start_reaper(self) -> None:
        """(Lock held.) Watch the surplus idle workers, if there are any."""
        if self.idle_seconds is None or len(self._idle) <= self._warm_count():
            return
        if self._reaper is not None:
            self._wake_reaper.set()  # a new deadline may be nearer
            return
        self._reaper = threading.Thread(target=self._reap, name="ipyparmap-idle", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        """Stop idle workers beyond the warm count, least recently used first, once
        they have been idle ``idle_seconds``; end when there are none left to watch."""
        while True:
            with self._lock:
                surplus = len(self._idle) - self._warm_count()
                limit = self.idle_seconds
                if surplus <= 0 or limit is None:
                    self._reaper = None
                    return
                now = time.monotonic()
                oldest = sorted(self._idle, key=lambda w: w.idle_since)[:surplus]
                due = [w for w in oldest if now - w.idle_since >= limit]
                for worker in due:
                    self._idle.remove(worker)
                waiting = [w.idle_since + limit - now for w in oldest if w not in due]
                self._wake_reaper.clear()
            if due:
                self._drop_selectors_of(due)
                _stop_all(due)
            self._wake_reaper.wait(min(waiting, default=0.0) + 0.05)

    def _drop_selectors_of(self, workers: list[WorkerHandle]) -> None:
        gone = set(workers)
        with self._lock:
            stale = [key for key in self._selectors if key & gone]
            dropped = [self._selectors.pop(key) for key in stale]
        for selector in dropped:
            selector.close()

    def take_selector(self, workers: list[WorkerHandle]):
        """The selector a previous run kept for exactly these workers, or None."""
        with self._lock:
            return self._selectors.pop(frozenset(workers), None)

    def keep_selector(self, workers: list[WorkerHandle], selector) -> None:
        """Keep ``selector`` (watching exactly ``workers``) for the next run on them, if
        they are all idle and warm; otherwise close it."""
        key = frozenset(workers)
        with self._lock:
            idle = set(self._idle)
            if key and key not in self._selectors and all(w in idle for w in key):
                self._selectors[key] = selector
                stale = [k for k in self._selectors if not k <= idle]  # a worker moved on
                stale += list(self._selectors)[:-SELECTOR_CACHE]
                dropped = [self._selectors.pop(k) for k in dict.fromkeys(stale)]
            else:
                dropped = [selector]
        for old in dropped:
            old.close()

    def _drop_selectors(self) -> None:
        with self._lock:
            dropped, self._selectors = list(self._selectors.values()), {}
        for selector in dropped:
            selector.close()

    def discard(self, worker: WorkerHandle) -> None:
        """Forget a leased worker that died or was killed (already reaped)."""
        with self._lock:
            self._leased.discard(worker)
        worker.close()

    def workers(self) -> list[tuple[WorkerHandle, str]]:
        """Every worker and its state ("idle" or "busy"), for display."""
        with self._lock:
            return [(w, "idle") for w in self._idle] + [(w, "busy") for w in self._leased]

    def shutdown(self, kill_busy: bool = True, wait: bool = True) -> None:
        """Stop idle workers (and, by default, kill leased ones).

        ``wait=False`` (at interpreter exit) does not wait for them: told to stop, and
        with our end of their lifeline closed, they are gone within moments anyway.
        """
        self._drop_selectors()
        with self._lock:
            self.closed = True
        if wait:
            self._wait_for_prewarm()  # (its workers then stop: the pool is closed)
        with self._lock:
            idle, self._idle = self._idle, []
            busy = list(self._leased) if kill_busy else []
            reaper = self._reaper
            spares, self._spares = list(self._spares), set()
        for spare in spares:  # they exit at once; their template waits for them
            spare.cancel()
        self._wake_reaper.set()  # it finds nothing left to watch and ends
        for worker in busy:
            worker.kill()
        _stop_all(idle + busy, wait)
        if wait:
            with self._lock:
                stopper = self._stopper
                self._stop_news.notify()  # (closed: it ends once its workers have)
            if stopper is not None:
                stopper.join(STOP_GRACE + 1.0)
            if reaper is not None and reaper is not threading.current_thread():
                reaper.join(STOP_GRACE)  # a pool shut down leaves no thread behind
        self.launcher.close(wait)


def _stop_all(workers: list[WorkerHandle], wait: bool = True) -> None:
    """Ask workers to stop, all at once, then wait; kill those that linger."""
    _tell_to_stop(workers)
    if not wait:
        for worker in workers:
            worker.close()
        return
    _reap_all(workers)


def _tell_to_stop(workers: list[WorkerHandle]) -> None:
    for worker in workers:
        if worker.alive():
            try:
                worker.send(M.pack(M.Stop()))
            except OSError:
                worker.kill()


def _reap_all(workers: list[WorkerHandle]) -> None:
    """Wait for workers told to stop (`STOP_GRACE` in all); kill those that linger."""
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        worker.reap(max(0.05, deadline - time.monotonic()))
        worker.close()


_default_pool: Pool | None = None
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The process-wide warm pool (created on first use, stopped at exit)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = Pool(idle_seconds=IDLE_SECONDS)
            atexit.register(shutdown_default_pool, wait=False)
        return _default_pool


def shutdown_default_pool(wait: bool = True) -> None:
    global _default_pool
    with _default_lock:
        pool, _default_pool = _default_pool, None
    if pool is not None:
        pool.shutdown(wait=wait)
