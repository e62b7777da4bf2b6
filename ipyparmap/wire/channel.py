"""Messages over a socketpair, with file descriptors attached (layer: wire).

Why not ``multiprocessing.connection.Connection``: it cannot pass descriptors, and
receiving a large message costs it an extra copy (``BytesIO`` reassembly). A frame
here is a 12-byte header (payload length, descriptor count), sent with the descriptors
as SCM_RIGHTS ancillary data, then the payload, received straight into one buffer.

The descriptors carry shared memory (anonymous ``memfd`` files): large buffers of items,
results and function globals travel as a descriptor and a table of offsets, and the
receiver maps them instead of copying them through the socket (see wire/serialize.py).
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct

_HEADER = struct.Struct("!QI")  # payload bytes, descriptors
#: The most descriptors one frame carries, on both sides: `Channel.recv` takes no more,
#: `Channel.send` refuses more, and `serialize.Packed.share` builds no more (buffers past
#: it are copied into one memfd instead of travelling by their own descriptor).
MAX_FDS = 16


class FrameError(OSError):
    """A frame arrived whole but malformed: not the ``expected`` descriptors (too many
    for `MAX_FDS`, so the kernel cut them, or fewer than its header announced).

    The peer is alive and the stream is in sync: the next `Channel.recv` reads the next
    frame. The descriptors that did come are closed; ``payload`` is the frame's payload,
    read in full (the message can still be decoded, to tell its sender what went wrong).
    """

    def __init__(self, message: str, payload: bytearray | None = None, expected=0, received=0):
        super().__init__(message)
        self.payload, self.expected, self.received = payload, expected, received


class Channel:
    """One end of a socketpair that sends and receives whole frames."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, payload: bytes, fds: tuple[int, ...] = ()) -> None:
        """Send one frame. ValueError (and nothing sent) for more than `MAX_FDS`
        descriptors: the receiver could not take them."""
        if len(fds) > MAX_FDS:
            raise ValueError(f"a frame carries at most {MAX_FDS} descriptors, not {len(fds)}")
        header = _HEADER.pack(len(payload), len(fds))
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        # Header and payload in one system call (no copy); the descriptors go with the
        # first byte. A big payload may go out in parts: the rest follows.
        sent = self.sock.sendmsg([header, payload], ancillary)
        if sent < len(header):
            self.sock.sendall(header[sent:])
            sent = len(header)
        if sent - len(header) < len(payload):
            self.sock.sendall(memoryview(payload)[sent - len(header) :])

    def grow_send_buffer(self, size: int) -> int:
        """Ask for a send buffer of ``size`` bytes (the system may grant less); return
        how many bytes surely fit in it while the peer reads nothing."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass
        # Linux reports twice what it counts for data (the rest covers bookkeeping)
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2

    def recv(self) -> tuple[bytearray, list[int]]:
        """The next frame's payload and descriptors (ours to close).

        EOFError when the peer is gone (also in the middle of a frame). FrameError when
        the frame came whole but not with the descriptors its header announced: the
        frame is consumed, what came of it closed, and the channel stays usable.
        """
        header = bytearray()
        fds: list[int] = []
        truncated = False
        while len(header) < _HEADER.size:
            data, ancdata, flags, _addr = self.sock.recvmsg(
                _HEADER.size - len(header), socket.CMSG_SPACE(MAX_FDS * 4)
            )
            if not data:
                _close_all(fds)
                raise EOFError("the other end closed the channel")
            header += data
            truncated |= bool(flags & socket.MSG_CTRUNC)  # more than MAX_FDS came
            for level, kind, raw in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", raw[: len(raw) - len(raw) % 4]))
        size, expected = _HEADER.unpack(header)
        payload = bytearray(size)
        view = memoryview(payload)
        received = 0
        while received < size:
            count = self.sock.recv_into(view[received:])
            if count == 0:
                _close_all(fds)
                raise EOFError("the other end closed the channel mid-message")
            received += count
        if truncated or len(fds) != expected:
            _close_all(fds)
            cut = f" (cut at the limit of {MAX_FDS})" if truncated else ""
            raise FrameError(
                f"a frame announced {expected} descriptors, {len(fds)} arrived{cut}",
                payload, expected, len(fds),
            )  # fmt: skip
        return payload, fds

    def poll(self, timeout: float = 0.0) -> bool:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
