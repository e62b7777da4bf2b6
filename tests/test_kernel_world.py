"""In a real kernel (ipykernel through jupyter_client): warm workers see what the kernel
sees at each call (%cd, %env, sys.path, reloaded or edited modules), and %config
Parmap.* are the defaults of pm.parmap too."""

from __future__ import annotations

import pytest

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")
from kernel_tools import running_kernel

SETUP = (
    "%load_ext ipyparmap\n"
    "%config Parmap.workers = 2\n"
    "import os, sys, time, importlib\n"
    "import ipyparmap as pm\n"
    "HOME = os.getcwd()\n"
    "def where(_):\n"
    "    time.sleep(0.05)\n"
    "    with open('f.txt') as file:\n"
    "        return os.getcwd(), file.read(), os.getpid()\n"
    "pm.parmap(abs, [1, 2], progress=False)  # the pool is warm from here on\n"
)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with running_kernel(tmp_path_factory.mktemp("world"), setup=SETUP) as k:
        yield k


@pytest.fixture
def run(kernel):
    """Run a cell, require success, return its stdout (and restore the directory)."""

    def cell(code: str) -> str:
        reply = kernel.run(code)
        assert reply.status == "ok", reply.traceback
        return reply.stdout

    yield cell
    cell("os.chdir(HOME)")


def test_cd_and_chdir_reach_warm_workers_and_both_agree(run):
    run(
        "for name in ('data', 'other'):\n"
        "    os.makedirs(name, exist_ok=True)\n"
        "    open(f'{name}/f.txt', 'w').write(f'in {name}')\n"
        "open('f.txt', 'w').write('in home')\n"
    )
    assert "in home" in run("print(set(r[1] for r in pm.parmap(where, range(6), chunksize=1)))")
    run("%cd data")
    out = run(
        "res = pm.parmap(where, range(6), chunksize=1)\n"
        "print(sorted({(c == os.getcwd(), t) for c, t, _ in res}), len({p for *_, p in res}))"
    )
    assert out.strip().endswith("[(True, 'in data')] 2")  # both workers, one directory
    run("os.chdir('../other')")
    out = run("print({t for _, t, _ in pm.parmap(where, range(6), chunksize=1)})")
    assert out.strip() == "{'in other'}"


def test_env_magic_and_del_reach_warm_workers(run):
    # (not os.environ.get itself: a bound method pickles os.environ along)
    run("def getenv(name):\n    return os.environ.get(name)\n")
    get = "print(pm.parmap(getenv, ['PARMAP_TOKEN'] * 2))"
    assert run(get).strip() == "[None, None]"
    run("%env PARMAP_TOKEN=x1")
    assert run(get).strip() == "['x1', 'x1']"
    run("os.environ['PARMAP_TOKEN'] = 'x2'")
    assert run(get).strip() == "['x2', 'x2']"
    run("del os.environ['PARMAP_TOKEN']")
    assert run(get).strip() == "[None, None]"


def test_sys_path_insert_then_import_from_that_folder(run):
    run(
        "os.makedirs('src', exist_ok=True)\n"
        "open('src/pathmod.py', 'w').write('VALUE = 42\\n')\n"
        "def use_pathmod(_):\n"
        "    import pathmod\n"
        "    return pathmod.VALUE\n"
    )
    run("sys.path.insert(0, os.path.abspath('src'))")
    assert run("print(pm.parmap(use_pathmod, range(2)))").strip() == "[42, 42]"


def test_a_module_imported_in_the_body_follows_importlib_reload(run):
    run(
        "open('bodymod.py', 'w').write('def v():\\n    return 1\\n')\n"
        "importlib.invalidate_caches()\n"
        "import bodymod\n"
        "def use_bodymod(_):\n"
        "    import bodymod\n"
        "    return bodymod.v()\n"
    )
    assert run("print(pm.parmap(use_bodymod, range(2)))").strip() == "[1, 1]"
    run("open('bodymod.py', 'w').write('def v():\\n    return 222\\n')")
    run("importlib.reload(bodymod)")
    assert run("print(pm.parmap(use_bodymod, range(2)))").strip() == "[222, 222]"


def test_a_module_edited_but_not_reloaded_runs_the_kernels_version(run):
    run(
        "open('stalemod.py', 'w').write('def v():\\n    return \"loaded\"\\n')\n"
        "importlib.invalidate_caches()\n"
        "import stalemod\n"
        "def use_stalemod(_):\n"
        "    import stalemod\n"
        "    return stalemod.v()\n"
    )
    # edited in the next cell, before any call: the workers never imported it
    run("open('stalemod.py', 'w').write('def v():\\n    return \"edited on disk\"\\n')")
    assert run("print(pm.parmap(use_stalemod, range(2)))").strip() == "['loaded', 'loaded']"
    run("%parmap_pool restart")  # fresh workers too
    assert run("print(pm.parmap(use_stalemod, range(2)))").strip() == "['loaded', 'loaded']"
    run("importlib.reload(stalemod)")
    assert run("print(pm.parmap(use_stalemod, range(2)))").strip() == (
        "['edited on disk', 'edited on disk']"
    )


def test_config_defaults_reach_pm_parmap_and_explicit_arguments_win(kernel, run):
    run("def fails_on_one(x):\n    if x == 1:\n        raise ValueError('one')\n    return x\n")
    try:
        run("%config Parmap.workers = 1")
        assert run("print(pm.parmap(abs, range(4), progress=False).stats.workers)").strip() == "1"
        run('%config Parmap.errors = "collect"')
        out = run("res = pm.parmap(fails_on_one, range(3))\nprint(res[0], type(res[1]).__name__)")
        assert out.strip() == "0 Failure"
        reply = kernel.run("pm.parmap(fails_on_one, range(3), errors='raise')")
        assert reply.status == "error" and reply.error["ename"] == "TaskError"
        out = run("print([type(v).__name__ for v in pm.imap(fails_on_one, range(3))])")
        assert out.strip() == "['int', 'Failure', 'int']"
    finally:
        run("%config Parmap.errors = 'raise'")
        run("%config Parmap.workers = 2")
