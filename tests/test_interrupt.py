"""Interrupts and parent death, with real child interpreters driving real pools."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import helpers
import psutil
import pytest
from conftest import children, start_python, wait_for, workers

import ipyparmap as pm

TESTS = Path(__file__).resolve().parent

INTERRUPTED_SCRIPT = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
import helpers, psutil
import ipyparmap as pm
from ipyparmap.process.pool import default_pool

pm.parmap(helpers.square, range(4), workers=2, progress=False)  # warm the pool
items = [(i, "", 0.02) for i in range(10)]
items += [(10, TMP + "/busy-10", 60), (11, TMP + "/busy-11", 60)]
items += [(i, "", 60) for i in range(12, 20)]
try:
    pm.parmap(helpers.write_pid_and_sleep, items, workers=2, chunksize=1, progress=False)
except pm.Interrupted as exc:
    res = exc.results
    done = [v for v in res if not isinstance(v, pm.Failure)]
    print("INTERRUPTED", isinstance(exc, KeyboardInterrupt), len(res), done,
          sorted({{f.kind for f in res.failures}}), flush=True)
    alive = [p for p in psutil.Process().children(recursive=True)  # the template's forks too
             if p.status() != psutil.STATUS_ZOMBIE]
    template = default_pool().launcher.template
    print("CHILDREN", len([p for p in alive if template is None or p.pid != template.pid]),
          flush=True)
    print("AGAIN", list(pm.parmap(helpers.square, range(3), workers=2, progress=False)), flush=True)
"""


def _read_line_with(proc, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(prefix):
            return line.strip()
    proc.kill()
    raise AssertionError(f"no {prefix!r} line; stderr: {proc.stderr.read()}")


@pytest.mark.parametrize("how", ["process", "process-group"])
def test_sigint_stops_the_run_and_keeps_finished_results(tmp_path, how):
    proc = start_python(INTERRUPTED_SCRIPT.replace("TMP", repr(str(tmp_path))))
    try:
        busy = [tmp_path / "busy-10", tmp_path / "busy-11"]
        wait_for(
            lambda: all(p.exists() and p.read_text() for p in busy),
            timeout=30,
            what="items 10 and 11 to start",
        )
        worker_pids = [int(p.read_text()) for p in busy]
        sent = time.monotonic()
        if how == "process":
            os.kill(proc.pid, signal.SIGINT)
        else:  # what Jupyter's "interrupt kernel" does: the kernel's whole process group
            os.killpg(os.getpgid(proc.pid), signal.SIGINT)
        line = _read_line_with(proc, "INTERRUPTED", timeout=20)
        reaction = time.monotonic() - sent
        assert line == ("INTERRUPTED True 20 [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] ['cancelled']"), line
        assert reaction < 5, f"took {reaction:.1f} s to stop"  # 'about a second', generously
        for pid in worker_pids:  # the busy workers were killed
            wait_for(
                lambda pid=pid: (
                    not psutil.pid_exists(pid)
                    or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
                ),
                timeout=5,
            )
        assert _read_line_with(proc, "CHILDREN", 10) == "CHILDREN 0"
        assert _read_line_with(proc, "AGAIN", 30) == "AGAIN [0, 1, 4]"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PARENT_SCRIPT = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
import helpers
import ipyparmap as pm
pids = sorted(set(pm.parmap(helpers.pid_of, range(8), workers=2, chunksize=1, progress=False)))
print("WORKERS", *pids, flush=True)
if BUSY:
    items = [(1, TMP + "/busy-1", 120), (2, TMP + "/busy-2", 120)]
    pm.parmap(helpers.write_pid_and_sleep, items, workers=2, chunksize=1, progress=False)
time.sleep(120)
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_workers_exit_when_the_parent_is_killed(tmp_path, state):
    code = PARENT_SCRIPT.replace("BUSY", str(state == "busy")).replace("TMP", repr(str(tmp_path)))
    proc = start_python(code)
    try:
        line = _read_line_with(proc, "WORKERS", 30)
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2
        if state == "busy":  # both workers are inside a long item
            busy = [tmp_path / "busy-1", tmp_path / "busy-2"]
            wait_for(lambda: all(p.exists() and p.read_text() for p in busy), timeout=30)
            assert sorted(int(p.read_text()) for p in busy) == pids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        def gone():
            return all(
                not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
                for p in pids
            )

        wait_for(gone, timeout=5, what="orphaned workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.usefixtures("no_leaks")
def test_workers_ignore_sigint_sent_to_them(tmp_path):
    pid_file = tmp_path / "w.pid"
    import threading

    def poke():
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
        os.kill(int(pid_file.read_text()), signal.SIGINT)

    thread = threading.Thread(target=poke)
    thread.start()
    res = pm.parmap(helpers.write_pid_and_sleep, [(1, str(pid_file), 0.5), (2, "", 0)], workers=2)
    thread.join(10)
    assert res == [1, 2]
    assert res.stats.restarts == 0


@pytest.mark.usefixtures("no_leaks")
def test_shutdown_leaves_no_process_behind():
    pm.parmap(helpers.square, range(10), workers=2)
    pids = {c.pid for c in workers()}
    assert len(pids) == 2
    pm.shutdown()
    assert children() == []
    assert not any(psutil.pid_exists(p) for p in pids)
