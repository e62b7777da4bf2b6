"""Machine resources: usable CPUs, process memory, killing process trees (layer: process).

CPU counting and a process's memory use only the standard library (``sched_getaffinity``,
the cgroup files, ``/proc/PID/statm``), so the common path never imports psutil; psutil
is imported on first use by the memory functions where there is no ``/proc``.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

from ipyparmap import system

#: Thread-pool variables of BLAS/OpenMP libraries, limited in workers so N workers
#: with M threads each do not oversubscribe the CPUs.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_count() -> int:
    """The number of CPUs this process may use: affinity mask and cgroup quota, >= 1."""
    try:
        if not system.has_affinity():
            raise OSError("no affinity masks")
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    quota = _cgroup_limit_cached() if system.has_cgroup() else None
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


_NOT_READ = object()
_cgroup_limit: object = _NOT_READ


def _cgroup_limit_cached() -> int | None:
    """The cgroup quota, read once per process (a handful of file reads, ~0.2 ms, that
    every parmap call would otherwise pay; quotas do not change under a running
    process in practice). The affinity mask is re-read every time: it is one syscall."""
    global _cgroup_limit
    if _cgroup_limit is _NOT_READ:
        _cgroup_limit = cgroup_cpu_limit()
    return _cgroup_limit  # type: ignore[return-value]


def cgroup_cpu_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> int | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``).

    Returns ``None`` when there is no quota or it cannot be read. A fractional quota
    rounds up (1.5 CPUs -> 2), as a quota of 1.5 still lets two workers make progress.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            for directory in _self_and_parents(Path(root), rel):
                limits.append(_read_cpu_max(directory / "cpu.max"))
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu,cpuacct", "cpu"):
                for directory in _self_and_parents(Path(root) / mount, rel):
                    limits.append(_read_cfs(directory))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _self_and_parents(base: Path, rel: str):
    """base/rel, then each parent up to base (a quota on an ancestor applies too)."""
    parts = [p for p in rel.split("/") if p]
    for depth in range(len(parts), -1, -1):
        yield base.joinpath(*parts[:depth])


def _read_cpu_max(path: Path) -> int | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return _quota_cpus(int(quota), int(period))


def _read_cfs(directory: Path) -> int | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota < 0 else _quota_cpus(quota, period)


def _quota_cpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def max_workers(cpus: int) -> int:
    """The most workers one run may ask for: generous for I/O-bound work, never absurd."""
    return max(64, 16 * cpus)


def resolve_workers(requested: int | None, cpus: int | None = None) -> int:
    """Turn the ``workers`` option into a count, refusing absurd numbers."""
    cpus = cpu_count() if cpus is None else cpus
    if requested is None:
        return cpus
    limit = max_workers(cpus)
    if requested > limit:
        raise ValueError(
            f"workers={requested} is far more than the {cpus} usable CPUs "
            f"(at most {limit} workers per run)"
        )
    return requested


def thread_limits(workers: int, cpus: int | None = None) -> dict[str, str]:
    """Environment for workers: BLAS/OpenMP threads = CPUs per worker (>= 1).

    Variables the user already set are left alone.
    """
    cpus = cpu_count() if cpus is None else cpus
    per_worker = str(max(1, cpus // max(1, workers)))
    return {name: per_worker for name in THREAD_ENV_VARS if name not in os.environ}


def signal_name(returncode: int | None) -> str | None:
    """``-9`` -> ``"SIGKILL"``; None for a normal exit code."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def describe_exit(returncode: int | None) -> str:
    """A short human description of how a worker process ended."""
    name = signal_name(returncode)
    if name == "SIGKILL":
        return "killed by SIGKILL (likely out of memory, or killed from outside)"
    if name is not None:
        return f"killed by {name}"
    if returncode is None:
        return "lost (exit status unknown)"
    return f"exited with code {returncode}"


def kill_group(pid: int) -> None:
    """SIGKILL a worker and everything it started (workers lead their own process group)."""
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return
        except ProcessLookupError:
            return
        except (PermissionError, OSError, AttributeError):
            continue


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process in bytes (None if it is gone).

    Read from ``/proc/PID/statm`` where there is one (what psutil reads there too):
    importing psutil would cost a run's parent ~1 MB, in the middle of its first
    long call (the engine samples its workers' memory every few seconds)."""
    if system.has_proc():
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
