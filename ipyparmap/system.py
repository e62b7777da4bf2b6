"""What this operating system offers (layer L0: standard library only, no package imports).

The process layer uses a few Linux-only facilities and has a portable fallback for each:

=========  ===================================  ==========================================
feature    Linux                                elsewhere (macOS)
=========  ===================================  ==========================================
memfd      ``os.memfd_create``: memory with     an unlinked temporary file
           no name anywhere
pidfd      ``os.pidfd_open``: a descriptor      the lifeline socket, which reads EOF once
           readable once a worker exits         the worker is gone
proc       ``/proc/self/status``: a worker's    ``getrusage`` for the peak; the parent
           peak and current RSS                 measures the current RSS (psutil)
affinity   ``os.sched_getaffinity``             ``os.cpu_count()``
cgroup     the CPU quota (``/proc/self/cgroup`` no quota
           and ``/sys/fs/cgroup``)
=========  ===================================  ==========================================

Every call site asks this module rather than probing ``os`` or the file system itself,
so that the fallbacks can run on Linux too: the environment variable ``IPYPARMAP_MASK``
(for tests; read once, at import) hides features, ``IPYPARMAP_MASK=linux`` all of them
(``IPYPARMAP_MASK=memfd,pidfd`` some). Worker processes inherit the environment, so the
same features are hidden in them.
"""

from __future__ import annotations

import os
import sys

#: The environment variable that hides features (a test switch, never needed in use).
MASK_ENV = "IPYPARMAP_MASK"
#: Every feature that can be hidden; ``linux`` in the variable stands for all of them.
FEATURES = ("memfd", "pidfd", "proc", "affinity", "cgroup")


def parse_mask(value: str | None) -> frozenset[str]:
    """The features named by a value of ``IPYPARMAP_MASK`` (ValueError for a typo,
    which would otherwise silently test the Linux paths)."""
    names = {part.strip().lower() for part in (value or "").split(",")} - {""}
    if "linux" in names:
        names = (names - {"linux"}) | set(FEATURES)
    unknown = names - set(FEATURES)
    if unknown:
        raise ValueError(
            f"{MASK_ENV}={value!r}: unknown feature(s) {sorted(unknown)}; "
            f"known: {', '.join(FEATURES)} or linux (all of them)"
        )
    return frozenset(names)


#: The hidden features of this process.
MASKED: frozenset[str] = parse_mask(os.environ.get(MASK_ENV))


def has_memfd() -> bool:
    """Anonymous memory files (``os.memfd_create``, Linux)."""
    return "memfd" not in MASKED and hasattr(os, "memfd_create")


def has_pidfd() -> bool:
    """Process descriptors (``os.pidfd_open``, Linux >= 5.3; may still fail at run time)."""
    return "pidfd" not in MASKED and hasattr(os, "pidfd_open")


def has_proc() -> bool:
    """The Linux ``/proc`` file system (``/proc/self/statm`` and friends)."""
    return "proc" not in MASKED and sys.platform.startswith("linux")


def has_affinity() -> bool:
    """CPU affinity masks (``os.sched_getaffinity``)."""
    return "affinity" not in MASKED and hasattr(os, "sched_getaffinity")


def has_cgroup() -> bool:
    """Control-group CPU quotas (read through ``/proc/self/cgroup``)."""
    return "cgroup" not in MASKED and has_proc()


def maxrss_kib(ru_maxrss: int, platform: str = sys.platform) -> int:
    """``getrusage().ru_maxrss`` in KiB: Linux and the BSDs report KiB, macOS bytes."""
    return ru_maxrss // 1024 if platform == "darwin" else ru_maxrss


def describe() -> str:
    """One line for test headers and bug reports: the platform and what is hidden."""
    hidden = ",".join(f for f in FEATURES if f in MASKED)
    missing = [
        name
        for name, present in (
            ("memfd", has_memfd()),
            ("pidfd", has_pidfd()),
            ("proc", has_proc()),
            ("affinity", has_affinity()),
            ("cgroup", has_cgroup()),
        )
        if not present
    ]
    if hidden:
        return f"{sys.platform}, {MASK_ENV}={hidden}: portable paths for {', '.join(missing)}"
    if missing:
        return f"{sys.platform}, without {', '.join(missing)}"
    return f"{sys.platform}, every Linux facility in use"
