"""The portable (macOS) paths of the process layer, run on Linux by masking Linux-only calls.

``IPYPARMAP_MASK=linux`` runs the whole suite on those paths (``.ci/run`` does, after the
normal run); the tests here pin each fallback in both modes, in-process by patching
``system.MASKED`` or in a child interpreter started with the variable set.
"""

from __future__ import annotations

import mmap
import os
import select
import signal
import stat
import sys
import textwrap

import pytest
from conftest import run_python, wait_for

from ipyparmap import system
from ipyparmap.process import pool, resources, worker
from ipyparmap.wire import sharedmem

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _mask(monkeypatch, *features: str) -> None:
    monkeypatch.setattr(system, "MASKED", frozenset(features))


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


# -- the switch ----------------------------------------------------------------------------
def test_mask_names_features_or_linux_for_all():
    assert system.parse_mask(None) == frozenset()
    assert system.parse_mask("") == frozenset()
    assert system.parse_mask(" memfd, PIDFD ,") == {"memfd", "pidfd"}
    assert system.parse_mask("linux") == set(system.FEATURES)
    with pytest.raises(ValueError, match=r"unknown feature\(s\) \['memfdd'\]"):
        system.parse_mask("memfdd")  # a typo must not silently test the Linux paths


def test_masked_features_are_reported_absent(monkeypatch):
    _mask(monkeypatch, *system.FEATURES)
    checks = (system.has_memfd, system.has_pidfd, system.has_proc, system.has_affinity)
    assert not any(check() for check in (*checks, system.has_cgroup))
    assert "IPYPARMAP_MASK=memfd,pidfd,proc,affinity,cgroup" in system.describe()
    _mask(monkeypatch, "proc")
    assert not system.has_cgroup()  # the quota is read through /proc


def test_workers_inherit_the_mask():
    out = run_python(
        """
        import ipyparmap as pm
        from ipyparmap import system

        def masked(_):
            from ipyparmap import system
            return sorted(system.MASKED)

        print(sorted(system.MASKED), pm.parmap(masked, range(2), workers=2)[0])
        """,
        env={system.MASK_ENV: "memfd,proc"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['memfd', 'proc'] ['memfd', 'proc']"


def test_rusage_peak_is_converted_to_kib_on_macos():
    assert system.maxrss_kib(300 * 1024, platform="darwin") == 300  # macOS: bytes
    assert system.maxrss_kib(300, platform="linux") == 300  # Linux: KiB already


# -- memfd: an unlinked temporary file instead ------------------------------------------------
@linux
def test_anonymous_file_without_memfd_is_an_unlinked_private_file(monkeypatch, tmp_path):
    _mask(monkeypatch, "memfd")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    fd = sharedmem.anonymous_file("ipyparmap-test", 10_000)
    try:
        assert os.listdir(tmp_path) == []  # no name left behind, not even for a moment after
        info = os.fstat(fd)
        assert stat.S_ISREG(info.st_mode) and info.st_nlink == 0
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_size == 10_000
        assert os.readlink(f"/proc/self/fd/{fd}").endswith(" (deleted)")
        assert not os.get_inheritable(fd)
        writer, reader = mmap.mmap(fd, 10_000), mmap.mmap(fd, 10_000)  # shared: one memory
        writer[9_999] = 7
        assert reader[9_999] == 7
        writer.close()
        reader.close()
    finally:
        os.close(fd)


@linux
@pytest.mark.parametrize("masked", [(), ("memfd",)], ids=["memfd", "tempfile"])
def test_anonymous_file_is_closed_when_sizing_it_fails(monkeypatch, masked):
    if not masked and not system.has_memfd():
        pytest.skip("no memfd here")
    _mask(monkeypatch, *masked)

    def no_space(fd, size):
        raise OSError(28, "No space left on device")

    before = _open_fds()
    monkeypatch.setattr(os, "ftruncate", no_space)
    with pytest.raises(OSError, match="No space left"):
        sharedmem.anonymous_file("ipyparmap-test", 1 << 30)
    monkeypatch.undo()
    assert _open_fds() <= before


@linux
def test_a_run_without_memfd_names_nothing_in_the_temporary_folder(tmp_path):
    out = run_python(
        """
        import os, numpy as np, ipyparmap as pm
        from ipyparmap.process.pool import default_pool

        shared = pm.shared_array((100_000,), dtype=np.float64)
        shared[:] = 1.0
        arrays = [np.full(50_000, float(i)) for i in range(8)]
        res = pm.parmap(lambda a: float(a.sum()), [*arrays, shared], workers=2)
        assert list(res) == [50_000.0 * i for i in range(8)] + [100_000.0], list(res)
        worker = default_pool().workers()[0][0]
        links = [os.readlink(f"/proc/{worker.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{worker.pid}/fd")]
        print([link for link in links if "ipyparmap-" in link])
        print(os.listdir(os.environ["TMPDIR"]))
        """,
        env={system.MASK_ENV: "memfd", "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    board, leftovers = out.stdout.splitlines()[:2]
    assert f"{tmp_path}/ipyparmap-board-" in board and "(deleted)" in board  # the fallback ran
    assert "/memfd:" not in board
    assert leftovers == "[]"


# -- pidfd: the lifeline is the death sentinel ------------------------------------------------
def _spawn(monkeypatch, *masked):
    _mask(monkeypatch, *masked)
    env = pool.worker_env({system.MASK_ENV: ",".join(masked)})
    return pool.spawn_worker(env)


def test_without_pidfd_the_lifeline_sees_the_worker_die(monkeypatch):
    handle = _spawn(monkeypatch, "pidfd")
    try:
        assert handle.sentinel == handle.lifeline.fileno() and not handle._owns_sentinel
        assert select.select([handle.sentinel], [], [], 0)[0] == []  # alive: not readable
        os.kill(handle.pid, signal.SIGKILL)
        assert select.select([handle.sentinel], [], [], 10)[0] == [handle.sentinel]
        assert handle.reap(5) == -signal.SIGKILL
    finally:
        handle.kill()
        handle.reap(5)
        handle.close()


def test_closing_a_handle_closes_the_lifeline_sentinel_once(monkeypatch):
    handle = _spawn(monkeypatch, "pidfd")
    handle.kill()
    handle.reap(5)
    sentinel = handle.sentinel
    handle.close()
    with pytest.raises(OSError):
        os.fstat(sentinel)  # closed...
    reused = os.open(os.devnull, os.O_RDONLY)  # ...so this number may well be reused
    try:
        handle.close()  # again: must not close someone else's descriptor
        os.fstat(reused)
    finally:
        os.close(reused)


@pytest.mark.skipif(not system.has_pidfd(), reason="no pidfd here (or masked)")
def test_with_pidfd_the_sentinel_is_its_own_descriptor(monkeypatch):
    handle = _spawn(monkeypatch)
    try:
        assert handle.sentinel != handle.lifeline.fileno() and handle._owns_sentinel
    finally:
        handle.kill()
        handle.reap(5)
        handle.close()


@pytest.mark.parametrize("mask", ["", "pidfd"], ids=["pidfd", "lifeline"])
def test_a_worker_death_is_seen_while_a_process_it_forked_lives_on(tmp_path, mask):
    # Without pidfd, a forked child that kept the worker's lifeline hid the worker's
    # death until that child exited: the run waited for it (here 30 s; forever for a
    # daemon). Forked children now close the lifeline.
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
        import os, time, ipyparmap as pm

        def fork_and_die(x):
            if x == 1:
                if os.fork() == 0:
                    quiet = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(quiet, 1)  # else the test waits for the end of our stdout
                    os.dup2(quiet, 2)
                    with open({str(pid_file)!r}, "w") as f:
                        f.write(str(os.getpid()))
                    time.sleep(30)
                    os._exit(0)
                os._exit(3)
            return x

        res = pm.parmap(fork_and_die, range(3), workers=1, chunksize=1, errors="collect")
        print([getattr(r, "kind", r) for r in res])
    """
    try:
        out = run_python(code, env={system.MASK_ENV: mask}, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[0, 'crashed', 2]"
        grandchild = int(wait_for(lambda: pid_file.exists() and pid_file.read_text()))
        os.kill(grandchild, 0)  # still alive: the run did not wait for it
    finally:
        if pid_file.exists() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- /proc: no current RSS from the worker; the parent measures it -------------------------
def test_without_proc_a_worker_reports_its_peak_only(monkeypatch):
    _mask(monkeypatch, "proc")
    peak, current = worker._memory_kb(fresh=True)
    assert peak and peak > 1000  # KiB: an interpreter is well over 1 MB
    assert current is None


# The parent holds 300 MB when it spawns the worker: on Linux getrusage's peak of the
# worker then starts at 300 MB (the kernel counts the parent's memory up to exec).
_BIG_PARENT = """
    import sys
    sys.path.insert(0, {tests!r})
    import ipyparmap as pm, helpers

    ballast = bytearray(300 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touched: resident
"""


@pytest.mark.parametrize("mask", ["", "proc"], ids=["proc", "no-proc"])
def test_max_memory_recycles_the_worker_that_grew_past_it(mask):
    # Without /proc the worker could not tell its current RSS, so max_memory never
    # recycled; its peak would not do either (see above). The parent measures it.
    code = (
        _BIG_PARENT.format(tests=os.path.dirname(__file__))
        + """
    items = [(i, 200 if i == 1 else 0) for i in range(4)]
    # the item that grows must end before a sample can stop it (the grace is 0.25 s;
    # filling 200 MB took longer than that once on a busy CI machine): this is about
    # the recycle after it
    from ipyparmap.engine import local
    local.MEMORY_LIMIT_GRACE_SECONDS = 10.0
    res = pm.parmap(helpers.hoard, items, workers=1, chunksize=1, max_memory="150MB")
    pids = [pid for _, pid in res]
    print(pids[1] == pids[0], pids[2] != pids[1], pids[3] == pids[2], res.stats.recycled)
    """
    )
    out = run_python(code, env={system.MASK_ENV: mask})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "True True True 1"


@linux
def test_a_workers_peak_memory_is_its_own_not_its_parents():
    code = (
        _BIG_PARENT.format(tests=os.path.dirname(__file__))
        + """
    res = pm.parmap(helpers.square, range(4), workers=1)
    print(res.stats.peak_rss // 2**20)
    """
    )
    out = run_python(code, env={system.MASK_ENV: ""})
    assert out.returncode == 0, out.stderr
    assert 0 < int(out.stdout.split()[0]) < 200  # MB: a worker, not the 300 MB parent


# -- affinity and cgroup: the plain CPU count ---------------------------------------------
def test_cpu_count_without_affinity_or_cgroup_is_the_machine_count(monkeypatch):
    _mask(monkeypatch, "affinity", "cgroup")
    monkeypatch.setattr(resources, "_cgroup_limit", 1)  # a quota it must not consult
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resources.cpu_count() == (os.cpu_count() or 1)


# -- what the masked run cannot show: macOS's default limit of 256 descriptors ----------------
@linux
def test_a_run_fits_in_macos_default_descriptor_limit():
    out = run_python(
        textwrap.dedent(
            """
            import os, resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
            import numpy as np, ipyparmap as pm

            arrays = [np.full(20_000, float(i)) for i in range(64)]
            for _ in range(3):
                res = pm.parmap(lambda a: float(a[0]), arrays, workers=16)
                assert list(res) == [float(i) for i in range(64)]
            print(len(os.listdir("/proc/self/fd")))
            """
        ),
        env={system.MASK_ENV: "linux"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[0]) < 128  # 2 per worker, and nothing piling up
