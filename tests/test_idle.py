"""Idle workers beyond the warm count (the usable CPUs) stop after a while."""

from __future__ import annotations

import helpers
import psutil
import pytest
from conftest import wait_for

import ipyparmap as pm
from ipyparmap.process import pool as pool_module
from ipyparmap.process.pool import Pool

pytestmark = pytest.mark.usefixtures("no_leaks")


def _idle(pool: Pool) -> list:
    return [w for w, state in pool.workers() if state == "idle"]


def test_surplus_idle_workers_stop_and_the_warm_ones_stay():
    pool = Pool(keep_warm=1, idle_seconds=0.3)
    try:
        workers = pool.acquire(3)
        pids = [w.pid for w in workers]
        pool.release(workers)
        wait_for(lambda: len(_idle(pool)) == 1, what="two surplus workers to stop")
        stopped = [pid for pid in pids if pid != _idle(pool)[0].pid]
        wait_for(lambda: not any(psutil.pid_exists(p) for p in stopped), what="them to exit")
        assert _idle(pool)[0].alive()
        kept = _idle(pool)[0].pid
        again = pool.acquire(1)  # the warm one serves the next call
        assert [w.pid for w in again] == [kept]
        pool.release(again)
    finally:
        pool.shutdown()


def test_the_default_pool_keeps_as_many_as_there_are_cpus():
    cpus = pm.cpu_count()
    pm.shutdown()
    pm.set_idle_timeout(0.3)
    try:
        pm.parmap(helpers.square, range(8), workers=cpus + 2, chunksize=1, progress=False)
        wait_for(
            lambda: len(_idle(pool_module.default_pool())) == cpus,
            what=f"the default pool to shrink back to {cpus} idle workers",
        )
        assert pm.parmap(helpers.square, [3], progress=False) == [9]  # still warm
    finally:
        pm.set_idle_timeout(60)


def test_no_timeout_keeps_every_idle_worker():
    pool = Pool(keep_warm=1, idle_seconds=None)
    try:
        pool.release(pool.acquire(2))
        assert len(_idle(pool)) == 2 and pool._reaper is None
    finally:
        pool.shutdown()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "60", True])
def test_set_idle_timeout_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="seconds must be a positive number or None"):
        pm.set_idle_timeout(bad)


def test_shutdown_ends_the_idle_watch_at_once():
    # A pool shut down while its watch sleeps (up to idle_seconds) used to leave the
    # thread behind: one per drop-in Pool/ProcessPoolExecutor (CPython's suites saw them).
    pool = Pool(keep_warm=1, idle_seconds=60)
    pool.release(pool.acquire(2))
    reaper = pool._reaper
    assert reaper is not None and reaper.is_alive()
    pool.shutdown()
    assert not reaper.is_alive()
