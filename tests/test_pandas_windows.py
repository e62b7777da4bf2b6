"""``rolling(...).parmap.apply``, ``expanding()`` and groupby-rolling: equal to serial
pandas exactly, every piece carrying its windows' overlap (integer and offset windows,
center, closed, min_periods, raw)."""

from __future__ import annotations

import pytest
from conftest import notebook_function

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from frames_data import INDEXES, assert_same, grouped_frame, make_index  # noqa: E402

import ipyparmap  # noqa: E402, F401  (after pandas: registers the accessors at once)

#: Pieces of 7 rows in workers: every window crosses a piece's edge somewhere.
PAR = {"workers": 2, "chunksize": 7, "progress": False}
GPAR = {"workers": 2, "chunksize": 2, "progress": False}
N = 40


pytestmark = pytest.mark.usefixtures("no_leaks_after_module")


def _series(kind: str):
    values = np.arange(N, dtype=float) ** 1.5
    values[[5, 6, 17]] = np.nan  # missing values count against min_periods
    return pd.Series(values, index=make_index(kind, N), name="x")


def weighted(window):
    """Depends on the order and position of the values: a wrong overlap shows."""
    values = np.asarray(window, dtype=float)
    return float(np.nansum(values * np.arange(1, len(values) + 1))) + len(values) / 10


WINDOWS = {
    "3": {"window": 3},
    "5-center": {"window": 5, "center": True},
    "4-min2-center": {"window": 4, "min_periods": 2, "center": True},
    "6-min1": {"window": 6, "min_periods": 1},
    "4-closed-both": {"window": 4, "closed": "both"},
    "larger-than-a-piece": {"window": 16, "min_periods": 3},
}


@pytest.mark.parametrize("raw", [False, True], ids=["series", "raw"])
@pytest.mark.parametrize("name", list(WINDOWS))
@pytest.mark.parametrize("kind", INDEXES)
def test_series_rolling_equals_pandas(kind, name, raw):
    r = _series(kind).rolling(**WINDOWS[name])
    assert_same(r.parmap.apply(weighted, raw=raw, **PAR), r.apply(weighted, raw=raw))


@pytest.mark.parametrize("window", ["3h", "5h"])
@pytest.mark.parametrize("closed", [None, "both", "left"])
def test_offset_windows_on_a_datetime_index(window, closed):
    s = _series("datetimes")
    s = s.drop(s.index[[10, 11, 12, 30]])  # irregular spacing: rows per window vary
    r = s.rolling(window, closed=closed)
    assert_same(r.parmap.apply(weighted, **PAR), r.apply(weighted))


def test_frame_rolling_with_args_and_on():
    df = pd.DataFrame({"a": np.arange(N) * 1.0, "b": np.arange(N) % 5,
                       "t": pd.date_range("2024", periods=N, freq="min")},
                      index=make_index("strings", N))  # fmt: skip

    def scaled(window, factor, shift=0.0):
        return weighted(window) * factor + shift

    r = df[["a", "b"]].rolling(4, min_periods=2)
    assert_same(r.parmap.apply(scaled, args=(2,), kwargs={"shift": 1.0}, **PAR),
                r.apply(scaled, args=(2,), kwargs={"shift": 1.0}))  # fmt: skip
    r = df.rolling("3min", on="t")
    assert_same(r.parmap.apply(weighted, **PAR), r.apply(weighted))


@pytest.mark.parametrize("kind", INDEXES)
def test_expanding_equals_pandas(kind):
    s = _series(kind)
    for e in (s.expanding(), s.expanding(min_periods=4)):
        assert_same(e.parmap.apply(weighted, **PAR), e.apply(weighted))
        assert_same(e.parmap.apply(np.nanmax, raw=True, **PAR), e.apply(np.nanmax, raw=True))
    frame = s.to_frame().assign(y=np.arange(N))
    assert_same(frame.expanding().parmap.apply(weighted, **PAR), frame.expanding().apply(weighted))


@pytest.mark.parametrize("raw", [False, True], ids=["series", "raw"])
@pytest.mark.parametrize("kind", ["strings", "duplicates", "datetimes"])
def test_groupby_rolling_and_expanding_equal_pandas(kind, raw):
    df = grouped_frame(kind=kind)
    for by in ("k", ["k", "k2"]):
        gb = df.groupby(by)
        for win in (gb.rolling(3), gb.rolling(2, min_periods=1, center=True), gb.expanding(),
                    gb["w"].rolling(3), gb[["v", "w"]].expanding(min_periods=2)):  # fmt: skip
            assert_same(win.parmap.apply(weighted, raw=raw, **GPAR), win.apply(weighted, raw=raw))
    gb = df[["v", "w"]].groupby(df["k"].str.upper(), sort=False)
    assert_same(gb.rolling(3).parmap.apply(weighted, **GPAR), gb.rolling(3).apply(weighted))


def test_first_rows_in_the_kernel_then_the_workers():
    import time

    def slow(window):
        time.sleep(0.002)
        return weighted(window)

    r = _series("multi").rolling(5, center=True)
    assert_same(r.parmap.apply(slow, workers=2, progress=False), r.apply(slow))


def test_what_the_pieces_cannot_reproduce_runs_in_pandas():
    s = _series("range")
    for r in (s.rolling(3, step=2), s.rolling(3, min_periods=0), s.expanding(min_periods=0)):
        assert_same(r.parmap.apply(weighted, **PAR), r.apply(weighted))
    with pytest.raises(TypeError, match="needs a function"):
        s.rolling(3).parmap.apply("sum")


def _fails_at(bad):
    return notebook_function(
        f"""
        def check(window):
            if {bad} in list(window):
                raise ArithmeticError("bad window")
            return float(sum(window))
        """,
        "check",
    )


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
def test_errors_name_the_window_row(serial):
    s = pd.Series(np.arange(N, dtype=float), index=make_index("strings", N))
    options = {"progress": False} if serial else PAR
    # value 20 is in the windows that end at rows 20-22 (window 3, not centered): in
    # the kernel pandas' own order stops at row 20; in the workers, whichever piece
    # fails first stops the run (rows 20 and 21-22 are in different pieces)
    first = "20" if serial else "2[012]"
    with pytest.raises(ArithmeticError, match=rf"window at row 'row({first})' \(position \1\)"):
        s.rolling(3).parmap.apply(_fails_at(20), **options)
    frame = pd.DataFrame({"a": np.arange(N) * 1.0, "b": np.arange(N) + 100.0})
    first = "23" if serial else "2[34]"
    with pytest.raises(ArithmeticError, match=rf"row ({first}) \(position \1\), column 'b'"):
        frame.rolling(2).parmap.apply(_fails_at(123), **options)


def test_collect_marks_the_failing_windows():
    s = pd.Series(np.arange(N, dtype=float), index=make_index("datetimes", N))
    got = s.rolling(3).parmap.apply(_fails_at(20), errors="collect", **PAR)
    expected = s.rolling(3).apply(lambda w: np.nan if 20 in list(w) else float(sum(w)))
    assert_same(got, expected)
    failures = got.attrs["parmap_failures"]
    assert [f.index for f in failures] == [20, 21, 22]
    assert [f.item for f in failures] == list(s.index[20:23])
    assert all(isinstance(f.exception, ArithmeticError) for f in failures)
