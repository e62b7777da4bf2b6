"""The layering of DESIGN.md section 3, a light `import ipyparmap`, and lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_python

HEAVY = ("IPython", "ipywidgets", "psutil", "numpy", "distributed", "cloudpickle")


def test_import_is_light():
    out = run_python(f"import sys, ipyparmap; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_worker_side_imports_no_engine_or_ipython():
    out = run_python(
        "import sys, ipyparmap.worker; "
        "print(sorted(m for m in sys.modules if m.startswith(('ipyparmap.', 'IPython'))))"
    )
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)  # a list literal printed by our own child
    assert not {"ipyparmap.pool", "ipyparmap.runner", "ipyparmap.api"} & set(loaded), loaded
    assert not [m for m in loaded if m.startswith("IPython")]


def _tool(name: str) -> str:
    """A console script of the test extras: beside this interpreter, else on PATH."""
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return path


def test_layers_contract_holds():
    out = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_ruff_clean():
    out = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
