"""``s.rolling(n).parmap.apply``, ``expanding()`` and groupby-rolling (layer: api).

Rolling and expanding windows: the kernel asks pandas for every row's window bounds over
the whole object (the Rolling's own indexer: integer or offset windows, ``center``,
``closed``, ``min_periods``), cuts the output rows into contiguous pieces, and gives
each piece the rows its windows reach before and after it (the overlap). A worker runs
pandas' own ``rolling(...).apply`` on that slice with those same bounds
(`pieces.WindowPiece`) and keeps its own rows, so each window sees exactly the values
it sees in one serial call. Expanding windows reach back to the first row: each piece
carries the rows before it.

Groupby-rolling (``df.groupby(k).rolling(n)``) is cut into whole groups instead, like
``groupby(...).parmap.apply`` (`groupby.Groups`).

Configurations the pieces cannot reproduce exactly (another engine, ``method="table"``,
``step=``, ``min_periods=0``, a column selection with ``on=``) run in pandas at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ipyparmap.errors import Interrupted, TaskError, task_error
from ipyparmap.frames import accessors
from ipyparmap.frames.accessors import _errors_mode, _make_failure, _mark
from ipyparmap.frames.pieces import PieceFailure, PieceJob, WindowPiece


def _serial_only(win: Any, engine: Any, min_periods: int | None) -> bool:
    """Whether pandas must run this call itself (see the module's doc)."""
    return (
        engine not in (None, "cython")
        or getattr(win, "method", "single") != "single"
        or getattr(win, "step", None) not in (None, 1)
        or min_periods == 0
        or (getattr(win, "_selection", None) is not None and getattr(win, "on", None) is not None)
    )


def _bounds(win: Any, length: int) -> tuple[Any, Any, int]:
    """(start, end, min_periods): every row's window, as pandas computes it."""
    indexer = win._get_window_indexer()
    minp = win.min_periods if win.min_periods is not None else indexer.window_size
    start, end = indexer.get_window_bounds(
        num_values=length, min_periods=minp, center=win.center, closed=win.closed,
        step=win.step,
    )  # fmt: skip
    return np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64), minp


class WindowSplit:
    """A window call's pieces: output rows ``starts[i]..`` with their windows' rows."""

    by_columns = False
    unit = "rows"

    def __init__(self, obj: Any, job: PieceJob, start: Any, end: Any):
        self.obj, self.job = obj, job
        self.start, self.end = start, end
        self.length = len(obj)
        self.pieces: list[WindowPiece] = []
        self.starts: list[int] = []  # each piece's first output row
        self.offsets: list[int] = []  # each piece's first row of obj (overlap included)
        self.results: list[Any] = []
        self.failures: list[Any] = []
        self.done = 0
        self.kernel_seconds = 0.0  # spent on the first rows in the kernel (sizes pieces)

    def size(self, piece: WindowPiece) -> int:
        return piece.keep.stop - piece.keep.start

    def take(self, size: int) -> WindowPiece:
        a, b = self.done, min(self.length, self.done + size)
        start, end = self.start[a:b], self.end[a:b]
        lo, hi = min(a, int(start.min())), max(b, int(end.max()))
        # rows outside the piece's own get empty windows: no call, NaN, dropped after
        local_start = np.zeros(hi - lo, dtype=np.int64)
        local_end = np.zeros(hi - lo, dtype=np.int64)
        local_start[a - lo : b - lo] = start - lo
        local_end[a - lo : b - lo] = end - lo
        piece = WindowPiece(self.obj.iloc[lo:hi], local_start, local_end, slice(a - lo, b - lo))
        self.pieces.append(piece)
        self.starts.append(a)
        self.offsets.append(lo)
        self.done = b
        return piece

    def gave(self, position: int, value: Any, failed: list[PieceFailure]) -> None:
        self.results.append(value)
        for item in failed:
            row, label, _ = self._cell(position, item.call)
            self.failures.append(_make_failure(row, label, item.exception, item.traceback))

    def lost(self, position: int, failure: Any) -> None:
        """The piece never came back (a crash, a timeout): every row of it failed."""
        self.results.append(None)
        start, piece = self.starts[position], self.pieces[position]
        labels = self.obj.index[start : start + self.size(piece)]
        self.failures.extend(
            _make_failure(start + i, label, failure.exception, failure.traceback, failure.kind)
            for i, label in enumerate(labels)
        )

    def raised(self, position: int, exc: BaseException, call: int, tb: str) -> TaskError:
        row, label, column = self._cell(position, call)
        where = f"window at row {label!r} (position {row})"
        if column is not None:
            where += f", column {column!r}"
        text = str(exc)
        message = f"{where} raised {type(exc).__name__}" + (f": {text}" if text else "")
        return task_error(message, _make_failure(row, label, exc, tb), None, exc)

    def _cell(self, position: int, call: int) -> tuple[int, Any, Any]:
        """(row position in obj, row label, column label or None) of the piece's
        ``call``-th call: pandas calls func column by column, on every row whose window
        holds at least min_periods finite values."""
        piece = self.pieces[position]
        data = piece.obj
        on = self.job.window.get("on")
        if isinstance(data, pd.DataFrame):
            columns = [c for c in data.columns if c != on]
            arrays = [data[c] for c in columns]
        else:
            columns, arrays = [None], [data]
        minp = self.job.window["min_periods"]
        for column, values in zip(columns, arrays, strict=True):
            finite = np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
            counts = np.concatenate([[0], np.cumsum(finite)])
            rows = np.flatnonzero(counts[piece.end] - counts[piece.start] >= minp)
            if call < len(rows):
                row = self.offsets[position] + int(rows[call])
                return row, self.obj.index[row], column
            call -= len(rows)
        return -1, None, None  # pragma: no cover - pandas made more calls than windows


def run_windows(win: Any, job: PieceJob, options: dict[str, Any]) -> Any:
    """``win.apply(job.func, ...)`` (a Rolling or Expanding) in pieces with overlap."""
    obj = win._selected_obj
    errors = _errors_mode(options)
    chunk = options.pop("chunksize", None)
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunksize must be a positive int (rows per piece), got {chunk!r}")
    if len(obj) == 0:
        return win.apply(job.func, raw=job.raw, args=job.args, kwargs=job.kwargs)
    start, end, minp = _bounds(win, len(obj))
    window = {"min_periods": minp, "on": win.on if isinstance(obj, pd.DataFrame) else None}
    job = job._replace(collect=errors == "collect", window=window)
    split = WindowSplit(obj, job, start, end)
    if accessors.kernel_first(options, chunk):
        accessors._in_kernel(split)

    def combine() -> Any:
        results = []
        for piece, result in zip(split.pieces, split.results, strict=True):
            if result is None:  # a lost piece: its rows missing
                rows = piece.obj.iloc[piece.keep]
                result = (
                    rows.astype(np.float64) * np.nan if rows.ndim == 1 else _nan_like(rows, win)
                )
            results.append(result)
        return results[0] if len(results) == 1 else pd.concat(results)

    if split.done < split.length:
        try:
            accessors._in_workers(split, options, chunk)
        except Interrupted as err:
            raise accessors.interrupted(err, split, combine, job) from None
    return _mark(combine(), split.failures, job)


def _nan_like(rows: pd.DataFrame, win: Any) -> pd.DataFrame:
    out = pd.DataFrame(np.nan, index=rows.index, columns=rows.columns)
    if win.on is not None and win.on in rows.columns:
        out[win.on] = rows[win.on]
    return out


def run_group_windows(rg: Any, job: PieceJob, options: dict[str, Any], expanding: bool) -> Any:
    """``rg.apply(...)`` for a RollingGroupby/ExpandingGroupby, whole groups a piece."""
    from ipyparmap.frames import groupby

    errors = _errors_mode(options)
    chunk = options.pop("chunksize", None)
    groupby._check_chunk(chunk)
    grouper, obj = groupby.grouper_of(rg), rg.obj
    keys = groupby.grouping_series(grouper, obj.index)
    group = {"sort": grouper._sort, "dropna": grouper.dropna,
             "observed": all(getattr(g, "_observed", True) for g in grouper.groupings)}  # fmt: skip
    window = {"min_periods": rg.min_periods}
    if expanding:
        window["expanding"] = True
    else:
        window.update(window=rg.window, center=rg.center, closed=rg.closed, on=rg.on)
    job = job._replace(collect=errors == "collect", group=group, window=window)
    split = groupby.Groups(obj, np.asarray(groupby.group_codes(grouper)), int(grouper.ngroups), job,
                           keys if len(keys) > 1 else keys[0])  # fmt: skip
    try:
        groupby.split_in_pieces(split, options, chunk)
    except Interrupted as err:
        raise accessors.interrupted(
            err, split, lambda: groupby._combine_groups(split), job
        ) from None
    return _mark(groupby._combine_groups(split), split.failures, job)


class WindowAccessor:
    """``s.rolling(n).parmap``, ``df.expanding().parmap`` and their groupby forms."""

    def __init__(self, win: Any):
        self._win = win

    def apply(
        self, func: Any, raw: bool = False, engine: str | None = None,
        engine_kwargs: dict | None = None, args: tuple | None = None,
        kwargs: dict | None = None, *, workers: int | None = None,
        chunksize: int | None = None, progress: Any = None, errors: str | None = None,
        timeout: float | None = None, retries: int | None = None, backend: Any = None,
    ) -> Any:  # fmt: skip
        """``Rolling.apply(func, raw=, engine=, engine_kwargs=, args=, kwargs=)`` (or
        Expanding's, or a groupby's) in parallel; same result. ``chunksize=``: output
        rows per piece (groups per piece for a groupby)."""
        win = self._win
        options = accessors._options(dict(
            workers=workers, chunksize=chunksize, progress=progress, errors=errors,
            timeout=timeout, retries=retries, backend=backend,
        ))  # fmt: skip
        if not callable(func):
            name = type(func).__name__
            raise TypeError(f"rolling(...).parmap.apply needs a function, got {name}")
        if not isinstance(raw, bool):
            raise ValueError("raw parameter must be `True` or `False`")
        grouped = hasattr(win, "_grouper") or hasattr(win, "grouper")
        if _serial_only(win, engine, win.min_periods) or (grouped and not win._as_index):
            return win.apply(func, raw=raw, engine=engine, engine_kwargs=engine_kwargs,
                             args=args, kwargs=kwargs)  # fmt: skip
        job = PieceJob("window_apply", func, args=tuple(args or ()), kwargs=dict(kwargs or {}),
                       raw=raw)  # fmt: skip
        if grouped:
            expanding = "Expanding" in type(win).__name__
            return run_group_windows(win, job._replace(op="group_window"), options, expanding)
        return run_windows(win, job, options)


def window_classes() -> list[type]:
    """pandas' Rolling, Expanding and their groupby classes (where this pandas has them)."""
    from pandas.core.window import expanding, rolling

    found = [rolling.Rolling, expanding.Expanding]
    for module, name in ((rolling, "RollingGroupby"), (expanding, "ExpandingGroupby")):
        # pandas 3 spells them ...GroupBy
        found.append(getattr(module, name, None) or getattr(module, name[:-2] + "By"))
    return found
