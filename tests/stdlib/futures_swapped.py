"""CPython's ``Lib/test/test_concurrent_futures.py`` with ipyparmap's executor swapped in.

The standard library's suite builds one test class per (tests, executor) pair; for each
class it builds on ``ProcessPoolSpawnMixin`` this module defines a subclass whose
``executor_type`` is ``ipyparmap.ProcessPoolExecutor`` (``mp_context`` stays the spawn
context the suite passes). Its ``ProcessPoolShutdownTest`` scripts that run in a fresh
interpreter import ``concurrent.futures`` by name, so they still test the standard
library's executor; tests/test_futures_conformance.py covers ipyparmap's at exit.

Run by tests/test_stdlib_suites.py (``python run.py futures_swapped``); the differences
ipyparmap makes on purpose are listed in expected.py.
"""

from __future__ import annotations

import unittest

from expected import FUTURES, skip_differences
from sources import load

import ipyparmap

suite = load("test_concurrent_futures")

if suite is not None:
    setUpModule = suite.setUpModule
    for _name, _cls in list(vars(suite).items()):
        if (
            isinstance(_cls, type)
            and issubclass(_cls, suite.ProcessPoolSpawnMixin)
            and issubclass(_cls, unittest.TestCase)
        ):
            globals()[_name] = _swapped = type(_name, (_cls,), {
                "executor_type": ipyparmap.ProcessPoolExecutor, "__module__": __name__,
            })  # fmt: skip
            skip_differences(_swapped, FUTURES)
