"""Every figure printed about a run is true (issue 15, "Honest figures").

Time inside items over wall time is how many workers were busy on average, not the
speedup over a serial run: it is worded so, and left out where it would not be true.
"""

from __future__ import annotations

import re
import warnings

import helpers
import pytest

import ipyparmap as pm
from ipyparmap import figures
from ipyparmap.results import RunStats

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_the_figure_is_named_for_what_it_measures():
    stats = RunStats(items=10, workers=2, wall=2.0, task_time=3.8)
    assert stats.busy_workers == pytest.approx(1.9)
    assert stats.summary() == "10/10 done, 0 failed, 2.0 s, workers busy 1.90 of 2"
    assert "speedup" not in stats.summary()
    assert stats.efficiency == pytest.approx(0.95)


def test_no_figure_that_cannot_be_true():
    # shorter than the noise: no figure at all, not 0.01x
    short = RunStats(items=10, workers=2, wall=0.003, task_time=0.00002)
    assert short.busy_workers is None
    assert short.summary() == "10/10 done, 0 failed, 0.00 s, on 2 workers"
    # items that barely took any time in a longer run: never "0.00"
    idle = RunStats(items=10, workers=2, wall=1.3, task_time=0.001)
    assert idle.summary().endswith("workers busy <0.01 of 2")
    # never more busy workers than workers (clock rounding)
    assert RunStats(items=4, workers=2, wall=1.0, task_time=2.01).busy_workers == 2.0
    # cancelled items: how long they ran is unknown, so the figure could only be too low
    stopped = RunStats(items=10, workers=2, wall=1.0, task_time=0.5, failures={"cancelled": 4})
    assert stopped.busy_workers is None
    assert stopped.summary() == "6/10 done, 4 cancelled, 1.0 s, on 2 workers"
    assert "not measured" in figures.busy_detail(None, 2, 1.0, cancelled=4)
    assert "under 0.5 s" in figures.busy_detail(None, 2, 0.2)


def test_speedup_still_works_but_is_deprecated():
    stats = RunStats(items=4, workers=2, wall=2.0, task_time=3.0)
    with pytest.warns(DeprecationWarning, match="busy_workers"):
        assert stats.speedup == pytest.approx(1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.summary()  # the views never read the deprecated name
        stats.busy_workers  # noqa: B018


def test_a_short_real_run_prints_no_busy_figure_anywhere():
    res = pm.parmap(helpers.square, range(10), workers=2, progress=False)
    assert res.stats.wall < figures.BUSY_MIN_WALL
    assert "busy" not in res.summary() and "speedup" not in res.summary()
    report = res.report()._repr_html_()
    assert "workers busy" in report and "not measured: the run took under 0.5 s" in report
    assert "speedup" not in report and "0.00x" not in report


def test_a_crashed_items_time_counts_until_its_worker_died():
    def slow_crash(x):
        import os
        import time

        time.sleep(0.6)
        if x == 1:
            os._exit(3)
        return x

    res = pm.parmap(slow_crash, range(2), workers=2, errors="collect", progress=False)
    assert res.stats.failures == {"crashed": 1}
    assert res.stats.task_time >= 1.15  # 0.6 s each, the crashed one included
    assert re.search(r"workers busy \d\.\d\d of 2", res.summary()), res.summary()
