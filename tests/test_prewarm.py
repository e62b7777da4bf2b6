"""``%load_ext ipyparmap`` starts the pool after its cell; ``import ipyparmap`` starts
nothing; a shutdown always wins over a prewarm."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from conftest import children, wait_for, workers

import ipyparmap as pm
from ipyparmap.process import template as T
from ipyparmap.process.pool import Pool

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_import_ipyparmap_starts_no_process():
    code = (
        "import ipyparmap, psutil\nimport ipyparmap.api\nprint(len(psutil.Process().children()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def _pids(procs: list[psutil.Process]) -> list[int]:
    return [proc.pid for proc in procs]


def test_a_prewarmed_pool_serves_the_next_call_with_those_workers():
    pool = Pool()
    try:
        assert pool.prewarm(2) == 2
        assert pool.prewarm(2) == 0  # on their way already: nothing more
        started = wait_for(
            lambda: len(pool.workers()) == 2 and {w.pid for w, _ in pool.workers()},
            timeout=30, what="two prewarmed workers",
        )  # fmt: skip
        assert pool.prewarm(2) == 0  # up already: nothing more
        leased = pool.acquire(2)
        assert {w.pid for w in leased} == started  # no second pair spawned
        pool.release(leased)
    finally:
        pool.shutdown()


@pytest.mark.skipif(not T.available(), reason="the template needs fork and pidfds")
def test_prewarmed_workers_are_forks_of_the_template_and_a_call_waits_for_them():
    """%load_ext's workers share the template's pages like any other (issue 18): and a
    call right after the prewarm, before they are forked, takes them, starting none."""
    pool = Pool()
    try:
        assert pool.prewarm(2) == 2
        leased = pool.acquire(2)  # at once: the template is probably still booting
        assert len(leased) == 2
        template = pool.launcher.template
        assert template is not None
        assert {psutil.Process(w.pid).ppid() for w in leased} == {template.pid}
        pool.release(leased)
        assert len(pool.workers()) == 2  # none started besides
    finally:
        pool.shutdown()


def test_a_shutdown_during_a_prewarm_leaves_nothing():
    pool = Pool()
    assert pool.prewarm(2) == 2
    pool.shutdown()  # while the template boots, or while it forks
    assert pool.workers() == []
    wait_for(lambda: not children(), timeout=10, what="every process to exit")


def test_a_prewarm_after_shutdown_starts_nothing():
    pool = Pool()
    pool.shutdown()
    assert pool.prewarm(2) == 0
    assert children() == []
    since = pm.api.shutdowns()
    pm.shutdown()
    assert pm.api.prewarm(since) == 0  # asked for before a shutdown: void
    assert children() == []


# -- in a real kernel --------------------------------------------------------------------
pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")
from kernel_tools import running_kernel  # noqa: E402


def test_load_ext_boots_workers_that_the_first_run_uses(tmp_path):
    with running_kernel(tmp_path, setup="%load_ext ipyparmap\n%config Parmap.workers = 2") as k:
        prewarmed = wait_for(
            lambda: len(_pids(workers(k.pid))) == 2 and _pids(workers(k.pid)),
            timeout=30,
            what="two prewarmed workers",
        )
        reply = k.run(
            "import os\ndef pid(_):\n    return os.getpid()\n"
            "res = %parmap pid range(8)\nprint(sorted(set(res)))"
        )
        assert reply.status == "ok", reply.traceback
        used = set(eval(reply.stdout.strip()))
        assert used <= set(prewarmed), (used, prewarmed)
        assert sorted(_pids(workers(k.pid))) == sorted(prewarmed)  # none spawned besides
        # a shutdown right after stops them all
        reply = k.run("import ipyparmap as pm\npm.shutdown()")
        assert reply.status == "ok", reply.traceback
        wait_for(lambda: not _pids(workers(k.pid)), timeout=10, what="workers to exit")


def test_a_shutdown_or_prewarm_false_in_the_loading_cell_starts_nothing(tmp_path):
    setup = "%load_ext ipyparmap\nimport ipyparmap as pm\npm.shutdown()"
    with running_kernel(tmp_path, setup=setup) as k:
        # the prewarm runs when the loading cell ends, before the kernel goes idle
        assert _pids(workers(k.pid)) == []
        reply = k.run("%unload_ext ipyparmap")
        assert reply.status == "ok", reply.traceback
        reply = k.run("%load_ext ipyparmap\n%config Parmap.prewarm = False")
        assert reply.status == "ok", reply.traceback
        assert _pids(workers(k.pid)) == []
        reply = k.run("%parmap_pool")
        assert reply.status == "ok", reply.traceback
        assert _pids(workers(k.pid)) == []
