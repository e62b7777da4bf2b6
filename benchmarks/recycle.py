"""W8 and W9: what a new worker costs once the pool is running (issue 18).

- **W8 recycle**: a fresh pool of 2 workers with ``maxtasksperchild=1`` maps a trivial
  function over 200 tasks (``chunksize=1``: a new worker for every task), pool start
  and shutdown included. The drop-in ``ipyparmap.Pool`` beside ``multiprocessing.Pool``
  (fork and spawn) and ``ProcessPoolExecutor(max_tasks_per_child=1)`` (spawn; loky, the
  issue's other peer, has no such option in its 3.x releases).
- **W9 crashes**: ``parmap`` over 100 items of 10 ms with ``errors="collect"``, every
  10th item ending its worker with ``os._exit(1)`` after its 10 ms, against the same
  run with no crash, in the same round; the figure is the extra wall time per crash.

The mapped functions live here, so every contender's workers import them by name.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time

from . import contenders as C
from .workloads import WORKERS

W8_TASKS = 200
W9_ITEMS = 100
W9_EVERY = 10  # every 10th item crashes its worker
W9_SECONDS = 0.010


def trivial(x):
    return x


def sleep_or_die(arg):
    """W9: sleep 10 ms; then, for a ``(value, True)`` item, end the worker."""
    value, die = arg
    time.sleep(W9_SECONDS)
    if die:
        os._exit(1)
    return value


def w9_items(crash: bool) -> list:
    return [(i, crash and i % W9_EVERY == W9_EVERY - 1) for i in range(W9_ITEMS)]


# -- W8 contenders: a fresh pool per call, recycling after every task -----------------------
class _Recycling(C.Contender):
    def map(self, func, items):
        raise NotImplementedError


class MpPoolRecycling(_Recycling):
    def __init__(self, method: str):
        self.method = method
        self.name = f"Pool({method}, maxtasksperchild=1).map"
        self.start = method

    def map(self, func, items):
        with mp.get_context(self.method).Pool(WORKERS, maxtasksperchild=1) as pool:
            return pool.map(func, items, chunksize=1)


class ExecutorRecycling(_Recycling):
    name = "ProcessPoolExecutor(spawn, max_tasks_per_child=1)"
    start = "spawn"

    def map(self, func, items):
        with cf.ProcessPoolExecutor(
            WORKERS, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
        ) as executor:
            return list(executor.map(func, items, chunksize=1))


class IpyparmapRecycling(_Recycling):
    name = "ipyparmap"  # the drop-in ipyparmap.Pool
    start = "spawn"
    peer = False

    def map(self, func, items):
        import ipyparmap as pm

        with pm.Pool(WORKERS, maxtasksperchild=1) as pool:
            return pool.map(func, items, chunksize=1)


def w8_contenders() -> list[C.Contender]:
    return [
        C.Serial(),
        MpPoolRecycling("fork"),
        MpPoolRecycling("spawn"),
        ExecutorRecycling(),
        IpyparmapRecycling(),
    ]


# -- W9: ipyparmap with and without crashes ------------------------------------------------
NO_CRASH = "ipyparmap, no crash"


class IpyparmapCrashes(C.Contender):
    """``parmap`` of `sleep_or_die` on the warm default pool; ``crash`` picks the items."""

    start = "spawn"
    peer = False

    def __init__(self, crash: bool):
        self.crash = crash
        self.name = "ipyparmap" if crash else NO_CRASH

    def map(self, func, items):
        import ipyparmap as pm

        items = w9_items(self.crash) if len(items) == W9_ITEMS else items
        res = pm.parmap(func, items, workers=WORKERS, errors="collect", progress=False)
        # the same checksum with and without crashes: a crashed item counts as its value
        return [i if r is None or isinstance(r, pm.Failure) else r for i, r in enumerate(res)]

    def close(self):
        import ipyparmap as pm

        pm.shutdown()


def w9_contenders() -> list[C.Contender]:
    return [IpyparmapCrashes(crash=False), IpyparmapCrashes(crash=True)]
