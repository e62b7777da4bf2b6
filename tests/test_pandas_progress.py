"""Progress of the pandas accessors: one bar per call that counts rows (groups,
windows), not the pieces the call was cut into; rows the kernel ran itself count as
done. The same text bar and panel as ``pm.parmap``."""

from __future__ import annotations

import re
import time

import pytest
from conftest import children, wait_for

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from frames_data import grouped_frame, make_index  # noqa: E402

import ipyparmap as pm  # noqa: E402
from ipyparmap.views.progress import ProgressModel  # noqa: E402
from ipyparmap.views.textui import TextProgress  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _pool_down_after():
    yield
    pm.shutdown()
    wait_for(lambda: not children(), timeout=10, what="child processes to exit")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_model_counting_by_weights_reads_in_its_unit():
    clock = Clock()
    model = ProgressModel(clock=clock)
    model.count_by([7, 7, 3], "rows", before=5)  # 5 rows ran before, in the kernel
    model.set_items(3)
    assert (model.total, model.done, model.ok) == (22, 5, 5)
    clock.now += 1
    model.add(1, indices=[1])
    model.add(1, 1, indices=(2,))  # a lost piece: its 3 rows failed
    assert (model.done, model.failed, model.items_done) == (15, 3, 2)
    # the rate counts only rows run since the start (7 in the first second), not `before`
    assert model.status_parts()[:3] == ["12/22 rows done", "3 failed", "7.0 rows/s"]
    model.finish()  # piece 0 never came back: its rows cancelled
    assert model.summary_parts()[:3] == ["12/22 rows done", "7 cancelled", "3 failed"]
    assert model.failure_parts() == ["3 failed"]


def test_an_unweighted_model_reads_as_before():
    model = ProgressModel(clock=Clock())
    model.set_items(4)
    model.add(2, indices=[0, 1])
    assert (model.total, model.done) == (4, 2)
    assert model.status_parts()[0] == "2/4 done" and "items/s" in model.status_parts()[2]


def _final_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "done" in line]
    assert len(lines) == 1, lines  # one bar for the call, not one per piece or worker
    return lines[0]


def test_frame_apply_counts_rows(capsys):
    df = pd.DataFrame({"a": range(100)}, index=make_index("strings", 100))
    df.parmap.apply(lambda r: r["a"] * 2, axis=1, workers=2, chunksize=7, progress="text")
    line = _final_line(capsys)
    assert "100/100 rows done" in line  # 15 pieces, counted as their 100 rows
    assert line.startswith("parmap [########################]")


def test_rows_run_in_the_kernel_count_as_done(capsys):
    def slow(x):
        time.sleep(0.002)
        return x

    s = pd.Series(range(60))
    got = s.parmap.map(slow, workers=2, progress="text")
    assert got.equals(s)
    assert "60/60 rows done" in _final_line(capsys)


def test_groupby_counts_groups_and_columns_count_columns(capsys):
    gb = grouped_frame().groupby("k")
    gb.parmap.apply(lambda g: g["v"].sum(), workers=2, chunksize=3, progress="text")
    assert "7/7 groups done" in _final_line(capsys)
    gb.parmap.transform(lambda x: x * 2, workers=2, chunksize=3, progress="text")
    assert "7/7 groups done" in _final_line(capsys)
    wide = pd.DataFrame(np.ones((3, 12)), columns=[f"c{i}" for i in range(12)])
    wide.parmap.apply(lambda c: c.sum(), workers=2, chunksize=5, progress="text")
    assert "12/12 columns done" in _final_line(capsys)


def test_rolling_counts_windows_as_rows(capsys):
    s = pd.Series(np.arange(50.0))
    s.rolling(4).parmap.apply(lambda w: w.sum(), workers=2, chunksize=9, progress="text")
    assert "50/50 rows done" in _final_line(capsys)


def test_a_crashed_piece_counts_its_rows_as_failed(capsys):
    import os

    def crash_on_17(x):
        if x == 17:
            os._exit(3)
        return x

    s = pd.Series(range(40))
    got = s.parmap.map(crash_on_17, workers=2, chunksize=10, errors="collect", progress="text")
    line = _final_line(capsys)
    assert re.search(r"30/40 rows done, .*10 failed", line), line
    assert (
        got.isna().sum() == 10
        and [f.kind for f in got.attrs["parmap_failures"]] == ["crashed"] * 10
    )


def test_text_progress_view_draws_rows_per_second():
    model = ProgressModel(clock=Clock())
    model.count_by([10, 10], "rows")
    model.set_items(2)
    view = TextProgress(summary=True, live=False)
    model.listeners.append(view)
    model.add(1, indices=[0])
    from ipyparmap.views.textui import status_line

    assert "10/20 rows done" in status_line(model)
