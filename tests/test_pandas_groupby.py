"""``groupby(...).parmap.transform`` and ``.agg``: equal to serial pandas exactly, with
whole groups in each piece, for DataFrameGroupBy and SeriesGroupBy over awkward indexes
and the groupby arguments that change the result's shape (as_index, sort, dropna)."""

from __future__ import annotations

import pytest
from conftest import notebook_function

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from frames_data import INDEXES, assert_same, grouped_frame  # noqa: E402

import ipyparmap  # noqa: E402, F401  (after pandas: registers the accessors at once)

#: Several pieces of two groups each, in workers: the parallel path on small inputs.
GPAR = {"workers": 2, "chunksize": 2, "progress": False}


pytestmark = pytest.mark.usefixtures("no_leaks_after_module")


TRANSFORMS = {
    "demean": lambda x: x - x.mean(),
    "scalar": lambda x: x.max(),  # broadcast to the group's rows
    "rank": lambda x: x.rank(),
    "cumsum": lambda x: x.cumsum(),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("kind", INDEXES)
def test_frame_groupby_transform_equals_pandas(kind, name):
    df = grouped_frame(kind=kind)
    func = TRANSFORMS[name]
    for by in ("k", ["k", "k2"]):
        gb = df.groupby(by)
        assert_same(gb.parmap.transform(func, **GPAR), gb.transform(func))


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("kind", INDEXES)
def test_series_groupby_transform_equals_pandas(kind, name):
    gb = grouped_frame(kind=kind).groupby("k")["w"]
    func = TRANSFORMS[name]
    assert_same(gb.parmap.transform(func, **GPAR), gb.transform(func))


def test_transform_whole_frame_path_and_args():
    df = grouped_frame()
    gb = df.groupby("k")[["v", "w"]]

    def scaled(g, factor, shift=0):
        return g * factor + shift  # works on the whole group: pandas' fast path

    assert_same(gb.parmap.transform(scaled, 3, shift=1, **GPAR), gb.transform(scaled, 3, shift=1))


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("dropna", [True, False])
def test_transform_and_agg_with_missing_keys_and_unsorted_groups(dropna, sort):
    df = pd.DataFrame({"k": ["b", "a", None, "c"] * 8, "v": np.arange(32)},
                      index=pd.date_range("2024", periods=32, freq="D"))  # fmt: skip
    gb = df.groupby("k", dropna=dropna, sort=sort)
    func = TRANSFORMS["demean"]
    assert_same(gb.parmap.transform(func, **GPAR), gb.transform(func))
    assert_same(
        gb["v"].parmap.transform(lambda x: x * 2, **GPAR), gb["v"].transform(lambda x: x * 2)
    )
    spread = lambda x: x.max() - x.min()  # noqa: E731
    assert_same(gb.parmap.agg(spread, **GPAR), gb.agg(spread))


AGGS = {
    "spread": lambda x: x.max() - x.min(),
    "float": lambda x: float(x.sum()) / 3,
    "text": lambda x: f"n={len(x)}",
    "nan-in-one-group": lambda x: np.nan if len(x) == 4 and x.iloc[0] == 3 else x.sum(),
}


@pytest.mark.parametrize("name", list(AGGS))
@pytest.mark.parametrize("kind", INDEXES)
def test_agg_equals_pandas(kind, name):
    df = grouped_frame(kind=kind)
    func = AGGS[name]
    for gb in (df.groupby("k"), df.groupby(["k", "k2"]), df.groupby("k")["v"]):
        assert_same(gb.parmap.agg(func, **GPAR), gb.agg(func))
        assert_same(gb.parmap.aggregate(func, **GPAR), gb.aggregate(func))


def test_agg_with_as_index_false_and_keys_that_are_not_columns():
    df = grouped_frame(kind="duplicates")
    func = AGGS["spread"]
    numbers = df[["v", "w"]]
    for gb in (df.groupby("k", as_index=False), df.groupby(["k", "k2"], as_index=False),
               numbers.groupby(df["k"].str.upper()), numbers.groupby(level=0)):  # fmt: skip
        assert_same(gb.parmap.agg(func, **GPAR), gb.agg(func))
        assert_same(gb.parmap.transform(TRANSFORMS["demean"], **GPAR),
                    gb.transform(TRANSFORMS["demean"]))  # fmt: skip


def test_names_and_specs_run_in_pandas_at_once():
    df = grouped_frame()
    gb = df.groupby("k")
    assert_same(gb.parmap.agg("mean"), gb.agg("mean"))
    assert_same(gb.parmap.agg(["sum", "max"]), gb.agg(["sum", "max"]))
    assert_same(gb.parmap.agg(total=("v", "sum")), gb.agg(total=("v", "sum")))
    assert_same(gb.parmap.transform("cumsum"), gb.transform("cumsum"))


def test_kernel_first_groups_combine_with_the_workers():
    import time

    def slow(x):
        time.sleep(0.002)
        return x - x.min()

    gb = grouped_frame(200, kind="multi").groupby("k")
    assert_same(gb.parmap.transform(slow, workers=2, progress=False), gb.transform(slow))
    assert_same(gb.parmap.agg(lambda x: slow(x).sum(), workers=2, progress=False),
                gb.agg(lambda x: slow(x).sum()))  # fmt: skip


def _fails_on_group(key):
    return notebook_function(
        f"""
        def check(x):
            if (x.index.str.len() > 0).all() and "{key}" in set(KEYS.loc[x.index]):
                raise ZeroDivisionError("bad group")
            return x - x.min()
        """,
        "check",
    )


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
def test_errors_name_the_group(serial):
    df = grouped_frame()
    options = {"progress": False} if serial else GPAR
    check = _fails_on_group("d")
    check.__globals__["KEYS"] = df["k"]
    for gb in (df.groupby("k"), df.groupby("k")["v"]):
        with pytest.raises(ZeroDivisionError, match=r"group 'd' raised ZeroDivisionError"):
            gb.parmap.transform(check, **options)
        with pytest.raises(ZeroDivisionError, match=r"group 'd' raised ZeroDivisionError"):
            gb.parmap.agg(lambda x: check(x).sum(), **options)


def test_collect_marks_the_failing_group_and_keeps_the_rest():
    df = grouped_frame()
    check = _fails_on_group("d")
    check.__globals__["KEYS"] = df["k"]
    gb = df.groupby("k")

    def expected_transform(x):
        return x * np.nan if "d" in set(df["k"].loc[x.index]) else x - x.min()

    got = gb.parmap.transform(check, errors="collect", **GPAR)
    assert_same(got, gb.transform(expected_transform))
    assert [f.item for f in got.attrs["parmap_failures"]] == ["d"]
    got = gb["v"].parmap.agg(lambda x: check(x).sum(), errors="collect", **GPAR)
    assert_same(got, gb["v"].agg(lambda x: np.nan if x.iloc[0] == 5 else (x - x.min()).sum()))
    assert [f.item for f in got.attrs["parmap_failures"]] == ["d"]
    assert isinstance(got.attrs["parmap_failures"][0].exception, ZeroDivisionError)


def test_collect_in_a_transform_on_pandas_fast_path():
    """DataFrameGroupBy.transform tries func on a piece's first whole group ("fast
    path") and then calls it so on every group: a later group failing there leaves NaN
    in its rows (not a scalar pandas cannot place), and the probe itself is not a
    failure."""
    df = grouped_frame(kind="datetimes")[["k", "v", "w"]]
    gb = df.groupby("k")

    d_rows = df.index[df["k"] == "d"]

    def doubled(g):
        if isinstance(g, pd.DataFrame) and g.index.isin(d_rows).any():  # 'd', whole
            raise ValueError("no d")
        return g * 2

    got = gb.parmap.transform(doubled, errors="collect", **GPAR)
    assert_same(got, gb.transform(lambda g: g * (np.nan if g.index.isin(d_rows).any() else 2)))
    assert [(f.item, type(f.exception)) for f in got.attrs["parmap_failures"]] == [
        ("d", ValueError)
    ]
