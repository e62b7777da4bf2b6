"""One piece of a frame, run with pandas' own ``apply``/``map`` (layer: api).

This is the side that runs in a worker (or in the kernel, for small inputs): it
imports only pandas and NumPy. A `PieceJob` says which pandas call to make; `run_piece`
makes it on one contiguous slice of the frame with the user's function wrapped by a
`_Watch`, which counts the calls so that a failure can be placed on its row, and,
with ``errors="collect"``, turns a failing call into NaN and records it.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, NamedTuple

#: What a failing call leaves in its cell with ``errors="collect"``.
MISSING = float("nan")


class PieceJob(NamedTuple):
    """The pandas call to make on each piece."""

    op: str  # "series_map", "series_apply", "frame_apply", "frame_map"
    func: Any
    args: tuple = ()
    kwargs: dict = {}  # noqa: RUF012 (a NamedTuple default, never changed in place)
    collect: bool = False
    axis: int = 0  # frame_apply: 0 (columns) or 1 (rows)
    raw: bool = False
    result_type: str | None = None
    na_action: str | None = None


class PieceFailure(NamedTuple):
    """One call that raised: its position in the piece's call order, what and where."""

    call: int
    exception: BaseException
    traceback: str


class _Watch:
    """The user's function, counting its calls; with ``collect``, a call that raises
    returns NaN and is recorded instead."""

    def __init__(self, func: Any, collect: bool):
        self.func = func
        self.collect = collect
        self.calls = 0
        self.failures: list[PieceFailure] = []

    def __call__(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        call = self.calls
        self.calls = call + 1
        try:
            return self.func(value, *args, **kwargs)
        except Exception as exc:
            if not self.collect:
                exc._parmap_call = call  # where the kernel will look for the row
                raise
            self.failures.append(PieceFailure(call, _sendable(exc), traceback.format_exc()))
            return MISSING


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def run_piece(job: PieceJob, piece: Any) -> tuple[Any, list[PieceFailure]]:
    """pandas' own call on ``piece``: (its result, the calls that failed)."""
    watch = _Watch(job.func, job.collect)
    op = job.op
    if op == "series_map":
        result = piece.map(watch, na_action=job.na_action)
    elif op == "series_apply":
        result = piece.apply(watch, args=job.args, **job.kwargs)
    elif op == "frame_apply":
        result = piece.apply(
            watch, axis=job.axis, raw=job.raw, result_type=job.result_type,
            args=job.args, **job.kwargs,
        )  # fmt: skip
    elif op == "frame_map":
        # DataFrame.map is pandas 2.1's name for applymap
        mapper = getattr(type(piece), "map", None) or type(piece).applymap
        result = mapper(piece, watch, na_action=job.na_action, **job.kwargs)
    else:  # pragma: no cover - the accessors make only the ops above
        raise ValueError(f"unknown piece op {op!r}")
    return result, watch.failures
