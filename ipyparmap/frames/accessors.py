"""The ``.parmap`` accessors of Series and DataFrame (layer: api).

A call splits the object into contiguous pieces (``iloc`` slices: rows, or columns for
``DataFrame.apply(axis=0)``), has `ipyparmap.parmap` run pandas' own ``apply``/``map`` on
each piece in the workers (`pieces.run_piece`), and concatenates the pieces in order.
Where the pieces' dtypes disagree (a piece of ints beside one holding a NaN) the
combined values are inferred again the way pandas infers them in one call. The first
rows run in the kernel for up to `SERIAL_SECONDS` (so small inputs never leave it),
with the same error handling.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import pandas as pd

from ipyparmap.errors import Interrupted, TaskError, task_error
from ipyparmap.frames.pieces import PieceFailure, PieceJob, run_piece
from ipyparmap.frames.transport import outgoing, piece_rows, run_sent_piece, timed_rows

#: The run options every accessor call takes, passed on to `ipyparmap.parmap`.
RUN_OPTIONS = ("workers", "chunksize", "progress", "errors", "timeout", "retries", "backend")
#: Defaults set with `ipyparmap.register_pandas` (option -> value), for calls not passing them.
DEFAULTS: dict[str, Any] = {}
#: A call runs its first rows in the kernel, in slices of 1, 2, 4... rows, for up to
#: this many seconds (measured: a warm parallel call costs 5-8 ms on 2 cores), and
#: sends only the rest to the workers: a small or cheap input never leaves the kernel.
#: Set with ``register_pandas(serial_seconds=...)``; 0 sends every row to the workers.
SERIAL_SECONDS = 0.01
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


def _errors_mode(options: dict[str, Any]) -> str:
    """The call's ``errors=``: passed, else `register_pandas`'s, else ``%config
    Parmap.errors``, else "raise"; written into ``options`` (the pieces must know it)."""
    errors = options.get("errors")
    if errors is None:
        from ipyparmap import api

        errors = api._configured.get("errors", "raise")
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be one of: 'raise', 'collect', got {errors!r}")
    options["errors"] = errors
    return errors


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the function's keyword arguments, the run options) of an ``apply`` call."""
    run = {k: kwargs.pop(k) for k in RUN_OPTIONS if k in kwargs}
    return kwargs, _options(run)


# ------------------------------------------------------------------------- the run
class _Split:
    """A call's pieces (contiguous slices, in order), where each starts, and what each
    gave: its result (None: the piece was lost) and the failures it holds."""

    def __init__(self, obj: Any, job: PieceJob, by_columns: bool):
        self.obj, self.job, self.by_columns = obj, job, by_columns
        self.length = obj.shape[1] if by_columns else len(obj)
        self.pieces: list[Any] = []
        self.starts: list[int] = []
        self.results: list[Any] = []
        self.failures: list[Any] = []
        self.kernel_seconds = 0.0  # spent on the first rows in the kernel (sizes pieces)

    @property
    def unit(self) -> str:
        return "columns" if self.by_columns else "rows"

    def size(self, piece: Any) -> int:
        """The rows (columns) of ``piece`` whose results it gives."""
        return piece.shape[1] if self.by_columns else len(piece)

    @property
    def done(self) -> int:
        """Rows (columns) cut into pieces so far."""
        if not self.pieces:
            return 0
        return self.starts[-1] + self.size(self.pieces[-1])

    def take(self, size: int) -> Any:
        start = self.done
        stop = min(self.length, start + size)
        obj = self.obj
        piece = obj.iloc[:, start:stop] if self.by_columns else obj.iloc[start:stop]
        self.pieces.append(piece)
        self.starts.append(start)
        return piece

    def gave(self, position: int, value: Any, failed: list[PieceFailure]) -> None:
        self.results.append(value)
        self.failures.extend(
            _failures(self.pieces[position], self.starts[position], self.job, self.by_columns,
                      failed)
        )  # fmt: skip

    def lost(self, position: int, failure: Any) -> None:
        """The piece never came back (a crash, a timeout): every row of it failed."""
        self.results.append(None)
        self.failures.extend(_piece_failed(self.pieces[position], self.starts[position],
                                           self.by_columns, failure))  # fmt: skip

    def raised(self, position: int, exc: BaseException, call: int, tb: str) -> TaskError:
        return _row_error(self.pieces[position], self.starts[position], self.job,
                          self.by_columns, exc, call, tb)  # fmt: skip


def run(obj: Any, job: PieceJob, options: dict[str, Any], by_columns: bool = False) -> Any:
    """pandas' ``job`` on ``obj``, in pieces, in parallel; the result pandas would give."""
    if not callable(job.func):
        raise TypeError(
            f"the parmap accessors need a function, got {type(job.func).__name__}; "
            "call pandas directly for strings, lists and dicts"
        )
    errors = _errors_mode(options)
    job = job._replace(collect=errors == "collect")
    chunk = options.pop("chunksize", None)
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunksize must be a positive int (rows per piece), got {chunk!r}")
    split = _Split(obj, job, by_columns)
    if split.length == 0:  # pandas' own rules for empty input (it may call func once)
        return _mark(run_piece(job, obj)[0], [], job)
    # In the kernel first: slices of 1, 2, 4... rows until SERIAL_SECONDS have passed
    # (about what a warm parallel call costs); a small or cheap input ends there.
    if kernel_first(options, chunk):
        _in_kernel(split)

    def combine() -> Any:
        if len(split.results) == 1 and split.results[0] is not None:
            return split.results[0]  # pandas' own result, whole
        return _combine(obj, split.pieces, split.results, job, by_columns)

    if split.done < split.length:
        try:
            _in_workers(split, options, chunk)
        except Interrupted as err:
            raise interrupted(err, split, combine, job) from None
    return _mark(combine(), split.failures, job)


def kernel_first(options: dict[str, Any], chunk: int | None) -> bool:
    """Whether a call runs its first rows (groups) in the kernel: not with what only
    workers enforce (timeout=, retries=), another backend, or a chunksize= asked for."""
    return (
        chunk is None
        and options.get("timeout") is None
        and not options.get("retries")
        and options.get("backend") in (None, "local")
    )


def _in_kernel(split: _Split) -> None:
    began = time.perf_counter()
    size = 1
    while split.done < split.length and time.perf_counter() - began < SERIAL_SECONDS:
        piece = split.take(size)
        size *= 2
        try:
            value, failed = run_piece(split.job, piece)
        except Exception as exc:
            call = getattr(exc, "_parmap_call", None)
            if call is None:
                raise  # pandas' own error, not the function's
            import traceback

            raise split.raised(len(split.pieces) - 1, exc, call, traceback.format_exc()) from exc
        split.gave(len(split.pieces) - 1, value, failed)
    split.kernel_seconds = time.perf_counter() - began


def _in_workers(split: _Split, options: dict[str, Any], chunk: int | None) -> None:
    """The rows not run yet, in pieces of ``chunk`` rows, run by `parmap`; its progress
    counts rows (columns), those run in the kernel already done."""
    from ipyparmap.api import cpu_count, parmap_counted

    if chunk is None:
        workers = options.get("workers") or cpu_count()
        left = split.length - split.done
        chunk = max(1, math.ceil(left / (workers * PIECES_PER_WORKER)))
        per_row = split.kernel_seconds / split.done if split.done else None
        chunk = timed_rows(chunk, left, workers, per_row)  # slow rows: smaller pieces
        chunk = piece_rows(split.obj, chunk, split.by_columns)  # big frames: bounded pieces
    first, before = len(split.pieces), split.done
    while split.done < split.length:
        split.take(chunk)
    pieces = split.pieces[first:]
    counts = [split.size(piece) for piece in pieces]
    try:
        outcomes = parmap_counted(functools.partial(run_sent_piece, split.job),
                                  outgoing(pieces), counts, split.unit, before, chunksize=1,
                                  **options)  # fmt: skip
    except TaskError as err:
        failure = err.failure
        index = getattr(failure, "index", None)
        exc = getattr(failure, "exception", None)
        call = getattr(exc, "_parmap_call", None)
        if index is None or call is None:
            raise  # the engine's own error: a crash, a timeout, what could not be pickled
        raise split.raised(first + index, exc, call, failure.traceback) from exc
    except Interrupted as err:
        record(split, err.results or (), first)  # the finished pieces, for the caller
        raise
    record(split, outcomes, first)


def record(split: Any, outcomes: Any, first: int) -> None:
    """What the workers gave for pieces ``first``..: results, or whole pieces lost (a
    crash, a timeout, an interrupt's cancelled pieces)."""
    from ipyparmap.results import Failure

    for position, outcome in enumerate(outcomes, first):
        if isinstance(outcome, Failure):
            split.lost(position, outcome)
        else:
            split.gave(position, *outcome)


def interrupted(err: Interrupted, split: Any, combine: Any, job: PieceJob) -> Interrupted:
    """``err`` with ``.results`` the call's result so far, as pandas would give it for
    the rows that finished (the others missing) and every row that did not finish
    listed in ``attrs["parmap_failures"]`` ("cancelled")."""
    if len(split.results) == len(split.pieces) and split.pieces:
        partial = combine()
        partial.attrs[FAILURES_ATTR] = list(split.failures)
        err.results = partial
    return err


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
    if job.op in ("frame_apply", "group_apply"):  # results go through the Series constructor
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
        if kwargs.get("by_row", "compat") is False:
            raise NotImplementedError(
                "s.parmap.apply(by_row=False) would call func on pieces of the Series, "
                "not on the whole: call s.apply"
            )
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
