"""Run one of CPython's swapped-in suites and write what happened as JSON.

``python run.py MODULE OUT.json [TEST_ID_PREFIX ...]``: every test's outcome (``ok``,
``skip``, ``fail``, ``error``) with its message and duration. tests/test_stdlib_suites.py
compares them with expected.py.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import unittest


class Recorder(unittest.TestResult):
    def __init__(self, out):
        super().__init__()
        self.out = out
        self.outcomes: dict[str, dict] = {}

    def startTest(self, test):
        super().startTest(test)
        self._started = time.monotonic()

    def _note(self, test, outcome: str, detail: str = "") -> None:
        spent = time.monotonic() - getattr(self, "_started", time.monotonic())
        self.outcomes[test.id()] = {"outcome": outcome, "detail": detail, "seconds": spent}
        print(f"{outcome:5} {spent:6.2f}s {test.id()}", file=self.out, flush=True)

    def addSuccess(self, test):
        self._note(test, "ok")

    def addSkip(self, test, reason):
        self._note(test, "skip", reason)

    def addFailure(self, test, err):
        self._note(test, "fail", "".join(traceback.format_exception(*err))[-3000:])

    def addError(self, test, err):
        self._note(test, "error", "".join(traceback.format_exception(*err))[-3000:])

    def addExpectedFailure(self, test, err):
        self._note(test, "ok", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._note(test, "fail", "unexpected success")


def main(argv: list[str]) -> int:
    module_name, out_path, *prefixes = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    module = importlib.import_module(module_name)
    tests = unittest.defaultTestLoader.loadTestsFromModule(module)
    if prefixes:
        tests = unittest.TestSuite(t for t in _flatten(tests) if t.id().startswith(tuple(prefixes)))
    result = Recorder(sys.stderr)
    tests.run(result)
    with open(out_path, "w") as f:
        json.dump(result.outcomes, f, indent=1)
    return 0


def _flatten(tests):
    for test in tests:
        if isinstance(test, unittest.TestSuite):
            yield from _flatten(test)
        else:
            yield test


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
