"""``df.groupby(key).parmap``: apply, transform and agg in pieces of whole groups
(layer: api).

A call cuts the groupby's object into pieces of whole groups, in the groups' order (the
rows of groups ``i..j`` of ``gb.ngroup()``), has the workers run pandas' own
``groupby(...).apply/transform/agg`` on each piece with the same groupby arguments
(`pieces.run_piece`), and puts the pieces' results together as pandas would for the
whole: concatenated in group order (apply, agg), or back in the rows' order (transform).
The first groups run in the kernel for up to `accessors.SERIAL_SECONDS`, as rows do.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import pandas as pd

from ipyparmap.errors import Interrupted, TaskError, task_error
from ipyparmap.frames import accessors
from ipyparmap.frames.accessors import _errors_mode, _infer_again, _make_failure, _mark
from ipyparmap.frames.pieces import GroupPiece, PieceFailure, PieceJob, run_piece
from ipyparmap.frames.transport import outgoing, run_sent_piece, timed_rows


def _group_arguments(gb: Any) -> tuple[dict[str, Any], Any]:
    """(the groupby's arguments, its keys as one Series or a list of Series aligned
    with its object, or None where the keys are column labels or index levels the
    pieces carry themselves)."""
    group = {
        "sort": gb.sort, "group_keys": gb.group_keys, "dropna": gb.dropna,
        "observed": gb.observed,
    }  # fmt: skip
    obj = gb.obj
    if isinstance(obj, pd.DataFrame):
        group["as_index"] = gb.as_index
        if gb._selection is not None:  # df.groupby(k)[columns]: chosen in the pieces
            group["selection"] = gb._selection
    elif not gb.as_index:
        raise NotImplementedError("groupby(as_index=False)[column].parmap: not supported yet")
    keys, level = gb.keys, gb.level
    if keys is None:
        group["level"] = level
        return group, None
    labels = keys if isinstance(keys, list) else [keys]
    if isinstance(obj, pd.DataFrame) and all(
        _hashable(k) and (k in obj.columns or k in obj.index.names) for k in labels
    ):
        group["by"] = keys
        return group, None
    try:
        series = grouping_series(grouper_of(gb), obj.index)
    except Exception as exc:
        raise NotImplementedError(
            f"groupby(...).parmap: these group keys are not supported yet ({exc})"
        ) from None
    return group, series[0] if len(series) == 1 and not isinstance(keys, list) else series


def grouper_of(obj: Any) -> Any:
    """pandas' BaseGrouper of a groupby or groupby-window (``.grouper`` before 2.2)."""
    grouper = getattr(obj, "_grouper", None)
    return grouper if grouper is not None else obj.grouper


def group_codes(grouper: Any) -> Any:
    """Each row's group number (-1: dropped), in the order of the result's groups."""
    ids = getattr(grouper, "ids", None)  # pandas 3; group_info before
    return ids if ids is not None else grouper.group_info[0]


def grouping_series(grouper: Any, index: Any) -> list[pd.Series]:
    """pandas' own per-row group keys (dtypes kept), one Series per key, on ``index``."""
    return [
        pd.Series(g.grouping_vector, index=index, name=g.name, copy=False)
        for g in grouper.groupings
    ]


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class Groups:
    """A groupby's pieces: whole groups each, in the groups' order."""

    unit = "groups"

    def __init__(self, obj: Any, codes: Any, ngroups: int, job: PieceJob, keys: Any):
        import numpy as np

        self.job = job
        self.obj = obj
        self.keys = keys
        if codes.dtype.kind == "f":  # rows whose key is NaN, dropped: NaN
            codes = np.where(np.isnan(codes), -1, codes)
        self.codes = codes.astype(np.int64)
        self.ngroups = ngroups
        self.pieces: list[GroupPiece] = []
        self.positions: list[Any] = []  # each piece's row positions
        self.sizes: list[int] = []  # each piece's groups
        self.results: list[Any] = []
        self.same: list[bool] = []  # each piece: every group's result indexed like it
        self.failures: list[Any] = []
        self.done = 0  # groups cut into pieces so far
        self.kernel_seconds = 0.0  # spent on the first groups in the kernel (sizes pieces)

    def take(self, size: int) -> GroupPiece:
        import numpy as np

        start, stop = self.done, min(self.ngroups, self.done + size)
        positions = np.flatnonzero((self.codes >= start) & (self.codes < stop))
        keys = self.keys
        if isinstance(keys, list):
            keys = [k.iloc[positions] for k in keys]
        elif keys is not None:
            keys = keys.iloc[positions]
        piece = GroupPiece(self.obj.iloc[positions], keys)
        self.pieces.append(piece)
        self.positions.append(positions)
        self.sizes.append(stop - start)
        self.done = stop
        return piece

    def lost(self, position: int, failure: Any) -> None:
        """Whole groups lost (a crash, a timeout, an interrupt): left out of the result."""
        self.results.append(None)
        self.same.append(True)
        self.failures.append(failure)

    def gave(self, position: int, value: Any, failed: list[PieceFailure], same: bool = False):
        self.results.append(value)
        self.same.append(same)
        self.failures.extend(_make_failure(-1, f.label, f.exception, f.traceback) for f in failed)


def _group_error(exc: BaseException, tb: str) -> TaskError:
    label = getattr(exc, "_parmap_label", None)
    text = str(exc)
    message = f"group {label!r} raised {type(exc).__name__}" + (f": {text}" if text else "")
    return task_error(message, _make_failure(-1, label, exc, tb), None, exc)


def _check_chunk(chunk: Any) -> None:
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunksize must be a positive int (groups per piece), got {chunk!r}")


def run_groups(gb: Any, job: PieceJob, options: dict[str, Any]) -> Any:
    """pandas' ``job`` (apply, transform, agg) on ``gb`` with whole groups in each
    piece; pandas' result."""
    errors = _errors_mode(options)
    chunk = options.pop("chunksize", None)
    _check_chunk(chunk)
    group, keys = _group_arguments(gb)
    job = job._replace(collect=errors == "collect", group=group)
    split = Groups(gb.obj, gb.ngroup().to_numpy(), int(gb.ngroups), job, keys)
    if split.ngroups == 0:  # nothing to split: pandas' own
        method = {"group_apply": gb.apply, "group_transform": gb.transform}.get(job.op, gb.agg)
        return method(job.func, *job.args, **job.kwargs)
    combine = _combine_transform if job.op == "group_transform" else _combine_groups
    try:
        split_in_pieces(split, options, chunk)
    except Interrupted as err:
        raise accessors.interrupted(err, split, lambda: combine(split), job) from None
    return _mark(combine(split), split.failures, job)


def split_in_pieces(split: Groups, options: dict[str, Any], chunk: int | None) -> None:
    """Run every group of ``split``: the first ones in the kernel (as `accessors.run`
    does with rows), the rest in the workers, ``chunk`` groups a piece."""
    job = split.job
    if accessors.kernel_first(options, chunk):
        began = time.perf_counter()
        size = 1
        while split.done < split.ngroups and time.perf_counter() - began < accessors.SERIAL_SECONDS:
            piece = split.take(size)
            size *= 2
            try:
                split.gave(len(split.pieces) - 1, *run_piece(job, piece))
            except Exception as exc:
                if getattr(exc, "_parmap_call", None) is None:
                    raise  # pandas' own error, not the function's
                import traceback

                raise _group_error(exc, traceback.format_exc()) from exc
        split.kernel_seconds = time.perf_counter() - began
    if split.done >= split.ngroups:
        return
    from ipyparmap.api import cpu_count, parmap_counted

    if chunk is None:
        workers = options.get("workers") or cpu_count()
        left = split.ngroups - split.done
        chunk = max(1, math.ceil(left / (workers * accessors.PIECES_PER_WORKER)))
        per_group = split.kernel_seconds / split.done if split.done else None
        chunk = timed_rows(chunk, left, workers, per_group)  # slow groups: smaller pieces
    first, before = len(split.pieces), split.done
    while split.done < split.ngroups:
        split.take(chunk)
    try:
        outcomes = parmap_counted(functools.partial(run_sent_piece, job),
                                  outgoing(split.pieces[first:]),
                                  split.sizes[first:], split.unit, before, chunksize=1,
                                  **options)  # fmt: skip
    except TaskError as err:
        exc = getattr(err.failure, "exception", None)
        if getattr(exc, "_parmap_call", None) is None:
            raise  # the engine's own error: a crash, a timeout, what could not be pickled
        raise _group_error(exc, err.failure.traceback) from exc
    except Interrupted as err:
        accessors.record(split, err.results or (), first)  # the finished pieces
        raise
    accessors.record(split, outcomes, first)


def _combine_groups(split: Groups) -> Any:
    """apply and agg: the pieces' results in the groups' order."""
    import numpy as np

    every = zip(split.pieces, split.positions, split.results, split.same, strict=True)
    kept = [(p, pos, r, same) for p, pos, r, same in every if r is not None]
    if not kept:
        return pd.Series(dtype=float)
    if len(kept) == 1 and len(split.results) == 1:
        return kept[0][2]  # one piece: pandas' own result, whole
    # Every group's result indexed like the group (a transform-like function) and
    # group_keys=False: pandas gives the rows in their own order. A piece whose groups
    # happened to be all so, in a call where others are not, was put in row order by
    # pandas in the worker: back to the groups' order.
    reorder = split.job.op == "group_apply" and not split.job.group.get("group_keys", True)
    everywhere = reorder and all(same for *_, same in kept)
    results = []
    for _, positions, result, same in kept:
        if reorder and same and not everywhere:
            result = result.iloc[np.argsort(split.codes[positions], kind="stable")]
        results.append(result)
    combined = pd.concat(results)
    if everywhere:
        order = np.argsort(np.concatenate([pos for _, pos, *_ in kept]), kind="stable")
        combined = combined.iloc[order]
    if split.job.op == "group_agg" and not split.job.group.get("as_index", True):
        combined.index = pd.RangeIndex(len(combined))  # each piece counted from 0
    frames = isinstance(combined, pd.DataFrame)
    if frames and any(not isinstance(r, pd.DataFrame) for r in results):
        return combined
    return _infer_again(combined, results, split.job, frames, False)


def _combine_transform(split: Groups) -> Any:
    """transform: the pieces' rows back in the object's row order; rows in no piece
    (a NaN key with dropna=True, a lost piece) missing, as pandas leaves them."""
    import numpy as np

    kept = [(pos, r) for pos, r in zip(split.positions, split.results, strict=True)
            if r is not None]  # fmt: skip
    obj = split.obj
    if not kept:
        return (
            obj.iloc[:, :0].copy()
            if isinstance(obj, pd.DataFrame)
            else pd.Series(float("nan"), index=obj.index, name=obj.name)
        )
    combined = pd.concat([r for _, r in kept]) if len(kept) > 1 else kept[0][1]
    positions = np.concatenate([pos for pos, _ in kept])
    if len(positions) == len(obj):
        combined = combined.iloc[np.argsort(positions, kind="stable")]
    else:
        combined = combined.set_axis(positions, axis=0).reindex(np.arange(len(obj)))
    # the object's own index (a DatetimeIndex keeps its freq, as in pandas' result)
    return combined.set_axis(obj.index, axis=0)


def _needs_pandas(func: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a transform/agg call is pandas' own business: a name such as "mean" or
    a spec without a Python function (pandas runs those in compiled code, faster than
    any split), or another engine (numba)."""
    if kwargs.get("engine") not in (None, "cython"):
        return True
    return not callable(func)


class GroupByAccessor:
    """``df.groupby(key).parmap`` and ``df.groupby(key)[column].parmap``."""

    def __init__(self, gb: Any):
        self._gb = gb

    def apply(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``GroupBy.apply(func, *args, **kwargs)`` with whole groups in each worker's
        pieces; same result. Run options (``chunksize=``: groups per piece) are taken
        out of ``kwargs``; the rest go to pandas' ``apply`` and ``func``."""
        kwargs, options = accessors._split_options(kwargs)
        if not callable(func):
            raise TypeError(
                f"groupby(...).parmap.apply needs a function, got {type(func).__name__}"
            )
        return run_groups(self._gb, PieceJob("group_apply", func, args, kwargs), options)

    def transform(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``GroupBy.transform(func, *args, **kwargs)`` with whole groups in each
        worker's pieces; same result (indexed like the object). A name such as
        ``"mean"`` runs in pandas at once. Run options are taken out of ``kwargs``."""
        kwargs, options = accessors._split_options(kwargs)
        if _needs_pandas(func, kwargs):
            return self._gb.transform(func, *args, **kwargs)
        return run_groups(self._gb, PieceJob("group_transform", func, args, kwargs), options)

    def agg(self, func: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``GroupBy.agg(func, *args, **kwargs)`` with whole groups in each worker's
        pieces; same result. Only a Python function is split: names (``"mean"``), lists,
        dicts and named aggregations run in pandas at once. Run options are taken out
        of ``kwargs``."""
        kwargs, options = accessors._split_options(kwargs)
        if _needs_pandas(func, kwargs):
            return self._gb.agg(func, *args, **kwargs)
        return run_groups(self._gb, PieceJob("group_agg", func, args, kwargs), options)

    aggregate = agg


class GroupByAccessorProperty:
    """The ``parmap`` attribute of pandas' GroupBy classes (pandas registers no
    accessors there)."""

    def __init__(self, accessor: Any = GroupByAccessor):
        self.accessor = accessor

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self.accessor if obj is None else self.accessor(obj)
