"""The run logic (feed, sink, crash policy, runner) on the fake engine: exact outcomes.

The fake engine (tests/fake_engine.py) runs chunks in this process, one per wait, in
dispatch order, so which chunk goes out when, and what becomes of each item, is the
same on every run: these tests compare whole dispatch logs and whole Results.
"""

from __future__ import annotations

import time

import helpers
import pytest
from conftest import notebook_function, wait_for
from fake_engine import MAX_CHUNKS, Fault, fake_runner

import ipyparmap as pm
from ipyparmap.engine.attribution import MAX_UNPINNED_DEATHS
from ipyparmap.engine.background import Run

pytestmark = pytest.mark.timeout(30)


def run(func, items, faults=(), **options):
    runner, engine = fake_runner(func, items, faults, **options)
    return runner.results(), engine


def alone(*indices):
    return [((i,), True) for i in indices]


def together(*indices):
    return ((*indices,), False)


# -- a worker dies: the crash policy ---------------------------------------------------------
@pytest.mark.parametrize("flushed", [False, True])
def test_a_pinned_death_fails_its_item_and_requeues_the_others_first(flushed):
    res, engine = run(
        helpers.square, range(10), [Fault("running", 2, flushed=flushed)],
        workers=1, chunksize=5, errors="collect",
    )  # fmt: skip
    failure = res[2]
    assert failure.kind == "crashed" and failure.attempts == 1 and failure.worker == 1001
    assert isinstance(failure.exception, pm.WorkerCrashed)
    assert failure.exception.signal_name == "SIGKILL" and "running item 2" in str(failure.exception)
    assert res.values(default=None) == [0, 1, None, 9, 16, 25, 36, 49, 64, 81]
    # the chunk's other items go out again before any new input, in their order, not
    # alone (the culprit is known); with results flushed before the death, only the rest
    again = together(3, 4) if flushed else together(0, 1, 3, 4)
    assert engine.sends() == [together(0, 1, 2, 3, 4), again, together(5, 6, 7, 8, 9)]
    assert res.stats.restarts == 1


def test_a_death_while_loading_several_items_runs_each_alone_to_find_the_culprit():
    res, engine = run(
        helpers.square, range(8), [Fault("loading", 5, times=None, exitcode=3)],
        workers=1, chunksize=4, errors="collect",
    )  # fmt: skip
    assert engine.sends() == [together(0, 1, 2, 3), together(4, 5, 6, 7), *alone(4, 5, 6, 7)]
    assert res.values(default=None) == [0, 1, 4, 9, 16, None, 36, 49]
    assert res[5].kind == "crashed" and "exited with code 3" in str(res[5].exception)
    assert res[5].exception.exitcode == 3


def test_a_death_in_a_block_of_tiny_items_suspects_only_that_block():
    res, engine = run(
        helpers.square, range(8), [Fault("block", 3, span=3)],
        workers=1, chunksize=8, errors="collect",
    )  # fmt: skip
    # items 3, 4 and 5 run alone; the items before and after the block go out together
    assert engine.sends() == [
        together(*range(8)),
        together(0, 1, 2),
        *alone(3, 4, 5),
        together(6, 7),
    ]
    assert res == [x * x for x in range(8)] and not res.failures


def test_a_block_culprit_alone_is_pinned():
    res, _ = run(
        helpers.square, range(8), [Fault("block", 3, span=3, times=None)],
        workers=1, chunksize=8, errors="collect",
    )  # fmt: skip
    assert [f.index for f in res.failures] == [3] and res[3].kind == "crashed"


def test_a_death_while_sending_results_runs_each_item_alone():
    res, engine = run(
        helpers.square, range(3), [Fault("sending", 1, times=None, exitcode=-11)],
        workers=1, chunksize=3, errors="collect",
    )  # fmt: skip
    assert engine.sends() == [together(0, 1, 2), *alone(0, 1, 2)]
    assert res.values(default=None) == [0, None, 4]
    assert res[1].kind == "crashed" and res[1].exception.signal_name == "SIGSEGV"


def test_timeout_fails_its_item_and_a_retry_runs_it_alone_first():
    items = range(6)
    res, engine = run(
        helpers.square, items, [Fault("timeout", 2, times=None)],
        workers=1, chunksize=4, errors="collect", timeout=1.5,
    )  # fmt: skip
    assert res[2].kind == "timeout" and isinstance(res[2].exception, pm.TaskTimeout)
    assert "ran longer than the timeout of 1.5 s" in str(res[2].exception)
    assert engine.sends() == [together(0, 1, 2, 3), together(0, 1, 3), together(4, 5)]

    res, engine = run(
        helpers.square, items, [Fault("timeout", 2)],
        workers=1, chunksize=4, errors="collect", timeout=1.5, retries=1,
    )  # fmt: skip
    assert res == [x * x for x in items] and res.stats.retries == 1
    # the retry is pinned on no other item: it goes first, alone
    assert engine.sends() == [together(0, 1, 2, 3), *alone(2), together(0, 1, 3), together(4, 5)]


def test_retries_of_an_item_that_raised_are_not_sent_alone():
    res, engine = run(
        helpers.fail_on, range(5), workers=1, chunksize=5, retries=2, errors="collect"
    )
    assert res[3].kind == "error" and res[3].attempts == 3 and res.stats.retries == 2
    assert isinstance(res[3].exception, ValueError)
    assert engine.sends() == [together(0, 1, 2, 3, 4), together(3), together(3)]
    assert res.stats.restarts == 0


def test_retries_of_a_crashed_item_run_alone_and_can_succeed():
    res, engine = run(
        helpers.square, range(4), [Fault("running", 1, times=2)],
        workers=1, chunksize=4, retries=2, errors="collect",
    )  # fmt: skip
    assert res == [0, 1, 4, 9] and res.stats.retries == 2 and res.stats.restarts == 2
    # a retry goes out first: the item runs again alone before the rest of its chunk
    assert engine.sends() == [together(0, 1, 2, 3), *alone(1, 1), together(0, 2, 3)]


# -- deaths nobody can pin: no endless respawn -----------------------------------------------
def test_unpinned_deaths_end_in_a_crashed_failure_not_an_endless_respawn():
    res, engine = run(
        helpers.square, range(6), [Fault("unpinned", 1, times=None)],
        workers=2, chunksize=3, errors="collect",
    )  # fmt: skip
    assert res.values(default=None) == [0, None, 4, 9, 16, 25]
    failure = res[1]
    assert failure.kind == "crashed" and isinstance(failure.exception, pm.WorkerCrashed)
    assert f"held by {MAX_UNPINNED_DEATHS} workers that died" in str(failure.exception)
    deaths = [entry for entry in engine.log if entry[0] == "death"]
    assert len(deaths) == MAX_UNPINNED_DEATHS and all(1 in d[2] for d in deaths)
    assert engine.sends() == [
        together(0, 1, 2), together(3, 4, 5), *alone(0, 1, 2), *alone(1)
    ]  # fmt: skip


def test_unpinned_deaths_count_against_every_item_the_worker_held():
    # item 0 is held in one death caused by item 1, then in two of its own: three
    res, _ = run(
        helpers.square, range(3),
        [Fault("unpinned", 1), Fault("unpinned", 0, times=2)],
        workers=1, chunksize=3, errors="collect",
    )  # fmt: skip
    assert res.values(default=None) == [None, 1, 4]
    assert f"held by {MAX_UNPINNED_DEATHS} workers" in str(res[0].exception)


def test_pinned_deaths_do_not_count_as_unpinned():
    res, _ = run(
        helpers.square, range(2), [Fault("running", 1, times=MAX_UNPINNED_DEATHS + 1)],
        workers=1, chunksize=1, errors="collect", retries=MAX_UNPINNED_DEATHS + 1,
    )  # fmt: skip
    assert res == [0, 1] and res.stats.restarts == MAX_UNPINNED_DEATHS + 1


# -- lost executor tasks, unloadable items and results ----------------------------------------
def test_a_lost_task_runs_each_item_alone_and_only_a_lost_lone_task_fails():
    res, engine = run(
        helpers.square, range(8), [Fault("task-lost", 5, times=None)],
        workers=1, chunksize=4, errors="collect",
    )  # fmt: skip
    assert engine.sends() == [together(0, 1, 2, 3), together(4, 5, 6, 7), *alone(4, 5, 6, 7)]
    assert res.values(default=None) == [0, 1, 4, 9, 16, None, 36, 49]
    assert res[5].kind == "crashed" and "KilledWorker" in str(res[5].exception)


def test_an_innocent_lost_task_is_run_again_without_a_failure():
    # Dask gives up on every task that sat on a worker a bad task killed
    res, _ = run(helpers.square, range(4), [Fault("task-lost", 2)], chunksize=2, errors="collect")
    assert res == [0, 1, 4, 9] and res.stats.retries == 0


def test_unloadable_results_of_several_items_run_each_alone():
    res, engine = run(
        helpers.square, range(4), [Fault("unloadable-results", 2)],
        workers=1, chunksize=4, errors="collect",
    )  # fmt: skip
    assert res == [0, 1, 4, 9]
    assert engine.sends() == [together(0, 1, 2, 3), *alone(0, 1, 2, 3)]
    res, _ = run(
        helpers.square, range(4), [Fault("unloadable-results", 2, times=None)],
        workers=1, chunksize=4, errors="collect",
    )  # fmt: skip
    assert [f.index for f in res.failures] == [2] and res[2].kind == "error"
    assert "the result of item 2 could not be unpickled here" in str(res[2].exception)
    assert res.stats.restarts == 0  # nobody died


def test_unloadable_items_fail_alone():
    res, engine = run(
        helpers.square, range(4), [Fault("unloadable-items", 1, times=None)],
        workers=1, chunksize=2, errors="collect",
    )  # fmt: skip
    assert engine.sends() == [together(0, 1), *alone(0, 1), together(2, 3)]
    assert res.values(default=None) == [0, None, 4, 9]
    assert "item 1 could not be unpickled in the worker: ValueError" in str(res[1].exception)


# -- errors="raise" ---------------------------------------------------------------------------
def test_errors_raise_stops_at_the_first_failure_and_keeps_finished_results():
    runner, engine = fake_runner(helpers.fail_on, range(10), workers=2, chunksize=1)
    with pytest.raises(pm.TaskError) as info:
        runner.results()
    err = info.value
    assert err.failure.index == 3 and isinstance(err.__cause__, ValueError)
    # item 4 was running when 3 failed: it may finish (and is kept); nothing new went out
    assert engine.sends() == [together(i) for i in range(5)]
    assert err.results[:5] == [0, 1, 2, err.failure, 4]
    assert [f.kind for f in err.results[5:]] == ["cancelled"] * 5
    assert engine.closed == 1 and runner.state.closed


def test_errors_raise_on_a_crash_raises_worker_crashed_with_the_results():
    runner, engine = fake_runner(
        helpers.square, range(6), [Fault("running", 2, times=None)], workers=2, chunksize=1
    )
    with pytest.raises(pm.WorkerCrashed) as info:
        runner.results()
    err = info.value
    assert err.failure.index == 2 and err.failure.kind == "crashed"
    assert err.results[:4] == [0, 1, err.failure, 9]
    assert [f.kind for f in err.results[4:]] == ["cancelled"] * 2
    assert engine.sends() == [together(i) for i in range(4)]


# -- stopping: cancel, interrupt, a function that cannot load ----------------------------------
def test_cancel_from_another_thread_stops_within_a_tick_and_keeps_finished_results():
    runner, engine = fake_runner(
        helpers.square, range(10), [Fault("hang", 4), Fault("hang", 7)], workers=2, chunksize=1
    )
    background = Run(runner)
    try:
        wait_for(engine.hanging.is_set, timeout=10, what="both workers to hang")
        started = time.monotonic()
        assert background.cancel()
        with pytest.raises(pm.Cancelled) as info:
            background.result(timeout=5)
        assert time.monotonic() - started < 1.0  # one loop tick is 0.1 s
    finally:
        engine.release.set()
        background.join(10)
    res = info.value.results
    assert res.values(default=None) == [0, 1, 4, 9, None, 25, 36, None, None, None]
    assert {f.kind for f in res.failures} == {"cancelled"}
    # the hanging chunks were killed; items 8 and 9 never went out
    assert sorted(e[2] for e in engine.log if e[0] == "killed") == [(4,), (7,)]
    assert engine.sends() == [together(i) for i in range(8)]
    assert engine.closed == 1 and background.cancelled()


@pytest.mark.parametrize("twice", [False, True])
def test_keyboard_interrupt_keeps_finished_results_and_kills_what_runs(twice):
    runner, engine = fake_runner(
        helpers.square, range(10), [Fault("interrupt", 5)], workers=2, chunksize=1
    )
    engine.interrupts_in_kill = int(twice)  # a second Ctrl-C while the run stops
    with pytest.raises(pm.Interrupted) as info:
        runner.results()
    assert isinstance(info.value, KeyboardInterrupt)
    res = info.value.results
    assert res.values(default=None) == [0, 1, 4, 9, 16, None, None, None, None, None]
    assert sorted(e[2] for e in engine.log if e[0] == "killed") == [(5,), (6,)]
    assert engine.sends() == [together(i) for i in range(7)]
    assert engine.closed == 1 and not engine.in_flight and runner.state.closed


def test_a_consumer_leaving_imap_early_stops_the_engine():
    runner, engine = fake_runner(helpers.square, range(100), workers=2, chunksize=1)
    values = runner.values()
    assert [next(values) for _ in range(3)] == [0, 1, 4]
    values.close()
    assert engine.closed == 1 and not engine.in_flight and runner.state.closed
    assert len(engine.sends()) <= 5  # nothing was sent after the consumer left


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_function_that_cannot_load_fails_the_run_at_once(errors):
    func = notebook_function(
        "def uses(x):\n    return (x, guard)\n", "uses", guard=helpers.BadToUnpickle("raise")
    )
    runner, engine = fake_runner(func, range(6), workers=2, chunksize=1, errors=errors, retries=3)
    with pytest.raises(pm.SerializationError, match="could not be unpickled in a worker"):
        runner.results()
    assert engine.sends() == [together(0), together(1)]  # no retry, nothing more
    assert [e[2] for e in engine.log if e[0] == "killed"] == [(1,)]
    assert engine.closed == 1 and runner.state.closed


def test_the_fake_engine_stops_an_endless_loop():
    # the safety net behind the tests above: a policy that requeued forever fails fast
    runner, _ = fake_runner(
        helpers.square, range(1), [Fault("running", 0, times=None)],
        workers=1, chunksize=1, errors="collect", retries=10 * MAX_CHUNKS,
    )  # fmt: skip
    with pytest.raises(AssertionError, match="endless loop"):
        runner.results()
