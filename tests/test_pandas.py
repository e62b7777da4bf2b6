"""The pandas accessors (``s.parmap``, ``df.parmap``): each result equals serial pandas
exactly (values, dtypes, index, names), errors name the row, small inputs stay in the
kernel."""

from __future__ import annotations

import os

import pytest
from conftest import notebook_function, run_python, start_python, wait_for

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

from frames_data import INDEXES, assert_same, grouped_frame  # noqa: E402
from frames_data import make_index as _index  # noqa: E402

import ipyparmap as pm  # noqa: E402  (after pandas: the accessors register at once)
from ipyparmap.frames import accessors  # noqa: E402

assert_series_equal = pd.testing.assert_series_equal
assert_frame_equal = pd.testing.assert_frame_equal

#: Run options that force the parallel path on small test inputs: several pieces.
PAR = {"workers": 2, "chunksize": 7, "progress": False}


pytestmark = pytest.mark.usefixtures("no_leaks_after_module")


N = 30


def _frame(kind: str = "range", n: int = N):
    return pd.DataFrame(
        {
            "i": np.arange(n, dtype="int64"),
            "f": np.where(np.arange(n) % 7 == 3, np.nan, np.arange(n) * 0.5),
            "s": [f"t{i}" for i in range(n)],
            "b": np.arange(n) % 2 == 0,
        },
        index=_index(kind, n),
    )


# -------------------------------------------------------------------- registration
def test_import_registers_after_pandas_is_imported_later():
    out = run_python(
        "import sys, ipyparmap\n"
        "print('pandas' in sys.modules)\n"
        "import pandas as pd\n"
        "print(hasattr(pd.Series, 'parmap'), hasattr(pd.DataFrame, 'parmap'))\n"
        "print(pd.Series([1, 2]).parmap.map(lambda x: x + 1, progress=False).tolist())\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "[2,", "3]"]


def test_import_registers_when_pandas_is_imported_first():
    out = run_python(
        "import pandas as pd, ipyparmap\n"
        "print(hasattr(pd.Series, 'parmap'), hasattr(pd.DataFrame, 'parmap'))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    assert "Warning" not in out.stderr


def test_register_pandas_sets_defaults_and_the_serial_size():
    try:
        pm.register_pandas(serial_seconds=0, workers=1, progress=False)
        pids = pd.Series(range(3)).parmap.map(lambda _: os.getpid())
        assert set(pids) != {os.getpid()}  # no serial path: ran in a worker
        with pytest.raises(TypeError, match="not run options"):
            pm.register_pandas(star=True)
    finally:
        pm.register_pandas(serial_seconds=0.01)
    assert accessors.DEFAULTS == {} and accessors.SERIAL_SECONDS == 0.01


# ------------------------------------------------------------------------ Series
@pytest.mark.parametrize("kind", INDEXES)
def test_series_map_equals_pandas(kind):
    s = _frame(kind)["f"].rename("values")

    def func(x):
        return x * 2 if x == x else -1.0

    assert_series_equal(s.parmap.map(func, **PAR), s.map(func))


@pytest.mark.parametrize("kind", INDEXES)
def test_series_of_strings_map_equals_pandas(kind):
    s = _frame(kind)["s"]
    assert_series_equal(s.parmap.map(str.upper, **PAR), s.map(str.upper))
    assert_series_equal(s.parmap.map(len, **PAR), s.map(len))


@pytest.mark.parametrize(
    "func",
    [
        lambda x: np.nan if x == 20 else x,  # ints in some pieces, a NaN in one
        lambda x: np.nan if x == 20 else x > 3,  # bools beside a NaN: object
        lambda x: "text" if x == 20 else x,  # ints beside a string: object
        lambda x: None if x == 20 else x * 1.5,  # None among floats
        lambda x: pd.NaT if x == 20 else pd.Timestamp("2024-01-01") + pd.Timedelta(days=x),
        lambda x: 2.5 if x == 20 else x,  # ints beside a float
        # whole pieces of None (rows 21-27, 28-29): a naive concat would give object
        lambda x: None if x >= 21 else x,
        lambda x: None if x >= 21 else f"s{x}",
        lambda x: None if x >= 21 else pd.Timedelta(seconds=x),
    ],
    ids=[
        "int-nan",
        "bool-nan",
        "int-str",
        "float-none",
        "datetime-nat",
        "int-float",
        "int-none-piece",
        "str-none-piece",
        "timedelta-none-piece",
    ],
)
def test_pieces_with_different_dtypes_combine_as_pandas_infers(func):
    s = pd.Series(range(N), index=_index("strings", N))
    assert_series_equal(s.parmap.map(func, **PAR), s.map(func))
    assert_series_equal(s.parmap.apply(func, **PAR), s.apply(func))
    df = pd.DataFrame({"x": range(N), "y": range(N)}, index=_index("duplicates", N))
    assert_frame_equal(df.parmap.map(func, **PAR), df.map(func))


def test_expanded_rows_with_a_column_missing_in_whole_pieces():
    df = _frame("strings")

    def func(row):
        return pd.Series({"n": row["i"], "maybe": None if row["i"] >= 14 else row["i"]})

    assert_frame_equal(df.parmap.apply(func, axis=1, **PAR), df.apply(func, axis=1))


def test_series_map_na_action():
    s = _frame("datetimes")["f"]
    assert_series_equal(s.parmap.map(lambda x: x + 1, na_action="ignore", **PAR),
                        s.map(lambda x: x + 1, na_action="ignore"))  # fmt: skip


def test_series_map_with_a_mapping_is_pandas_own():
    s = pd.Series([1, 2, 3])
    assert_series_equal(s.parmap.map({1: "a", 2: "b"}), s.map({1: "a", 2: "b"}))


def test_series_apply_with_args_and_kwargs():
    s = _frame("multi")["i"]

    def func(x, a, b=0, *, c=1):
        return x * a + b - c

    got = s.parmap.apply(func, args=(3,), b=2, c=5, **PAR)
    assert_series_equal(got, s.apply(func, args=(3,), b=2, c=5))


def test_series_apply_returning_series_makes_a_frame():
    s = _frame("strings")["i"]

    def func(x):
        return pd.Series({"twice": 2 * x, "name": f"n{x}"})

    assert_frame_equal(s.parmap.apply(func, **PAR), s.apply(func))


# --------------------------------------------------------------------- DataFrame
@pytest.mark.parametrize("kind", INDEXES)
def test_frame_apply_rows_equals_pandas(kind):
    df = _frame(kind)

    def total(row):
        return row["i"] + (row["f"] if row["f"] == row["f"] else 0)

    def expand(row):
        return pd.Series({"twice": row["i"] * 2, "tag": row["s"] + "!"})

    assert_series_equal(df.parmap.apply(total, axis=1, **PAR), df.apply(total, axis=1))
    assert_frame_equal(df.parmap.apply(expand, axis=1, **PAR), df.apply(expand, axis=1))
    assert_series_equal(df.parmap.apply(lambda r: r.name, axis="columns", **PAR),
                        df.apply(lambda r: r.name, axis="columns"))  # fmt: skip


@pytest.mark.parametrize("result_type", [None, "expand", "reduce", "broadcast"])
def test_frame_apply_result_type(result_type):
    df = _frame("strings")[["i", "f"]]

    def func(row):
        return [row["i"], row["i"] * 2] if result_type != "broadcast" else row * 2

    got = df.parmap.apply(func, axis=1, result_type=result_type, **PAR)
    assert_frame_equal(*(x if isinstance(x, pd.DataFrame) else x.to_frame()
                         for x in (got, df.apply(func, axis=1, result_type=result_type))))  # fmt: skip


def test_frame_apply_raw_rows_and_columns():
    df = _frame("datetimes")[["i", "f"]]
    assert_series_equal(df.parmap.apply(np.nansum, axis=1, raw=True, **PAR),
                        df.apply(np.nansum, axis=1, raw=True))  # fmt: skip
    assert_series_equal(df.parmap.apply(lambda a: a.max(), raw=True, **PAR),
                        df.apply(lambda a: a.max(), raw=True))  # fmt: skip


def test_frame_apply_columns():
    df = pd.DataFrame(np.arange(40.0).reshape(4, 10), index=list("wxyz"),
                      columns=[f"c{i}" for i in range(10)])  # fmt: skip
    options = {**PAR, "chunksize": 3}
    assert_series_equal(df.parmap.apply(lambda c: c.sum(), **options), df.apply(lambda c: c.sum()))
    assert_frame_equal(
        df.parmap.apply(lambda c: c * 2, axis=0, **options), df.apply(lambda c: c * 2)
    )


@pytest.mark.parametrize("kind", INDEXES)
def test_frame_map_equals_pandas(kind):
    df = _frame(kind)
    assert_frame_equal(df.parmap.map(repr, **PAR), df.map(repr))
    numbers = df[["i", "f"]]
    assert_frame_equal(numbers.parmap.map(lambda x: x * 3, na_action="ignore", **PAR),
                       numbers.map(lambda x: x * 3, na_action="ignore"))  # fmt: skip


def test_notebook_functions_and_their_globals():
    func = notebook_function(
        """
        SCALE = 10
        def scaled(row):
            return helper(row["i"]) * SCALE
        def helper(x):
            return x + 1
        """,
        "scaled",
    )
    df = _frame("strings")
    assert_series_equal(df.parmap.apply(func, axis=1, **PAR), df.apply(func, axis=1))


def test_threads_backend():
    df = _frame("multi")
    assert_series_equal(df.parmap.apply(lambda r: r["i"] * 2, axis=1, backend="threads", **PAR),
                        df.apply(lambda r: r["i"] * 2, axis=1))  # fmt: skip


# --------------------------------------------------------------------------- errors
def _fails_on(bad_value):
    return notebook_function(
        f"""
        def check(x):
            value = x["i"] if hasattr(x, "index") else x
            if value == {bad_value}:
                raise KeyError("no such thing")
            return value * 2
        """,
        "check",
    )


@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
def test_raise_names_the_row_by_its_label(serial):
    options = {"progress": False} if serial else PAR
    df = _frame("datetimes")
    check = _fails_on(17)
    with pytest.raises(KeyError) as info:
        df.parmap.apply(check, axis=1, **options)
    assert isinstance(info.value, pm.TaskError)
    assert "row Timestamp('2024-01-01 17:00:00')" in str(info.value)
    assert "position 17" in str(info.value)
    assert info.value.failure.item == df.index[17]
    with pytest.raises(KeyError, match=r"row 'row17' \(position 17\)"):
        _frame("strings")["i"].parmap.map(check, **options)


def test_raise_in_frame_map_names_row_and_column():
    df = pd.DataFrame({"a": range(N), "b": range(100, 100 + N)}, index=_index("strings", N))
    with pytest.raises(KeyError, match=r"row 'row9' \(position 9\), column 'b'"):
        df.parmap.map(_fails_on(109), **PAR)
    with pytest.raises(KeyError, match=r"column 'c4'"):
        pd.DataFrame({f"c{i}": [i] for i in range(10)}).parmap.apply(
            lambda c: _fails_on(4)(c.iloc[0]), **{**PAR, "chunksize": 3}
        )


def test_collect_marks_the_failing_rows_and_keeps_the_rest():
    s = pd.Series(range(N), index=_index("strings", N), name="n")
    check = _fails_on(11)
    got = s.parmap.map(check, errors="collect", **PAR)
    expected = s.map(lambda x: np.nan if x == 11 else x * 2)
    assert_series_equal(got, expected)
    (failure,) = got.attrs["parmap_failures"]
    assert (failure.index, failure.item, failure.kind) == (11, "row11", "error")
    assert isinstance(failure.exception, KeyError)
    assert "no such thing" in failure.traceback


def test_collect_with_expanded_rows_when_a_piece_first_row_fails():
    df = _frame("strings")

    def func(row):
        if row["i"] in (7, 8):  # 7: the first row of the second piece
            raise ValueError("bad row")
        return pd.Series({"twice": row["i"] * 2, "tag": row["s"]})

    got = df.parmap.apply(func, axis=1, errors="collect", **PAR)
    expected = df.drop(index=["row7", "row8"]).apply(func, axis=1).reindex(df.index)
    assert_frame_equal(got, expected)
    assert [f.item for f in got.attrs["parmap_failures"]] == ["row7", "row8"]


def test_collect_in_the_serial_path():
    s = pd.Series([1, 2, 3], index=["a", "b", "c"])
    got = s.parmap.map(_fails_on(2), errors="collect", progress=False)
    assert_series_equal(got, pd.Series([2.0, np.nan, 6.0], index=["a", "b", "c"]))
    assert [f.item for f in got.attrs["parmap_failures"]] == ["b"]


# ---------------------------------------------------------------------- small inputs
def test_small_inputs_run_in_the_kernel(monkeypatch):
    from ipyparmap.frames import accessors

    # a window no loaded machine overruns for 500 trivial rows (the default is 10 ms)
    monkeypatch.setattr(accessors, "SERIAL_SECONDS", 2.0)
    s = pd.Series(range(500), index=_index("strings", 500))
    got = s.parmap.map(lambda _: os.getpid(), progress=False)
    assert set(got) == {os.getpid()}
    assert_series_equal(got, s.map(lambda _: os.getpid()))


def test_slow_rows_go_to_the_workers_after_the_first_ones():
    import time

    def slow(_):
        time.sleep(0.03)  # one row outlasts SERIAL_SECONDS (10 ms), however loaded the machine
        return os.getpid()

    s = pd.Series(range(40), index=_index("datetimes", 40))
    got = s.parmap.map(slow, workers=2, progress=False)
    assert got.iloc[0] == os.getpid()  # the first row in the kernel, then no more
    assert os.getpid() not in set(got.iloc[1:])
    assert got.index.equals(s.index) and got.dtype == "int64"


def test_bad_options_are_refused():
    s = pd.Series(range(3))
    with pytest.raises(ValueError, match="errors must be"):
        s.parmap.map(str, errors="ignore")
    with pytest.raises(ValueError, match="chunksize"):
        s.parmap.map(str, chunksize=0)
    with pytest.raises(TypeError, match="need a function"):
        s.parmap.apply("sum")
    with pytest.raises(NotImplementedError, match="by_row=False"):
        s.parmap.apply(sum, by_row=False)


def _slow_row(fail_at=None):
    return notebook_function(
        f"""
        import time
        def slow_row(row):
            time.sleep(0.003)
            if row["i"] == {fail_at}:
                raise ValueError("bad row")
            return pd.Series({{"twice": row["i"] * 2, "half": None if row["i"] > 30 else row["f"]}})
        """,
        "slow_row",
        pd=pd,
    )


def test_kernel_and_worker_pieces_combine_as_pandas():
    df = _frame("multi", 40)
    func = _slow_row()
    assert_frame_equal(df.parmap.apply(func, axis=1, workers=2, progress=False),
                       df.apply(func, axis=1))  # fmt: skip


@pytest.mark.parametrize("fail_at", [1, 33], ids=["in-kernel", "in-worker"])
def test_errors_where_the_rows_ran(fail_at):
    df = _frame("strings", 40)
    with pytest.raises(ValueError, match=rf"row 'row{fail_at}' \(position {fail_at}\)"):
        df.parmap.apply(_slow_row(fail_at), axis=1, workers=2, progress=False)
    got = df.parmap.apply(_slow_row(fail_at), axis=1, workers=2, progress=False, errors="collect")
    good = _slow_row()
    expected = df.drop(index=f"row{fail_at}").apply(good, axis=1).reindex(df.index)
    assert_frame_equal(got, expected)
    assert [f.item for f in got.attrs["parmap_failures"]] == [f"row{fail_at}"]


# -------------------------------------------------------------------------- groupby
GROUP_FUNCS = {
    "scalar": lambda g: g["v"].sum(),
    "series": lambda g: pd.Series({"a": g["v"].sum(), "b": g["w"].mean()}),
    "head": lambda g: g.head(2),
    "transform": lambda g: g * 2,
}
GPAR = {"workers": 2, "chunksize": 2, "progress": False}


@pytest.mark.parametrize("name", list(GROUP_FUNCS))
@pytest.mark.parametrize("group_keys", [True, False])
@pytest.mark.parametrize("by", ["k", ["k", "k2"]], ids=["one-key", "two-keys"])
def test_groupby_apply_equals_pandas(by, group_keys, name):
    gb = grouped_frame().groupby(by, group_keys=group_keys)
    func = GROUP_FUNCS[name]
    assert_same(gb.parmap.apply(func, **GPAR), gb.apply(func))


@pytest.mark.parametrize("group_keys", [True, False])
@pytest.mark.parametrize("name", ["sum", "cumsum", "describe"])
def test_series_groupby_apply_equals_pandas(name, group_keys):
    gb = grouped_frame().groupby("k", group_keys=group_keys)["v"]
    func = {
        "sum": lambda g: g.sum(),
        "cumsum": lambda g: g.cumsum(),
        "describe": lambda g: g.describe(),
    }[name]
    assert_same(gb.parmap.apply(func, **GPAR), gb.apply(func))


def test_groupby_keys_that_are_not_columns_and_unsorted_groups():
    df = grouped_frame()
    func = GROUP_FUNCS["scalar"]
    for gb in (df.groupby(df["k"].str.upper()), df.groupby("k", sort=False),
               df.groupby(level=0), df.groupby(df["k"].astype("category"), observed=True)):  # fmt: skip
        assert_same(gb.parmap.apply(func, **GPAR), gb.apply(func))
    gb = df.groupby("k")
    assert_same(gb.parmap.apply(func, progress=False), gb.apply(func))  # kernel first


def test_groupby_errors_name_the_group():
    def func(g):
        if g.name == "d":
            raise ZeroDivisionError("no d")
        return g["v"].sum()

    gb = grouped_frame().groupby("k")
    with pytest.raises(ZeroDivisionError, match=r"group 'd' raised ZeroDivisionError: no d"):
        gb.parmap.apply(func, **GPAR)
    got = gb.parmap.apply(func, errors="collect", **GPAR)
    expected = gb.apply(lambda g: np.nan if g.name == "d" else g["v"].sum())
    assert_series_equal(got, expected)
    assert [f.item for f in got.attrs["parmap_failures"]] == ["d"]


EDGE_CASES = {
    "categorical": lambda: (pd.Series(pd.Categorical(list("abcab") * 6)), "map", str.upper),
    "tz-aware index": lambda: (
        pd.Series(range(30), index=pd.date_range("2024", periods=30, tz="Europe/Paris")),
        "map",
        lambda x: x * 2,
    ),
    "Int64 with NA": lambda: (
        pd.Series(pd.array([1, None, 3] * 10, dtype="Int64")),
        "map",
        lambda x: x,
    ),
    "timestamps": lambda: (pd.Series(pd.date_range("2024", periods=30)), "map", lambda t: t.day),
    "empty series": lambda: (pd.Series([], dtype=float), "map", lambda x: x),
    "empty frame rows": lambda: (pd.DataFrame({"a": []}), "apply1", lambda r: 1),
    "dict per row": lambda: (pd.DataFrame({"a": range(30)}), "apply1", lambda r: {"q": r["a"]}),
    "tuple per row": lambda: (
        pd.DataFrame({"a": range(30), "b": list("xy") * 15}),
        "apply1",
        lambda r: (r["a"], r["b"]),
    ),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_equal_pandas(case):
    obj, how, func = EDGE_CASES[case]()
    if how == "map":
        got, expected = obj.parmap.map(func, **PAR), obj.map(func)
    else:
        got, expected = obj.parmap.apply(func, axis=1, **PAR), obj.apply(func, axis=1)
    assert_same(got, expected)


@pytest.mark.parametrize("dropna", [True, False])
def test_groupby_with_missing_keys(dropna):
    df = pd.DataFrame({"k": [1, 1, np.nan, 2] * 8, "v": range(32)})
    for group_keys, func in ((True, GROUP_FUNCS["scalar"]), (False, lambda g: g * 2)):
        gb = df.groupby("k", dropna=dropna, group_keys=group_keys)
        assert_same(gb.parmap.apply(func, **GPAR), gb.apply(func))


def test_errors_mode_from_config_parmap():
    from ipyparmap import api

    api.configure_defaults({"errors": "collect"})
    try:
        got = pd.Series(range(N)).parmap.map(_fails_on(3), **PAR)
    finally:
        api.configure_defaults({})
    assert np.isnan(got.iloc[3]) and got.iloc[4] == 8
    assert [f.index for f in got.attrs["parmap_failures"]] == [3]


INTERRUPTED_FRAME = """
import os, time
import pandas as pd, ipyparmap as pm

def work(row):
    if row["i"] >= 10:  # the third and fourth pieces: busy until interrupted
        open(os.path.join(TMP, f"busy-{row['i']}"), "w").close()
        time.sleep(60)
    return row["i"] * 2

df = pd.DataFrame({"i": range(30)}, index=[f"r{i}" for i in range(30)])
try:
    df.parmap.apply(work, axis=1, workers=2, chunksize=5, progress=False)
except pm.Interrupted as exc:
    got = exc.results
    print("TYPE", type(got).__name__, isinstance(exc, KeyboardInterrupt), flush=True)
    print("DONE", got.iloc[:10].tolist(), int(got.isna().sum()), flush=True)
    failures = got.attrs["parmap_failures"]
    print("CANCELLED", len(failures), sorted({f.kind for f in failures}), failures[0].item, flush=True)
    print("AGAIN", df.head(3).parmap.apply(lambda r: r["i"], axis=1, progress=False).tolist(), flush=True)
"""


def test_interrupt_keeps_the_finished_rows(tmp_path):
    """Ctrl-C during a call: pm.Interrupted's ``.results`` is the frame so far, pandas'
    values for the rows that finished, the others missing and listed as cancelled."""
    import signal

    from test_interrupt import _read_line_with

    proc = start_python(INTERRUPTED_FRAME.replace("TMP", repr(str(tmp_path))))
    try:
        wait_for(lambda: {p.name for p in tmp_path.iterdir()} >= {"busy-10", "busy-15"},
                 timeout=60, what="the two slow pieces to start")  # fmt: skip
        os.kill(proc.pid, signal.SIGINT)
        assert _read_line_with(proc, "TYPE", 30) == "TYPE Series True"
        done = _read_line_with(proc, "DONE", 30)
        assert done == f"DONE {[i * 2.0 for i in range(10)]} 20"  # NaN rows make floats
        assert _read_line_with(proc, "CANCELLED", 30) == "CANCELLED 20 ['cancelled'] r10"
        assert _read_line_with(proc, "AGAIN", 60) == "AGAIN [0, 1, 2]"
    finally:
        proc.kill()
        proc.wait(30)
