"""The layering of the package tree (pyproject.toml, docs/how-it-works.md), a light `import ipyparmap`, and lint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_python

HEAVY = ("IPython", "ipywidgets", "psutil", "numpy", "pandas", "distributed", "cloudpickle")


def test_import_is_light():
    out = run_python(f"import sys, ipyparmap; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


#: What a script's first parmap used to load without needing it (W7: each costs the
#: caller's process memory, up to ~1 MB for psutil, in the middle of its first call;
#: sysconfig's build configuration ~0.25 MB).
FIRST_CALL_SPARED = ("multiprocessing", "psutil", "html", "sysconfig")


def test_a_scripts_first_call_loads_no_multiprocessing_psutil_or_html():
    """Workers learn our multiprocessing authkey only once we have one; their memory is
    read from /proc; HTML is escaped only for a notebook's views; site-packages are
    named by ``site``, not by ``sysconfig``. The call lasts past
    the engine's first memory sample of its workers (every 0.5 s)."""
    out = run_python(f"""
        import sys, time
        import ipyparmap as pm

        def nap(x):
            time.sleep(0.4)
            return x

        assert list(pm.parmap(nap, range(6), workers=2, progress=False)) == list(range(6))
        print([m for m in {FIRST_CALL_SPARED!r} if m in sys.modules])
    """)
    assert out.returncode == 0, out.stderr
    from ipyparmap import system

    # without /proc (macOS, IPYPARMAP_MASK=proc), workers' memory comes from psutil
    expected = [] if system.has_proc() else ["psutil"]
    assert out.stdout.strip() == repr(expected)


def test_worker_side_imports_no_engine_or_ipython():
    out = run_python(
        "import sys, ipyparmap.process.worker; "
        "print(sorted(m for m in sys.modules if m.startswith(('ipyparmap.', 'IPython'))))"
    )
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)  # a list literal printed by our own child
    assert not {"ipyparmap.process.pool", "ipyparmap.engine.run", "ipyparmap.api"} & set(loaded), (
        loaded
    )
    assert not [m for m in loaded if m.startswith("IPython")]


# What a worker process may import, as a positive list: the wire (messages, framing,
# pickling, shared memory), the leaves, the capture of what items write and display,
# and the standard library plus cloudpickle.
WORKER_MAY_IMPORT = (
    "ipyparmap.wire",
    "ipyparmap.errors",
    "ipyparmap.options",
    "ipyparmap.system",
    "ipyparmap.importhooks",
    "ipyparmap.process.capture",
)
WORKER_EXTERNAL = {"cloudpickle"}


def _graph():
    grimp = pytest.importorskip("grimp")  # comes with import-linter
    return grimp.build_graph("ipyparmap", include_external_packages=True)


@pytest.mark.parametrize("module", ["ipyparmap.process.worker", "ipyparmap.process.template"])
def test_worker_imports_only_what_the_positive_rule_allows(module):
    """The worker, and the template process that forks workers (it imports what they
    need, and nothing of the parent's side: no engine, no IPython, no third party)."""
    graph = _graph()
    upstream = graph.find_upstream_modules(module)
    allowed = (*WORKER_MAY_IMPORT, "ipyparmap.process.worker")
    ours = {m for m in upstream if m.split(".")[0] == "ipyparmap"}
    outside = {m for m in ours if not any(m == a or m.startswith(a + ".") for a in allowed)}
    assert not outside, f"{module} imports {sorted(outside)}"
    external = {m.split(".")[0] for m in upstream} - {"ipyparmap"}
    extra = {m for m in external if m not in sys.stdlib_module_names} - WORKER_EXTERNAL
    assert not extra, f"{module} imports third-party {sorted(extra)}"


def test_every_module_is_in_the_layers_contract():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["name"] == "Layers of the package tree")
    named = {
        name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")
    }
    graph = _graph()
    modules = {m for m in graph.modules if m.startswith("ipyparmap.")}
    uncovered = {m for m in modules if not any(m == n or m.startswith(n + ".") for n in named)}
    # a package whose modules sit in different layers (views) is only a folder: its
    # __init__ must stay empty so that it belongs to no layer
    folders = {m for m in uncovered if any(n.startswith(m + ".") for n in named)}
    for folder in folders:
        init = ROOT / Path(*folder.split(".")) / "__init__.py"
        assert not init.read_text().strip(), f"{init} must stay empty"
    uncovered -= folders
    assert not uncovered, f"modules outside every layer: {sorted(uncovered)}"


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


def test_workers_import_this_very_package():
    """A worker's PYTHONPATH starts with the folder holding this ipyparmap (a source
    checkout or a worktree must not run an installed copy in its workers)."""
    import os

    import ipyparmap
    from ipyparmap.process.pool import worker_env

    first = worker_env()["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(first, "ipyparmap", "__init__.py").samefile(ipyparmap.__file__)


def test_the_architecture_page_names_every_module_and_layer():
    """docs/how-it-works.md is the architecture of record: its package tree lists every
    module, and its layers table every entry of the layers contract."""
    import tomllib

    page = (ROOT / "docs" / "how-it-works.md").read_text()
    tree = page.split("## The package tree", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "ipyparmap"
    for path in package.rglob("*.py"):
        if path.name != "__init__.py":
            assert f" {path.name} " in tree or f"── {path.name}" in tree, path
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["name"] == "Layers of the package tree")
    table = page.split("## Layers and import rules", 1)[1]
    for layer in layers["layers"]:
        for name in layer.replace(":", "|").split("|"):
            assert f"`{name.strip().removeprefix('ipyparmap.')}`" in table, name
