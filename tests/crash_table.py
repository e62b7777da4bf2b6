"""The crash table (after loky's): every phase an item goes through x every way a process
can misbehave there, with what the local engine reports for the bad item.

Rows: ``(phase, kind, bad item, failure kind, exception type, message)``. The parent's
own pickling phase has only the kinds that leave the parent alive (an os._exit or
segfault there would end the caller itself). tests/test_engines.py runs the table on
every engine, with each engine's documented differences.
"""

from __future__ import annotations

from helpers import BadToPickle, BadToUnpickle

import ipyparmap as pm

CRASHED = ("crashed", pm.WorkerCrashed)

CRASH_TABLE = [
    # phase: pickling the call (in the parent)
    (
        "call-pickle",
        "raise",
        BadToPickle("raise"),
        "error",
        pm.SerializationError,
        "cannot pickle item 2",
    ),
    ("call-pickle", "exit", BadToPickle("exit"), "error", pm.SerializationError, "SystemExit"),
    # phase: unpickling the call in the worker
    (
        "worker-unpickle",
        "raise",
        BadToUnpickle("raise"),
        "error",
        pm.SerializationError,
        "item 2 could not be unpickled in the worker: ValueError: boom",
    ),
    (
        "worker-unpickle",
        "exit",
        BadToUnpickle("exit"),
        "error",
        pm.SerializationError,
        "SystemExit",
    ),
    ("worker-unpickle", "_exit", BadToUnpickle("_exit"), *CRASHED, "exited with code 3"),
    ("worker-unpickle", "sigkill", BadToUnpickle("sigkill"), *CRASHED, "SIGKILL"),
    ("worker-unpickle", "segfault", BadToUnpickle("segfault"), *CRASHED, "SIGSEGV"),
    # phase: running the function
    ("run", "raise", ("run", "raise"), "error", ValueError, "boom from die()"),
    ("run", "exit", ("run", "exit"), "error", SystemExit, "3"),
    ("run", "_exit", ("run", "_exit"), *CRASHED, "exited with code 3"),
    ("run", "sigkill", ("run", "sigkill"), *CRASHED, "SIGKILL"),
    ("run", "segfault", ("run", "segfault"), *CRASHED, "SIGSEGV"),
    # phase: pickling the result in the worker
    (
        "result-pickle",
        "raise",
        ("result-pickle", "raise"),
        "error",
        pm.SerializationError,
        "cannot be pickled to send it back",
    ),
    (
        "result-pickle",
        "exit",
        ("result-pickle", "exit"),
        "error",
        pm.SerializationError,
        "SystemExit",
    ),
    ("result-pickle", "_exit", ("result-pickle", "_exit"), *CRASHED, "exited with code 3"),
    ("result-pickle", "sigkill", ("result-pickle", "sigkill"), *CRASHED, "SIGKILL"),
    ("result-pickle", "segfault", ("result-pickle", "segfault"), *CRASHED, "SIGSEGV"),
    # phase: unpickling the result in the parent
    (
        "result-unpickle",
        "raise",
        ("result-unpickle", "raise"),
        "error",
        pm.SerializationError,
        "could not be unpickled here",
    ),
    (
        "result-unpickle",
        "exit",
        ("result-unpickle", "exit"),
        "error",
        pm.SerializationError,
        "SystemExit",
    ),
]
IDS = [f"{phase}-{kind}" for phase, kind, *_ in CRASH_TABLE]
