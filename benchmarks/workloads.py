"""Functions the benchmarks map (importable by name in every contender's workers)."""

from __future__ import annotations


def square(x):
    return x * x


def spin(n):
    """About 20 ms of pure-Python CPU work for n = 1 (calibrated by the caller)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total
