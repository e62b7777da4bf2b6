"""The wheel and the sdist carry the license and the PEP 561 marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

from conftest import ROOT


def test_wheel_and_sdist_ship_license_and_py_typed(tmp_path):
    # Build as pip's build isolation would (the venv's own setuptools may be older than
    # pyproject's build requirement): the backend in a folder of its own, a copy of the
    # source tree (builds write build/ and *.egg-info into it).
    backend = tmp_path / "backend"
    requires = "setuptools>=77"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location",
         "--disable-pip-version-check", "--target", str(backend), requires],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    source = tmp_path / "src"
    shutil.copytree(ROOT / "ipyparmap", source / "ipyparmap",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "dist"
    built = []
    for hook in ("build_wheel", "build_sdist"):  # one process each, as pip and build do
        build = subprocess.run(
            [sys.executable, "-c",
             f"import sys; from setuptools import build_meta; "
             f"print('BUILT', build_meta.{hook}(sys.argv[1]))", str(out)],
            cwd=source, env={"PYTHONPATH": str(backend), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert build.returncode == 0, build.stdout + build.stderr
        built.append(build.stdout.split("BUILT ")[-1].strip())
    wheel_name, sdist_name = built

    with zipfile.ZipFile(out / wheel_name) as wheel:
        names = set(wheel.namelist())
        assert "ipyparmap/py.typed" in names
        assert "ipyparmap/system.py" in names
        license_text = wheel.read("ipyparmap-0.1.0.dist-info/licenses/LICENSE").decode()
        metadata = wheel.read("ipyparmap-0.1.0.dist-info/METADATA").decode()
    assert license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the ipyparmap authors" in license_text
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata

    with tarfile.open(out / sdist_name) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "ipyparmap/py.typed", "pyproject.toml"} <= names
