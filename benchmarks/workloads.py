"""Functions the benchmarks map, and the workloads' inputs.

Everything mapped in-process lives here, so every contender's workers can import it by
name (spawned workers, loky, joblib, mpire, ipyparmap alike). Only W4 and W6b map a
``__main__``-defined function; their scripts are in ``scripts.py``.

This module imports nothing heavy: the W7 scripts import it in a fresh interpreter and
their memory is what W7 measures.
"""

from __future__ import annotations

import time

WORKERS = 2

# W1 -------------------------------------------------------------------------------
W1_ITEMS = 100_000

# W2 -------------------------------------------------------------------------------
W2_ITEMS = 100
W2_SECONDS = 0.020  # per item

# W3 -------------------------------------------------------------------------------
W3_ITEMS = 64
W3_ALPHA = 2.0  # Pareto shape: the heaviest item weighs ~9% of the total
W3_UNIT_SECONDS = 0.012  # the lightest items weigh about one unit

# W5 -------------------------------------------------------------------------------
W5_CALLS = 200

# W6 -------------------------------------------------------------------------------
W6_ARRAYS = 16
W6_ARRAY_LEN = 2_000_000  # float64: 16.0 MB each, 256 MB in all

# W6b ------------------------------------------------------------------------------
W6B_ITEMS = 50
W6B_ARRAY_LEN = 25_000_000  # float64: 200 MB


def square(x):
    return x * x


def spin(n):
    """Pure-Python CPU work: n loop turns (calibrate with :func:`spin_per_second`)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def array_sum(a):
    """W6: touch every element of the array argument (about 1 ms for 16 MB)."""
    return float(a.sum())


def spin_per_second(probe: float = 0.05) -> float:
    """Loop turns of :func:`spin` per second on this machine, now (best of three)."""
    n = 10_000
    while True:
        took = _best_of(3, n)
        if took > probe:
            return n / took
        n *= 2


def _best_of(repeat: int, n: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        spin(n)
        best = min(best, time.perf_counter() - started)
    return best


def pareto_weights(count: int = W3_ITEMS, alpha: float = W3_ALPHA) -> list[float]:
    """Deterministic Pareto(alpha) quantiles in ascending order: the heaviest come last.

    Quantiles rather than random draws, so every run and every contender sees the same
    work: ``(1 - (i + 0.5) / count) ** (-1 / alpha)`` for ``i = 0 .. count - 1``.
    """
    return [(1.0 - (i + 0.5) / count) ** (-1.0 / alpha) for i in range(count)]


def greedy_bound(weights: list[float], workers: int = WORKERS) -> float:
    """Makespan / (total / workers) of an ideal in-order dispatcher with no overhead.

    Each item, in input order, goes to whichever worker frees up first. With the
    heaviest item last this is the best any scheduler that keeps input order can do,
    so it is the floor for the W3 figure.
    """
    free = [0.0] * workers
    for weight in weights:
        slot = free.index(min(free))
        free[slot] += weight
    return max(free) / (sum(weights) / workers)
