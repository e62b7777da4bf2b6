"""``max_memory`` stops a runaway item while it runs (issue 15).

The parent samples busy workers' resident memory (RSS) every 0.1 s when ``max_memory``
is set; a worker over the limit is killed, its item fails as ``memory`` with a
`pm.MemoryLimitExceeded` naming the limit and the peak, a fresh worker takes its place
and the run goes on.
"""

from __future__ import annotations

import time

import psutil
import pytest

import ipyparmap as pm
from ipyparmap.results import Failure

pytestmark = pytest.mark.usefixtures("no_leaks")

MB = 2**20


def grow(item):
    """``("grow", megabytes)``: allocate that much, touching every page, 20 MB at a time,
    then hold it for a long while (only a stop ends this item in time). Else: the item."""
    import time

    if not (isinstance(item, tuple) and item[0] == "grow"):
        time.sleep(0.05)
        return item
    held = []
    for _ in range(item[1] // 20):
        held.append(bytearray(20 * 2**20))  # zero-filled: the pages are touched
        time.sleep(0.01)
    time.sleep(30)
    return len(held)


def test_a_runaway_item_is_stopped_and_the_run_goes_on():
    items = [0, ("grow", 400), *range(2, 30)]  # 28 items of 50 ms after it: a second worker helps
    started = time.monotonic()
    res = pm.parmap(grow, items, workers=2, chunksize=1, max_memory="200MB", errors="collect")
    took = time.monotonic() - started
    assert took < 10, took  # not the 30 s the runaway item would hold its memory
    failure = res[1]
    assert isinstance(failure, Failure) and failure.kind == "memory"
    error = failure.exception
    assert isinstance(error, pm.MemoryLimitExceeded) and isinstance(error, pm.WorkerCrashed)
    assert error.limit == 200 * MB
    assert 200 * MB < error.peak < 480 * MB  # stopped on the way to 400 MB
    assert "over the max_memory limit of 200.0 MB; it was stopped" in str(error)
    assert "item 1" in str(error) and "(RSS)" in str(error)
    assert res.values() == [0, None, *range(2, 30)]  # the others ran
    assert res.stats.failures == {"memory": 1}
    assert res.stats.restarts == 1  # a fresh worker took the stopped one's place...
    assert len({w for w in res.worker_of if w is not None}) == 3  # ...and ran items
    # stopped within a second of crossing the limit: the item ran for ~0.1 s to get there
    assert res.durations[1] is not None and res.durations[1] < 1.5, res.durations[1]
    assert "1 over max_memory" in res.summary()
    assert "memory" in res.timeline().svg  # its own colour and legend entry


def test_errors_raise_raises_memory_limit_exceeded_and_retries_apply():
    with pytest.raises(pm.MemoryLimitExceeded) as info:
        pm.parmap(grow, [("grow", 300)], workers=1, max_memory="150MB", retries=1)
    error = info.value
    assert error.failure.kind == "memory" and error.failure.attempts == 2  # retried once
    assert error.peak > error.limit == 150 * MB
    assert error.results.stats.restarts >= 1


def test_only_a_worker_over_the_limit_is_stopped():
    res = pm.parmap(grow, range(6), workers=2, max_memory="1GB")
    assert res == list(range(6)) and res.stats.restarts == 0


def test_without_max_memory_sampling_stays_slow_and_nothing_is_stopped(monkeypatch):
    from ipyparmap.engine import local

    reads = []
    real = local.LocalEngine._sample_memory

    def counting(self):
        before = self.memory_sampled
        real(self)
        if self.memory_sampled != before:
            reads.append(self.memory_sampled)

    monkeypatch.setattr(local.LocalEngine, "_sample_memory", counting)
    started = time.monotonic()
    pm.parmap(time.sleep, [0.6, 0.6], workers=2)
    elapsed = time.monotonic() - started
    assert len(reads) <= elapsed / local.MEMORY_SAMPLE_SECONDS + 1  # every 0.5 s only
    reads.clear()
    started = time.monotonic()
    pm.parmap(time.sleep, [0.6, 0.6], workers=2, max_memory="1GB")
    assert len(reads) >= 3  # every 0.1 s while it runs


def test_the_stopped_worker_is_gone():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    res = pm.parmap(grow, [("grow", 300)], workers=1, max_memory="150MB", errors="collect")
    pid = res[0].worker
    assert pid not in before or not psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
