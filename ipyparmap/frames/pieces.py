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

    op: str  # "series_map", "series_apply", "frame_apply", "frame_map", "group_apply"
    func: Any
    args: tuple = ()
    kwargs: dict = {}  # noqa: RUF012 (a NamedTuple default, never changed in place)
    collect: bool = False
    axis: int = 0  # frame_apply: 0 (columns) or 1 (rows)
    raw: bool = False
    result_type: str | None = None
    na_action: str | None = None
    group: dict | None = None  # group_apply: the groupby's arguments but its keys


class GroupPiece(NamedTuple):
    """A piece of a groupby: whole groups' rows, and their keys where the keys are not
    the piece's own columns or index levels (then None)."""

    obj: Any
    keys: Any


class PieceFailure(NamedTuple):
    """One call that raised: its position in the piece's call order, what and where."""

    call: int
    exception: BaseException
    traceback: str
    label: Any = None  # a group's key (group_apply)


class _Watch:
    """The user's function, counting its calls; with ``collect``, a call that raises
    returns NaN and is recorded instead."""

    def __init__(self, func: Any, collect: bool, groups: bool = False):
        self.func = func
        self.groups = groups
        self.collect = collect
        self.calls = 0
        # groups: whether every result so far is indexed like its group, which makes
        # pandas put the rows back in their order (group_keys=False)
        self.indexed_same = True
        self.failures: list[PieceFailure] = []

    def __call__(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        call = self.calls
        self.calls = call + 1
        try:
            result = self.func(value, *args, **kwargs)
        except Exception as exc:
            label = getattr(value, "name", None) if self.groups else None
            if not self.collect:
                exc._parmap_call = call  # where the kernel will look for the row
                if self.groups:
                    exc._parmap_label = label
                raise
            tb = traceback.format_exc()
            self.failures.append(PieceFailure(call, _sendable(exc), tb, label))
            self.indexed_same = False
            return MISSING
        if self.groups and self.indexed_same:
            index = getattr(result, "index", None)
            same = getattr(index, "equals", None)
            if not (hasattr(result, "ndim") and same is not None and same(value.index)):
                self.indexed_same = False
        return result


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def run_piece(job: PieceJob, piece: Any) -> tuple:
    """pandas' own call on ``piece``: (its result, the calls that failed); for groups,
    also whether every group's result was indexed like the group."""
    op = job.op
    watch = _Watch(job.func, job.collect, groups=op == "group_apply")
    if op == "group_apply":
        group = dict(job.group)
        if piece.keys is not None:
            group["by"] = piece.keys
        result = piece.obj.groupby(**group).apply(watch, *job.args, **job.kwargs)
        return result, watch.failures, watch.indexed_same
    elif op == "series_map":
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
