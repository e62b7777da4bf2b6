"""The DataFrame workloads (issue 17, "Performance"), beside pandas itself and its peers.

    .venv/bin/python -m benchmarks --only F          # F1 and F2, the issue's sizes
    .venv/bin/python -m benchmarks --only F --frame-scale 0.2   # a fifth of the rows/groups
    .venv/bin/python -m benchmarks --only FM         # peak memory of a 512 MB frame

- **F1**: ``df.apply(cheap, axis=1)`` over 1,000,000 rows (four numeric columns and a
  string column), ``cheap`` a few arithmetic operations on the row.
- **F2**: ``df.groupby("key").apply(heavy)`` over 10,000 groups, ``heavy`` a pure-Python
  loop over the group's values (~0.5 ms a group).
- **FM**: the memory of ``df.parmap.apply(f, axis=1)`` on a large frame (512 MB by
  default), as multiples of the frame's size (docs/benchmarks.md, "Memory of a large
  frame").

Contenders: serial pandas; ipyparmap (``df.parmap``); pandarallel (fork, its defaults
but no progress bar); dask.dataframe (``from_pandas`` + ``apply(..., meta=)`` /
``groupby().apply(..., meta=)``, computed with the processes scheduler on a warm pool of
2 spawned workers). Every round runs every contender once, in an order rotated from
round to round; each contender starts its workers before its call (untimed, with an
untimed warm-up call on a small frame) and stops them after, so that the memory sampled
during its call, the PSS of this process and all its children (plus pandarallel's files
in /dev/shm, which are memory no process's PSS shows), is its own. Not a test.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

F1_ROWS = 1_000_000
F2_GROUPS = 10_000
F2_ROWS_PER_GROUP = 20
F2_TURNS = 400  # loop turns per value: ~0.5 ms per group of 20 values here
FM_MEGABYTES = 512
WORKERS = 2
MIB = 2**20


# -------------------------------------------------------------------- the functions
def cheap(row):
    """F1: a few operations on a row (what a feature column computed per row costs)."""
    return row["a"] * 2.0 + row["b"] - row["c"] / (1.0 + row["d"])


def heavy(group):
    """F2: pure-Python work on one group's values."""
    total = 0.0
    for value in group["x"].tolist():
        for turn in range(F2_TURNS):
            total += math.sin(value + turn)
    return total


def wide_row(row):
    """FM: touches every value of the row."""
    return row.sum()


def f1_frame(rows: int):
    import numpy as np
    import pandas as pd

    n = np.arange(rows)
    return pd.DataFrame(
        {
            "a": n * 0.5,
            "b": (n % 1000).astype("int64"),
            "c": np.sqrt(n),
            "d": (n % 7).astype("float64"),
            "tag": pd.array([f"t{i % 100}" for i in range(rows)], dtype=object),
        }
    )


def f2_frame(groups: int):
    import numpy as np
    import pandas as pd

    rows = groups * F2_ROWS_PER_GROUP
    rng = np.random.default_rng(17)
    return pd.DataFrame({"key": rng.permutation(np.arange(rows) % groups), "x": rng.random(rows)})


# ------------------------------------------------------------------- the contenders
class FrameContender:
    name = ""
    start = ""
    peer = True

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def rows(self, df, func):
        raise NotImplementedError

    def groups(self, df, func):
        raise NotImplementedError

    def warm(self, method: str, small, func) -> None:
        """An untimed call on a small frame: workers up, with the function."""
        getattr(self, method)(small, func)


class SerialPandas(FrameContender):
    name = "serial pandas"
    peer = False

    def rows(self, df, func):
        return df.apply(func, axis=1)

    def groups(self, df, func):
        return df.groupby("key")[["x"]].apply(func)


class IpyparmapFrames(FrameContender):
    name = "ipyparmap"
    start = "spawn"
    peer = False

    def rows(self, df, func, **options):
        return df.parmap.apply(func, axis=1, workers=WORKERS, progress=False, **options)

    def groups(self, df, func, **options):
        gb = df.groupby("key")[["x"]]
        return gb.parmap.apply(func, workers=WORKERS, progress=False, **options)

    def warm(self, method, small, func):
        # a small frame runs in the kernel: chunksize= sends it to the workers, which
        # then have pandas imported, as the other contenders' workers do
        size = small["key"].nunique() if method == "groups" else len(small)
        getattr(self, method)(small, func, chunksize=max(1, size // 4))

    def open(self):
        import ipyparmap as pm

        pm.parmap(abs, [1, 2], workers=WORKERS, progress=False)  # the pool up

    def close(self):
        import ipyparmap as pm

        pm.shutdown()


class Pandarallel(FrameContender):
    name = "pandarallel"
    start = "fork"

    def open(self):
        from pandarallel import pandarallel

        pandarallel.initialize(nb_workers=WORKERS, progress_bar=False, verbose=0)

    def rows(self, df, func):
        return df.parallel_apply(func, axis=1)

    def groups(self, df, func):
        return df.groupby("key")[["x"]].parallel_apply(func)


class DaskFrames(FrameContender):
    name = "dask.dataframe"
    start = "spawn"

    def __init__(self):
        self.pool = None

    def open(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn"))
        list(self.pool.map(abs, [1, 2]))

    def _compute(self, lazy):
        import dask

        with dask.config.set(scheduler="processes", pool=self.pool, num_workers=WORKERS):
            return lazy.compute()

    def rows(self, df, func):
        import dask.dataframe as dd

        ddf = dd.from_pandas(df, npartitions=4 * WORKERS)
        return self._compute(ddf.apply(func, axis=1, meta=(None, "float64")))

    def groups(self, df, func):
        import dask.dataframe as dd

        ddf = dd.from_pandas(df, npartitions=4 * WORKERS)
        lazy = ddf.groupby("key")[["x"]].apply(func, meta=(None, "float64"))
        return self._compute(lazy).sort_index()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def contenders() -> list[FrameContender]:
    return [SerialPandas(), IpyparmapFrames(), Pandarallel(), DaskFrames()]


# ------------------------------------------------------------------------ memory
class PssSampler:
    """Peak PSS of this process and all its descendants (plus the bytes of pandarallel's
    files in /dev/shm), sampled in a thread every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak = self.now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        psutil = self._psutil
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except psutil.Error:
                pass
        return total + _shm_files("pandarallel")

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
        return self.peak


def _shm_files(prefix: str) -> int:
    try:
        entries = list(os.scandir("/dev/shm"))
    except OSError:
        return 0
    total = 0
    for entry in entries:
        if entry.name.startswith(prefix):
            try:
                total += entry.stat().st_blocks * 512
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------ the runs
@dataclass
class FrameSamples:
    name: str
    start: str
    peer: bool
    seconds: list = field(default_factory=list)
    peaks: list = field(default_factory=list)  # bytes, parent + workers
    errors: list = field(default_factory=list)
    wrong: bool = False


def _same(result, expected) -> bool:
    import numpy as np

    try:
        got = np.asarray(result, dtype=float).ravel()
        want = np.asarray(expected, dtype=float).ravel()
        return got.shape == want.shape and bool(np.allclose(got, want, equal_nan=True))
    except Exception:
        return False


def run_workload(
    key: str, log, rounds: int, timeout: float, scale: float, alarm, calm=None
) -> dict:
    """Time one workload for every contender, interleaved; also its peak memory."""
    import gc

    if key == "F1":
        df = f1_frame(max(1000, int(F1_ROWS * scale)))
        small, func, method = f1_frame(200), cheap, "rows"
    else:
        df = f2_frame(max(100, int(F2_GROUPS * scale)))
        small, func, method = f2_frame(50), heavy, "groups"
    pool = contenders()
    samples = {c.name: FrameSamples(c.name, c.start, c.peer) for c in pool}
    expected = None
    # Timed rounds run unwatched; one more round, untimed, samples the memory: the
    # sampler reads every process's PSS each 20 ms, which on 2 cores takes CPU (and the
    # GIL) from the parallel contenders more than from serial pandas.
    for round_ in range(rounds + 1):
        memory = round_ == rounds
        if calm is not None:
            calm()  # a moment of idle CPUs first (bounded: run.Calm)
        log(f"  {key} round {round_ + 1}/{rounds}" if not memory else f"  {key} memory round")
        shift = round_ % len(pool)
        for contender in pool[shift:] + pool[:shift]:
            sample = samples[contender.name]
            if len(sample.errors) >= 2:
                continue
            call = getattr(contender, method)
            try:
                with alarm(timeout):
                    contender.open()
                    contender.warm(method, small, func)
                    gc.collect()
                    sampler = PssSampler() if memory else None
                    started = time.perf_counter()
                    try:
                        out = call(df, func)
                    finally:
                        seconds = time.perf_counter() - started
                        peak = sampler.stop() if sampler is not None else None
            except Exception as exc:
                sample.errors.append(f"fails ({exc!r:.120})")
                log(f"    {contender.name}: {sample.errors[-1]}")
                continue
            finally:
                try:
                    with alarm(60):
                        contender.close()
                except Exception as exc:
                    log(f"    {contender.name}: close failed ({exc!r:.120})")
            if contender.name == "serial pandas" and expected is None:
                expected = out
            if expected is not None and not _same(out, expected):
                sample.wrong = True
            if memory:
                sample.peaks.append(peak)
            else:
                sample.seconds.append(seconds)
            del out
            gc.collect()
    return {"frame_bytes": int(df.memory_usage(deep=True).sum()), "samples": samples,
            "size": len(df) if key == "F1" else df["key"].nunique()}  # fmt: skip


TITLES = {
    "F1": "`df.apply(cheap, axis=1)`, {size:,} rows",
    "F2": "`df.groupby(key).apply(heavy)`, {size:,} groups",
}
TARGETS = {
    "F1": "no slower than the fastest peer",
    "F2": "speedup ≥ 1.8 and ≥ every peer",
}


def markdown(results: dict, rounds: int, scale: float, machine: dict, seconds: float) -> str:
    lines = [
        "### DataFrame workloads: speed and peak memory",
        "",
        f"- **Date:** {machine['date']}, revision `{machine['revision']}`; {rounds} rounds"
        f"{'' if scale == 1 else f', sizes scaled by {scale:g} (--frame-scale)'}; "
        f"{seconds:.0f} s in all. **CPU:** {machine['cpu']}, {machine['cpus']}; "
        f"load average at the start {machine['load']}. pandas {machine.get('pandas', '?')}.",
        "- Taken on a shared, loaded 2-core machine: only ratios within the run count.",
        "- Peak memory: the largest sum of PSS over this process and every child process "
        "(plus pandarallel's files in /dev/shm) sampled every 20 ms during one more, untimed "
        "call (the sampler takes CPU from the workers), the benchmark process itself (Python, "
        "pandas, the frame) included.",
        "",
        "- Speedup and ÷ best peer are given twice: from the medians over the rounds, and "
        "from each contender's best round (under load, the least disturbed one).",
        "",
        "| workload | contender | start | median s | min–max s | speedup over serial "
        "(median; best) | ÷ best peer (median; best) | peak MiB (parent + workers) | note |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    summary = []
    for key, result in results.items():
        samples = result["samples"]
        title = TITLES[key].format(size=result["size"])
        serial = samples.get("serial pandas")
        serial_s = statistics.median(serial.seconds) if serial and serial.seconds else None
        serial_min = min(serial.seconds) if serial and serial.seconds else None
        peers = [s for s in samples.values() if s.peer and s.seconds and not s.wrong]
        best = min(peers, key=lambda s: statistics.median(s.seconds), default=None)
        best_s = statistics.median(best.seconds) if best else None
        best_min = min((min(s.seconds) for s in peers), default=None)
        for s in samples.values():
            if not s.seconds:
                lines.append(f"| {title} | {s.name} | {s.start or '—'} | — | — | — | — | — | "
                             f"{'; '.join(dict.fromkeys(s.errors))} |")  # fmt: skip
                continue
            median, fastest = statistics.median(s.seconds), min(s.seconds)
            speedup = _pair(serial_s, median, serial_min, fastest)
            ratio = _pair(median, best_s, fastest, best_min)
            peak = statistics.median(s.peaks) / MIB if s.peaks else float("nan")
            note = "; ".join([*(["wrong result"] if s.wrong else []), *dict.fromkeys(s.errors)])
            lines.append(
                f"| {title} | {s.name} | {s.start or '—'} | {median:.2f} | "
                f"{fastest:.2f}–{max(s.seconds):.2f} | {speedup} | {ratio} | {peak:,.0f} | "
                f"{note} |"
            )
        ipy = samples.get("ipyparmap")
        if ipy and ipy.seconds and serial_s and best_s:
            median, fastest = statistics.median(ipy.seconds), min(ipy.seconds)
            peak = statistics.median(ipy.peaks) if ipy.peaks else float("nan")
            pandarallel = samples.get("pandarallel")
            pp = statistics.median(pandarallel.peaks) if pandarallel and pandarallel.peaks else None
            summary.append(
                f"- **{key}** ({TARGETS[key]}; peak memory ≤ pandarallel's): speedup "
                f"{_pair(serial_s, median, serial_min, fastest)} (median; best), "
                f"{_pair(median, best_s, fastest, best_min)}× the best peer (median; best); "
                f"peak {peak / MIB:,.0f} MiB"
                + ("" if pp is None else f" against pandarallel's {pp / MIB:,.0f} MiB")
                + "."
            )
    lines += ["", *summary]
    return "\n".join(lines)


def _pair(top, bottom, top_best, bottom_best) -> str:
    """``top / bottom`` of the medians; of the best rounds."""
    if not bottom or not bottom_best:
        return "—"
    return f"{top / bottom:.2f}; {top_best / bottom_best:.2f}"


BEGIN = "<!-- BEGIN GENERATED FRAMES: `python -m benchmarks --only F` rewrites down to END -->"
END = "<!-- END GENERATED FRAMES -->"


def section(parts: list[str]) -> str:
    """The generated block of docs/benchmarks.md: the parts that ran."""
    return "\n\n".join([BEGIN, "## DataFrames (issue 17): latest run", *parts, END])


def write_section(path: str, text: str) -> None:
    with open(path) as file:
        doc = file.read()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as file:
        file.write(doc)


# ----------------------------------------------------------------- FM: big frame memory
def memory_of_a_large_frame(megabytes: int, log) -> dict:
    """Peak PSS (parent + workers) of ``df.parmap.apply(wide_row, axis=1)`` on a frame
    of ``megabytes`` MB of float64 (64 columns), against serial ``df.apply``: each as
    the increase over the process before the frame existed, in frame sizes."""
    import gc

    import numpy as np
    import pandas as pd

    import ipyparmap as pm

    columns = 64
    rows = megabytes * 10**6 // (8 * columns)
    warm = pd.DataFrame(np.ones((500, columns)))  # the pool up, pandas imported in it:
    warm.parmap.apply(wide_row, axis=1, workers=WORKERS, progress=False, chunksize=100)
    warm.apply(wide_row, axis=1)  # (fixed costs, not the frame's)
    del warm
    gc.collect()
    base = PssSampler().stop()
    values = np.random.default_rng(1).random((rows, columns))
    df = pd.DataFrame({f"c{i}": values[:, i].copy() for i in range(columns)})
    del values
    frame = int(df.memory_usage().sum())
    out = {"frame_bytes": frame, "rows": rows, "columns": columns}
    for name, call in (
        ("serial pandas", lambda: df.apply(wide_row, axis=1)),
        ("ipyparmap", lambda: df.parmap.apply(wide_row, axis=1, workers=WORKERS, progress=False)),
    ):
        gc.collect()
        held = PssSampler().stop()
        sampler = PssSampler(interval=0.01)
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        log(f"  FM {name}: {seconds:.1f} s, peak {(peak - base) / frame:.2f} frames over base")
        out[name] = {
            "seconds": seconds,
            "peak_over_base": (peak - base) / frame,
            "peak_over_held": (peak - held) / frame,
        }
        del result
    pm.shutdown()
    return out


def memory_markdown(found: dict) -> str:
    frame = found["frame_bytes"]
    lines = [
        "### Memory of a large frame",
        "",
        f"Frame: {found['rows']:,} rows × {found['columns']} float64 columns = "
        f"{frame / 1e6:,.0f} MB; 2 workers; `apply(f, axis=1)` with `f = row.sum()`.",
        "",
        "| call | s | peak memory (parent + workers, PSS) above the process without the "
        "frame, in frame sizes | of which above the process holding the frame |",
        "|---|---:|---:|---:|",
    ]
    for name in ("serial pandas", "ipyparmap"):
        row = found[name]
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['peak_over_base']:.2f} | "
            f"{row['peak_over_held']:.2f} |"
        )
    return "\n".join(lines)
