"""Issue 14: a frame never carries more descriptors than its receiver takes
(`channel.MAX_FDS`), and a receiver tells a malformed frame from a dead peer."""

from __future__ import annotations

import array
import os
import socket

import pytest

from ipyparmap.wire import channel
from ipyparmap.wire.channel import MAX_FDS, Channel, FrameError

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd"),
]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- receivers: Channel.recv ---------------------------------------------------------------
def test_a_frame_with_too_many_descriptors_raises_frame_error_and_the_next_reads_fine():
    left, right = socket.socketpair()
    receiver = Channel(right)
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 4)]
    try:
        fds = _open_fds()
        payload = b"chunk 7" * 1000
        header = channel._HEADER.pack(len(payload), len(spare))
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", spare))]
        left.sendmsg([header, payload], rights)  # by hand: Channel.send refuses this
        Channel(left).send(b"next", (spare[0],))
        with pytest.raises(FrameError, match=f"announced {len(spare)} descriptors, {MAX_FDS} ar"):
            receiver.recv()
        assert _open_fds() == fds  # what came of it is closed
        payload, got = receiver.recv()  # the stream is in sync
        assert payload == b"next" and len(got) == 1
        os.close(got[0])
    finally:
        for fd in spare:
            os.close(fd)
        left.close()
        right.close()


def _frame_error_of(receiver: Channel) -> FrameError:
    with pytest.raises(FrameError) as info:
        receiver.recv()
    return info.value


def test_frame_errors_keep_the_stream_in_sync_and_eof_stays_eof():
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right)
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 1)]
    try:
        fds = _open_fds()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", spare))]
        left.sendmsg([channel._HEADER.pack(5, len(spare)), b"first"], rights)
        left.sendall(channel._HEADER.pack(6, 2) + b"second")  # announces 2, carries none
        sender.send(b"third", (spare[0],))
        first = _frame_error_of(receiver)
        assert (first.payload, first.expected, first.received) == (b"first", MAX_FDS + 1, MAX_FDS)
        assert "cut at the limit" in str(first)
        second = _frame_error_of(receiver)
        assert (second.payload, second.expected, second.received) == (b"second", 2, 0)
        assert isinstance(second, OSError) and not isinstance(second, EOFError)
        payload, got = receiver.recv()
        assert payload == b"third" and len(got) == 1
        os.close(got[0])
        assert _open_fds() == fds
        sender.close()
        with pytest.raises(EOFError):
            receiver.recv()
    finally:
        for fd in spare:
            os.close(fd)
        right.close()
