"""Where the time went: the timeline chart and the run report (layer: views.report).

Pure functions from a Results' data (per-item start, duration, worker, outcome, read
through ``results.outcomes()``) to SVG and HTML strings: no plotting library, no
IPython; from the package only the wording of ``figures`` (bottom layer). The chart has one lane
per worker and a bar per item, coloured by outcome; idle gaps show as empty lane. With many
items (more than about two per pixel) bars would be sub-pixel, so each lane is drawn
as columns whose height is the share of that moment the worker was busy, coloured by
the worst outcome in it: dense runs stay readable and load imbalance stays visible.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from ipyparmap.figures import (
    CANCELLED,
    busy_detail,
    busy_part,
    failure_parts,
    format_bytes,
    format_seconds,
    line_html,
    worker_label,
)

COLORS = {
    "ok": "#4c8bf5",
    "error": "#e8453c",
    "crashed": "#8b1a10",
    "timeout": "#f29900",
    "memory": "#7b3fa0",
    "cancelled": "#b0b0b0",
}
SEVERITY = {"ok": 0, "cancelled": 1, "timeout": 2, "error": 3, "memory": 4, "crashed": 4}
#: Above this many items per pixel column, lanes are drawn aggregated.
DENSE_ITEMS_PER_PIXEL = 0.5


@dataclass(frozen=True)
class Span:
    worker: Any
    start: float  # seconds since the run began
    duration: float
    outcome: str  # "ok" or a Failure kind
    index: int


def spans(results) -> list[Span]:
    """One Span per item that ran (and whose timing is known)."""
    origin = results.stats.started
    starts = getattr(results, "starts", None) or []
    found = []
    for index, outcome in enumerate(results.outcomes()):
        start = starts[index] if index < len(starts) else None
        duration = results.durations[index] if index < len(results.durations) else None
        worker = results.worker_of[index] if index < len(results.worker_of) else None
        if start is None or duration is None or worker is None or origin is None:
            continue
        found.append(Span(worker, max(0.0, start - origin), duration, outcome, index))
    return found


def timeline_svg(results, width: int = 880, lane_height: int = 22) -> str:
    """An SVG chart of the run: a lane per worker, a bar per item (aggregated if dense)."""
    items = spans(results)
    workers = sorted({s.worker for s in items}, key=str)
    label_width = 110
    plot = max(100, width - label_width - 10)
    end = max([results.stats.wall, *(s.start + s.duration for s in items)], default=0.0)
    end = end or 1.0
    scale = plot / end
    height = 34 + lane_height * max(1, len(workers)) + 26
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" '
        'class="ipyparmap-timeline">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{label_width}" y="16" fill="#333">{html.escape(_title(results))}</text>',
    ]
    dense = len(items) > DENSE_ITEMS_PER_PIXEL * plot * max(1, len(workers))
    for lane, worker in enumerate(workers):
        y = 28 + lane * lane_height
        out.append(
            f'<rect class="lane" x="{label_width}" y="{y}" width="{plot}" '
            f'height="{lane_height - 4}" fill="#f3f3f3"/>'
        )
        out.append(
            f'<text x="{label_width - 6}" y="{y + lane_height - 9}" text-anchor="end" '
            f'fill="#333">{html.escape(worker_label(worker))}</text>'
        )
        mine = [s for s in items if s.worker == worker]
        draw = _dense_lane if dense else _bars
        out.extend(draw(mine, label_width, y, lane_height - 4, scale, plot))
    out.extend(_axis(label_width, 28 + lane_height * max(1, len(workers)), plot, end))
    out.append(_legend(width, height))
    out.append("</svg>")
    return "".join(out)


def _title(results) -> str:
    stats = results.stats
    title = f"{len(results)} items on {stats.workers} workers in {format_seconds(stats.wall)}"
    busy = stats.busy_workers
    return f"{title}: {busy_part(busy, stats.workers)}" if busy is not None else title


def _bars(mine: list[Span], x0: float, y: float, h: float, scale: float, plot: float):
    for s in mine:
        x = x0 + s.start * scale
        w = max(0.8, s.duration * scale)
        title = f"item {s.index}: {s.outcome}, {s.duration * 1000:.1f} ms"
        yield (
            f'<rect class="item" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{h}" '
            f'fill="{COLORS[s.outcome]}" stroke="white" stroke-width="0.5">'
            f"<title>{html.escape(title)}</title></rect>"
        )


def _dense_lane(mine: list[Span], x0: float, y: float, h: float, scale: float, plot: float):
    columns = max(1, int(plot))
    busy = [0.0] * columns
    worst = ["ok"] * columns
    counts = [0] * columns
    seconds_per_column = 1 / scale
    for s in mine:
        first = min(columns - 1, int(s.start * scale))
        last = min(columns - 1, int((s.start + s.duration) * scale))
        for col in range(first, last + 1):
            left = max(s.start, col * seconds_per_column)
            right = min(s.start + s.duration, (col + 1) * seconds_per_column)
            busy[col] += max(0.0, right - left)
            counts[col] += 1
            if SEVERITY[s.outcome] > SEVERITY[worst[col]]:
                worst[col] = s.outcome
    for col in range(columns):
        if not counts[col]:
            continue
        share = min(1.0, busy[col] / seconds_per_column)
        bar = max(1.0, share * h)
        yield (
            f'<rect class="column" x="{x0 + col}" y="{y + h - bar:.2f}" width="1" '
            f'height="{bar:.2f}" fill="{COLORS[worst[col]]}"/>'
        )


def _axis(x0: float, y: float, plot: float, end: float):
    yield f'<line x1="{x0}" y1="{y + 2}" x2="{x0 + plot}" y2="{y + 2}" stroke="#999"/>'
    step = _nice_step(end / 6)
    tick = 0.0
    while tick <= end + 1e-9:
        x = x0 + tick * plot / end
        yield f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{y + 6}" stroke="#999"/>'
        yield f'<text x="{x:.1f}" y="{y + 18}" text-anchor="middle" fill="#555">{tick:g} s</text>'
        tick = round(tick + step, 10)


def _nice_step(rough: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``rough``."""
    if rough <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(rough))
    for base in (1, 2, 5, 10):
        if base * power >= rough:
            return base * power
    return 10 * power


def _legend(width: float, height: float) -> str:
    parts = []
    x = width - 5
    for outcome in reversed(list(COLORS)):
        label = outcome
        x -= 8 + 7 * len(label) + 14
        parts.append(
            f'<rect x="{x}" y="6" width="10" height="10" fill="{COLORS[outcome]}"/>'
            f'<text x="{x + 14}" y="15" fill="#555" font-size="11">{label}</text>'
        )
    return "".join(parts)


class Timeline:
    """``Results.timeline()``: shows as a chart in a notebook (SVG)."""

    def __init__(self, results, width: int = 880):
        self.svg = timeline_svg(results, width)

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.svg)


# ------------------------------------------------------------------------------ report
def stats_rows(results) -> list[tuple[str, str]]:
    stats = results.stats
    failures = ", ".join(failure_parts(stats.failures)) or "none"
    rows = [
        ("items", f"{len(results)} ({stats.items_per_second:,.1f} per second)"),
        ("wall time", format_seconds(stats.wall, fine=True)),
        ("time in items", f"{format_seconds(stats.task_time, fine=True)} of work"),
        (
            "workers busy",
            busy_detail(
                stats.busy_workers, stats.workers, stats.wall, stats.failures.get(CANCELLED, 0)
            ),
        ),
        ("overhead", f"{format_seconds(stats.overhead, fine=True)} of worker time not in items"),
        ("failures", failures),
        ("retries, restarts", f"{stats.retries} retries, {stats.restarts} workers replaced"),
        ("peak worker memory", format_bytes(stats.peak_rss) if stats.peak_rss else "?"),
    ]
    return rows


def summary_html(results, failures: int = 5) -> str:
    """The compact summary a Results shows in a notebook, headed by its summary line
    (the one the progress panel ends with)."""
    head = line_html(results.stats.summary_parts())
    table = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in stats_rows(results)
    )
    failed = results.failures
    rows = "".join(
        f"<tr><td>{f.index}</td><td>{html.escape(f.kind)}</td>"
        f"<td style='text-align:left'><code>{html.escape(f.describe())}</code></td></tr>"
        for f in failed[:failures]
    )
    more = (
        f"<p>... and {len(failed) - failures} more failures</p>" if len(failed) > failures else ""
    )
    fail_table = (
        "<table><tr><th>item</th><th>kind</th><th style='text-align:left'>failure</th></tr>"
        f"{rows}</table>{more}"
        if rows
        else ""
    )
    preview = html.escape(repr(list(results[:10]))[:500]) + (" ..." if len(results) > 10 else "")
    return (
        f"<div class='ipyparmap-results'><p><b>Results</b>: {head}</p>"
        f"<details><summary>where the time went</summary><table>{table}</table></details>"
        f"<p><code>{preview}</code></p>{fail_table}</div>"
    )


class Report:
    """``Results.report()``: summary, statistics, failures and the timeline."""

    def __init__(self, results):
        self.html = (
            "<div class='ipyparmap-report'>"
            + summary_html(results, failures=10).replace("<details>", "<details open>")
            + timeline_svg(results)
            + "</div>"
        )

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write(f"<!doctype html><meta charset='utf-8'><body>{self.html}</body>")


def dataframe(results):
    """One row per item: index, item, status, start, duration, worker, attempts, output."""
    import pandas as pd

    origin = results.stats.started
    starts = getattr(results, "starts", None) or []
    inputs = results.inputs
    rows = []
    for index, (value, status) in enumerate(zip(results, results.outcomes(), strict=True)):
        failed = status != "ok"
        if failed:
            item = value.item
        else:
            item = inputs[index] if inputs is not None and index < len(inputs) else None
        start = starts[index] if index < len(starts) else None
        output = results.outputs.get(index)
        rows.append(
            {
                "index": index,
                "item": repr(item),
                "status": status,
                "value": None if failed else value,
                "error": repr(value.exception) if failed and value.exception is not None else None,
                "start": None if start is None or origin is None else start - origin,
                "duration": results.durations[index] if index < len(results.durations) else None,
                "worker": results.worker_of[index] if index < len(results.worker_of) else None,
                "attempts": value.attempts if failed else None,
                "output": str(output) if output is not None else "",
            }
        )
    return pd.DataFrame(rows).set_index("index")
