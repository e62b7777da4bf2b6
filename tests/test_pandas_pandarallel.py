"""What pandarallel's users report (its issue tracker), each pinned here as something
that must not happen with the ``.parmap`` accessors: a second call that hangs, the real
error hidden behind an EOFError or shown only after every task ran, memory growing
across calls, a pandas release that breaks ``import``. (Notebook globals under spawn,
"Can't pickle local object" and one bar per worker are pinned in a real kernel:
tests/test_kernel_pandas.py.)"""

from __future__ import annotations

import os

import psutil
import pytest
from conftest import notebook_function, run_python, workers

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

import ipyparmap  # noqa: E402, F401  (after pandas: registers the accessors at once)

pytestmark = pytest.mark.usefixtures("no_leaks_after_module")


def test_second_and_later_calls_run_after_success_errors_and_crashes():
    # in a fresh interpreter with a bound: a hang fails the test instead of the suite
    out = run_python(
        """
        import os
        import pandas as pd, ipyparmap as pm
        opts = dict(workers=2, chunksize=10, progress=False)
        df = pd.DataFrame({"a": range(100)})
        def boom(row):
            if row["a"] == 42:
                raise ValueError("row 42")
            return row["a"]
        def crash(row):
            if row["a"] == 42:
                os._exit(1)
            return row["a"]
        print(df.parmap.apply(lambda r: r["a"] * 2, axis=1, **opts).sum())
        print(df.parmap.apply(lambda r: r["a"] * 2, axis=1, **opts).sum())
        try:
            df.parmap.apply(boom, axis=1, **opts)
        except ValueError as exc:
            print("ValueError", str(exc).splitlines()[0])
        print(df.parmap.apply(lambda r: r["a"] * 3, axis=1, **opts).sum())
        got = df.parmap.apply(crash, axis=1, errors="collect", **opts)
        print("collected", int(got.isna().sum()), got.attrs["parmap_failures"][0].kind)
        print(df.groupby(df["a"] % 7).parmap.apply(lambda g: g["a"].sum(), **opts).sum())
        print(df["a"].rolling(3).parmap.apply(lambda w: w.max(), **opts).sum())
        """,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "9900",
        "9900",
        "ValueError row 42 (position 42) raised ValueError: row 42",
        "14850",
        "collected 10 crashed",
        "4950",
        "4949.0",
    ]
    assert "EOFError" not in out.stderr


def test_the_error_comes_without_waiting_for_every_row(tmp_path):
    """errors="raise" stops at the first failing row: the pieces after it never run
    (counted by the rows that ran, not timed)."""
    ran = tmp_path / "ran"
    ran.mkdir()
    func = notebook_function(
        f"""
        import os, time
        def slow_then_fail(x):
            open(os.path.join({str(ran)!r}, str(x)), "w").close()
            if x == 0:
                raise OSError("the first row")
            time.sleep(0.05)
            return x
        """,
        "slow_then_fail",
    )
    s = pd.Series(range(200))
    with pytest.raises(
        OSError, match=r"row 0 \(position 0\) raised OSError: the first row"
    ) as info:
        s.parmap.map(func, workers=2, chunksize=5, progress=False)
    assert not isinstance(info.value, EOFError) and "EOFError" not in info.value.failure.traceback
    assert len(os.listdir(ran)) < 200  # most pieces never started


def _total_rss() -> int:
    me = psutil.Process()
    return me.memory_info().rss + sum(
        p.memory_info().rss for p in me.children(recursive=True) if p.is_running()
    )


def test_memory_does_not_grow_across_repeated_calls():
    df = pd.DataFrame({"a": np.arange(20_000), "b": np.arange(20_000) * 0.5,
                       "s": [f"t{i}" for i in range(20_000)]})  # fmt: skip

    def work(row):
        return row["a"] + row["b"]

    expected = df.apply(work, axis=1)
    options = {"workers": 2, "chunksize": 2_000, "progress": False}
    for _ in range(3):  # warm up: the pool, imports in the workers, caches
        df.parmap.apply(work, axis=1, **options)
    samples = []
    for _ in range(8):
        got = df.parmap.apply(work, axis=1, **options)
        samples.append(_total_rss())
    pd.testing.assert_series_equal(got, expected)
    # A leak grows with every call (pandarallel's users saw the frame's size per
    # call); allocator noise is a few MB: the late lows stay near the early highs.
    growth = min(samples[-3:]) - max(samples[:2])
    assert growth < 40 * 2**20, [s // 2**20 for s in samples]
    assert len(workers()) == 2  # the same two workers, none left behind


def test_import_survives_a_pandas_that_breaks_the_accessors():
    """A pandas release that changes the extension API must not break ``import
    ipyparmap`` or ``import pandas``: the accessors are left out with a warning."""
    out = run_python(
        """
        import warnings
        import pandas as pd
        pd.api.extensions.register_series_accessor = None  # as if a release removed it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import ipyparmap as pm
        print([str(w.message) for w in caught])
        print(list(pm.parmap(abs, [-1, -2], workers=1, progress=False)))
        print(hasattr(pd.Series, "parmap"))
        """
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "the pandas accessors are not available" in lines[0]
    assert lines[1:] == ["[1, 2]", "False"]


def test_import_without_pandas_and_pandas_that_fails_to_import():
    out = run_python(
        """
        import sys
        sys.modules["pandas"] = None  # not installed
        import ipyparmap as pm
        print(list(pm.parmap(abs, [-3], workers=1, progress=False)))
        try:
            pm.register_pandas()
        except ImportError as exc:
            print("ImportError")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[3]", "ImportError"]
    # a pandas whose own import fails: its error, unchanged by our import hook
    broken = run_python(
        """
        import sys, types, importlib.abc, importlib.util
        class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                if name == "pandas":
                    return importlib.util.spec_from_loader(name, self)
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                raise RuntimeError("pandas is broken")
        sys.meta_path.append(Broken())
        import ipyparmap
        for finder in list(sys.meta_path):  # only ours may come before it
            if type(finder).__name__ not in ("AfterImport", "Broken"):
                sys.meta_path.remove(finder)
                sys.meta_path.append(finder)
        try:
            import pandas
        except RuntimeError as exc:
            print("RuntimeError", exc)
        print(list(ipyparmap.parmap(abs, [-4], workers=1, progress=False)))
        """
    )
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.splitlines() == ["RuntimeError pandas is broken", "[4]"]
