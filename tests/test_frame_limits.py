"""Issue 14: a frame never carries more descriptors than its receiver takes
(`channel.MAX_FDS`), and a receiver tells a malformed frame from a dead peer."""

from __future__ import annotations

import array
import os
import socket

import pytest
from conftest import open_fds

import ipyparmap as pm
from ipyparmap.wire import channel, codec, serialize, sharedmem
from ipyparmap.wire.channel import MAX_FDS, Channel, FrameError

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd"),
]


# -- receivers: Channel.recv ---------------------------------------------------------------
def test_a_frame_with_too_many_descriptors_raises_frame_error_and_the_next_reads_fine():
    left, right = socket.socketpair()
    receiver = Channel(right)
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 4)]
    try:
        fds = open_fds()
        payload = b"chunk 7" * 1000
        header = channel._HEADER.pack(len(payload), len(spare))
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", spare))]
        left.sendmsg([header, payload], rights)  # by hand: Channel.send refuses this
        Channel(left).send(b"next", (spare[0],))
        with pytest.raises(FrameError, match=f"announced {len(spare)} descriptors, {MAX_FDS} ar"):
            receiver.recv()
        assert open_fds() == fds  # what came of it is closed
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
        fds = open_fds()
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
        assert open_fds() == fds
        sender.close()
        with pytest.raises(EOFError):
            receiver.recv()
    finally:
        for fd in spare:
            os.close(fd)
        right.close()


# -- senders: Packed.share ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_two_hundred_small_shared_arrays_in_one_run():
    pytest.importorskip("numpy")
    items = [pm.shared_array(10_000) for _ in range(200)]
    for i, a in enumerate(items):
        a[:] = i
    assert pm.parmap(_total, items, workers=2) == [10_000.0 * i for i in range(200)]


@pytest.mark.timeout(60)
def test_two_hundred_arrays_with_an_arena_each_still_run(monkeypatch):
    pytest.importorskip("numpy")
    monkeypatch.setattr(sharedmem, "ARENA_BYTES", 1)  # every array gets its own arena
    items = [pm.shared_array(10_000) for _ in range(200)]
    for i, a in enumerate(items):
        a[:] = i
    assert pm.parmap(_total, items, workers=2) == [10_000.0 * i for i in range(200)]


def _total(a):
    return float(a.sum())


def test_share_never_builds_a_frame_with_more_descriptors_than_the_limit(monkeypatch):
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(sharedmem, "ARENA_BYTES", 1)  # every array gets its own arena
    arrays = [pm.shared_array(10_000 + 1_000 * i) for i in range(3 * MAX_FDS)]
    for i, a in enumerate(arrays):
        a[:] = i
    plain = np.full(20_000, -1.0)  # needs the copy memfd anyway
    cases = {"limit": arrays[:MAX_FDS], "limit + 1": arrays[: MAX_FDS + 1], "3 x limit": arrays,
             "with a plain array": [*arrays, plain]}  # fmt: skip
    for case, items in cases.items():
        packed = serialize.dumps_packed(items)
        fds, table = packed.share()
        assert len(fds) <= MAX_FDS, case
        if case == "limit":
            assert packed.fd is None and len(fds) == MAX_FDS  # nothing copied
        else:  # the copy memfd goes first; the biggest arrays (the last) keep their own
            assert fds[0] == packed.fd
            shared = len(items) - (items[-1] is plain)
            own = [index != 0 for index, _, _ in table[:shared]]
            assert own == [False] * (shared - MAX_FDS + 1) + [True] * (MAX_FDS - 1), case
        got = serialize.loads_shared(packed.blob, [os.dup(fd) for fd in fds], table)
        assert all((g == x).all() for g, x in zip(got, items, strict=True))
        packed.close()
        del got
    with pytest.raises(ValueError, match=f"at most {MAX_FDS} descriptors"):
        Channel(socket.socket()).send(b"x", tuple(range(MAX_FDS + 1)))


# -- a real worker, sent a malformed frame ---------------------------------------------------
def test_a_worker_answers_a_malformed_frame():
    """A chunk whose descriptors were lost on the way is refused as a load failure of
    that chunk; the worker lives on and runs the next chunk (it used to exit, taken for
    a dead parent, and the parent respawned it forever)."""
    from ipyparmap.process.pool import spawn_worker, worker_env
    from ipyparmap.wire import messages as M
    from ipyparmap.wire.codec import dumps
    from ipyparmap.wire.serialize import dumps_message, pickle_function

    worker = spawn_worker(worker_env())
    payload = pickle_function(abs)
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 4)]
    try:
        worker.send_function(payload)
        bad = dumps_message(M.pack(M.RunChunk(1, payload.key, dumps([-1]), False, 1, None)))
        header = channel._HEADER.pack(len(bad), len(spare))
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", spare))]
        worker.conn.sock.sendmsg([header, bad], rights)  # by hand: Channel.send refuses it
        worker.send(M.pack(M.RunChunk(2, payload.key, dumps([-2]), False, 1, None)))
        replies = []
        while len(replies) < 3:  # Ready, the refusal, the second chunk's results
            assert worker.conn.poll(30), f"no answer from the worker; got {replies}"
            replies.append(worker.recv()[0])
        ready, refused, results = replies
        assert type(ready) is M.Ready
        assert type(refused) is M.LoadFailed and refused.what == "chunk" and refused.ident == 1
        assert "FrameError" in refused.info[1] and "descriptors" in refused.info[2]
        assert type(results) is M.ResultBatch and results.chunk_id == 2
        assert codec.loads(results.values) == [2]
    finally:
        for fd in spare:
            os.close(fd)
        payload.close()
        worker.kill()
        worker.reap(5)
        worker.close()
