"""In-process map, used when parmap is called inside a worker (layer: engine).

A task that itself calls ``parmap`` must not start a pool of its own (N workers each
starting N workers is a fork bomb), so nested calls run their items one by one, in the
worker, with the same results and error semantics. ``timeout`` is not enforced here.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ipyparmap.errors import TaskError
from ipyparmap.options import Options
from ipyparmap.results import Failure, Results, RunStats


def serial_events(
    func: Callable, iterable: Iterable, options: Options
) -> Iterator[tuple[int, Any]]:
    for index, item in enumerate(iterable):
        for attempt in range(1, options.retries + 2):
            try:
                value = func(*item) if options.star else func(item)
            except Exception as exc:
                if attempt <= options.retries:
                    continue
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                failure = Failure(index, item, "error", exc, text, None, attempt)
                yield index, failure
                if options.errors == "raise":
                    return
                break
            yield index, value
            break


def serial_results(func: Callable, iterable: Iterable, options: Options) -> Results:
    started = time.monotonic()
    values = []
    for _, value in serial_events(func, iterable, options):
        values.append(value)
    stats = RunStats(items=len(values), workers=1, wall=time.monotonic() - started)
    stats.task_time = stats.wall
    results = Results(values, stats)
    failures = results.failures
    stats.failures = {"error": len(failures)} if failures else {}  # [figures] summary() reads it
    if failures and options.errors == "raise":
        raise TaskError(failures[0].describe(), failures[0], results) from failures[0].exception
    return results


def serial_values(func: Callable, iterable: Iterable, options: Options) -> Iterator[Any]:
    for _, value in serial_events(func, iterable, options):
        if isinstance(value, Failure) and options.errors == "raise":
            raise TaskError(value.describe(), value) from value.exception
        yield value
