"""Where CPython's own test modules come from (tests/stdlib).

The interpreter's own ``test`` package when it has the module (pyenv builds keep
``_test_multiprocessing``), else a folder named by ``IPYPARMAP_CPYTHON_TESTS`` that holds
a ``test`` folder: ``.ci/run`` extracts Debian's ``libpython3.11-testsuite`` there (it
has ``test_concurrent_futures``, which some builds leave out). Nothing of CPython's is
kept in this repository.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import types

ENV = "IPYPARMAP_CPYTHON_TESTS"


def load(name: str) -> types.ModuleType | None:
    """CPython's test module ``name`` (``"_test_multiprocessing"``,
    ``"test_concurrent_futures"``), or None when neither place has it."""
    try:
        if importlib.util.find_spec(f"test.{name}") is not None:
            return importlib.import_module(f"test.{name}")
    except ImportError:
        pass
    folder = os.environ.get(ENV)
    path = folder and os.path.join(folder, "test", f"{name}.py")
    if not path or not os.path.exists(path):
        return None
    # Imported as a top-level module from a folder of its own, so that worker
    # processes, which get this process's sys.path, import it by the same name; its
    # own imports (test.support...) come from the running interpreter.
    here = os.path.join(tempfile.gettempdir(), f"ipyparmap-cpython-tests-{os.getuid()}")
    os.makedirs(here, exist_ok=True)
    shutil.copyfile(path, os.path.join(here, f"{name}.py"))
    if here not in sys.path:
        sys.path.append(here)
    return importlib.import_module(name)
