"""Run options and their one shared validator (layer L0).

``parmap``, ``imap``, the magics and the drop-in classes all validate through
`check_options`, so a bad argument gets the same message wherever it is passed,
and it is raised before any worker starts (see BAD_INPUTS.md section 4.2).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

ERRORS_MODES = ("raise", "collect")
PROGRESS_MODES = ("auto", "widget", "text", False)
LOCAL_BACKENDS = (None, "local")


class Options(NamedTuple):
    """Validated options of one run (a NamedTuple: no dataclasses import in workers)."""

    workers: int | None = None
    chunksize: int | None = None
    errors: str = "raise"
    timeout: float | None = None
    retries: int = 0
    progress: str | bool = "auto"
    star: bool = False
    backend: Any = None
    ordered: bool = True
    max_memory: int | None = None  # bytes: recycle a worker whose RSS exceeds this


def short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any, limit: int = 50) -> str:
    """A short, safe description for error messages: ``repr (type)``."""
    return f"{short_repr(value, limit)} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but workers=True is a mistake, not "1 worker".
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any, what: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be {what}, got {short_repr(value)} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_options(
    workers: Any = None,
    chunksize: Any = None,
    errors: Any = "raise",
    timeout: Any = None,
    retries: Any = 0,
    progress: Any = "auto",
    star: Any = False,
    backend: Any = None,
    ordered: Any = True,
    max_memory: Any = None,
) -> Options:
    """Validate run options; raise ``TypeError``/``ValueError`` naming the culprit."""
    if workers is not None:
        _positive_int("workers", workers, "a positive integer or None")
    if chunksize is not None:
        _positive_int("chunksize", chunksize, "a positive integer or None")
    if not isinstance(errors, str) or errors not in ERRORS_MODES:
        raise ValueError(f"errors must be 'raise' or 'collect', got {short_repr(errors)}")
    timeout = _check_timeout(timeout)
    if not _is_int(retries):
        raise TypeError(
            f"retries must be a non-negative integer, got {short_repr(retries)} "
            f"({type(retries).__name__})"
        )
    if retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if progress is True:
        progress = "auto"
    if not (progress is False or (isinstance(progress, str) and progress in PROGRESS_MODES)):
        raise ValueError(
            f"progress must be 'auto', 'widget', 'text' or False, got {short_repr(progress)}"
        )
    for name, value in (("star", star), ("ordered", ordered)):
        if not isinstance(value, bool):
            raise TypeError(
                f"{name} must be a bool, got {short_repr(value)} ({type(value).__name__})"
            )
    if isinstance(backend, str) and backend not in ("local", "dask"):
        raise ValueError(
            f"backend must be None, 'local', 'dask', a distributed.Client or a "
            f"concurrent.futures.Executor, got {short_repr(backend)}"
        )
    return Options(
        workers, chunksize, errors, timeout, retries, progress, star, backend, ordered,
        parse_memory(max_memory),
    )  # fmt: skip


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_memory(value: Any, name: str = "max_memory") -> int | None:
    """``None``, a number of bytes, or a string like ``"2GB"``, ``"512 MiB"``, ``"1.5g"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be bytes (int) or a size like '2GB', got {value!r}")
    if isinstance(value, (int, float)):
        size = float(value)
    elif isinstance(value, str):
        import re

        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", value)
        if match is None:
            raise ValueError(f"{name} must be a size like '2GB' or '512MB', got {value!r}")
        size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        raise TypeError(
            f"{name} must be bytes (int) or a size like '2GB', got {type(value).__name__}"
        )
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"{name} must be a positive size, got {value!r}")
    return int(size)


def _check_timeout(timeout: Any) -> float | None:
    """``None`` and ``inf`` mean no limit; otherwise a positive, finite number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a positive number of seconds or None, got "
            f"{short_repr(timeout)} ({type(timeout).__name__})"
        )
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)
