"""The template process: a clean interpreter that forks workers in milliseconds (layer: process).

Starting a worker is starting an interpreter: 60-150 ms of imports before it can run
anything. A pool pays that once per worker at its start, which is fine, but also for
every *replacement* worker: after a crash, a timeout, ``max_memory``, and for each task
of the drop-in ``Pool(maxtasksperchild=1)``. Forking the kernel instead would be fast
and unsafe (a big, multi-threaded process; see docs/how-it-works.md). The template is
the middle way: a worker-like interpreter, started the usual way, that imports what a
worker needs and then only ever forks. A fork of it is a worker that has already
booted: no interpreter start, no imports, and its pages are shared with the template
until written (lower PSS per worker).

What makes forking it safe, and what the tests hold it to
(tests/faults/test_template.py):

- it never runs user code: it unpickles nothing (its requests are plain bytes), and
  imports only the worker module and its imports (the worker import rule of
  tests/test_architecture.py covers this module), plus the installed third-party
  modules the workers' functions use (`installed_modules`: never ``__main__``, never
  the caller's own files), so that later forks have them loaded;
- it runs no thread (forking a threaded process copies locks held by threads that do
  not exist in the child): it waits in ``poll()`` in its only thread, and counts its
  threads after each import (OpenBLAS starts its own at import unless told to use
  one): if there is more than one, it says which modules and exits instead of forking;
- it hears only from its parent: its requests come over one end of a socketpair that
  only the parent holds (no path in any file system, unreachable by other users);
- it dies with its parent (a lifeline socket, as workers have), and when its pool
  closes its end of the socketpair it forks no more and exits once the workers it
  forked have (`_linger`: they stay in the parent's process tree); each worker it
  forks gets its own lifeline to the parent, so the template's death never takes a
  worker with it.

Data flow (one fork; ``X`` is sent whenever a forked worker exits)::

    parent (Launcher / Template)             template process            forked worker
    ───────────────────────────              ────────────────            ─────────────
    socketpair, lifeline, board memfd
    Template.order: "F" + cwd, with   ──>    fork() ───────────────────> setpgid(0, 0), chdir(cwd)
    3 fds (SCM_RIGHTS); a PendingFork        setpgid(child) (both do it) closes the template's fds
    (no wait: forks are answered in order)   pidfd_open(child)           returns from `serve`
    <── "F" + pid, with a pidfd of it ──                                 -> worker.main(fds)
    PendingFork.result() (read now or                                    boots, reads its Init
    earlier): WorkerHandle(ForkedProcess)
    <── "X" + pid + exit status ────────     the child's pidfd readable:  -> exit_quickly()
    ForkedProcess.returncode                 waitpid() (it is its parent)
    "I" + module names ─────────────────>    import, gc.freeze(); "I" back
    (no fork meanwhile)               <──    or "T": a thread started: exit

A fork is asked for without waiting for its answer (`Template.order`): a replacement
known to be coming (process/pool.py `Pool.order_spare`: a worker retiring after its
chunk, the next crash after a crash) is forked ahead while the current worker runs,
and taken (`PendingFork.result`) when it is wanted; `Template.fork` asks and waits. A
spare nobody takes is cancelled (`PendingFork.cancel`): its pidfd is closed and its
exit status dropped when it comes.

The parent gets a worker's death sentinel (a pidfd) from the template, opened right
after the fork, before the template could reap the child and its pid be reused. The
exit status can only come from the template (only a parent can wait for a process);
if the template is gone by then, the status is unknown (`ForkedProcess.lost`).

Environment: a fork inherits the template's environment, which is the one its
first worker would have had (`worker_env`); the launcher keeps a template per
environment and starts another when the environment of new workers changes (the
caller changed ``os.environ``, or a call asked for other thread limits), so a forked
worker's environment is exactly a spawned one's. The working directory comes with
each request; ``sys.path`` and the rest of the caller's world come in the worker's
``Init`` and ``World`` messages, as for a spawned worker.

Where it is used: for a pool's first workers (`Pool.acquire` starts the template and
waits for it up to ``TEMPLATE_BOOT_WAIT``, else they are interpreters), for replacement
workers (`Pool.spawn`), new workers of a growing pool, and the workers `Pool.prewarm`
starts for ``%load_ext`` (a thread forks them once the template is up). It needs
pidfds (a death sentinel for a process that is not our child) and fork, so on macOS,
Windows and under ``IPYPARMAP_MASK=pidfd`` the launcher starts every worker as an
interpreter, as before. A template that fails (it
was killed, a fork failed, it is slow to answer) is dropped and workers are started as
interpreters again; after `MAX_FAILURES` failed templates a pool starts no more.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque

from ipyparmap import system
from ipyparmap.wire.channel import Channel
from ipyparmap.wire.localmodules import installed_roots

_PID = struct.Struct("!q")
_EXIT = struct.Struct("!qq")
#: Messages, parent -> template: fork a worker (payload: its working directory);
#: import modules (IMPORT + names, one a line).
FORK, IMPORT = b"F", b"I"
#: Template -> parent: booted (READY), forked (FORK + pid, with a pidfd), a fork
#: failed (FAILED + why), a worker exited (EXITED + pid + exit status), modules
#: imported (IMPORT + names), or refused: importing them started a thread, so the
#: template exits rather than ever fork again (THREADS + names).
READY, FAILED, EXITED, THREADS = b"R", b"E", b"X", b"T"
#: Seconds the parent waits for a fork's answer before it gives up on the template.
FORK_TIMEOUT = 2.0
#: ...and longer for a fork asked while the template still imports modules it was sent
#: (`Template.preload`): it answers in order, after the imports (pandas can take
#: seconds on a cold disk). A template importing for longer is taken to be stuck.
IMPORT_TIMEOUT = 30.0
#: Templates of a pool that may fail (die, be killed, refuse a module) before it
#: starts no more: one that keeps dying is not worth an interpreter start each time.
MAX_FAILURES = 4

_TEMPLATE_CODE = """\
import sys
from ipyparmap.process.template import serve
fds = serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
if fds is not None:  # a forked child: be a worker (the template's loop is left behind)
    from ipyparmap.process.template import exit_quickly
    from ipyparmap.process.worker import main
    main(fds, forked=True)
    exit_quickly()
"""


def exit_quickly() -> None:
    """End a forked worker as the interpreter would, without tearing it down.

    What an exit does for the program (wait for its threads, run its ``atexit``
    functions, flush its streams) is done; what the interpreter then does for itself
    (freeing every module and object) is not: in a fork that writes to every page it
    shares with the template, ~25 ms of CPU per worker for nothing.
    """
    import atexit

    code = 0
    try:
        threading._shutdown()  # non-daemon threads the items started, as at any exit
        atexit._run_exitfuncs()
    except BaseException:  # reported by the hook, as at any exit
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


def available() -> bool:
    """Whether workers can be forked from a template here (fork and pidfds)."""
    return hasattr(os, "fork") and system.has_pidfd()


# -- the template side (runs in the template process) ---------------------------------------
def serve(control_fd: int, lifeline_fd: int, preload: list[str] = ()) -> list[str] | None:
    """The template's main loop. Returns None in the template when it is time to exit
    (its parent or its pool is gone), and the worker's arguments (descriptors of its
    channel, lifeline and board) in each forked child, which then runs the worker.
    ``preload``: installed modules the workers' functions used, to import first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as workers: the parent decides
    import cloudpickle  # noqa: F401  # what every worker needs, imported once

    try:
        import resource  # noqa: F401  # a worker's first answer reads its peak memory
    except ImportError:
        pass

    from ipyparmap.process import worker  # noqa: F401

    channel = Channel.from_fd(control_fd)
    if _import(preload) is None:
        channel.send(THREADS + "\n".join(preload).encode())
        return None
    children: dict[int, int] = {}  # pidfd -> pid of each live forked worker
    poller = select.poll()
    poller.register(control_fd, select.POLLIN)
    poller.register(lifeline_fd, select.POLLIN)
    try:
        channel.send(READY)
    except OSError:
        return None
    while True:
        for fd, _events in poller.poll():
            if fd == lifeline_fd:
                return None  # the parent is gone
            if fd == control_fd:
                try:
                    payload, fds = channel.recv()
                except (EOFError, OSError):  # the pool closed its end
                    return _linger(channel, control_fd, lifeline_fd, children, poller)
                if payload[:1] == IMPORT and not fds:
                    names = bytes(payload[1:]).decode("ascii", "replace").split("\n")
                    done = _import(names)
                    if done is None:  # a thread runs now: never fork again
                        channel.send(THREADS + "\n".join(names).encode())
                        return _linger(channel, control_fd, lifeline_fd, children, poller)
                    channel.send(IMPORT + "\n".join(done).encode())
                    continue
                if payload[:1] != FORK or len(fds) != 3:
                    for each in fds:
                        os.close(each)
                    continue
                child = _fork(channel, lifeline_fd, children, poller, bytes(payload[1:]), fds)
                if child is not None:
                    return child  # in the child: go and be a worker
                continue
            if not _reap(channel, children, poller, fd):  # a worker's pidfd: it exited
                return None


def _linger(channel: Channel, control_fd: int, lifeline_fd: int, children: dict,
            poller) -> None:  # fmt: skip
    """Fork no more, but stay until the workers forked so far have exited (reaping
    them, telling the parent while it listens), so that they stay in the parent's
    process tree: a worker whose parent is gone is adopted by init, and no walk of the
    caller's descendants (a leak check, a memory sum, a kill of its tree) finds it. The
    parent's death ends it at once (the workers have their own lifelines)."""
    poller.unregister(control_fd)  # at its end, or no longer served
    while children:
        for fd, _events in poller.poll():
            if fd == lifeline_fd:
                return None
            _reap(channel, children, poller, fd)  # (the pool may be done with us: fine)
    return None


def _reap(channel: Channel, children: dict, poller, fd: int) -> bool:
    """A worker's pidfd became readable: reap the worker (only its parent can) and tell
    the pool its exit status; False if the pool no longer listens."""
    pid = children.pop(fd, None)
    poller.unregister(fd)
    os.close(fd)
    if pid is None:
        return True
    _, status = os.waitpid(pid, 0)
    try:
        channel.send(EXITED + _EXIT.pack(pid, os.waitstatus_to_exitcode(status)))
    except OSError:
        return False
    return True


def _import(names) -> list[str] | None:
    """Import ``names`` (modules that fail to import are skipped); None if that left a
    thread running (OpenBLAS starts its threads at import, unless told to use one)."""
    import importlib

    done = []
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            continue
        try:
            importlib.import_module(name)
        except Exception:  # not there, or broken: the workers import it themselves
            continue
        done.append(name)
    if _threads() != 1:
        return None
    # What is loaded now is kept for good: the collector of a fork will not walk it
    # (its walks write to every object's header, copying the pages shared with us).
    # Garbage first, after imports of modules that may leave some; the template's own
    # boot leaves none, and a collection would delay its first fork by ~5-10 ms.
    if done:
        gc.collect()
    gc.freeze()
    return done


def _threads() -> int:
    """Threads of this process, the C libraries' included (``threading`` sees only
    Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _fork(channel: Channel, lifeline_fd: int, children: dict, poller, cwd: bytes,
          fds: list[int]):  # fmt: skip
    """Fork one worker. In the child, return its arguments; in the template, answer
    the parent and return None."""
    for stream in (sys.stdout, sys.stderr):  # what a preloaded module printed: once
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        channel.send(FAILED + str(exc).encode(errors="replace"))
        return None
    if pid == 0:  # the new worker
        try:
            # Its own process group (killed as one, with what it starts), in the
            # template's session, which has no terminal: no terminal signal reaches it.
            # Both sides set it, so it holds whichever runs first.
            os.setpgid(0, 0)
            channel.close()
            os.close(lifeline_fd)
            for pidfd in children:
                os.close(pidfd)
            children.clear()
            try:
                os.chdir(os.fsdecode(cwd))
            except OSError:  # gone meanwhile: as a spawned worker, it stays where it is
                pass
            sys.argv[1:] = [str(fd) for fd in fds]
        except BaseException:
            os._exit(70)  # never back into the template's loop
        return [str(fd) for fd in fds]
    for fd in fds:
        os.close(fd)
    try:
        os.setpgid(pid, pid)  # before the parent hears of it: it can kill the group at once
    except OSError:  # it already did it itself (or died: its pidfd says so at once)
        pass
    pidfd = os.pidfd_open(pid)  # before any waitpid: the pid cannot be reused yet
    children[pidfd] = pid
    poller.register(pidfd, select.POLLIN)
    channel.send(FORK + _PID.pack(pid), (pidfd,))
    return None


# -- the parent side ------------------------------------------------------------------------
class ForkedProcess:
    """What ``subprocess.Popen`` offers for a worker forked by a template: ``pid``,
    ``returncode``, `poll` and `wait` (the exit status comes from the template)."""

    def __init__(self, template: Template, pid: int, pidfd: int):
        self.template = template
        self.pid = pid
        self.pidfd = pidfd  # the worker's death sentinel (its WorkerHandle closes it)
        self.returncode: int | None = None
        self.lost = False  # it exited, but its template died before saying how

    def poll(self) -> int | None:
        if self.returncode is None and not self.lost:
            self.template.collect()
            self._settle()
        return self.returncode

    def _settle(self) -> None:
        code = self.template.exits.pop(self.pid, None)
        if code is not None:
            self.returncode = code
        elif self.template.dead and _readable(self.pidfd, 0.0):
            self.lost = True

    def done(self) -> bool:
        return self.poll() is not None or self.lost

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (None: lost with its template); TimeoutExpired as Popen."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                from subprocess import TimeoutExpired  # (the parent has it loaded)

                raise TimeoutExpired(f"worker {self.pid}", timeout)
            step = 0.1 if left is None else min(left, 0.1)
            if self.template.dead:
                _readable(self.pidfd, step)  # it can only be lost now: wait for its end
            else:
                self.template.collect(wait=step)
        return self.returncode

    def release(self) -> None:
        """Its handle closed the pidfd: never look at that descriptor number again."""
        self.pidfd = -1


class PendingFork:
    """A fork asked of a template whose answer has not been read yet (`Template.order`):
    the template forks while the parent does other things, and `result` reads the
    answer when the worker is wanted."""

    __slots__ = ("answer", "cancelled", "template", "timeout")

    def __init__(self, template: Template, timeout: float = FORK_TIMEOUT):
        self.template = template
        self.answer: tuple[bytes, list[int]] | None = None  # FORK + pid with its pidfd, or FAILED
        self.cancelled = False  # nobody wants the worker any more (see cancel)
        self.timeout = timeout  # the default wait of `result`

    def result(self, timeout: float | None = None) -> ForkedProcess | None:
        """The forked worker, or None if the template could not make one (it failed, died,
        or took longer than ``timeout``, by default `FORK_TIMEOUT`, or `IMPORT_TIMEOUT`
        more if it was asked behind an import: then it is dropped)."""
        template = self.template
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            with template._lock:
                answer = self.answer
                if answer is None and template.dead:
                    return None
            if answer is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                with template._lock:
                    template._died()
                return None
            template.collect(wait=left)
        payload, got = answer
        if payload[:1] != FORK or len(got) != 1:
            for fd in got:
                os.close(fd)
            return None  # FAILED: fork() itself failed (no memory, too many processes)
        (pid,) = _PID.unpack(payload[1:])
        return ForkedProcess(template, pid, got[0])

    def cancel(self) -> None:
        """Nobody will take this worker: its pidfd is closed (now or when the answer
        comes) and its exit status, when the template reports it, is dropped. The
        worker itself ends when its channel closes (the caller closes its end)."""
        template = self.template
        with template._lock:
            self.cancelled = True
            answer, self.answer = self.answer, None
            if answer is not None:
                template._forget(*answer)


class Template:
    """The parent's side of one template process (for workers with environment ``env``)."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = ()):
        self.env = env
        self.preloaded = set(preload)  # modules it imports (or imported) for the workers
        self.refused: set[str] = set()  # modules whose import started a thread in it
        self.exits: dict[int, int] = {}  # pid -> exit status, reported, not collected yet
        self.ready = False
        self.dead = False
        self._imports = 0  # IMPORT requests it has not answered yet
        self._lock = threading.Lock()  # guards the state below and reading the channel
        self._news = threading.Condition(self._lock)  # something was read
        self._reading = False  # a thread waits on the channel (see collect)
        # Forks asked for, oldest first: the template answers them in that order.
        self._waiting: deque[PendingFork] = deque()
        self._unwanted: set[int] = set()  # pids of cancelled forks: their exits are dropped
        parent_sock, child_sock = socket.socketpair()
        parent_life, child_life = socket.socketpair()
        child_fds = (child_sock.fileno(), child_life.fileno())
        import subprocess  # here: the template process itself never needs it (~0.4 MB)

        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _TEMPLATE_CODE, *map(str, child_fds), *preload],
                pass_fds=child_fds,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd="/",  # never import from the caller's folder: no user code
            )
        except BaseException:
            parent_sock.close()
            parent_life.close()
            raise
        finally:
            child_sock.close()
            child_life.close()
        self.pid = self.proc.pid
        self.channel = Channel(parent_sock)
        self.lifeline = parent_life

    def __repr__(self) -> str:
        state = "dead" if self.dead else "ready" if self.ready else "booting"
        return f"<Template pid={self.pid} {state}>"

    # -- reading what the template says ---------------------------------------------------
    def collect(self, wait: float = 0.0) -> None:
        """Read what the template has said (waiting up to ``wait`` seconds for a word).

        One thread at a time waits on the channel, without the lock (a fork must not
        wait behind a thread waiting for some worker's exit); the others wait for its
        news on the condition."""
        with self._news:
            if self.dead:
                return
            if self._reading:
                if wait > 0:
                    self._news.wait(wait)
                return
            self._reading = True
        try:
            ready = self.channel.poll(wait)
        except (OSError, ValueError):  # closed meanwhile
            ready = False
        with self._news:
            self._reading = False
            try:
                while ready and not self.dead:
                    payload, fds = self.channel.recv()
                    self._file(bytes(payload), fds)
                    ready = self.channel.poll(0.0)
            except (EOFError, OSError, ValueError):
                self._died()
            self._news.notify_all()

    def _file(self, payload: bytes, fds: list[int]) -> None:
        kind = payload[:1]
        if kind == EXITED:
            pid, code = _EXIT.unpack(payload[1:])
            if pid in self._unwanted:
                self._unwanted.discard(pid)
            else:
                self.exits[pid] = code
        elif kind in (READY, IMPORT):  # booted, or done importing: it forks again
            if kind == IMPORT:
                self._imports = max(0, self._imports - 1)
            self.ready = True
        elif kind == THREADS:  # it exits now; the launcher remembers these modules
            self.refused.update(bytes(payload[1:]).decode("ascii", "replace").split("\n"))
            self.ready = False
        else:  # FORK or FAILED: the answer to the oldest fork asked for
            pending = self._waiting.popleft() if self._waiting else None
            if pending is None or pending.cancelled:
                self._forget(payload, fds)
            else:
                pending.answer = (payload, fds)

    def _forget(self, payload: bytes, fds: list[int]) -> None:
        """(Lock held.) A fork's answer that nobody will take: close its pidfd; its exit
        status, when it comes, is dropped (nobody would collect it)."""
        for fd in fds:
            os.close(fd)
        if payload[:1] == FORK:
            (pid,) = _PID.unpack(payload[1:])
            if self.exits.pop(pid, None) is None:  # (it may have exited already)
                self._unwanted.add(pid)

    def _died(self) -> None:
        """(Lock held.) The template is gone or broken: no more forks from it."""
        if self.dead:
            return
        self.dead = True
        self.ready = False
        for pending in self._waiting:  # never answered: they wake up to a dead template
            pending.cancelled = True
        self._waiting.clear()
        self.channel.close()
        self.lifeline.close()
        try:
            os.killpg(self.pid, signal.SIGKILL)  # it may be stuck rather than dead
        except OSError:
            pass

    def usable(self) -> bool:
        if not self.ready and not self.dead:
            self.collect()
        return self.ready and not self.dead

    def wait_usable(self, timeout: float) -> bool:
        """Whether it can fork, waiting up to ``timeout`` seconds for it to boot (or to
        finish importing modules)."""
        deadline = time.monotonic() + timeout
        while not self.usable():
            left = deadline - time.monotonic()
            if left <= 0 or self.dead:
                return False
            self.collect(wait=left)
        return True

    def preload(self, names: set[str]) -> None:
        """Have the template import ``names`` (installed modules the workers' functions
        use); it forks nothing meanwhile (workers are interpreters until it is done).
        Sent while it boots, the import comes after its READY: forks asked then are
        answered after the import, and wait for it (`IMPORT_TIMEOUT`)."""
        names = set(names) - self.preloaded
        if not names or self.dead:
            return
        with self._lock:
            if self.dead:
                return
            self.preloaded |= names
            self._imports += 1
            try:
                self.channel.send(IMPORT + "\n".join(sorted(names)).encode())
            except OSError:
                self._died()
                return
            self.ready = False  # until it says it is done

    # -- forking ---------------------------------------------------------------------------
    def order(self, cwd: str | None, fds: tuple[int, int, int]) -> PendingFork | None:
        """Ask for a new worker forked with ``fds`` (channel, lifeline, board; the caller
        keeps and closes its own copies) in ``cwd``, without waiting for the answer; None
        if the template cannot fork now. Forks are answered in the order asked."""
        where = os.fsencode(cwd if cwd is not None else "/")
        if not self.usable():
            return None
        with self._lock:
            if self.dead or not self.ready:
                return None
            try:
                self.channel.send(FORK + where, fds)
            except OSError:
                self._died()
                return None
            # Asked behind an import (sent while it booted: its READY came after):
            # answered once the import is done.
            behind = IMPORT_TIMEOUT if self._imports else 0.0
            pending = PendingFork(self, FORK_TIMEOUT + behind)
            self._waiting.append(pending)
        return pending

    def fork(self, cwd: str | None, fds: tuple[int, int, int]) -> ForkedProcess | None:
        """A new worker forked with ``fds`` (see `order`), or None if the template could
        not make one."""
        pending = self.order(cwd, fds)
        return None if pending is None else pending.result()

    def close(self, wait: float | None = 1.0) -> None:
        """Stop the template: it forks no more, and exits once the workers it forked
        have (`_linger`). Wait up to ``wait`` seconds for that, then kill it (None:
        wait as long as it takes; 0: not at all, and its lifeline stays open until
        the process ends: its end would end the template at once)."""
        with self._lock:
            if not self.dead:
                self.dead = True
                self.ready = False
                self.channel.close()
        if wait is not None and wait <= 0:
            return
        from subprocess import TimeoutExpired

        try:
            self.proc.wait(wait)
        except TimeoutExpired:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self.lifeline.close()


def _readable(fd: int, timeout: float) -> bool:
    if fd < 0:
        return True  # released by its handle, which closes it only once the worker is gone
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
    except (OSError, ValueError):
        return True  # closed: its handle is done with it
    return bool(readable)


class Launcher:
    """Starts worker processes for a pool: forked from a template when one is up for
    their environment, else as new interpreters (and then a template is started in the
    background for the next ones, when ``want_template``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.template: Template | None = None
        self.failed = 0  # templates that died, were killed or refused a module
        self.enabled = available()
        self.preload: set[str] = set()  # installed modules the workers' functions use
        self.unsafe: set[str] = set()  # ...whose import starts a thread: never preloaded
        self._seen: dict[bytes, None] = {}  # keys of the functions looked at (bounded)
        self._retired: list[Template] = []  # replaced, waiting for their forks to exit

    def note_function(self, key: bytes, blob) -> None:
        """A worker was sent this function: preload the installed modules it uses
        (``import numpy as np`` in a notebook: cloudpickle names ``numpy``) in the
        template, so that workers forked later have them already."""
        if not self.enabled or key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > SEEN_FUNCTIONS:
            del self._seen[next(iter(self._seen))]
        names = installed_modules(blob) - self.preload - self.unsafe
        if not names:
            return
        with self._lock:
            self.preload |= names
            template = self.template
        if template is not None:
            template.preload(names)

    def start(self, env: dict[str, str]) -> None:
        """Have a template for workers with environment ``env`` boot in the background
        (if there is none yet): the next `fork` for them need not wait for its start."""
        if self.enabled:
            self._template_for(env, True)

    def fork(self, env: dict[str, str], cwd: str | None, fds, want_template: bool,
             wait: float = 0.0):  # fmt: skip
        """A `ForkedProcess` for a worker with environment ``env``, or None (then the
        caller starts an interpreter). ``wait``: seconds to wait for a template that is
        still booting (one started now, with ``want_template``, included)."""
        if not self.enabled:
            return None
        template = self._template_for(env, want_template, wait)
        if template is None:
            return None
        return template.fork(cwd, fds)

    def order(self, env: dict[str, str], cwd: str | None, fds) -> PendingFork | None:
        """Ask the template for ``env`` for a worker, ahead of need, without waiting
        (`Template.order`); None if no template for ``env`` is up (none is started)."""
        if not self.enabled:
            return None
        template = self._template_for(env, False)
        return None if template is None else template.order(cwd, fds)

    def _template_for(self, env: dict[str, str], start: bool, wait: float = 0.0) -> Template | None:
        old = None
        with self._lock:
            template = self.template
            if not start and template is not None and template.env != env and not template.dead:
                return None  # kept for the workers it was made for
            if template is not None and (template.dead or template.env != env):
                old, template = template, None  # gone, or made for other workers
                self.template = None
                self.failed += old.dead
                self.unsafe |= old.refused
                self.preload -= old.refused
            if template is None and start and self.failed < MAX_FAILURES:
                try:
                    template = self.template = Template(env, tuple(sorted(self.preload)))
                except OSError:
                    template = None
        if old is not None:
            old.close(wait=0)
            _reap_later(old)
            with self._lock:
                self._retired = [t for t in self._retired if t.proc.poll() is None]
                self._retired.append(old)
        if template is None:
            return None
        return template if template.wait_usable(wait) else None

    def close(self, wait: bool = True) -> None:
        with self._lock:
            template, self.template = self.template, None
            retired, self._retired = self._retired, []
        if template is not None:  # (not waited for at exit: it ends with us anyway)
            template.close(wait=1.0 if wait else 0)
        for old in retired if wait else ():  # their forks are stopped by now
            old.close(wait=1.0)


#: Functions whose modules `Launcher.note_function` remembers having looked at.
SEEN_FUNCTIONS = 64
#: Pickled functions larger than this are not searched for modules (time).
SCAN_BYTES = 1 << 20


def installed_modules(blob) -> set[str]:
    """Top-level names of the installed third-party modules a pickled function
    refers to, among those loaded here: never the standard library (the template may
    import those anyway), ``__main__`` or the caller's own modules (files next to the
    notebook, editable installs: they are user code, outside site-packages)."""
    if len(blob) > SCAN_BYTES:
        return set()
    from ipyparmap.wire.serialize import preload_modules

    # the modules the pickle imports (its GLOBAL opcodes), not every string in it: a
    # function mentioning "IPython" in a string must not have the template import it
    return {name for name in preload_modules(bytes(blob)) if _installed(name)}


def _installed(name: str) -> bool:
    if not name.isidentifier() or name in sys.stdlib_module_names:
        return False
    if name in ("__main__", "ipyparmap", "cloudpickle"):
        return False
    module = sys.modules.get(name)
    where = getattr(module, "__file__", None) if module is not None else None
    if not where:
        return False
    return os.path.realpath(where).startswith(installed_roots())


def _reap_later(template: Template) -> None:
    """Wait for a stopped template in the background, so it does not stay a zombie: it
    exits once the workers it forked have (see `_linger`), or at once if it died."""
    reaper = threading.Thread(
        target=template.close, args=(None,), name="ipyparmap-template-reaper", daemon=True
    )
    try:
        reaper.start()
    except RuntimeError:  # the interpreter is shutting down: it ends with us anyway
        pass
