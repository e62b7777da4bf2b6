"""The one formatting module: how counts, durations, sizes and workers read everywhere."""

from __future__ import annotations

import pytest

from ipyparmap import figures


@pytest.mark.parametrize(
    ("seconds", "line", "fine"),
    [
        (None, "?", "?"),
        (0.0, "0.00 s", "0.0 ms"),
        (0.0029, "0.00 s", "2.9 ms"),
        (0.256, "0.26 s", "256.0 ms"),
        (3.21, "3.2 s", "3.2 s"),
        (75, "1:15", "1:15"),
        (3700, "1:01:40", "1:01:40"),
    ],
)
def test_format_seconds(seconds, line, fine):
    assert figures.format_seconds(seconds) == line
    assert figures.format_seconds(seconds, fine=True) == fine  # the report's table


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1536, "1.5 KB"),
        (50 * 1024**2, "50.0 MB"),
        (3 * 1024**5, "3072.0 TB"),
    ],
)
def test_format_bytes(size, text):
    assert figures.format_bytes(size) == text


@pytest.mark.parametrize(
    ("worker", "label"),
    [
        (1234, "pid 1234"),
        ("1234", "pid 1234"),  # a PID that went through text
        ("tcp://10.0.0.5:40123", "10.0.0.5:40123"),  # a Dask address
        ("host:42", "host:42"),  # an executor's host:pid
        ("host<1>:42", "host<1>:42"),  # plain text: HTML views escape it
    ],
)
def test_worker_label_is_one_rule_for_panel_and_timeline(worker, label):
    assert figures.worker_label(worker) == label


def test_summary_parts():
    line = figures.summary_line(80, 100, {"error": 1}, 3.21, 2, 1.93)
    assert line == "80/100 done, 1 error, 3.2 s, workers busy 1.93 of 2"
    # with cancelled items the busy figure could only be too low: left out
    line = figures.summary_line(80, 100, {"error": 1, "cancelled": 19}, 3.21, 2, 1.93)
    assert line == "80/100 done, 19 cancelled, 1 error, 3.2 s, on 2 workers"
    assert figures.summary_line(5, 5, {}, 0.4, 1, 0.9) == "5/5 done, 0 failed, 0.40 s, on 1 worker"
    assert figures.summary_line(7, None, {"crashed": 0}, 1.0, 0) == "7 done, 0 failed, 1.0 s"
    kinds = {"error": 1, "timeout": 2, "cancelled": 19, "pending": 4}
    assert figures.failed_parts(kinds) == ["1 error", "2 timeout"]  # the ones views colour


def test_status_parts():
    parts = figures.status_parts(43, 100, 2, 12.34, 3.1, eta=4.2)
    assert parts == ["43/100 done", "2 failed", "12.3 items/s", "3.1 s", "ETA 4.2 s"]
    assert figures.status_parts(9, None, 0, 0.0, 0.2) == [
        "9 done",
        "0 failed",
        "0.0 items/s",
        "0.20 s",
    ]
