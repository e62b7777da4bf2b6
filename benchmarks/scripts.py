"""Whole-process workloads: a small script per contender, run in a fresh interpreter.

W4 (cold start with a ``__main__`` function), W6b (a ``__main__`` function using a
200 MB global) and W7 (peak memory of parent + workers during W2) are about what a
fresh process pays, so each run writes a script to a temporary folder and runs it with
a time limit; a contender that hangs or fails is reported as such.

A script is ``prelude`` (the workload: ``f`` and ``ITEMS``), then, under the
``__main__`` guard that spawn-based pools need: the contender's imports, then
``t0``, its pool start and the map, ``t1``, its pool stop. It prints
``RESULT <t1 - t0> <checksum>``; the parent also times the whole process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass

from .workloads import W2_ITEMS, W6B_ARRAY_LEN, W6B_ITEMS, WORKERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ScriptContender:
    name: str
    start: str  # "fork", "spawn" or "" (no workers)
    imports: str
    setup: str  # starts the pool
    call: str  # an expression: the results, a list
    stop: str = ""
    peer: bool = True


_CS = f"max(1, -(-len(ITEMS) // {4 * WORKERS}))"  # Pool.map's chunksize


def _pool(method: str) -> ScriptContender:
    return ScriptContender(
        f"Pool({method}).map",
        method,
        "import multiprocessing as mp",
        f"p = mp.get_context({method!r}).Pool({WORKERS})",
        "p.map(f, ITEMS)",
        "p.terminate()",
    )


def _mpire(method: str) -> ScriptContender:
    return ScriptContender(
        f"mpire({method})",
        method,
        "from mpire import WorkerPool",
        f"p = WorkerPool(n_jobs={WORKERS}, start_method={method!r})",
        "p.map(f, ITEMS, progress_bar=False)",
        "p.terminate()",
    )


CONTENDERS = [
    ScriptContender("serial", "", "", "", "[f(x) for x in ITEMS]", peer=False),
    _pool("fork"),
    _pool("spawn"),
    ScriptContender(
        "ProcessPoolExecutor(spawn)",
        "spawn",
        "import concurrent.futures as cf, multiprocessing as mp",
        f"ex = cf.ProcessPoolExecutor({WORKERS}, mp_context=mp.get_context('spawn'))",
        f"list(ex.map(f, ITEMS, chunksize={_CS}))",
        "ex.shutdown()",
    ),
    ScriptContender(
        "joblib(loky)",
        "spawn",
        "from joblib import Parallel, delayed",
        "",
        f"Parallel(n_jobs={WORKERS})(delayed(f)(x) for x in ITEMS)",
    ),
    ScriptContender(
        "loky",
        "spawn",
        "from loky import get_reusable_executor",
        f"ex = get_reusable_executor(max_workers={WORKERS})",
        f"list(ex.map(f, ITEMS, chunksize={_CS}))",
    ),
    _mpire("fork"),
    _mpire("spawn"),
    ScriptContender(
        "ipyparmap",
        "spawn",
        "import ipyparmap as pm",
        "",
        f"pm.parmap(f, ITEMS, workers={WORKERS}, progress=False)",
        peer=False,
    ),
]

# The workloads' preludes ------------------------------------------------------------
W4_PRELUDE = """
def f(x):
    return x * x


ITEMS = [1, 2]
"""

W6B_PRELUDE = f"""
import numpy as np

BIG = np.arange({W6B_ARRAY_LEN}, dtype=np.float64)  # 200 MB, a global of __main__
SLICE = {W6B_ARRAY_LEN // W6B_ITEMS // 5}


def f(i):
    return float(BIG[i * SLICE : (i + 1) * SLICE].sum())


ITEMS = list(range({W6B_ITEMS}))
"""

W7_PRELUDE = f"""
import sys

from benchmarks.workloads import spin as f

ITEMS = [int(sys.argv[1])] * {W2_ITEMS}
"""


def script(prelude: str, contender: ScriptContender) -> str:
    body = "\n".join(
        line
        for line in (
            contender.imports,
            "import time",
            "t0 = time.perf_counter()",
            contender.setup,
            f"res = {contender.call}",
            "t1 = time.perf_counter()",
            contender.stop,
            "print('RESULT', t1 - t0, sum(res))",
        )
        if line
    )
    return f"{prelude.strip()}\n\n\nif __name__ == '__main__':\n{textwrap.indent(body, '    ')}\n"


@dataclass
class ProcessRun:
    wall: float | None = None  # whole process, seconds
    inner: float | None = None  # pool start + map, seconds, as the script measured it
    checksum: float | None = None
    peak_pss: int | None = None  # bytes, parent + descendants, when sampled
    peak_rss: int | None = None  # bytes, likewise (pages shared after a fork counted per process)
    error: str | None = None  # why it counts as failed


def pythonpath_with_root() -> str:
    """``PYTHONPATH`` with the suite's root first: the processes it starts, and their
    workers, import ``benchmarks.workloads`` (and this checkout's ipyparmap)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([ROOT, *paths])


@contextlib.contextmanager
def script_file(text: str):
    """``text`` written as a script in a new temporary folder: ``(folder, path)``, and
    the environment to run it in (not marked as an ipyparmap worker)."""
    with tempfile.TemporaryDirectory(prefix="ipyparmap-bench-") as folder:
        path = os.path.join(folder, "bench_script.py")
        with open(path, "w") as out:
            out.write(text)
        env = dict(os.environ, PYTHONPATH=pythonpath_with_root())
        env.pop("IPYPARMAP_WORKER", None)
        yield folder, path, env


def run_script(text: str, args: tuple = (), timeout: float = 60.0, sample_memory: bool = False):
    """Run ``text`` as ``__main__`` of a fresh interpreter in a temporary folder."""
    with script_file(text) as (folder, path, env):
        run = ProcessRun()
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, path, *map(str, args)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so a hang can be killed with all its workers
        )
        sampler = _MemorySampler(proc.pid) if sample_memory else None
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            run.wall = time.perf_counter() - started
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            proc.communicate()
            run.error = f"hangs (killed after {timeout:g} s)"
            return run
        finally:
            if sampler is not None:
                run.peak_pss, run.peak_rss = sampler.stop()
        _kill_tree(proc)  # workers left behind by a sloppy shutdown
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                _, inner, checksum = line.split()
                run.inner, run.checksum = float(inner), float(checksum)
        if proc.returncode != 0 or run.inner is None:
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            run.error = f"fails (exit {proc.returncode}: {tail[:120]})"
        return run


def _kill_tree(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _MemorySampler:
    """Samples the summed PSS and RSS of a process and all its descendants in a thread
    (the workers, and processes they start: a template process and its forks count).

    PSS divides each page among the processes that map it: a page a fork still shares
    with its parent counts once in the sum, as it is in RAM once; RSS counts it in every
    process. Both come from one read of ``/proc/PID/smaps_rollup`` per process."""

    INTERVAL = 0.005

    def __init__(self, pid: int):
        import psutil

        self._psutil = psutil
        self.peak_pss = 0
        self.peak_rss = 0
        self._done = threading.Event()
        self._process = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        psutil = self._psutil
        while not self._done.is_set():
            try:
                tree = [self._process, *self._process.children(recursive=True)]
            except psutil.Error:
                return
            pss = rss = 0
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                pss += info.pss
                rss += info.rss
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_rss = max(self.peak_rss, rss)
            self._done.wait(self.INTERVAL)

    def stop(self) -> tuple[int, int]:
        """(peak PSS, peak RSS), bytes."""
        self._done.set()
        self._thread.join()
        return self.peak_pss, self.peak_rss
