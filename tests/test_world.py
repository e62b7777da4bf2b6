"""Warm workers see the caller's world as it is at each call: working directory,
environment, sys.path, and the local modules in the versions the caller has loaded."""

from __future__ import annotations

import importlib
import os
import sys
import time

import pytest

import ipyparmap as pm
from ipyparmap.process import pool as P
from ipyparmap.wire import codec
from ipyparmap.wire import localmodules as L
from ipyparmap.wire import messages as M

pytestmark = pytest.mark.usefixtures("no_leaks")


def where(_):
    time.sleep(0.05)  # long enough for both workers to get items
    with open("f.txt") as file:
        return os.getcwd(), file.read(), os.getpid()


def env(name):
    return os.environ.get(name)


def sent_tags(monkeypatch) -> list:
    """The tags of the messages the pool's workers are sent from now on."""
    tags: list = []
    real = P.WorkerHandle.send

    def spy(self, message, fds=()):
        tags.append(message[0] if message[0] != M.World.TAG else M.unpack(message))
        return real(self, message, fds)

    monkeypatch.setattr(P.WorkerHandle, "send", spy)
    return tags


@pytest.fixture
def folders(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(f"in {name}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_chdir_reaches_warm_workers_and_both_agree(folders):
    os.chdir(folders / "a")
    first = pm.parmap(where, range(6), workers=2, chunksize=1, progress=False)
    os.chdir(folders / "b")
    second = pm.parmap(where, range(6), workers=2, chunksize=1, progress=False)
    assert {(cwd, text) for cwd, text, _ in first} == {(str(folders / "a"), "in a")}
    assert {(cwd, text) for cwd, text, _ in second} == {(str(folders / "b"), "in b")}
    assert len({pid for _, _, pid in second}) == 2  # two warm workers, one directory


def test_environment_changes_reach_warm_workers(monkeypatch):
    monkeypatch.delenv("PARMAP_TEST_VAR", raising=False)
    assert pm.parmap(env, ["PARMAP_TEST_VAR"] * 2, workers=2, progress=False) == [None, None]
    monkeypatch.setenv("PARMAP_TEST_VAR", "x=1 ü")
    assert pm.parmap(env, ["PARMAP_TEST_VAR"] * 2, workers=2, progress=False) == ["x=1 ü"] * 2
    monkeypatch.delenv("PARMAP_TEST_VAR")
    assert pm.parmap(env, ["PARMAP_TEST_VAR"] * 2, workers=2, progress=False) == [None, None]
    assert pm.parmap(env, [M.WORKER_ENV], progress=False) == ["1"]


def test_the_workers_own_variables_keep_the_pools_values(monkeypatch):
    from ipyparmap.process.resources import THREAD_ENV_VARS

    name = THREAD_ENV_VARS[0]  # the pool sets it for its workers when we have not
    monkeypatch.delenv(name, raising=False)
    pm.shutdown()
    pooled = pm.parmap(env, [name], workers=2, progress=False)[0]
    assert pooled is not None
    monkeypatch.setenv(name, "77")
    monkeypatch.setenv(M.WORKER_ENV, "")  # changed here: the workers keep their flag
    assert pm.parmap(env, [name, M.WORKER_ENV], workers=2, progress=False) == [pooled, "1"]


def test_nothing_is_sent_when_nothing_changed_and_only_the_change_when_it_did(monkeypatch):
    pm.parmap(abs, [1, 2], workers=2, progress=False)  # warm, and told everything
    tags = sent_tags(monkeypatch)
    pm.parmap(abs, [1, 2], workers=2, progress=False)
    assert tags and all(tag == M.RunChunk.TAG for tag in tags)
    tags.clear()
    monkeypatch.setenv("PARMAP_TEST_VAR", "2")
    pm.parmap(abs, [1, 2], workers=2, chunksize=1, progress=False)
    worlds = [tag for tag in tags if isinstance(tag, M.World)]
    assert len(worlds) == 2  # one per worker, once
    assert all(
        (w.cwd, w.env_set, w.env_unset, w.sys_path, w.modules)
        == (None, {"PARMAP_TEST_VAR": "2"}, (), None, {})
        for w in worlds
    )


def test_a_background_run_keeps_the_world_of_its_call(folders):
    os.chdir(folders / "a")
    run = pm.parmap_async(where, range(4), workers=2, chunksize=1, progress=False)
    os.chdir(folders / "b")
    assert {text for _, text, _ in run.result(timeout=60)} == {"in a"}


def test_sys_path_changes_reach_warm_workers(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "world_pathmod.py").write_text("VALUE = 'found'\n")

    def value(_):
        import world_pathmod

        return world_pathmod.VALUE

    pm.parmap(abs, [1, 2], workers=2, progress=False)  # warm, before the path changes
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    assert pm.parmap(value, range(2), workers=2, progress=False) == ["found", "found"]
    sys.modules.pop("world_pathmod", None)


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """A local module ``world_helper`` on sys.path, imported here; (path, write)."""
    path = tmp_path / "world_helper.py"

    def write(version: str, extra: str = "") -> None:
        path.write_text(f"{extra}\ndef version(x):\n    return ({version!r}, x)\n")
        L._files_due = float("-inf")  # the next call looks at the files at once

    write("v1")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import world_helper

    yield world_helper, write
    sys.modules.pop("world_helper", None)


def uses_helper(x):
    import world_helper  # inside the body: no global of the notebook names it

    return world_helper.version(x)


def test_a_module_imported_in_the_body_follows_a_reload(helper):
    module, write = helper
    assert pm.parmap(uses_helper, range(2), workers=2, progress=False) == [("v1", 0), ("v1", 1)]
    write("v2, reloaded")
    importlib.reload(module)
    assert pm.parmap(uses_helper, range(2), workers=2, progress=False) == [
        ("v2, reloaded", 0),
        ("v2, reloaded", 1),
    ]


def test_a_module_edited_but_not_reloaded_runs_as_the_caller_has_it(helper):
    module, write = helper
    pm.parmap(abs, [1, 2], workers=2, progress=False)  # the caller notes its modules
    write("v2 on disk only")
    # warm workers that never imported it, then fresh ones: the caller's version
    assert pm.parmap(uses_helper, range(2), workers=2, progress=False) == [("v1", 0), ("v1", 1)]
    pm.shutdown()
    assert pm.parmap(uses_helper, range(2), workers=2, progress=False) == [("v1", 0), ("v1", 1)]
    importlib.reload(module)  # now the caller has it: so do the workers
    assert pm.parmap(uses_helper, [0], progress=False) == [("v2 on disk only", 0)]


def test_a_module_the_caller_never_imported_comes_from_disk(tmp_path, monkeypatch):
    (tmp_path / "world_unseen.py").write_text("VALUE = 'disk'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def value(_):
        import world_unseen

        return world_unseen.VALUE

    assert pm.parmap(value, [0], progress=False) == ["disk"]
    assert "world_unseen" not in sys.modules


def test_a_module_that_cannot_be_sent_is_imported_from_its_file_with_a_warning(helper):
    module, write = helper
    write("v1", extra="import threading\nLOCK = threading.Lock()")
    importlib.reload(module)
    pm.parmap(abs, [1, 2], workers=2, progress=False)
    write("v2 on disk", extra="import threading\nLOCK = threading.Lock()")
    with pytest.warns(UserWarning, match="world_helper .* cannot be sent to the workers"):
        res = pm.parmap(uses_helper, [0], workers=1, progress=False)
    assert res == [("v2 on disk", 0)]  # the file's code, as the warning says


def test_bytecode_older_than_the_file_means_the_caller_has_older_code(tmp_path):
    import py_compile

    source = tmp_path / "m.py"
    source.write_text("X = 1\n")
    cached = tmp_path / "m.pyc"
    py_compile.compile(str(source), cfile=str(cached))

    class Spec:
        pass

    spec = Spec()
    spec.cached = str(cached)
    assert L._compiled_from(spec, L._file_stamp(str(source)))
    source.write_text("X = 22\n")  # another size
    assert not L._compiled_from(spec, L._file_stamp(str(source)))
    spec.cached = str(tmp_path / "missing.pyc")
    assert L._compiled_from(spec, L._file_stamp(str(source)))  # cannot tell: trusted


def test_the_table_is_the_same_object_while_nothing_changes():
    first = L.module_table(check_files=True)
    assert L.module_table() is first and L.module_table(check_files=True) is first
    assert P.caller_world() is P.caller_world()


def test_install_modules_drops_changed_versions_and_installs_copies():
    import types

    held: dict = {}
    stale = types.ModuleType("world_fake")
    sys.modules["world_fake"] = stale
    try:
        L.install_modules({"world_fake": 3}, None, held)
        assert "world_fake" not in sys.modules and held == {"world_fake": 3}
        copy = types.ModuleType("world_fake")
        copy.X = 5
        blob = codec.dumps({"world_fake": copy})
        L.install_modules({"world_fake": 4}, blob, held)
        assert sys.modules["world_fake"].X == 5 and held == {"world_fake": 4}
        L.install_modules({"world_fake": None}, None, held)
        assert "world_fake" not in sys.modules and held == {}
    finally:
        sys.modules.pop("world_fake", None)
