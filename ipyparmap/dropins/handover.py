"""Standard-library queues, locks and pipes as arguments of drop-in workers (layer: api).

The standard library lets a ``Queue``, ``Lock``, ``Event``, ``Value``, ``Array``,
``Barrier`` or ``Pipe`` connection be pickled only while it spawns a child
(``multiprocessing.context.get_spawning_popen()`` is set): semaphores then travel by
name, pipes and shared-memory arenas as file descriptors the child inherits. ipyparmap's
workers are not ``multiprocessing`` children, so `pack` does the same with a stand-in for
the spawning ``Popen``: it pickles (cloudpickle, plus ``multiprocessing``'s own
reducers) while "spawning", keeps a duplicate of every descriptor the objects hand over,
and returns a `Parcel`. A worker opens the parcel (`Parcel.open`): it fetches those
descriptors from this process over a private, authenticated Unix socket
(``multiprocessing.reduction.send_handle``), then unpickles.

A parcel can be opened any number of times while its owner holds it (each ``Pool``
worker opens the same ``initargs``); `release` closes its descriptors. Imports only the
standard library at module level: a worker imports this module when it unpickles a
parcel.
"""

from __future__ import annotations

import io
import os
import pickle
import secrets
import threading
from collections import ChainMap
from typing import Any, ClassVar

_local = threading.local()  # worker side: the descriptors of the parcel being opened


class _Spawning:
    """What ``multiprocessing.context.get_spawning_popen()`` returns while we pickle."""

    def __init__(self):
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(os.dup(fd))
        return len(self.fds) - 1

    def DupFd(self, index: int) -> _HandedFd:
        return _HandedFd(index)


class _HandedFd:
    """A handed-over descriptor, by its position in the parcel (``reduction.DupFd``)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_HandedFd, (self.index,))

    def detach(self) -> int:
        fds = getattr(_local, "fds", None)
        if fds is None or fds[self.index] is None:
            raise RuntimeError("a handed-over descriptor can be unpickled only once")
        fd, fds[self.index] = fds[self.index], None
        return fd


class Parcel:
    """Pickled arguments and the descriptors they need (see the module's docs)."""

    __slots__ = ("address", "blob", "count", "key", "secret")

    def __init__(self, blob: bytes, count: int, address=None, key=None, secret=None):
        self.blob, self.count, self.address, self.key, self.secret = (
            blob, count, address, key, secret,
        )  # fmt: skip

    def __getstate__(self):
        return (self.blob, self.count, self.address, self.key, self.secret)

    def __setstate__(self, state):
        self.blob, self.count, self.address, self.key, self.secret = state

    def open(self) -> Any:
        """Unpickle the arguments here (a worker), with their descriptors."""
        fds: list = _fetch(self) if self.count else []
        _local.fds = fds
        try:
            return pickle.loads(self.blob)
        finally:
            _local.fds = None
            for fd in fds:
                if fd is not None:
                    os.close(fd)


def _fetch(parcel: Parcel) -> list:
    from multiprocessing import reduction
    from multiprocessing.connection import Client

    with Client(parcel.address, family="AF_UNIX", authkey=parcel.secret) as conn:
        conn.send(parcel.key)
        count = conn.recv()
        if count is None:
            raise RuntimeError(
                "the arguments' queues, locks or pipes are gone: the Pool or Process "
                "that passed them was closed"
            )
        return [reduction.recv_handle(conn) for _ in range(count)]


# ---------------------------------------------------------------------- parent side
class _Server:
    """Hands the parcels' descriptors to workers that ask (a daemon thread accepts, a
    short-lived one serves each client)."""

    def __init__(self):
        from multiprocessing.connection import Listener

        self.secret = secrets.token_bytes(32)
        # No authkey here: Listener.accept() would run the handshake itself, in the one
        # serving thread, where a client that stalls in it (a stopped worker) would hold
        # up every other. Each client is authenticated in a thread of its own instead.
        self.listener = Listener(family="AF_UNIX")
        self.address = self.listener.address
        self.parcels: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True, name="ipyparmap-handover").start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return  # closed
            try:
                threading.Thread(
                    target=self._answer, args=(conn,), daemon=True,
                    name="ipyparmap-handover-client",
                ).start()  # fmt: skip
            except RuntimeError:  # the interpreter is shutting down
                conn.close()
                return

    def _answer(self, conn) -> None:
        """Authenticate one client (both ways, as ``Listener(authkey=...)`` does), then
        send the descriptors of the parcel it names."""
        from multiprocessing import AuthenticationError, reduction
        from multiprocessing.connection import answer_challenge, deliver_challenge

        try:
            with conn:
                deliver_challenge(conn, self.secret)
                answer_challenge(conn, self.secret)
                if not conn.poll(10):  # authenticated, but silent
                    return
                key = conn.recv()
                with self.lock:
                    fds = self.parcels.get(key)
                    if fds is None:
                        conn.send(None)
                        return
                    conn.send(len(fds))
                    for fd in fds:
                        reduction.send_handle(conn, fd, None)
        except (OSError, EOFError, AuthenticationError, pickle.UnpicklingError):
            return

    def add(self, fds: list[int]) -> str:
        key = secrets.token_hex(16)
        with self.lock:
            self.parcels[key] = fds
        return key

    def remove(self, key: str) -> None:
        with self.lock:
            fds = self.parcels.pop(key, ())
        for fd in fds:
            os.close(fd)


_server: _Server | None = None
_server_lock = threading.Lock()


def _forget_server() -> None:
    """In a forked child: the server thread stayed in the parent; start our own when
    needed (the parent's listener is left alone: closing it would unlink its socket)."""
    global _server, _server_lock
    _server, _server_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_server)


def _the_server() -> _Server:
    global _server
    with _server_lock:
        if _server is None:
            _server = _Server()
        return _server


def _pickler(file) -> pickle.Pickler:
    """cloudpickle (notebook functions by value, keeping their file names) plus
    ``multiprocessing``'s reducers (connections, arenas, shared ctypes:
    ``ForkingPickler.register``)."""
    from multiprocessing import reduction

    from ipyparmap.wire.serialize import function_pickler

    forking = reduction.ForkingPickler(io.BytesIO()).dispatch_table
    base = function_pickler()

    class Pickler(base):
        dispatch_table: ClassVar = ChainMap(base.dispatch_table, forking)

    return Pickler(file, protocol=pickle.HIGHEST_PROTOCOL)


_FORK_HINT = (
    "ipyparmap's workers are spawned: create queues, locks and shared values with "
    "ipyparmap.Queue(), ipyparmap.Lock()... or multiprocessing.get_context('spawn')"
)


def pack(obj: Any) -> Parcel:
    """Pickle ``obj`` as ``multiprocessing`` does for a spawned child."""
    from multiprocessing import context

    spawning = _Spawning()
    file = io.BytesIO()
    previous = context.get_spawning_popen()
    context.set_spawning_popen(spawning)
    try:
        _pickler(file).dump(obj)
    except BaseException as exc:
        for fd in spawning.fds:
            os.close(fd)
        if isinstance(exc, RuntimeError) and "fork context" in str(exc):
            exc.add_note(_FORK_HINT)
        raise
    finally:
        context.set_spawning_popen(previous)
    if not spawning.fds:
        return Parcel(file.getvalue(), 0)
    server = _the_server()
    key = server.add(spawning.fds)
    return Parcel(file.getvalue(), len(spawning.fds), server.address, key, server.secret)


def release(parcel: Any) -> None:
    """Close the descriptors ``parcel`` holds (no worker can open it afterwards)."""
    if isinstance(parcel, Parcel) and parcel.key is not None and _server is not None:
        _server.remove(parcel.key)
