"""pandas in a real Jupyter kernel: the ``%%parmap`` forms that walk a frame
(``df.iterrows()``, ``df.groupby(k)``, with tuple targets) and the accessors with what
a notebook defines (functions, lambdas, closures, globals; spawned workers), as
pandarallel's users meet them: no NameError, no "Can't pickle local object", the real
error with the cell's line, a second call that runs, one progress display per call."""

from __future__ import annotations

import pytest

pytest.importorskip("pandas")
pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")
from kernel_tools import running_kernel

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

SETUP = """
import pandas as pd, numpy as np
import ipyparmap as pm
SCALE = 10
df = pd.DataFrame({"k": list("bacab") * 8, "v": np.arange(40), "w": np.arange(40) * 0.5},
                  index=[f"r{i}" for i in range(40)])
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    with running_kernel(tmp_path_factory.mktemp("kernel-pandas")) as k:
        reply = k.run(SETUP)
        assert reply.status == "ok", reply.traceback
        yield k


def _ok(kernel, code: str, timeout: float = 120):
    reply = kernel.run(code, timeout=timeout)
    assert reply.status == "ok", reply.traceback
    return reply


def test_magic_over_iterrows_unpacks_label_and_row(kernel):
    _ok(kernel, "%%parmap -o rows label, row in df.iterrows() --no-progress\n"
                "(label, row['v'] * SCALE + row['w'])")  # fmt: skip
    reply = _ok(kernel, "print(list(rows) == [(i, r['v'] * SCALE + r['w']) for i, r in df.iterrows()],"
                        " rows[7])")  # fmt: skip
    assert reply.stdout.strip() == "True ('r7', 73.5)"


def test_magic_over_groupby_unpacks_key_and_group(kernel):
    _ok(kernel, "%%parmap -o sums key, group in df.groupby('k') --no-progress\n"
                "key, int(group['v'].sum()), list(group.index[:2])")  # fmt: skip
    reply = _ok(kernel, "print(list(sums) == [(k, int(g['v'].sum()), list(g.index[:2]))"
                        " for k, g in df.groupby('k')])\nprint(sums[0])")  # fmt: skip
    assert reply.stdout.split("\n")[:2] == ["True", "('a', 312, ['r1', 'r3'])"]


def test_accessors_with_notebook_functions_lambdas_closures_and_globals(kernel):
    _ok(kernel, "def make_scaler(factor):\n"
                "    def scaled(row):  # a local object: pandarallel's spawn fails on it\n"
                "        return helper(row['v']) * factor + SCALE\n"
                "    return scaled\n"
                "def helper(x):\n"
                "    return x + 1\n")  # fmt: skip
    reply = _ok(
        kernel,
        "opts = dict(workers=2, chunksize=6, progress=False)\n"  # several pieces, in workers
        "checks = [\n"
        "  df.parmap.apply(make_scaler(3), axis=1, **opts).equals(df.apply(make_scaler(3), axis=1)),\n"
        "  df['v'].parmap.map(lambda x: x * SCALE, **opts).equals(df['v'].map(lambda x: x * SCALE)),\n"
        "  df.groupby('k').parmap.apply(lambda g: helper(g['v'].sum()), **opts).equals(\n"
        "      df.groupby('k').apply(lambda g: helper(g['v'].sum()))),\n"
        "  df['w'].rolling(3).parmap.apply(lambda w: w.sum() * SCALE, **opts).equals(\n"
        "      df['w'].rolling(3).apply(lambda w: w.sum() * SCALE)),\n"
        "]\n"
        "print(checks)",
    )
    assert reply.stdout.strip() == "[True, True, True, True]"
    assert "NameError" not in reply.stderr and "pickle" not in reply.stderr
    # a second and third call, the globals changed between them: no hang, no stale value
    again = _ok(
        kernel, "SCALE = 1000\nprint(df['v'].parmap.map(lambda x: x * SCALE, **opts).iloc[3])"
    )
    assert again.stdout.strip() == "3000"
    third = _ok(
        kernel, "print(df['v'].parmap.map(lambda x: x * SCALE, **opts).iloc[4])\nSCALE = 10"
    )
    assert third.stdout.strip() == "4000"


def test_an_error_is_the_real_error_naming_the_row_and_the_cell_line(kernel):
    code = (
        "LIMITS = {f'r{i}': i for i in range(40) if i != 22}\n"
        "def lookup(row):\n"
        "    return LIMITS[row.name]  # no key 'r22'\n"
        "try:\n"
        "    df.parmap.apply(lookup, axis=1, workers=2, chunksize=6, progress=False)\n"
        "except KeyError as exc:\n"
        "    print('caught', type(exc).__name__, isinstance(exc, pm.TaskError))\n"
        "    print(str(exc).splitlines()[0])\n"
    )
    reply = _ok(kernel, code)
    lines = reply.stdout.splitlines()
    assert lines[0] == "caught TaskError True"
    assert lines[1] == "row 'r22' (position 22) raised KeyError: 'r22'"
    # not caught: the cell shows the function's own line, and no EOFError anywhere
    failed = kernel.run("df.parmap.apply(lookup, axis=1, workers=2, chunksize=6, progress=False)")
    assert failed.status == "error"
    assert failed.error["ename"] in ("TaskError", "KeyError")
    assert "return LIMITS[row.name]  # no key 'r22'" in failed.traceback
    assert "EOFError" not in failed.traceback
    # and the next call runs
    assert _ok(kernel, "print(df['v'].parmap.map(abs, workers=2, chunksize=6, progress=False).sum())"
               ).stdout.strip() == "780"  # fmt: skip


def test_one_progress_display_per_call_counting_rows(kernel):
    reply = _ok(kernel, "_ = df.parmap.apply(lambda r: r['v'], axis=1, workers=2, chunksize=5,"
                        " progress='text')")  # fmt: skip
    assert "40/40 rows done" in reply.stderr
    widget = _ok(kernel, "_ = df.parmap.apply(lambda r: r['v'], axis=1, workers=2, chunksize=5,"
                         " progress='widget')")  # fmt: skip
    # one display for the call, not one bar per worker: a run this short leaves the
    # panel's static summary (a longer one shows the live panel in its place)
    assert len(widget.displays) == 1, widget.displays
    (shown,) = widget.displays
    assert WIDGET_VIEW in shown or "40/40 rows done" in shown["text/plain"], shown
    assert "VBox(" not in widget.stdout + widget.stderr
