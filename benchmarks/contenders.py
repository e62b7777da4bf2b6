"""The in-process contenders: one object per way of mapping, with a warm pool.

Every contender gets 2 workers and its library's defaults, except where a default
would be unfair or missing:

- ``ProcessPoolExecutor`` and loky's executor take no chunksize by default (one item
  per message); they get the chunksize ``Pool.map`` computes, ``ceil(n / (4 *
  workers))``, the issue's "with chunksize".
- loky's reusable executor stops idle workers after 10 s by default; a longer idle
  timeout keeps it warm like the others between workloads.
- mpire gets ``keep_alive=True`` (its warm pool); it restarts its workers when the
  function changes, which the untimed warm-up call before every timed call absorbs.
- joblib's ``Parallel`` is created per call, as it is normally used; it reuses the
  loky executor joblib keeps underneath.

The pools are started once and reused for every workload and round (a warm pool, as
in a notebook session); cold starts are what W4 measures, in fresh interpreters.
"""

from __future__ import annotations

import math
import multiprocessing as mp

from .workloads import WORKERS


def pool_chunksize(n: int, workers: int = WORKERS) -> int:
    """The chunksize ``multiprocessing.Pool.map`` picks for ``n`` items."""
    return max(1, math.ceil(n / (4 * workers)))


class Contender:
    #: The label in the tables.
    name = ""
    #: How its workers start: "fork", "spawn", or "" (no workers).
    start = ""
    #: A peer (compared with ipyparmap) rather than a reference such as serial.
    peer = True

    def open(self) -> None:
        """Start the pool (untimed)."""

    def map(self, func, items: list) -> list:
        raise NotImplementedError

    def prepare(self, items: list) -> list:
        """The items as this contender is handed them (untimed; most take them as is)."""
        return items

    def close(self) -> None:
        """Stop the pool; also called after a failed or timed-out call."""


class Serial(Contender):
    name = "serial"
    peer = False

    def map(self, func, items):
        return [func(x) for x in items]


class MpPool(Contender):
    def __init__(self, method: str):
        self.method = method
        self.name = f"Pool({method}).map"
        self.start = method
        self.pool = None

    def open(self):
        self.pool = mp.get_context(self.method).Pool(WORKERS)

    def map(self, func, items):
        return self.pool.map(func, items)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


class Executor(Contender):
    def __init__(self, method: str = "spawn"):
        self.method = method
        self.name = f"ProcessPoolExecutor({method})"
        self.start = method
        self.executor = None

    def open(self):
        import concurrent.futures as cf

        self.executor = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context(self.method))

    def map(self, func, items):
        return list(self.executor.map(func, items, chunksize=pool_chunksize(len(items))))

    def close(self):
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


class Joblib(Contender):
    name = "joblib(loky)"
    start = "spawn"

    def map(self, func, items):
        from joblib import Parallel, delayed

        return Parallel(n_jobs=WORKERS, backend="loky")(delayed(func)(x) for x in items)

    def close(self):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


class Loky(Contender):
    name = "loky"
    start = "spawn"
    IDLE_TIMEOUT = 3600

    def _executor(self):
        from loky import get_reusable_executor

        return get_reusable_executor(max_workers=WORKERS, timeout=self.IDLE_TIMEOUT)

    def open(self):
        self._executor()

    def map(self, func, items):
        chunksize = pool_chunksize(len(items))
        return list(self._executor().map(func, items, chunksize=chunksize))

    def close(self):
        self._executor().shutdown(wait=True, kill_workers=True)


class Mpire(Contender):
    def __init__(self, method: str = "fork"):
        self.method = method
        self.name = f"mpire({method})"
        self.start = method
        self.pool = None

    def open(self):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=WORKERS, start_method=self.method, keep_alive=True)

    def map(self, func, items):
        # An item that is a tuple would be unpacked into arguments: ours are ints and arrays.
        return self.pool.map(func, items, iterable_len=len(items), progress_bar=False)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool = None


class Ipyparmap(Contender):
    name = "ipyparmap"
    start = "spawn"
    peer = False

    def __init__(self, progress=False):
        self.progress = progress

    def map(self, func, items):
        import ipyparmap as pm

        return pm.parmap(func, items, workers=WORKERS, progress=self.progress)

    def close(self):
        import ipyparmap as pm

        pm.shutdown()


class IpyparmapSharedArrays(Ipyparmap):
    """ipyparmap with its input arrays allocated by ``pm.shared_array`` (W6 only): the
    data lives in shared memory before the call, so nothing is copied to send it. A
    different way to hold the data, shown beside the headline row, not compared."""

    name = "ipyparmap, pm.shared_array inputs"

    def __init__(self):
        super().__init__(progress=False)
        self._prepared: dict = {}

    def prepare(self, items):
        import ipyparmap as pm

        key = id(items)
        if key not in self._prepared:
            converted = []
            for item in items:
                shared = pm.shared_array(item.shape, item.dtype)
                shared[...] = item
                converted.append(shared)
            self._prepared = {key: (items, converted)}  # keep items alive: ids stay unique
        return self._prepared[key][1]


def in_process() -> list[Contender]:
    """Serial, the peers, and ipyparmap, in the tables' order."""
    return [
        Serial(),
        MpPool("fork"),
        MpPool("spawn"),
        Executor("spawn"),
        Joblib(),
        Loky(),
        Mpire("fork"),
        Ipyparmap(),
    ]
