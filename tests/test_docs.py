"""The documentation builds without warnings and agrees with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.fail("mkdocs is not installed (pip install -e '.[test]')")
    out = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    for page in (
        "index.html",
        "api/index.html",
        "magics/index.html",
        "how-it-works/index.html",
        "troubleshooting/index.html",
        "benchmarks/index.html",
        "notebooks/getting-started/index.html",
    ):
        assert (site / page).exists(), page
    api = (site / "api" / "index.html").read_text()
    assert "parmap_async" in api and "max_memory" in api  # generated from the docstrings


def test_magic_reference_lists_every_option():
    from ipyparmap.magics.commands import Parmap

    text = (ROOT / "docs" / "magics.md").read_text()
    for action in Parmap.parmap.parser._actions:
        for option in action.option_strings:
            assert f"`{option}" in text, option


def test_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
