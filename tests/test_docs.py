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


def _generated_table(page: str) -> str:
    """The table between a page's "options table" markers."""
    text = (ROOT / "docs" / page).read_text()
    match = re.search(
        r"<!-- options table: .*? -->\n\n(.*?)\n<!-- end of the options table -->", text, re.S
    )
    assert match, f"docs/{page} lost its options-table markers"
    return match.group(1)


def test_api_reference_table_is_the_options_table():
    from ipyparmap.options import markdown_table

    assert _generated_table("api.md") == markdown_table(), (
        "docs/api.md's options table differs from ipyparmap.options.OPTIONS; paste "
        "ipyparmap.options.markdown_table() between its markers"
    )


def test_magic_reference_table_is_the_magics_flags():
    from ipyparmap.magics import flags
    from ipyparmap.magics.commands import Parmap

    assert _generated_table("magics.md") == flags.markdown_table(Parmap.parmap.parser), (
        "docs/magics.md's options table differs from the %%parmap flags; paste "
        "ipyparmap.magics.flags.markdown_table(Parmap.parmap.parser) between its markers"
    )


def test_readme_links_exist():
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_every_test_named_in_docs_and_comments_exists():
    """Docs and comments pin behaviour to tests by name (tests/x.py::test_y): a renamed
    or removed test must not leave a dangling reference."""
    pattern = re.compile(r"tests/[\w/]+\.py::\s*\w+")
    sources = [
        *(ROOT / "docs").glob("*.md"),
        ROOT / "README.md",
        *(ROOT / "ipyparmap").rglob("*.py"),
    ]
    missing = []
    for source in sources:
        for ref in pattern.findall(source.read_text()):
            path, name = (part.strip() for part in ref.split("::"))
            test_file = ROOT / path
            if not test_file.exists() or not re.search(rf"def {name}\b", test_file.read_text()):
                missing.append(f"{source.relative_to(ROOT)}: {ref}")
    assert not missing, missing
