"""Where ipyparmap spends its time: the profiles behind docs/benchmarks.md.

    .venv/bin/python -m benchmarks.profiling parent W1     # cProfile of the parent
    .venv/bin/python -m benchmarks.profiling worker W1     # cProfile inside the workers
    .venv/bin/python -m benchmarks.profiling timeline W1   # chunk sends/results, idle gaps
    .venv/bin/python -m benchmarks.profiling calls         # W5: where one small call goes
    .venv/bin/python -m benchmarks.profiling loop          # worker loop vs list(map())
    .venv/bin/python -m benchmarks.profiling startup       # W4: imports and phases
    .venv/bin/python -m benchmarks.profiling bigglobal     # W6b: payload pickle/hash/send

Workloads for parent/worker/timeline: W1, W2, W3, W5, W6. Nothing here changes the
engine: the timeline and the call breakdown wrap a few of its methods at run time (and
say so if the names have changed); worker profiles come from a ``sitecustomize`` on the
workers' PYTHONPATH that runs cProfile until the worker exits.
"""

from __future__ import annotations

import argparse
import cProfile
import glob
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from . import workloads as W
from .scripts import ROOT, pythonpath_with_root

_SITECUSTOMIZE = """
import os
if os.environ.get("IPYPARMAP_WORKER") and os.environ.get("BENCH_PROFILE_DIR"):
    import atexit
    import cProfile

    _profile = cProfile.Profile()
    _profile.enable()

    def _dump():
        _profile.disable()
        folder = os.environ["BENCH_PROFILE_DIR"]
        _profile.dump_stats(os.path.join(folder, f"worker-{os.getpid()}.prof"))

    atexit.register(_dump)
"""


def _inputs(key: str):
    """(func, items, calls) for a workload."""
    rate = W.spin_per_second()
    if key == "W1":
        return W.square, list(range(W.W1_ITEMS)), 5
    if key == "W2":
        return W.spin, [int(rate * W.W2_SECONDS)] * W.W2_ITEMS, 1
    if key == "W3":
        unit = rate * W.W3_UNIT_SECONDS
        return W.spin, [max(1, int(w * unit)) for w in W.pareto_weights()], 1
    if key == "W5":
        return W.square, [1, 2], 1000
    if key == "W6":
        import numpy as np

        arrays = [np.arange(W.W6_ARRAY_LEN, dtype=np.float64) + i for i in range(W.W6_ARRAYS)]
        return W.array_sum, arrays, 3
    raise SystemExit(f"unknown workload {key!r} (W1, W2, W3, W5, W6)")


def _print_stats(profile, sort: str, limit: int, restrict: str | None = None) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out) if profile is not None else None
    if stats is None:
        return
    stats.strip_dirs().sort_stats(sort)
    if restrict:
        stats.print_stats(restrict, limit)
    else:
        stats.print_stats(limit)
    print(out.getvalue())


def parent(key: str, limit: int) -> None:
    import ipyparmap as pm

    func, items, calls = _inputs(key)
    pm.parmap(func, items[:2], workers=W.WORKERS, progress=False)
    walls = []
    profile = cProfile.Profile()
    for _ in range(calls):
        started = time.perf_counter()
        profile.enable()
        pm.parmap(func, items, workers=W.WORKERS, progress=False)
        profile.disable()
        walls.append(time.perf_counter() - started)
    print(f"{key}: {calls} calls, median {statistics.median(walls) * 1e3:.2f} ms (profiled)")
    _print_stats(profile, "tottime", limit)
    pm.shutdown()


def worker(key: str, limit: int) -> None:
    func, items, calls = _inputs(key)
    with tempfile.TemporaryDirectory(prefix="ipyparmap-prof-") as folder:
        site = os.path.join(folder, "site")
        os.mkdir(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as out:
            out.write(_SITECUSTOMIZE)
        # The workers inherit our environment (ipyparmap adds its own root to it).
        os.environ["BENCH_PROFILE_DIR"] = folder
        os.environ["PYTHONPATH"] = os.pathsep.join([site, ROOT])
        import ipyparmap as pm

        pm.shutdown()  # new workers, started with the profiling sitecustomize
        pm.parmap(func, items[:2], workers=W.WORKERS, progress=False)
        for _ in range(calls):
            pm.parmap(func, items, workers=W.WORKERS, progress=False)
        pm.shutdown()  # workers exit cleanly and write their profiles
        files = glob.glob(os.path.join(folder, "worker-*.prof"))
        if not files:
            print("no worker profile was written (did the workers exit cleanly?)")
            return
        stats = pstats.Stats(*files, stream=sys.stdout)
        print(f"{key}: {calls} calls, {len(files)} worker profiles (boot included)")
        stats.strip_dirs().sort_stats("tottime").print_stats(limit)


def _wrap(cls, name: str, before=None, after=None) -> bool:
    original = getattr(cls, name, None)
    if original is None:
        print(f"note: {cls.__name__}.{name} is gone; that part of the timeline is skipped")
        return False

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        finally:
            if after:
                after(*args, **kwargs)

    setattr(cls, name, wrapper)
    return True


def timeline(key: str, show: int) -> None:
    """Print each chunk send and result; sum the gaps where a worker waited for the parent."""
    import ipyparmap as pm
    from ipyparmap.engine import local as L

    events: list = []
    _wrap(
        L.LocalEngine,
        "_send",
        before=lambda self, chunk, queued=False: events.append(
            (time.perf_counter(), "queue" if queued else "send", chunk.owner.pid,
             len(chunk.items))
        ),
    )  # fmt: skip
    _wrap(
        L.LocalEngine,
        "_on_results",
        before=lambda self, worker, batch, values: events.append(
            (time.perf_counter(), "result", worker.pid, batch.timings[1])
        ),
    )
    func, items, _ = _inputs(key)
    pm.parmap(func, items[:2], workers=W.WORKERS, progress=False)
    events.clear()
    started = time.perf_counter()
    results = pm.parmap(func, items, workers=W.WORKERS, progress=False)
    wall = time.perf_counter() - started
    last_result: dict = {}
    waited = 0.0
    for when, what, pid, _count in events:
        if what == "result":
            last_result[pid] = when
        elif pid in last_result:
            waited += when - last_result.pop(pid)
    first = events[0][0] - started if events else 0.0
    end = wall - (events[-1][0] - started) if events else 0.0
    stats = results.stats
    print(
        f"{key}: wall {wall * 1e3:.1f} ms, {stats.chunks} chunks, worker task time "
        f"{stats.task_time * 1e3:.1f} ms\n"
        f"  call -> first send {first * 1e3:.2f} ms; last result -> return {end * 1e3:.2f} ms;\n"
        f"  result -> next send on the same worker, summed over workers {waited * 1e3:.2f} ms"
    )
    sends = [e for e in events if e[1] in ("send", "queue")]
    print(f"  chunk sizes: {[e[3] for e in sends]}")
    for when, what, pid, count in events[:show]:
        print(f"  {(when - started) * 1e3:8.2f} ms  {what:6s} worker {pid}  {count} items")
    pm.shutdown()


def calls(count: int = 500) -> None:
    """W5: the median time from the call to each step of a 2-item parmap."""
    import ipyparmap as pm
    from ipyparmap import api
    from ipyparmap.engine import local as L
    from ipyparmap.engine import outcomes as OS
    from ipyparmap.engine import run as R
    from ipyparmap.process import pool as PL
    from ipyparmap.process import resources as RS

    marks: dict = {}

    def mark(label):
        return lambda *a, **k: marks.setdefault(label, time.perf_counter())

    steps = [
        (api, "_check_call", "validated"),
        (RS, "cpu_count", "cpu_count"),
        (R.Runner, "_start", "Runner._start"),
        (PL.Pool, "acquire", "Pool.acquire"),
        (L.LocalEngine, "start", "engine started"),
        (L.LocalEngine, "_send", "chunk sent"),
        (L.LocalEngine, "wait", "wait"),
        (L.LocalEngine, "_on_results", "result handled"),
        (R.Runner, "_close", "Runner._close"),
        (OS.ResultsSink, "build", "Results built"),
    ]
    for owner, name, label in steps:
        _wrap(owner, name, before=mark(label + " >"), after=mark(label + " <"))
    pm.parmap(W.square, [1, 2], workers=W.WORKERS, progress=False)
    rows = []
    for _ in range(count):
        marks.clear()
        started = time.perf_counter()
        pm.parmap(W.square, [1, 2], workers=W.WORKERS, progress=False)
        ended = time.perf_counter()
        rows.append(
            {k: (v - started) * 1e6 for k, v in marks.items()} | {"return": (ended - started) * 1e6}
        )
    print(f"W5 breakdown: median µs from the call, over {count} calls (wrappers add a little)")
    labels = sorted(rows[0], key=lambda k: statistics.median(r[k] for r in rows if k in r))
    for label in labels:
        print(f"  {statistics.median(r[label] for r in rows if label in r):8.1f}  {label}")
    pm.shutdown()


def loop() -> None:
    """The worker's per-item loop against a bare list(map()), on 16,384 tiny items."""
    import mmap

    from ipyparmap.process import worker as WK
    from ipyparmap.wire import board as B
    from ipyparmap.wire.codec import dumps, loads

    worker = WK.Worker.__new__(WK.Worker)
    worker.board = B.Board(mmap.mmap(-1, B.BOARD_SIZE))
    worker.sink = WK._OutputSink(worker.board.ints)
    worker._send_results = lambda *args: None
    items = list(range(16_384))
    values = [x * x for x in items]
    durations = [1e-7] * len(items)

    def per_item(call, repeat=30):
        took = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            took.append(time.perf_counter() - started)
        return statistics.median(took) / len(items) * 1e6

    blob = dumps(items)
    rows = [
        ("Worker._run_items, stride 64", lambda: worker._run_items(1, W.square, items, False, 64)),
        ("Worker._run_items, stride 1", lambda: worker._run_items(1, W.square, items, False, 1)),
        ("list(map(func, items))", lambda: list(map(W.square, items))),
        ("loads(items blob)", lambda: loads(blob)),
        ("dumps(values)", lambda: dumps(values)),
        ("dumps(per-item durations, as before Timings)", lambda: dumps(durations)),
    ]
    print("µs per item (16,384 items of x*x, median of 30)")
    for label, call in rows:
        print(f"  {per_item(call):7.3f}  {label}")


def startup() -> None:
    """W4: import costs of parent and worker, and the phases of one cold run."""
    python = sys.executable

    def run(code: str) -> float:
        took = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([python, "-c", code], check=True, cwd=tempfile.gettempdir())
            took.append(time.perf_counter() - started)
        return statistics.median(took) * 1e3

    print("whole-process ms, median of 5:")
    print(f"  {run('pass'):7.1f}  python -c pass")
    print(f"  {run('import ipyparmap'):7.1f}  import ipyparmap")
    engine = "import ipyparmap.engine.run, ipyparmap.views.textui, cloudpickle, inspect"
    print(f"  {run(engine):7.1f}  + the modules parmap imports on its first call")
    worker_code = "from ipyparmap.process.worker import main; import cloudpickle"
    print(f"  {run(worker_code):7.1f}  a worker's imports (ipyparmap.process.worker, cloudpickle)")
    print(f"  {run('from multiprocessing.spawn import spawn_main'):7.1f}  a spawn child's")
    script = textwrap.dedent(
        """
        import time
        T0 = time.perf_counter()
        import ipyparmap as pm
        from ipyparmap.engine import local as L


        def f(x):
            return x * x


        seen = {}
        original = L.LocalEngine._handle


        def handle(self, worker, message, fds=()):
            seen.setdefault(message.TAG, time.perf_counter())
            return original(self, worker, message, fds)


        L.LocalEngine._handle = handle
        if __name__ == "__main__":
            t1 = time.perf_counter()
            pm.parmap(f, [1, 2], workers=2, progress=False)
            t2 = time.perf_counter()
            pm.shutdown()
            t3 = time.perf_counter()
            ms = lambda t: (t - T0) * 1e3
            print(f"{ms(t1):.1f} {ms(seen['ready']):.1f} {ms(t2):.1f} {ms(t3):.1f}")
        """
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cold.py")
        with open(path, "w") as out:
            out.write(script)
        for _ in range(5):
            started = time.perf_counter()
            out = subprocess.run([python, path], capture_output=True, text=True, check=True)
            whole = (time.perf_counter() - started) * 1e3
            rows.append([*map(float, out.stdout.split()), whole])
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print("one cold run (ms after the script's first line, median of 5):")
    print(f"  {med[0]:7.1f}  imports done, parmap called")
    print(f"  {med[1]:7.1f}  first READY from a worker")
    print(f"  {med[2]:7.1f}  parmap returned")
    print(f"  {med[3]:7.1f}  pm.shutdown() returned")
    print(f"  {med[4]:7.1f}  whole process (interpreter start and exit included)")


def bigglobal() -> None:
    """W6b: the cost of a function payload holding a 200 MB global."""
    import hashlib
    import pickle

    import numpy as np

    from ipyparmap.wire.codec import dumps
    from ipyparmap.wire.serialize import dumps_function

    namespace: dict = {"np": np, "BIG": np.arange(W.W6B_ARRAY_LEN, dtype=np.float64)}
    exec("def f(i):\n    return float(BIG[i])\n", namespace)
    func = namespace["f"]
    func.__module__ = "__main__"  # pickled by value, with its globals, as in a script

    def timed(call):
        started = time.perf_counter()
        value = call()
        return value, time.perf_counter() - started

    blob, t_pickle = timed(lambda: dumps_function(func))
    _, t_hash = timed(lambda: hashlib.blake2b(blob, digest_size=16).digest())
    _, t_sha1 = timed(lambda: hashlib.sha1(blob).digest())
    _, t_message = timed(lambda: dumps(("func", b"k" * 16, blob, {})))
    _, t_loads = timed(lambda: pickle.loads(blob))
    print(f"payload {len(blob) / 1e6:.0f} MB")
    print(f"  {t_pickle:.3f} s  dumps_function (cloudpickle, in-band)")
    print(f"  {t_hash:.3f} s  blake2b content key (every call, also warm)")
    print(f"  {t_sha1:.3f} s  sha1 of the same bytes, for comparison")
    print(f"  {t_message:.3f} s  pickling the FUNC message around it (per worker)")
    print(f"  {t_loads:.3f} s  pickle.loads in a worker")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    parser.add_argument(
        "what", choices=["parent", "worker", "timeline", "calls", "loop", "startup", "bigglobal"]
    )
    parser.add_argument("workload", nargs="?", default="W1")
    parser.add_argument("--limit", type=int, default=25, help="rows of profile or timeline")
    args = parser.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    os.environ["PYTHONPATH"] = pythonpath_with_root()
    if args.what == "parent":
        parent(args.workload, args.limit)
    elif args.what == "worker":
        worker(args.workload, args.limit)
    elif args.what == "timeline":
        timeline(args.workload, args.limit)
    elif args.what == "calls":
        calls()
    elif args.what == "loop":
        loop()
    elif args.what == "startup":
        startup()
    else:
        bigglobal()


if __name__ == "__main__":
    main()
