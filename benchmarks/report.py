"""Figures, ratios and the markdown tables of a benchmark run."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from . import workloads as W

BEGIN = "<!-- BEGIN GENERATED: `python -m benchmarks` rewrites everything down to END -->"
END = "<!-- END GENERATED -->"
IPY = "ipyparmap"
MB = 1e6
MB = 10**6


@dataclass(frozen=True)
class Spec:
    title: str
    figure: str  # what the figure column means
    raw: str  # unit of the raw median column
    better: str  # "lower" or "higher"
    target: str
    spawn_peers_only: bool = False  # W4, W6b: fork-based peers are shown but not compared


SPECS = {
    "W1": Spec(
        "100,000 tiny items (`x*x`)", "overhead µs/item over serial", "ms", "lower",
        "≤ 0.9 × the best peer",
    ),
    "W2": Spec(
        "100 CPU-bound items of ~20 ms", "speedup over serial", "s", "higher",
        "≥ the best peer",
    ),
    "W3": Spec(
        "64 heavy-tailed (Pareto) items, heaviest last", "wall / (serial / 2 workers)", "s",
        "lower", "≤ the best peer",
    ),
    "W4": Spec(
        "fresh interpreter, `__main__` function, 2 spawned workers, result, exit",
        "whole-process wall ms", "ms in-script", "lower", "≤ the best spawning peer",
        spawn_peers_only=True,
    ),
    "W5": Spec(
        "warm pool, map over 2 items, repeated calls", "median ms per call", "ms", "lower",
        "≤ 0.9 × the best peer",
    ),
    "W6": Spec(
        "16 float64 arrays of 16 MB as arguments", "MB/s", "s", "higher", "≥ the best peer",
    ),
    "W6b": Spec(
        "`__main__` function using a 200 MB global array, 50 items",
        "pool start + map, s", "s whole process", "lower",
        "≤ 0.9 × the best peer that does not fork the caller", spawn_peers_only=True,
    ),
    "W7": Spec(
        "peak PSS of parent + workers during W2 (fresh process)", "MB PSS", "MB RSS",
        "lower", "≤ 25 MB",
    ),
    "W8": Spec(
        "a fresh pool of 2 recycling its workers after every task, 200 trivial tasks",
        "wall s", "s", "lower", "≤ 3 × Pool(fork) and ≤ 0.2 × Pool(spawn)",
    ),
    "W9": Spec(
        "100 items of 10 ms, every 10th crashes its worker, errors='collect'",
        "extra ms per crash", "s", "lower", "≤ 10 ms",
    ),
    "P": Spec(
        "ipyparmap on W1, progress on vs off", "wall / wall with progress off", "ms", "lower",
        "≤ 1.05",
    ),
}  # fmt: skip


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


@dataclass
class Row:
    name: str
    start: str
    peer: bool
    raw: float | None  # median of the raw column, in the spec's raw unit
    spread: tuple[float, float] | None
    figure: float | None
    note: str = ""


@dataclass
class Report:
    machine: dict
    rounds: int
    script_rounds: int
    quick: bool
    spin_rate: float
    w5_calls: int
    w3_bound: float
    seconds: float = 0.0
    calm: object = None  # run.Calm: rounds that started under load
    foreign: object = None  # run.Foreign: runs disturbed by other processes
    rows: dict = field(default_factory=dict)  # key -> list[Row]

    raw: dict = field(default_factory=dict)  # key -> {contender: Samples}

    # -------------------------------------------------------------- figures
    def add(self, key: str, samples: dict) -> None:
        self.raw[key] = samples
        self.rows[key] = _FIGURES[key](samples)
        _mark_wrong_results(self.rows[key], samples)

    def save_json(self, path: str) -> None:
        import json

        data = {
            "machine": self.machine,
            "rounds": self.rounds,
            "script_rounds": self.script_rounds,
            "raw": {
                key: {
                    name: {
                        "values": s.values,
                        "walls": s.walls,
                        "rss": s.rss,
                        "errors": s.errors,
                    }
                    for name, s in samples.items()
                }
                for key, samples in self.raw.items()
            },
            "figures": {
                key: {row.name: row.figure for row in rows} for key, rows in self.rows.items()
            },
        }
        with open(path, "w") as out:
            json.dump(data, out, indent=1)

    def _calm_text(self) -> str:
        calm, foreign = self.calm, self.foreign
        text = ""
        if calm is not None and calm.rounds:
            text += (
                f" Each round first waited for a moment of idle CPUs (< {calm.busy:.0f}% "
                f"busy; {calm.waited:.0f} s of waiting in all; {calm.loaded} of "
                f"{calm.rounds} rounds started under load after {calm.patience:.0f} s)."
            )
        if foreign is not None and foreign.runs and foreign.tries == 1:
            text += (
                f" {foreign.kept_disturbed} of {foreign.runs} runs were disturbed (other "
                f"processes used more than {foreign.limit:.0%} of the CPUs); none was "
                "repeated."
            )
        elif foreign is not None and foreign.runs:
            text += (
                f" A run during which other processes used more than {foreign.limit:.0%} "
                f"of the CPUs was run again (up to {foreign.tries} tries, the least "
                f"disturbed kept): {foreign.retried} retries; {foreign.kept_disturbed} of "
                f"{foreign.runs} runs stayed disturbed."
            )
        return text

    def best_peer(self, key: str) -> Row | None:
        spec = SPECS[key]
        peers = [
            r
            for r in self.rows.get(key, [])
            if r.peer and r.figure is not None and (r.start == "spawn" or not spec.spawn_peers_only)
        ]
        if not peers:
            return None
        pick = min if spec.better == "lower" else max
        return pick(peers, key=lambda r: r.figure)

    def ipy(self, key: str) -> Row | None:
        rows = self.rows.get(key, [])
        if key == "P":
            return rows[-1] if rows else None
        return next((r for r in rows if r.name == IPY), None)

    def verdict(self, key: str) -> tuple[str, str]:
        """(ratio text, met/missed) for the summary."""
        ipy, best = self.ipy(key), self.best_peer(key)
        if ipy is None or ipy.figure is None:
            return "—", "failed"
        value = ipy.figure
        ratio = None
        if best is not None and best.figure:
            ratio = value / best.figure
        ratio_text = "—" if ratio is None else f"{ratio:.2f}"
        if key == "W1" and best is not None and best.figure is not None and best.figure <= 0:
            ratio_text = "— (best peer's overhead ≤ 0)"
        checks: dict[str, Callable[[], bool]] = {
            # issue 18's targets: W1, W5 and W6b 10% ahead of the best peer, W2-W4 and
            # W6 at or ahead of it (W4 and W6b: of the peers whose workers are not forks
            # of the caller)
            "W1": lambda: best is not None and value <= 0.9 * best.figure,
            "W2": lambda: best is None or value >= best.figure,
            "W3": lambda: best is None or value <= best.figure,
            "W4": lambda: best is None or value <= best.figure,
            "W5": lambda: best is not None and value <= 0.9 * best.figure,
            "W6": lambda: best is None or value >= best.figure,
            "W6b": lambda: best is not None and value <= 0.9 * best.figure,
            "W7": lambda: value <= 25,
            "W8": lambda: self._w8_met(value),
            "W9": lambda: value <= 10,
            "P": lambda: value <= 1.05,
        }
        return ratio_text, ("met" if checks[key]() else "missed")

    def _w8_met(self, value: float) -> bool:
        """W8's target: at most 3 x Pool(fork)'s wall and 0.2 x Pool(spawn)'s."""
        walls = {row.name: row.figure for row in self.rows.get("W8", [])}
        fork = walls.get("Pool(fork, maxtasksperchild=1).map")
        spawn = walls.get("Pool(spawn, maxtasksperchild=1).map")
        return bool(fork and spawn and value <= 3 * fork and value <= 0.2 * spawn)

    # -------------------------------------------------------------- markdown
    def markdown(self) -> str:
        m = self.machine
        out = [
            BEGIN,
            "",
            "## Latest run",
            "",
            f"- **Date:** {m['date']}, revision `{m['revision']}`; {self.rounds} rounds"
            f" ({self.script_rounds} for W4, W6b, W7){' with --quick' if self.quick else ''};"
            f" the whole run took {self.seconds:.0f} s.",
            f"- **CPU:** {m['cpu']}, {m['cpus']}; **RAM:** {m['ram']}; **OS:** {m['os']}.",
            f"- **Python:** {m['python']}; {m['packages']}.",
            f"- **Load average** (1, 5, 15 min) at the start: {m['load']}; at the end: "
            f"{m.get('load_end', '?')}. The machine is shared: only ratios within this run "
            f"count.{self._calm_text()}",
            f"- Every contender uses 2 workers. `spin()` ran {self.spin_rate / 1e6:.2f} M "
            f"turns/s here at calibration; W3's in-order greedy floor (no overhead) is "
            f"{self.w3_bound:.3f}; W5 times {self.w5_calls} calls per round.",
            "",
            "### Summary: ipyparmap against the best peer",
            "",
            "| workload | figure (better) | ipyparmap | best peer | ipyparmap / best | target |"
            " verdict |",
            "|---|---|---:|---|---:|---|---|",
        ]
        for key, spec in SPECS.items():
            if key not in self.rows:
                continue
            ipy, best = self.ipy(key), self.best_peer(key)
            ratio, verdict = self.verdict(key)
            best_text = "—" if best is None else f"{best.name} {_fmt(best.figure)}"
            if key == "P":
                best_text = "— (progress off is the reference)"
                ratio = "—"
            ipy_text = _fmt(ipy.figure if ipy else None)
            out.append(
                f"| {key}: {spec.title} | {spec.figure} ({spec.better}) | {ipy_text} | "
                f"{best_text} | {ratio} | {spec.target} | {verdict} |"
            )
        for key, spec in SPECS.items():
            if key not in self.rows:
                continue
            best = self.best_peer(key)
            out += [
                "",
                f"### {key}: {spec.title}",
                "",
                f"| contender | workers | median {spec.raw} | min–max | {spec.figure} | note |",
                "|---|---|---:|---|---:|---|",
            ]
            for row in self.rows[key]:
                spread = (
                    "—" if row.spread is None else f"{_fmt(row.spread[0])}–{_fmt(row.spread[1])}"
                )
                notes = [row.note] if row.note else []
                if best is not None and row is best:
                    notes.insert(0, "**best peer**")
                if spec.spawn_peers_only and row.start == "fork":
                    notes.append("fork: not a spawned start, not compared")
                name = f"**{row.name}**" if row.name == IPY else row.name
                out.append(
                    f"| {name} | {row.start or '—'} | {_fmt(row.raw)} | {spread} | "
                    f"{_fmt(row.figure)} | {'; '.join(notes)} |"
                )
            out.append("")
            out.append(_FOOTNOTES.get(key, ""))
        out += ["", END]
        return "\n".join(line for line in out if line is not None)


def _stat(values: list, scale: float) -> tuple[float | None, tuple[float, float] | None]:
    if not values:
        return None, None
    scaled = [v * scale for v in values]
    return statistics.median(scaled), (min(scaled), max(scaled))


def _errors(samples) -> str:
    if not samples.errors:
        return ""
    first = samples.errors[0]
    more = f" ({len(samples.errors)} of the rounds)" if len(samples.errors) > 1 else ""
    return first + more


def _rows(samples: dict, scale: float, figure: Callable, use_walls: bool = False) -> list[Row]:
    rows = []
    for s in samples.values():
        raw, spread = _stat(s.walls if use_walls else s.values, scale)
        med = s.median()
        fig = figure(med, s) if med is not None else None
        rows.append(Row(s.name, s.start, s.peer, raw, spread, fig, _errors(s)))
    return rows


def _serial(samples: dict) -> float | None:
    return samples["serial"].median() if "serial" in samples else None


def _paired(samples: dict, relate: Callable[[float, float], float], reference: str = "serial"):
    """A figure from each round's pair (this contender, serial in the same round), then
    the median over rounds: machine load that drifts between rounds cancels out."""
    ref = samples[reference]
    serial = dict(zip(ref.rounds, ref.values, strict=True))

    def figure(med, s):
        pairs = [
            relate(v, serial[r]) for r, v in zip(s.rounds, s.values, strict=True) if r in serial
        ]
        return statistics.median(pairs) if pairs else None

    return figure


def _w1(samples):
    return _rows(samples, 1e3, _paired(samples, lambda v, ser: (v - ser) / W.W1_ITEMS * 1e6))


def _w2(samples):
    return _rows(samples, 1, _paired(samples, lambda v, ser: ser / v))


def _w3(samples):
    return _rows(samples, 1, _paired(samples, lambda v, ser: v / (ser / W.WORKERS)))


def _w4(samples):
    # The figure is the whole process; the raw column is what the script timed inside.
    return _rows(samples, 1e3, lambda med, s: statistics.median(s.walls) * 1e3)


def _w5(samples):
    return _rows(samples, 1e3, lambda med, s: med * 1e3)


def _w6(samples):
    total = W.W6_ARRAYS * W.W6_ARRAY_LEN * 8 / MB
    return _rows(samples, 1, lambda med, s: total / med)


def _w6b(samples):
    return _rows(samples, 1, lambda med, s: med, use_walls=True)


def _w7(samples):
    """Figure: peak PSS (MB); the raw columns: peak RSS (MB) of the same runs."""
    rows = []
    for s in samples.values():
        raw, spread = _stat(s.rss, 1 / MB)
        med = s.median()
        fig = med / MB if med is not None else None
        rows.append(Row(s.name, s.start, s.peer, raw, spread, fig, _errors(s)))
    return rows


def _w8(samples):
    return _rows(samples, 1, lambda med, s: med)


def _w9(samples):
    from .recycle import NO_CRASH, W9_EVERY, W9_ITEMS

    crashes = W9_ITEMS // W9_EVERY
    return _rows(samples, 1, _paired(samples, lambda v, ok: (v - ok) / crashes * 1e3, NO_CRASH))


def _progress(samples):
    return _rows(samples, 1e3, _paired(samples, lambda v, off: v / off, "progress=False"))


_FIGURES = {
    "W1": _w1,
    "W2": _w2,
    "W3": _w3,
    "W4": _w4,
    "W5": _w5,
    "W6": _w6,
    "W6b": _w6b,
    "W7": _w7,
    "W8": _w8,
    "W9": _w9,
    "P": _progress,
}

_FOOTNOTES = {
    "W1": "Overhead = (wall − serial wall of the same round) / 100,000, median over rounds. "
    "Pools are warm; "
    "`ProcessPoolExecutor` and loky get `Pool.map`'s chunksize (n / 8).",
    "W2": "Speedup = serial wall / wall, both of the same round, median over rounds; the "
    "ideal on 2 cores is 2.",
    "W3": "Item weights are Pareto(α = 2) quantiles in ascending order (the heaviest, "
    "~9% of the total, comes last). Figure = wall / (serial wall / 2), both of the same "
    "round, median over rounds; "
    "the floor for any in-order dispatcher is the greedy bound in the header.",
    "W4": "Each run is `python script.py` in a fresh interpreter: imports, start 2 "
    "workers, map `f` (defined in the script) over 2 items, print, exit (pool stopped). "
    "The serial row is the bare interpreter running the same script. Fork-based rows "
    "do not start spawned workers and are shown for reference only.",
    "W5": "Per round: an untimed warm-up call, then the calls timed one by one; the "
    "round's median, then the median over rounds. joblib builds a `Parallel` per call.",
    "W6": "MB/s = 256 MB of arguments / median wall (each array is summed in a worker). "
    "joblib memory-maps arrays over 1 MB by default; the others pickle them through "
    "pipes.",
    "W6b": "A fresh script builds `BIG` (200 MB) at import; the figure is the time from "
    "pool start to the 50 results in hand (imports and `BIG` excluded). Fork-based "
    "workers inherit `BIG` for free; spawn-based `multiprocessing` and mpire re-run the "
    "script's top level in each worker and so rebuild `BIG` there (a changed global "
    "would silently differ); cloudpickle-based contenders (loky, joblib, ipyparmap) "
    "pickle `BIG` with the function.",
    "W7": "A fresh script runs W2 (100 × ~20 ms) on 2 workers; a thread of the benchmark "
    "samples the summed PSS and RSS of the script and all its descendant processes "
    "(workers, a template process and its forks) every 5 ms; the figure is the peak PSS, "
    "the raw columns the peak RSS of the same runs. PSS divides each page among the "
    "processes that map it (a page a fork still shares counts once in the sum); RSS "
    "counts it in every process. MB = 10^6 bytes.",
    "W8": "Each call starts a pool of 2 workers with `maxtasksperchild=1` (the drop-in "
    "`ipyparmap.Pool`; `ProcessPoolExecutor` with `max_tasks_per_child=1`), maps "
    "a function returning its argument over 200 tasks with `chunksize=1` (so a new "
    "worker per task) and shuts the pool down; all of it is timed. The serial row maps "
    "in the benchmark process. "
    "loky 3.x has no per-worker task limit, so `ProcessPoolExecutor` stands in for it.",
    "W9": "`parmap` on the warm default pool over 100 items that sleep 10 ms, every 10th "
    "then calling `os._exit(1)` (`errors='collect'`), against the same run with no crash "
    "in the same round; figure = (wall with crashes - wall without) / 10 crashes, median "
    "over rounds. Only ipyparmap runs it: the other pools lose the whole map (`Pool`) or "
    "break (`ProcessPoolExecutor`) when a worker dies.",
    "P": "`progress='text'` with stderr made to look like a terminal (output discarded), "
    "against `progress=False`, interleaved, in 4 times as many rounds as the other "
    "workloads; the figure is the median over rounds of the ratio within a round.",
}


def _mark_wrong_results(rows: list[Row], samples: dict) -> None:
    reference = samples.get("serial") or next(iter(samples.values()))
    expected = reference.checksums
    for row in rows:
        got = samples[row.name].checksums
        if expected and got and got != expected:
            row.note = "; ".join(filter(None, [row.note, "**wrong results**"]))


def write_report(path: str, generated: str) -> None:
    """Replace the generated part of ``path`` (or create the file around it)."""
    try:
        with open(path) as source:
            text = source.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = "# Benchmarks\n\n" + generated + "\n" + text
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        out.write(text)
