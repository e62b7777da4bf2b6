"""Where ipyparmap differs from the standard library on purpose (tests/stdlib).

Each test of CPython's suites named here is skipped with its reason (docs/from-multiprocessing.md
lists the same differences for users); every other test must pass
(tests/test_stdlib_suites.py). Keys are ``Class.test_name`` of CPython's suites.
"""

from __future__ import annotations

_PRIVATE = "reads a private attribute of the standard library's implementation ({})"
_SCRIPT = (
    "runs the standard library's own executor in a fresh interpreter (its script imports "
    "concurrent.futures by name); tests/test_futures_conformance.py covers ipyparmap's at exit"
)

#: CPython's Lib/test/_test_multiprocessing.py (``processes`` tests, spawn).
MULTIPROCESSING = {
    "_TestPool.test_make_pool": _PRIVATE.format("Pool._pool, the worker processes"),
    "_TestProcess.test_parent_process": (
        "a Process's worker exits when the process that started it dies (no orphans after "
        "a kernel restart); the standard library's grandchild outlives its parent"
    ),
}

#: CPython's Lib/test/test_concurrent_futures.py (process pool, spawn).
FUTURES = {
    "ProcessPoolExecutorTest.test_killed_child": (
        "a killed worker fails only the futures it held (per-task crash isolation); the "
        "standard library breaks the whole pool"
    ),
    "ProcessPoolShutdownTest.test_cancel_futures": (
        "shutdown(cancel_futures=True) cancels every future no worker has started; the "
        "standard library cannot cancel the max_workers + 1 calls already queued"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": _PRIVATE.format(
        "_executor_manager_thread"
    ),
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_max_tasks_per_child": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_saturation": _PRIVATE.format("_processes"),
    "ProcessPoolShutdownTest.test_processes_terminate": _PRIVATE.format("_processes"),
    "ProcessPoolShutdownTest.test_interpreter_shutdown": _SCRIPT,
    "ProcessPoolShutdownTest.test_hang_gh83386": _SCRIPT,
}


def skip_differences(cls: type, differences: dict[str, str]) -> None:
    """Skip, with its reason, each test of ``cls`` (a class built from CPython's) that
    ``differences`` names by one of ``cls``'s base classes' names."""
    import unittest

    bases = {base.__name__ for base in cls.__mro__}
    for key, reason in differences.items():
        base, _, name = key.partition(".")
        if base in bases and hasattr(cls, name):
            setattr(cls, name, unittest.skip(f"ipyparmap differs on purpose: {reason}")(
                getattr(cls, name)
            ))  # fmt: skip
