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
            assert not conn.laddr and not conn.raddr, (proc.pid, conn)  # no path to connect to


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
