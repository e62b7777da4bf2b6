"""Progress of the pandas accessors: one bar per call that counts rows (groups,
windows), not the pieces the call was cut into; rows the kernel ran itself count as
done. The same text bar and panel as ``pm.parmap``."""

from __future__ import annotations

import re
import time

import pytest

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from frames_data import grouped_frame, make_index  # noqa: E402

import ipyparmap  # noqa: E402, F401  (after pandas: registers the accessors at once)

pytestmark = pytest.mark.usefixtures("no_leaks_after_module")


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
