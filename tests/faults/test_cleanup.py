"""Nothing outlives its owner: interpreter exit, %unload_ext, kernel restart, crashes."""

from __future__ import annotations

import os
from pathlib import Path

import helpers
import psutil
import pytest
from conftest import children, run_python, wait_for, workers

import ipyparmap as pm

TESTS = Path(__file__).resolve().parents[1]


def _gone(pids) -> bool:
    return all(
        not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids
    )


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("busy", [False, True])
def test_interpreter_exit_stops_workers(tmp_path, busy):
    code = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import helpers, ipyparmap as pm
pids = sorted(set(pm.parmap(helpers.pid_of, range(6), workers=2, chunksize=1, progress=False)))
print("PIDS", *pids, flush=True)
if {busy}:  # a background run still going when the interpreter exits
    run = pm.parmap_async(helpers.sleepy, [(i, 60) for i in range(4)], workers=2)
"""
    before = _shm()
    out = run_python(code, timeout=60)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split("PIDS")[1].split()]
    wait_for(lambda: _gone(pids), timeout=5, what="workers to exit with the interpreter")
    assert _shm() - before == set()


def test_unload_ext_stops_workers():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    ip.run_cell_magic("parmap", "x in range(4) -w 2", "x")
    pids = [p.pid for p in workers()]
    assert len(pids) == 2
    ip.run_line_magic("unload_ext", "ipyparmap")
    wait_for(lambda: _gone(pids) and not children(), timeout=5)
    ip.run_line_magic("load_ext", "ipyparmap")  # and it comes back
    assert ip.run_cell_magic("parmap", "x in range(2)", "x") == [0, 1]
    pm.shutdown()


def test_kernel_restart_stops_workers(tmp_path):
    pytest.importorskip("ipykernel")
    from kernel_tools import Kernel

    kernel = Kernel(tmp_path)
    try:
        reply = kernel.run(
            "import os, ipyparmap as pm\n"
            "print(sorted(set(pm.parmap(lambda x: os.getpid(), range(8), workers=2, chunksize=1))))"
        )
        assert reply.status == "ok", reply.traceback
        pids = eval(reply.stdout)  # a list of ints printed by the kernel we started
        assert len(pids) == 2
        kernel.manager.restart_kernel(now=True)  # kills the kernel, as "Restart" does
        wait_for(lambda: _gone(pids), timeout=5, what="workers of the old kernel to exit")
    finally:
        kernel.close()


@pytest.mark.usefixtures("no_leaks")
def test_no_shared_memory_segment_is_ever_named():
    before = _shm()
    items = list(range(20))
    items[7] = ("run", "segfault")
    res = pm.parmap(helpers.act, items, workers=2, errors="collect")
    assert res[7].kind == "crashed"
    worker = workers()[0]
    fds = [fd for fd in os.listdir(f"/proc/{worker.pid}/fd") if int(fd) > 2]  # not stdio
    links = [os.readlink(f"/proc/{worker.pid}/fd/{fd}") for fd in fds]
    assert any(link.startswith("/memfd:ipyparmap-board") for link in links)  # anonymous
    assert not any(link.startswith(("/dev/shm", "/tmp")) for link in links), links
    pm.shutdown()
    assert _shm() - before == set()
