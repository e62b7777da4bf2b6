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

    # "series_map", "series_apply", "frame_apply", "frame_map" (rows or columns),
    # "group_apply", "group_transform", "group_agg", "group_window" (whole groups),
    # "window_apply" (rows with their windows' overlap)
    op: str
    func: Any
    args: tuple = ()
    kwargs: dict = {}  # noqa: RUF012 (a NamedTuple default, never changed in place)
    collect: bool = False
    axis: int = 0  # frame_apply: 0 (columns) or 1 (rows)
    raw: bool = False
    result_type: str | None = None
    na_action: str | None = None
    group: dict | None = None  # group_*: the groupby's arguments but its keys
    window: dict | None = None  # window_apply, group_window: the rolling's arguments


class GroupPiece(NamedTuple):
    """A piece of a groupby: whole groups' rows, and their keys where the keys are not
    the piece's own columns or index levels (then None)."""

    obj: Any
    keys: Any


class WindowPiece(NamedTuple):
    """Rows of a rolling or expanding window's object: the rows whose results are this
    piece's (``keep``, positions in ``obj``) and, before and after them, the rows their
    windows reach. ``start``/``end``: every row's window bounds in ``obj``, as pandas
    computed them for the whole object (rows outside ``keep`` get empty windows)."""

    obj: Any
    start: Any
    end: Any
    keep: slice


class PieceFailure(NamedTuple):
    """One call that raised: its position in the piece's call order, what and where."""

    call: int
    exception: BaseException
    traceback: str
    label: Any = None  # a group's key (group_apply)


class _Watch:
    """The user's function, counting its calls; with ``collect``, a call that raises
    returns NaN and is recorded instead. ``locate(value)`` names the group a failing
    call was given (groupby ops; None elsewhere: the kernel places a row by its call
    number)."""

    def __init__(self, func: Any, collect: bool, groups: bool = False, locate: Any = None,
                 missing: Any = None):  # fmt: skip
        self.func = func
        self.missing = missing  # value -> what a failed call leaves (None: NaN)
        self.groups = groups
        self.locate = locate
        self.collect = collect
        self.calls = 0
        # groups: whether every result so far is indexed like its group, which makes
        # pandas put the rows back in their order (group_keys=False)
        self.indexed_same = True
        self.failures: list[PieceFailure] = []
        # DataFrameGroupBy.transform calls func on the first group's columns, then on the
        # whole group once to see whether that "fast path" gives the same; a failure of
        # that probe is swallowed by pandas, so it must not be recorded either
        self.probe = False

    def __call__(self, value: Any, *args: Any, **kwargs: Any) -> Any:
        call = self.calls
        self.calls = call + 1
        probing = self.probe and getattr(value, "ndim", 1) == 2
        if probing:
            self.probe = False  # only the first whole group is the probe
        try:
            result = self.func(value, *args, **kwargs)
        except Exception as exc:
            label = self.locate(value) if self.locate is not None else None
            if not self.collect or probing:
                exc._parmap_call = call  # where the kernel will look for the row
                if self.locate is not None:
                    exc._parmap_label = label
                raise
            tb = traceback.format_exc()
            if not any(f.label == label for f in self.failures) or self.locate is None:
                self.failures.append(PieceFailure(call, _sendable(exc), tb, label))
            self.indexed_same = False
            return MISSING if self.missing is None else self.missing(value)
        if self.groups and self.indexed_same:
            index = getattr(result, "index", None)
            same = getattr(index, "equals", None)
            if not (hasattr(result, "ndim") and same is not None and same(value.index)):
                self.indexed_same = False
        return result


def _missing_like(value: Any) -> Any:
    """A failed transform call's result: NaN in the shape of what it was given (pandas
    cannot put a scalar in the place of a whole group's result)."""
    if getattr(value, "ndim", 0) == 2:
        return type(value)(MISSING, index=value.index, columns=value.columns)
    if getattr(value, "ndim", 0) == 1:
        return type(value)(MISSING, index=value.index, name=value.name)
    return MISSING


def _group_name(value: Any) -> Any:
    """The key of the group GroupBy.apply passes (pandas names it so)."""
    return getattr(value, "name", None)


def _group_finder(gb: Any):
    """``locate`` for ops that pass func a group's column (agg) or a column of a group
    (transform): the group whose rows ``value`` holds."""

    def locate(value: Any) -> Any:
        index = getattr(value, "index", None)
        if index is None:
            return None
        for key, labels in gb.groups.items():
            if len(labels) == len(index) and labels.equals(index):
                return key
        return None

    return locate


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.dumps(exc)
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class _Bounds:
    """Window bounds computed beforehand (pandas' own, for the whole object), as a
    pandas BaseIndexer; made a subclass of it when first used (pandas imported)."""

    def __new__(cls, start: Any, end: Any) -> Any:
        from pandas.api.indexers import BaseIndexer

        class Bounds(BaseIndexer):
            def get_window_bounds(self, num_values=0, min_periods=None, center=None,
                                  closed=None, step=None):  # fmt: skip
                return self.start, self.end

        return Bounds(start=start, end=end)


def run_piece(job: PieceJob, piece: Any) -> tuple:
    """pandas' own call on ``piece``: (its result, the calls that failed); for groups,
    also whether every group's result was indexed like the group."""
    op = job.op
    if op.startswith("group_"):
        return _run_groups(job, piece)
    watch = _Watch(job.func, job.collect)
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
    elif op == "window_apply":
        window = job.window
        rolling = piece.obj.rolling(
            _Bounds(piece.start, piece.end), min_periods=window["min_periods"],
            on=window.get("on"),
        )  # fmt: skip
        result = rolling.apply(watch, raw=job.raw, args=job.args, kwargs=job.kwargs)
        result = result.iloc[piece.keep]
    else:  # pragma: no cover - the accessors make only the ops above
        raise ValueError(f"unknown piece op {op!r}")
    return result, watch.failures


def _run_groups(job: PieceJob, piece: Any) -> tuple:
    op = job.op
    group = dict(job.group)
    if piece.keys is not None:
        group["by"] = piece.keys
    selection = group.pop("selection", None)
    gb = piece.obj.groupby(**group)
    if selection is not None:
        gb = gb[selection]
    if op == "group_apply":
        watch = _Watch(job.func, job.collect, groups=True, locate=_group_name)
        result = gb.apply(watch, *job.args, **job.kwargs)
        return result, watch.failures, watch.indexed_same
    missing = _missing_like if op == "group_transform" else None
    watch = _Watch(job.func, job.collect, locate=_group_finder(gb), missing=missing)
    if op == "group_transform":
        watch.probe = job.collect and getattr(piece.obj, "ndim", 1) == 2
        result = gb.transform(watch, *job.args, **job.kwargs)
    elif op == "group_agg":
        result = gb.agg(watch, *job.args, **job.kwargs)
    elif op == "group_window":
        rolling = gb.expanding if job.window.get("expanding") else gb.rolling
        arguments = {k: v for k, v in job.window.items() if k != "expanding"}
        result = rolling(**arguments).apply(watch, raw=job.raw, args=job.args, kwargs=job.kwargs)
    else:  # pragma: no cover
        raise ValueError(f"unknown piece op {op!r}")
    return result, watch.failures, False
