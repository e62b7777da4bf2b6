"""Run statistics, the timeline chart, the HTML report and the DataFrame export."""

from __future__ import annotations

import io
import pickle
import xml.etree.ElementTree as ET

import helpers
import pytest

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def run():
    items = [(i, 0.05 * (1 + i % 3)) for i in range(12)]
    items[5] = ("run", "raise")
    items[9] = ("run", "_exit")

    def act_or_sleep(x):
        return helpers.act(x) if x[0] == "run" else helpers.sleepy(x)

    res = pm.parmap(act_or_sleep, items, workers=2, chunksize=1, errors="collect")
    yield res
    pm.shutdown()


def test_stats_are_consistent_with_known_durations(run):
    stats = run.stats
    ran = [d for d in run.durations if d is not None]
    assert stats.items == 12 and stats.workers == 2
    assert stats.failures == {"error": 1, "crashed": 1}
    for index in (0, 1, 2):  # each slept 0.05 * (1 + index % 3) seconds, at least
        assert run.durations[index] >= 0.05 * (1 + index % 3)
    assert stats.task_time == pytest.approx(sum(stats.busy.values()))
    assert stats.task_time >= sum(0.05 * (1 + i % 3) for i in range(12) if i not in (5, 9))
    # the crashed item's time, until its worker died, counts too (and is on the chart)
    assert stats.task_time == pytest.approx(sum(ran))
    assert stats.busy_workers == pytest.approx(stats.task_time / stats.wall)
    assert stats.efficiency == pytest.approx(stats.busy_workers / 2)
    assert stats.overhead == pytest.approx(max(0.0, 2 * stats.wall - stats.task_time))
    assert stats.items_per_second == pytest.approx(12 / stats.wall)
    assert stats.peak_rss and set(stats.worker_peak_rss) <= set(stats.busy)
    assert stats.restarts == 1  # the crashed worker was replaced


def test_timeline_is_valid_svg_with_one_lane_per_worker(run):
    svg = run.timeline().svg
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    lanes = [r for r in root.iter(SVG + "rect") if r.get("class") == "lane"]
    workers = {w for w in run.worker_of if w is not None}
    assert len(lanes) == len(workers) >= 2
    bars = [r for r in root.iter(SVG + "rect") if r.get("class") == "item"]
    assert len(bars) == sum(1 for d in run.durations if d is not None)
    colors = {bar.get("fill") for bar in bars}
    assert {"#4c8bf5", "#e8453c", "#8b1a10"} <= colors  # ok, error, crashed
    assert run.timeline()._repr_svg_() == svg


def test_dense_timeline_aggregates_and_stays_small():
    res = pm.parmap(helpers.square, range(100_000), workers=2)
    svg = res.timeline().svg
    root = ET.fromstring(svg)
    columns = [r for r in root.iter(SVG + "rect") if r.get("class") == "column"]
    assert columns and not [r for r in root.iter(SVG + "rect") if r.get("class") == "item"]
    assert len(svg) < 200_000  # pixel columns, not 100,000 bars


def test_report_and_summary_html(run, tmp_path):
    html = run.report()._repr_html_()
    for text in (
        "10/12 done",
        "where the time went",
        "workers busy",
        "overhead",
        "1 crashed",
        "item 5",
        "<svg",
    ):
        assert text in html, text
    summary = run._repr_html_()
    assert "where the time went" in summary and "<svg" not in summary
    run.report().save(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")


def test_to_dataframe_round_trips(run):
    pd = pytest.importorskip("pandas")
    df = run.to_dataframe()
    assert len(df) == 12 and list(df.index) == list(range(12))
    assert df.loc[5, "status"] == "error" and df.loc[9, "status"] == "crashed"
    assert df.loc[0, "value"] == 0 and df.loc[0, "item"] == repr((0, 0.05))
    assert df["duration"].notna().sum() == sum(1 for d in run.durations if d is not None)
    again = pd.read_json(io.StringIO(df.to_json(orient="split")), orient="split")
    assert list(again["status"]) == list(df["status"])


def test_results_keep_timings_when_pickled(run):
    again = pickle.loads(pickle.dumps(run))
    assert again.starts == run.starts and again.durations == run.durations
    assert again.timeline().svg == run.timeline().svg


def test_report_magics():
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    ip.run_cell_magic("parmap", "-o squares x in range(6) -w 2", "x * x")
    report = ip.run_line_magic("parmap_report", "")
    assert "6/6 done" in report._repr_html_()
    assert "6/6 done" in ip.run_line_magic("parmap_report", "squares")._repr_html_()
    ip.user_ns["number"] = 5
    with pytest.raises(UsageError, match="is not a Results"):
        ip.run_line_magic("parmap_report", "number")
    shown = []
    ip.display_pub.publish = lambda data, **kw: shown.append(data)
    try:
        ip.run_cell_magic("parmap", "x in range(3) --report", "x")
    finally:
        del ip.display_pub.publish
    assert any("where the time went" in d.get("text/html", "") for d in shown)


def test_summaries_of_results_made_by_hand_and_of_a_running_snapshot():
    import time

    from ipyparmap.results import Failure, Results, ResultSlots, RunStats

    made = Results([1, Failure(1, "x", "error"), 3])
    assert made.summary() == "2/3 done, 1 error, 0.00 s"  # counted from its slots
    slots = ResultSlots()
    slots.place(range(3), [0, 1, 2])
    slots.place([5], [Failure(5, 5, "error")])
    stats = RunStats(workers=2, failures={"error": 1}, started=time.time())
    snapshot = slots.snapshot(10, stats)
    assert snapshot.summary().startswith("3/10 done, 1 error, 6 pending, ")
    assert stats.failures == {"error": 1} and stats.items == 0  # the run's stats untouched
