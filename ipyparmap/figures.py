"""How run figures read, in one place (bottom layer: no package imports).

The panel, the text bar, ``Results.summary()``, the exception shown for a failed run and
the run report all word their counts, durations, sizes and worker names through these
functions, so one run reads the same wherever it is shown. The figures themselves come
from the caller: a `RunStats` at the end of a run, the progress model's counts while it
runs. Nothing here knows those classes (plain numbers in, text out), so every layer may
use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Runs shorter than this (seconds) show no "workers busy" figure: start-up noise
#: dominates it.
BUSY_MIN_WALL = 0.5
SPEEDUP_MIN_WALL = BUSY_MIN_WALL  # its old name
#: How HTML views mark the counts of failed items.
FAILED_STYLE = "color:#d9534f"
#: Kinds counted with the failures that are no fault of the items, so no view colours
#: them: items the run stopped before they finished, and (in a running run's snapshot)
#: items not finished yet.
CANCELLED, PENDING = "cancelled", "pending"
UNFINISHED = (CANCELLED, PENDING)
#: How a failure kind reads in a count where its bare name would not say it (``1
#: memory``): the others read as they are (``1 error``, ``2 crashed``, ``1 timeout``).
KIND_WORDS = {"memory": "over max_memory"}


# ----------------------------------------------------------------------------- units
def format_seconds(seconds: float | None, fine: bool = False) -> str:
    """``0.25 s``, ``3.2 s``, ``1:15``, ``1:01:40``; ``?`` when unknown.

    ``fine`` writes durations under a second in milliseconds (``2.9 ms``): the report's
    table compares small overheads, which ``0.00 s`` would hide.
    """
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms" if fine else f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def worker_label(worker: Any) -> str:
    """``pid 1234`` for a local worker (its PID), else the executor's id without a URL
    scheme (``10.0.0.5:40123`` for ``tcp://10.0.0.5:40123``, ``host:pid`` as it is).

    Plain text: HTML views escape it.
    """
    if isinstance(worker, int) and not isinstance(worker, bool):
        return f"pid {worker}"
    text = str(worker)
    if text.isdigit():  # a PID that went through text (a DataFrame, JSON)
        return f"pid {text}"
    return text.split("://", 1)[-1]


# ----------------------------------------------------------------------------- counts
def count_part(done: int, total: int | None, unit: str = "items") -> str:
    """``45/100 done``; ``45 done`` when the input's length is unknown; ``45/100 rows
    done`` for another ``unit`` than items."""
    word = "done" if unit == "items" else f"{unit} done"
    return f"{done}/{total} {word}" if total is not None else f"{done} {word}"


def failure_parts(failures: Mapping[str, int]) -> list[str]:
    """``["19 cancelled", "1 error", "1 over max_memory"]`` (kinds sorted by name, zero
    counts left out, `KIND_WORDS` where the name alone is unclear); ``[]`` when nothing
    failed."""
    return [f"{n} {KIND_WORDS.get(kind, kind)}" for kind, n in sorted(failures.items()) if n]


def failed_parts(failures: Mapping[str, int]) -> list[str]:
    """The `failure_parts` that count items failing through their own fault (views
    colour them): every kind but the `UNFINISHED` ones."""
    return failure_parts({kind: n for kind, n in failures.items() if kind not in UNFINISHED})


def workers_part(workers: int) -> str:
    return f"on {workers} worker{'s' * (workers != 1)}"


def busy_value(task_time: float, wall: float, workers: int) -> float | None:
    """How many workers were running items, on average: the time inside items, summed
    over workers, over the wall time; at most ``workers``. None where it would not be
    true: a run shorter than `BUSY_MIN_WALL`, nothing timed, no workers.

    It is not a speedup over a serial run: items side by side may run slower than
    alone (shared cores, memory bandwidth, clock boost), so a run that kept 2 workers
    busy may have gained less than 2x. Only a timed serial run tells the gain.
    """
    if task_time <= 0 or wall < BUSY_MIN_WALL or workers <= 0:
        return None
    return min(float(workers), task_time / wall)


def busy_part(busy: float, workers: int) -> str:
    """``workers busy 1.93 of 2``: `busy_value` as the summary words it."""
    value = f"{busy:.2f}" if busy >= 0.005 else "<0.01"
    return f"workers busy {value} of {workers}"


def busy_detail(busy: float | None, workers: int, seconds: float, cancelled: int = 0) -> str:
    """The report's longer wording of `busy_part`: ``1.90 of 2 on average (95% of the
    workers' time inside items)``, or why the figure is left out."""
    if busy is not None and workers:
        value = busy_part(busy, workers).removeprefix("workers busy ")
        return f"{value} on average ({busy / workers:.0%} of the workers' time inside items)"
    if cancelled:
        return "not measured: items were cancelled while they ran"
    if seconds < BUSY_MIN_WALL:
        return f"not measured: the run took under {BUSY_MIN_WALL:g} s"
    return "not measured: no item time was recorded"


def summary_parts(
    done: int,
    total: int | None,
    failures: Mapping[str, int],
    seconds: float,
    workers: int,
    busy: float | None = None,
    unit: str = "items",
) -> list[str]:
    """The end of a run in pieces: ``80/100 done``, ``19 cancelled``, ``1 error``,
    ``3.2 s``, ``workers busy 1.93 of 2``.

    ``done`` counts items that succeeded, ``failures`` the others by kind (``0 failed``
    when there are none). ``busy`` is `busy_value` (None: left out, and the line says
    ``on 2 workers`` instead); it is also left out of runs shorter than
    `BUSY_MIN_WALL`, and of runs with cancelled items (how long the workers spent on
    the items they were stopped in is unknown, so the figure could only be too low).
    """
    parts = [count_part(done, total, unit), *(failure_parts(failures) or ["0 failed"])]
    parts.append(format_seconds(seconds))
    if busy and seconds >= BUSY_MIN_WALL and workers and not failures.get(CANCELLED):
        parts.append(busy_part(busy, workers))
    elif workers:
        parts.append(workers_part(workers))
    return parts


def summary_line(*args: Any, **kwargs: Any) -> str:
    """`summary_parts` as one line: ``80/100 done, 19 cancelled, 1 error, 3.2 s, ...``"""
    return ", ".join(summary_parts(*args, **kwargs))


def status_parts(
    done: int,
    total: int | None,
    failed: int,
    rate: float,
    seconds: float,
    eta: float | None = None,
    unit: str = "items",
) -> list[str]:
    """A running status in pieces: ``45/100 done``, ``2 failed``, ``12.3 items/s``,
    ``3.1 s`` and, when known, ``ETA 4.2 s``. ``done`` counts items that succeeded, as
    in `summary_parts`, so the count does not step back when the run ends. ``unit``:
    what is counted (``rows`` for the pandas accessors)."""
    parts = [count_part(done, total, unit), f"{failed} failed", f"{rate:.1f} {unit}/s"]
    parts.append(format_seconds(seconds))
    if eta is not None:
        parts.append(f"ETA {format_seconds(eta)}")
    return parts


def line_html(parts: Iterable[str], highlight: Iterable[str] = (), sep: str = ", ") -> str:
    """A line of pieces as HTML: each escaped, those in ``highlight`` (the failure counts
    of `failed_parts`) in bold red."""
    from html import escape  # (only views in a notebook need it: not a script's first call)

    marked = set(highlight)
    out = []
    for part in parts:
        text = escape(part)
        out.append(f"<b style='{FAILED_STYLE}'>{text}</b>" if part in marked else text)
    return sep.join(out)
