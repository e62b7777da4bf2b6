"""Background runs: pm.parmap_async / pm.Run, and %%parmap --bg in a real kernel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import helpers
import pytest
from conftest import wait_for

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")

SLOW = [(i, 0.1) for i in range(20)]


def test_run_returns_at_once_and_finishes_in_the_background():
    run = pm.parmap_async(helpers.sleepy, SLOW, workers=2)
    assert isinstance(run, pm.Run)
    assert not run.done() and run.running()
    # the caller is free: a blocking map runs meanwhile, on its own workers
    assert pm.parmap(helpers.square, range(5), workers=1) == [0, 1, 4, 9, 16]
    partial = run.results
    assert len(partial) == 20
    assert all(v is pm.PENDING or v == i for i, v in enumerate(partial))
    assert run.result(timeout=60) == list(range(20))
    assert run.done() and not run.cancelled()
    assert run.progress.done == 20 and run.progress.total == 20
    assert "finished: 20/20 done" in repr(run)


def test_cancel_keeps_finished_results():
    run = pm.parmap_async(helpers.sleepy, SLOW, workers=2, chunksize=1)
    wait_for(lambda: run.progress.done >= 4, timeout=30, what="4 items done")
    assert run.cancel() is True
    with pytest.raises(pm.Cancelled) as info:
        run.result(timeout=30)
    assert isinstance(info.value, concurrent.futures.CancelledError)
    res = info.value.results
    assert len(res) == 20 and res[:4] == [0, 1, 2, 3]
    assert {f.kind for f in res.failures} == {"cancelled"}
    assert run.cancelled() and run.done()
    assert run.cancel() is False  # already over


def test_cancel_from_the_progress_model_like_the_panel_button():
    run = pm.parmap_async(helpers.sleepy, SLOW, workers=2, chunksize=1)
    wait_for(lambda: run.progress.cancel is not None and run.progress.done >= 2, timeout=30)
    run.progress.cancel()  # what the widget's Cancel button calls
    with pytest.raises(pm.Cancelled):
        run.result(timeout=30)
    assert run.progress.cancel is None  # nothing left to cancel


def test_done_callbacks_and_on_finish_get_the_results():
    seen = []
    finished = threading.Event()
    run = pm.parmap_async(helpers.square, range(10), on_finish=seen.append)
    run.add_done_callback(lambda r: finished.set())
    assert finished.wait(30)
    assert seen == [list(x * x for x in range(10))]
    assert run.result() == seen[0]


def test_failures_surface_through_result_and_exception():
    run = pm.parmap_async(helpers.fail_on, range(6))
    with pytest.raises(pm.TaskError):
        run.result(timeout=30)
    assert isinstance(run.exception(), pm.TaskError)
    assert isinstance(run.exception().results, pm.Results)


def test_await():
    async def main():
        return await pm.parmap_async(helpers.square, range(6))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16, 25]


def test_result_timeout_argument():
    run = pm.parmap_async(helpers.sleepy, [(0, 2)], workers=1)
    with pytest.raises(ValueError, match="timeout"):
        run.result(timeout=-1)
    with pytest.raises(concurrent.futures.TimeoutError):
        run.result(timeout=0.01)
    run.cancel()
    with pytest.raises(pm.Cancelled):
        run.result(timeout=30)


def test_argument_errors_are_raised_at_the_call():
    with pytest.raises(ValueError, match="workers"):
        pm.parmap_async(helpers.square, [1], workers=0)


def test_two_background_runs_and_a_blocking_one_share_the_pool():
    runs = [
        pm.parmap_async(helpers.sleepy, [(i, 0.05) for i in range(10)], workers=2) for _ in range(2)
    ]
    assert pm.parmap(helpers.square, range(4), workers=2) == [0, 1, 4, 9]
    assert [r.result(timeout=60) for r in runs] == [list(range(10))] * 2
