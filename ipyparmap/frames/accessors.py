"""The ``.parmap`` accessors of Series and DataFrame (layer: api).

A call splits the object into contiguous pieces (``iloc`` slices: rows, or columns for
``DataFrame.apply(axis=0)``), has `ipyparmap.parmap` run pandas' own ``apply``/``map`` on
each piece in the workers (`pieces.run_piece`), and concatenates the pieces in order.
Where the pieces' dtypes disagree (a piece of ints beside one holding a NaN) the
combined values are inferred again the way pandas infers them in one call. Inputs
smaller than `serial_below` rows run in the kernel, with the same error handling.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import pandas as pd

from ipyparmap.errors import TaskError, task_error
from ipyparmap.frames.pieces import PieceFailure, PieceJob, run_piece

#: The run options every accessor call takes, passed on to `ipyparmap.parmap`.
RUN_OPTIONS = ("workers", "chunksize", "progress", "errors", "timeout", "retries", "backend")
#: Defaults set with `ipyparmap.register_pandas` (option -> value), for calls not passing them.
DEFAULTS: dict[str, Any] = {}
#: Below this many rows (columns for ``apply(axis=0)``) a call runs serially in the
#: kernel: a warm parallel call costs a few milliseconds, more than pandas needs for so
#: few rows of a cheap function. Set with ``register_pandas(serial_below=...)``.
SERIAL_BELOW = 100
#: Pieces per worker when ``chunksize=`` (rows per piece) is not given: enough to
#: balance uneven rows and move the progress bar, few enough to keep pandas'
#: per-call overhead small.
PIECES_PER_WORKER = 4
#: Where the failures of ``errors="collect"`` are listed on the result.
FAILURES_ATTR = "parmap_failures"


def _options(given: dict[str, Any]) -> dict[str, Any]:
    unknown = set(given) - set(RUN_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected run options: {', '.join(sorted(unknown))}")
    options = dict(DEFAULTS)
    options.update({k: v for k, v in given.items() if v is not None})
    return options


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the function's keyword arguments, the run options) of an ``apply`` call."""
    run = {k: kwargs.pop(k) for k in RUN_OPTIONS if k in kwargs}
    return kwargs, _options(run)


# ------------------------------------------------------------------------- the run
def run(obj: Any, job: PieceJob, options: dict[str, Any], by_columns: bool = False) -> Any:
    """pandas' ``job`` on ``obj``, in pieces, in parallel; the result pandas would give."""
    if not callable(job.func):
        raise TypeError(
            f"the parmap accessors need a function, got {type(job.func).__name__}; "
            "call pandas directly for strings, lists and dicts"
        )
    errors = options.get("errors", "raise")
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be one of: 'raise', 'collect', got {errors!r}")
    job = job._replace(collect=errors == "collect")
    length = obj.shape[1] if by_columns else len(obj)
    chunk = options.pop("chunksize", None)
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunksize must be a positive int (rows per piece), got {chunk!r}")
    if length < SERIAL_BELOW and chunk is None and options.get("backend") is None:
        return _serial(obj, job, by_columns)
    from ipyparmap.api import cpu_count, parmap
    from ipyparmap.results import Failure

    if chunk is None:
        workers = options.get("workers") or cpu_count()
        chunk = max(1, math.ceil(length / (workers * PIECES_PER_WORKER)))
    starts = list(range(0, length, chunk)) or [0]
    if by_columns:
        pieces = [obj.iloc[:, a : a + chunk] for a in starts]
    else:
        pieces = [obj.iloc[a : a + chunk] for a in starts]
    try:
        done = parmap(functools.partial(run_piece, job), pieces, chunksize=1, **options)
    except TaskError as err:
        failure = err.failure
        index = getattr(failure, "index", None)
        exc = getattr(failure, "exception", None)
        call = getattr(exc, "_parmap_call", None)
        if index is None or call is None:
            raise  # the engine's own error: a crash, a timeout, what could not be pickled
        raise _row_error(pieces[index], starts[index], job, by_columns, exc, call,
                         failure.traceback) from exc  # fmt: skip
    results: list[Any] = []
    failures: list[Any] = []
    for piece, start, outcome in zip(pieces, starts, done, strict=True):
        if isinstance(outcome, Failure):  # the whole piece: a crash, a timeout
            results.append(None)
            failures.extend(_piece_failed(piece, start, by_columns, outcome))
            continue
        value, failed = outcome
        results.append(value)
        failures.extend(_failures(piece, start, job, by_columns, failed))
    result = _combine(obj, pieces, results, job, by_columns)
    return _mark(result, failures, job)


def _serial(obj: Any, job: PieceJob, by_columns: bool) -> Any:
    try:
        value, failed = run_piece(job, obj)
    except Exception as exc:
        call = getattr(exc, "_parmap_call", None)
        if call is None:
            raise  # pandas' own error, not the function's
        import traceback

        raise _row_error(obj, 0, job, by_columns, exc, call, traceback.format_exc()) from exc
    return _mark(value, _failures(obj, 0, job, by_columns, failed), job)


# ------------------------------------------------------------------- placing failures
def _cell(piece: Any, job: PieceJob, by_columns: bool, call: int) -> tuple[int, Any, Any]:
    """(position in the piece, row label, column label or None) of the ``call``-th call
    of the function on ``piece``."""
    if by_columns:
        return call, None, piece.columns[call]
    if job.op == "frame_map":
        mask = piece.notna().to_numpy() if job.na_action == "ignore" else None
        rows = len(piece)
        if mask is not None:
            import numpy as np

            cells = np.flatnonzero(mask.T.ravel())  # column by column, as pandas calls
            call = int(cells[call])
        column, row = divmod(call, rows)
        return row, piece.index[row], piece.columns[column]
    if job.op in ("series_map", "series_apply") and job.na_action == "ignore":
        import numpy as np

        call = int(np.flatnonzero(piece.notna().to_numpy())[call])
    return call, piece.index[call], None


def _where(label: Any, column: Any, position: int, by_columns: bool) -> str:
    if by_columns:
        return f"column {column!r} (position {position})"
    text = f"row {label!r} (position {position})"
    return text if column is None else f"{text}, column {column!r}"


def _make_failure(position: int, label: Any, exc: BaseException, tb: str, kind: str = "error"):
    from ipyparmap.results import Failure

    return Failure(index=position, item=label, kind=kind, exception=exc, traceback=tb)


def _row_error(piece, start, job, by_columns, exc, call, tb) -> TaskError:
    """What ``errors="raise"`` raises: a TaskError that is also of the function's own
    exception type, naming the row (its index label) that raised."""
    position, label, column = _cell(piece, job, by_columns, call)
    position += start
    where = _where(label, column, position, by_columns)
    text = str(exc)
    message = f"{where} raised {type(exc).__name__}" + (f": {text}" if text else "")
    failure = _make_failure(position, column if by_columns else label, exc, tb)
    return task_error(message, failure, None, exc)


def _failures(piece, start, job, by_columns, failed: list[PieceFailure]) -> list[Any]:
    out = []
    for item in failed:
        position, label, column = _cell(piece, job, by_columns, item.call)
        out.append(
            _make_failure(position + start, column if by_columns else label,
                          item.exception, item.traceback)
        )  # fmt: skip
    return out


def _piece_failed(piece, start, by_columns, failure) -> list[Any]:
    labels = piece.columns if by_columns else piece.index
    return [
        _make_failure(start + i, label, failure.exception, failure.traceback, failure.kind)
        for i, label in enumerate(labels)
    ]


def _mark(result: Any, failures: list[Any], job: PieceJob) -> Any:
    if job.collect:
        result.attrs[FAILURES_ATTR] = failures
    return result


# ------------------------------------------------------------------------- combining
def _combine(obj: Any, pieces: list[Any], results: list[Any], job: PieceJob, by_columns: bool):
    """The pieces' results as one, as pandas would have made it in one call."""
    if all(r is None for r in results):  # every piece was lost (errors="collect")
        labels = obj.columns if by_columns else obj.index
        return pd.Series(float("nan"), index=labels, name=getattr(obj, "name", None))
    frames = any(isinstance(r, pd.DataFrame) for r in results)
    template = next(r for r in results if r is not None)
    filled = []
    for piece, result in zip(pieces, results, strict=True):
        labels = piece.columns if by_columns else piece.index
        if result is None:  # a lost piece: missing values in its rows
            if frames:
                result = _missing_frame(template, labels, by_columns)
            else:
                result = pd.Series(float("nan"), index=labels, name=template.name)
        elif frames and isinstance(result, pd.Series):
            result = _as_frame(result, by_columns)
        filled.append(result)
    combined = pd.concat(filled, axis=1) if frames and by_columns else pd.concat(filled)
    return _infer_again(combined, filled, job, frames, by_columns)


def _missing_frame(template: pd.DataFrame, labels: Any, by_columns: bool) -> pd.DataFrame:
    if by_columns:
        return pd.DataFrame(float("nan"), index=template.index, columns=labels)
    return pd.DataFrame(float("nan"), index=labels, columns=template.columns)


def _as_frame(result: pd.Series, by_columns: bool) -> pd.DataFrame:
    """A piece that came back as a Series where the others made frames (with
    ``errors="collect"``, a piece whose first row failed): its rows as a frame, the
    failed ones missing."""
    rows = [v if isinstance(v, pd.Series) else pd.Series(dtype=object) for v in result.array]
    frame = pd.DataFrame(rows)
    frame.index = result.index
    return frame.T if by_columns else frame


def _infer_again(
    combined: Any, pieces: list[Any], job: PieceJob, frames: bool, by_columns: bool
) -> Any:
    """Where the pieces' dtypes disagree, infer the combined values again as pandas
    does for one call: element-wise results (``map``, ``Series.apply``) as its
    ``map`` infers them, rows' results as the Series constructor does, expanded frames
    column by column with ``infer_objects``."""
    if not frames:
        if len({p.dtype for p in pieces}) <= 1:
            return combined
        return _reinfer_series(combined, job)
    if by_columns:  # each column came whole from one piece
        return combined
    out = combined
    for position in range(combined.shape[1]):
        dtypes = {
            p.dtypes.iloc[position] if p.shape[1] == combined.shape[1] else None for p in pieces
        }
        if len(dtypes) <= 1 and None not in dtypes:
            continue
        if out is combined:
            out = combined.copy()
        column = combined.iloc[:, position]
        if job.op == "frame_map":
            fixed = _reinfer_series(column, job)
        else:
            fixed = column.astype(object).infer_objects()
        out.isetitem(position, fixed)
    return out


def _identity(value: Any) -> Any:
    return value


def _reinfer_series(series: pd.Series, job: PieceJob) -> pd.Series:
    values = series.astype(object)
    if job.op == "frame_apply":  # the rows' results go through the Series constructor
        return pd.Series(list(values.array), index=series.index, name=series.name)
    return values.map(_identity)  # the inference of Series.map, on the same values


# ------------------------------------------------------------------------ accessors
class _Accessor:
    def __init__(self, obj: Any):
        self._obj = obj


class SeriesAccessor(_Accessor):
    """``s.parmap``: `map` and `apply` of a Series, in worker processes."""

    def map(
        self, func: Any, na_action: str | None = None, *, workers=None, chunksize=None,
        progress=None, errors=None, timeout=None, retries=None, backend=None,
    ) -> Any:  # fmt: skip
        """``Series.map(func, na_action=)`` in parallel; same result. A dict or Series
        mapping runs in pandas at once (it is not a Python call per value)."""
        options = _options(dict(
            workers=workers, chunksize=chunksize, progress=progress, errors=errors,
            timeout=timeout, retries=retries, backend=backend,
        ))  # fmt: skip
        if not callable(func):
            return self._obj.map(func, na_action=na_action)
        return run(self._obj, PieceJob("series_map", func, na_action=na_action), options)

    def apply(self, func: Any, args: tuple = (), **kwargs: Any) -> Any:
        """``Series.apply(func, args=, **kwargs)`` in parallel; same result. The run
        options (``workers=``, ``errors=``...) are taken out of ``kwargs``; the rest go
        to ``func``."""
        kwargs, options = _split_options(kwargs)
        job = PieceJob("series_apply", func, args=tuple(args), kwargs=kwargs)
        return run(self._obj, job, options)


class DataFrameAccessor(_Accessor):
    """``df.parmap``: `apply` and `map` of a DataFrame, in worker processes."""

    def apply(
        self, func: Any, axis: Any = 0, raw: bool = False, result_type: str | None = None,
        args: tuple = (), **kwargs: Any,
    ) -> Any:  # fmt: skip
        """``DataFrame.apply(func, axis=, raw=, result_type=, args=, **kwargs)`` in
        parallel; same result. ``axis=1`` splits the rows among the workers, ``axis=0``
        the columns. Run options are taken out of ``kwargs``."""
        kwargs, options = _split_options(kwargs)
        axis = self._obj._get_axis_number(axis)
        job = PieceJob(
            "frame_apply", func, args=tuple(args), kwargs=kwargs, axis=axis, raw=raw,
            result_type=result_type,
        )  # fmt: skip
        return run(self._obj, job, options, by_columns=axis == 0)

    def map(self, func: Any, na_action: str | None = None, **kwargs: Any) -> Any:
        """``DataFrame.map(func, na_action=, **kwargs)`` (element-wise; ``applymap``
        in pandas before 2.1) in parallel; same result. Run options are taken out of
        ``kwargs``."""
        kwargs, options = _split_options(kwargs)
        job = PieceJob("frame_map", func, kwargs=kwargs, na_action=na_action)
        return run(self._obj, job, options)
