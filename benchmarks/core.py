"""Issue-2 benchmark: per-item overhead (W1) and CPU-bound speedup (W2) vs the stdlib.

    python benchmarks/core.py [--rounds 5]

Contenders run interleaved, round by round, so machine noise hits all alike; the
table reports medians and ratios. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workloads import spin, square

import ipyparmap as pm

WORKERS = 2


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def calibrate_spin(target: float = 0.02) -> int:
    n = 10_000
    while True:
        took = timed(lambda n=n: spin(n))
        if took > 0.005:
            return max(1, int(n * target / took))
        n *= 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tiny = list(range(100_000))
    n_spin = calibrate_spin()
    cpu = [n_spin] * 100

    fork = mp.get_context("fork").Pool(WORKERS)
    spawn = mp.get_context("spawn").Pool(WORKERS)
    executor = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("spawn"))
    for warm in (fork.map, spawn.map, executor.map):
        list(warm(square, range(10)))
    pm.parmap(square, range(10), workers=WORKERS, progress=False)

    w1 = {
        "serial": lambda: [square(x) for x in tiny],
        "ipyparmap": lambda: pm.parmap(square, tiny, workers=WORKERS, progress=False),
        "Pool(fork).map": lambda: fork.map(square, tiny),
        "Pool(spawn).map": lambda: spawn.map(square, tiny),
        "ProcessPoolExecutor(chunksize=1000)": lambda: list(
            executor.map(square, tiny, chunksize=1000)
        ),
    }
    w2 = {
        "serial": lambda: [spin(n) for n in cpu],
        "ipyparmap": lambda: pm.parmap(spin, cpu, workers=WORKERS, progress=False),
        "Pool(fork).map": lambda: fork.map(spin, cpu),
        "Pool(spawn).map": lambda: spawn.map(spin, cpu),
        "ProcessPoolExecutor(chunksize=1)": lambda: list(executor.map(spin, cpu)),
    }
    results = {"W1": {k: [] for k in w1}, "W2": {k: [] for k in w2}}
    for _ in range(args.rounds):
        for name, call in w1.items():
            results["W1"][name].append(timed(call))
        for name, call in w2.items():
            results["W2"][name].append(timed(call))
    fork.terminate()
    spawn.terminate()
    executor.shutdown()
    pm.shutdown()

    serial1 = statistics.median(results["W1"]["serial"])
    print(f"W1: 100,000 tiny items, {WORKERS} workers, median of {args.rounds} rounds")
    print(f"  {'contender':38s} {'wall ms':>9s} {'overhead us/item':>17s}")
    for name, times in results["W1"].items():
        wall = statistics.median(times)
        overhead = (wall - serial1) / len(tiny) * 1e6
        print(f"  {name:38s} {wall * 1e3:9.1f} {overhead:17.3f}")
    serial2 = statistics.median(results["W2"]["serial"])
    print(f"\nW2: 100 CPU-bound items of ~20 ms, {WORKERS} workers")
    print(f"  {'contender':38s} {'wall s':>9s} {'speedup':>9s}")
    for name, times in results["W2"].items():
        wall = statistics.median(times)
        print(f"  {name:38s} {wall:9.2f} {serial2 / wall:9.2f}")


if __name__ == "__main__":
    main()
