"""The local pool listens on no network port and creates nothing others can open."""

from __future__ import annotations

import os
import stat

import helpers
import psutil
import pytest
from conftest import children, workers

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


def _processes():
    pm.parmap(helpers.sleepy, [(i, 0.01) for i in range(4)], workers=2)
    assert len(workers()) == 2
    return [psutil.Process(), *children()]  # the template too, where there is one


def test_no_tcp_or_udp_socket_anywhere():
    for proc in _processes():
        inet = proc.net_connections(kind="inet")
        assert inet == [], (proc.pid, inet)


def test_unix_sockets_are_unnamed_socketpairs():
    for proc in _processes():
        for conn in proc.net_connections(kind="unix"):
            if proc.pid == os.getpid() and conn.laddr == _handover_address():
                continue  # checked below
            assert not conn.laddr and not conn.raddr, (proc.pid, conn)  # no path to connect to


def _handover_address():
    from ipyparmap.dropins import handover

    return handover._server.address if handover._server is not None else None


def test_the_drop_ins_descriptor_listener_is_private_and_authenticated():
    # The one named socket: the drop-ins hand queues and locks passed as arguments to
    # workers through it (dropins/handover.py). Only its owner can reach it, and a
    # client must know the secret.
    from ipyparmap.dropins import handover

    server = handover._the_server()
    folder = os.stat(os.path.dirname(server.address))
    assert folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) == 0o700
    assert len(server.secret) >= 32
    assert any(c.laddr == server.address for c in psutil.Process().net_connections("unix"))


def test_workers_hold_no_named_file_others_could_open():
    for proc in _processes()[1:]:
        for fd in os.listdir(f"/proc/{proc.pid}/fd"):
            if int(fd) <= 2:  # stdin/out/err are inherited from the caller, not ours
                continue
            target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
            if target.startswith("/") and not target.startswith(("/dev/null", "/dev/pts")):
                if target.startswith("/memfd:"):
                    continue  # anonymous shared memory: no name in any filesystem
                mode = os.stat(f"/proc/{proc.pid}/fd/{fd}").st_mode
                assert not stat.S_ISREG(mode) or "/site-packages/" in target, target
