"""Shared fixtures: leak checks, child-script runner, bounded waits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers import by name


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def open_fds() -> int:
    """Descriptors this process has open (Linux: /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd"))


def children(of: int | None = None) -> list[psutil.Process]:
    """Our descendant processes (or those of process ``of``: a kernel), except
    multiprocessing's resource tracker and forkserver (started by libraries such as Dask,
    they live as long as the test process)."""
    try:
        procs = psutil.Process(of).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            if "multiprocessing" in " ".join(proc.cmdline()):
                continue
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except psutil.AccessDenied:
            pass
        found.append(proc)
    return found


def is_template(proc: psutil.Process, of: int | None = None) -> bool:
    """The template process (process/template.py): our child (or the child of process
    ``of``), running its main loop. (The workers it forks share its command line, but
    are its children, not ours.)"""
    try:
        return proc.ppid() == (of or os.getpid()) and any(
            "ipyparmap.process.template" in part for part in proc.cmdline()
        )
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def workers(of: int | None = None) -> list[psutil.Process]:
    """Our worker processes (or those of process ``of``: a kernel): `children` but the
    template process (a pool's workers are forks of its template where it can fork them:
    then its children, not ours)."""
    return [proc for proc in children(of) if not is_template(proc, of)]


@pytest.fixture
def no_leaks():
    """After the test, shut the pool down and require that no child process is left."""
    import ipyparmap as pm

    yield
    pm.shutdown()
    wait_for(lambda: not children(), timeout=10, what=f"child processes to exit: {children()}")


@pytest.fixture(scope="module")
def no_leaks_after_module():
    """`no_leaks` once after a module's tests (``pytestmark = usefixtures(...)``): its
    tests share the warm pool."""
    import ipyparmap as pm

    yield
    pm.shutdown()
    wait_for(lambda: not children(), timeout=10, what=f"child processes to exit: {children()}")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A real Jupyter kernel shared by one test module's tests (a module that needs
    setup code in it defines its own: tests/test_kernel_world.py)."""
    pytest.importorskip("ipykernel")
    pytest.importorskip("jupyter_client")
    from kernel_tools import running_kernel

    with running_kernel(tmp_path_factory.mktemp("kernel")) as k:
        yield k


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 one-thread worker processes (skips without distributed);
    a task that kills 2 workers is given up (KilledWorker)."""
    distributed = pytest.importorskip("distributed")
    import dask

    import ipyparmap as pm

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, worker_dashboard_address=None,
    ) as local:  # fmt: skip
        yield local
    pm.shutdown()  # no ipyparmap or Dask process may outlive the cluster
    wait_for(lambda: not children(), timeout=30, what="cluster processes to exit")


@pytest.fixture
def client(cluster):
    import distributed

    with distributed.Client(cluster) as c:
        try:
            c.wait_for_workers(2, timeout=15)  # a worker killed by an earlier test is back
        except TimeoutError:
            # distributed 2026.8 sometimes never restarts a worker killed over and over
            # (it ended a CI run): scaling down drops the one that never came back (not
            # yet connected ones go first) and closes its nanny; scaling up starts a
            # fresh one.
            cluster.scale(1)
            wait_for(lambda: len(cluster.workers) == 1, timeout=10, what="the stuck nanny")
            cluster.scale(2)
            c.wait_for_workers(2, timeout=25)
        yield c


def run_python(
    code: str,
    *,
    timeout: float = 60,
    cwd: Path | None = None,
    env: dict | None = None,
    script: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (as ``python -c`` or as a script file)."""
    code = textwrap.dedent(code)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    if script is not None:
        script.write_text(code)
        argv = [sys.executable, str(script)]
    else:
        argv = [sys.executable, "-c", code]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=full_env
    )


def start_python(code: str, *, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter, in its own process group, stdout piped."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=full_env,
        start_new_session=True,
    )


def notebook_function(source: str, name: str, **namespace):
    """Define a function the way a notebook cell does: in a ``__main__`` namespace.

    cloudpickle pickles such functions (and classes) by value, as it must for a real
    notebook, so this exercises the same path as a kernel.
    """
    ns = {"__name__": "__main__", **namespace}
    exec(compile(textwrap.dedent(source), f"<notebook-cell-{name}>", "exec"), ns)
    return ns[name]


# Notebooks under tests/ are fixtures for kernel and browser tests, not nbval tests.
collect_ignore_glob = ["*.ipynb", "**/*.ipynb"]


# -- the masked mode: IPYPARMAP_MASK=linux runs the portable (macOS) paths on Linux --------
# Tests that assert a Linux facility itself is used, by node id: the feature whose masking
# makes them moot, and why. Each has a portable counterpart in tests/test_portable.py.
LINUX_ONLY = {
    "tests/faults/test_cleanup.py::test_no_shared_memory_segment_is_ever_named": (
        "memfd",
        "asserts the board is a memfd (test_portable checks the unlinked temporary file)",
    ),
    "tests/faults/test_security.py::test_workers_hold_no_named_file_others_could_open": (
        "memfd",
        "accepts only memfd links (test_portable checks the temporary files are unlinked, 0600)",
    ),
    "tests/test_units.py::test_cpu_count_honours_affinity": (
        "affinity",
        "sets an affinity mask, which the portable path does not read",
    ),
}


def pytest_report_header(config):
    from ipyparmap import system

    return f"ipyparmap platform: {system.describe()}"


def pytest_collection_modifyitems(config, items):
    from ipyparmap import system

    # (looked up in the test modules, not among the items: -k or a node id may have
    # deselected a test that exists)
    modules = {
        item.nodeid.split("::")[0]: item.module for item in items if getattr(item, "module", None)
    }
    stale = [
        name
        for name in LINUX_ONLY
        if name.split("::")[0] in modules
        and not hasattr(modules[name.split("::")[0]], name.split("::")[1])
    ]
    if stale:  # a renamed test would silently run (and fail) in the masked mode
        raise pytest.UsageError(f"conftest.LINUX_ONLY names tests that do not exist: {stale}")
    for item in items:
        feature, reason = LINUX_ONLY.get(item.nodeid.split("[")[0], (None, ""))
        if feature in system.MASKED:
            item.add_marker(pytest.mark.skip(reason=f"Linux-only ({feature} masked): {reason}"))


@pytest.fixture
def copies(monkeypatch):
    """Bytes copied into fresh shared memory for sending, per call of write_buffers."""
    from ipyparmap.wire import sharedmem

    log = []
    original = sharedmem.write_buffers

    def write_buffers(buffers):
        log.append(sum(b.nbytes for b in buffers))
        return original(buffers)

    monkeypatch.setattr(sharedmem, "write_buffers", write_buffers)
    return log
