"""``python -m ipyparmap.demo``: a real parallel map, its speedup, and its safety nets.

Runs in about ten seconds on two cores. Everything mapped here is defined in this
``__main__``-like module at run time, the way a notebook defines it.
"""

from __future__ import annotations

import os
import sys
import time


def count_primes(limit: int) -> int:
    """Deliberately plain CPU-bound Python: primes below ``limit``."""
    count = 0
    for n in range(2, limit):
        for d in range(2, int(n**0.5) + 1):
            if n % d == 0:
                break
        else:
            count += 1
    return count


def _flaky(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is unlucky")
    if x == 5:
        os._exit(1)  # a worker dies mid-run: only this item fails
    return x * 10


def main(argv: list[str] | None = None) -> int:
    import ipyparmap as pm

    items = [40_000 + 500 * i for i in range(24)]
    workers = pm.cpu_count()
    print(f"ipyparmap demo on {workers} usable CPUs (python {sys.version.split()[0]})\n")

    started = time.perf_counter()
    serial = [count_primes(n) for n in items]
    serial_time = time.perf_counter() - started
    print(f"serial:   {len(items)} items in {serial_time:.2f} s")

    pm.parmap(count_primes, [10], progress=False)  # start the warm pool (like a first cell)
    started = time.perf_counter()
    parallel = pm.parmap(count_primes, items, progress="text")
    parallel_time = time.perf_counter() - started
    assert list(parallel) == serial
    print(
        f"parmap:   {len(items)} items in {parallel_time:.2f} s on {workers} workers: "
        f"speedup {serial_time / parallel_time:.2f}x\n"
    )

    offset = 1000
    print("a lambda over a global:", list(pm.parmap(lambda x: x + offset, range(5))))

    res = pm.parmap(_flaky, range(8), errors="collect", progress=False)
    print("errors='collect' keeps going:", res.summary())
    for failure in res.failures:
        print("   ", failure.describe())
    print("results with failures replaced:", res.values(default=None))
    pm.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
