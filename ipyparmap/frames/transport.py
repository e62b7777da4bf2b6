"""How a frame's pieces travel to the workers: numeric columns through shared memory (layer: api).

A piece of a DataFrame is a slice of the frame's blocks. pandas pickles each block as
one array, and a row slice of a 2-D block is not contiguous: NumPy 1.x then copies its
bytes into the pickle stream (through the pipe, read, copied again); NumPy 2.x makes a
contiguous copy first. One *column* of such a slice is contiguous, though. `outgoing`
wraps a piece so that it pickles as its columns: each numeric column (bool, int, uint,
float, complex NumPy arrays) is a view of the frame's own memory, which the engine's
shared-memory path (``wire/serialize.py``'s Packed: pickle protocol 5's out-of-band
buffers, written once into an anonymous memfd that the worker maps) carries without
another copy in the parent. Everything else (object and string columns, extension
dtypes: categoricals, datetimes with time zones, Arrow...) is pickled by pandas as its
own array, and the index, the column labels, ``attrs`` and ``flags`` as themselves.

The worker gets a DataFrame back (`_rebuild`), equal to the piece: same values, dtypes,
index and column labels (duplicates, MultiIndex included). Its numeric columns are
blocks of their own, mapped copy-on-write from the memfd: nothing is copied on arrival.
A piece with little numeric data, or one this module cannot take apart, travels as it
is. Where nothing is pickled (``backend="threads"``), `arrived` unwraps the piece.
"""

from __future__ import annotations

import math
from typing import Any

from ipyparmap.frames.pieces import GroupPiece

# pandas is imported where it is used: importing it here would, in a worker that loads
# `run_sent_piece` first, run ipyparmap's pandas import hook (frames/__init__.py) while
# this module is half made, and the accessors it imports need this module.

#: Numeric data below this many bytes per piece is not worth taking apart: pandas'
#: own pickle is as fast (buffers below serialize.SHARE_BYTES stay in the pickle anyway).
SHARE_MIN_BYTES = 64 * 1024
#: A piece holds at most about this many bytes of the frame (when ``chunksize=`` is not
#: given): a worker holds a piece's copy and pandas' own working copy of it (``.values``
#: for rows) at once, so big pieces of a big frame would make the workers hold a large
#: share of it on top of the caller's frame (docs/benchmarks.md, "Memory of a large frame").
PIECE_BYTES = 32 * 1024 * 1024
#: NumPy kinds whose arrays carry no Python objects and no pandas dtype of their own.
_NUMERIC_KINDS = frozenset("biufc")


class FramePiece:
    """A DataFrame that pickles column by column (see the module's doc)."""

    __slots__ = ("frame",)

    def __init__(self, frame: Any):
        self.frame = frame

    def __reduce__(self) -> tuple:
        frame = self.frame
        try:
            columns = [_sendable(array) for array in _column_arrays(frame)]
            flags = frame.flags.allows_duplicate_labels
        except Exception:  # a pandas whose internals differ: the frame as pandas pickles it
            return _same, (frame,)
        return _rebuild, (len(frame), frame.index, frame.columns, columns, frame.attrs, flags)


def _same(frame: Any) -> Any:
    return frame


def _column_arrays(frame: Any) -> list:
    iterate = getattr(frame, "_iter_column_arrays", None)  # pandas' own, no Series made
    if iterate is not None:
        return list(iterate())
    return [frame.iloc[:, position].array for position in range(frame.shape[1])]


def _sendable(array: Any) -> Any:
    """A numeric column as a contiguous array (out of band: shared memory); a view of
    the frame's memory unless its block is laid out column-major (then a copy)."""
    import numpy as np

    if isinstance(array, np.ndarray) and array.dtype.kind in _NUMERIC_KINDS:
        return array if array.flags.c_contiguous else np.ascontiguousarray(array)
    return array


def _rebuild(rows: int, index: Any, columns: Any, arrays: list, attrs: dict, flags: bool):
    """The piece, in the worker: each column as it arrived (no copy), under its labels."""
    import numpy as np
    import pandas as pd

    data = {}
    positions = pd.RangeIndex(rows)
    for position, array in enumerate(arrays):
        if isinstance(array, np.ndarray) and array.dtype.kind not in _NUMERIC_KINDS:
            # object columns: a Series keeps the dtype (pandas 3 would infer strings
            # from a bare object array)
            array = pd.Series(array, index=positions, dtype=array.dtype, copy=False)
        data[position] = array
    frame = pd.DataFrame(data, index=positions, copy=False)
    frame.index = index
    frame.columns = columns
    if attrs:
        frame.attrs = attrs
    if not flags:
        frame = frame.set_flags(allows_duplicate_labels=False)
    return frame


def _worth_it(frame: Any) -> bool:
    import pandas as pd

    if type(frame) is not pd.DataFrame:  # subclasses may carry state of their own
        return False
    dtypes = frame.dtypes
    numeric = sum(
        len(frame) * dtype.itemsize
        for dtype in dtypes
        if getattr(dtype, "kind", None) in _NUMERIC_KINDS and not isinstance(
            dtype, pd.api.extensions.ExtensionDtype
        )
    )  # fmt: skip
    return numeric >= SHARE_MIN_BYTES


#: Pieces of about this much work, by the time the first rows (groups) took in the
#: kernel: small enough that a worker slowed down (a busy machine, uneven rows) holds
#: up the end of the call by little; ...
PIECE_SECONDS = 0.25
#: ... but no more pieces than this per worker (each costs pandas' own set-up of a call).
MAX_PIECES_PER_WORKER = 16


def timed_rows(rows: int, left: int, workers: int, seconds_per_row: float | None) -> int:
    """``rows`` per piece, fewer where the ``left`` rows (or groups), at the measured
    ``seconds_per_row``, would make pieces of more than `PIECE_SECONDS` of work."""
    if not seconds_per_row or left <= 0:
        return rows
    pieces = min(workers * MAX_PIECES_PER_WORKER, math.ceil(left * seconds_per_row / PIECE_SECONDS))
    return max(1, min(rows, math.ceil(left / max(1, pieces))))


def piece_rows(obj: Any, rows: int, by_columns: bool = False) -> int:
    """``rows`` per piece, fewer where such a piece of ``obj`` would hold more than
    `PIECE_BYTES` (the frame's own bytes per row: object columns count their pointers)."""
    length = obj.shape[1] if by_columns else len(obj)
    if length == 0:
        return rows
    try:
        nbytes = int(obj.memory_usage(index=False).sum()) if obj.ndim == 2 else obj.nbytes
    except Exception:  # an extension array that cannot tell
        return rows
    per_row = max(1, nbytes // length)
    return max(1, min(rows, PIECE_BYTES // per_row))


def outgoing(pieces: list) -> list:
    """``pieces`` (DataFrames, Series, GroupPieces) as they should travel: frames with
    enough numeric data wrapped in a `FramePiece`, the rest unchanged."""
    out = []
    for piece in pieces:
        if isinstance(piece, GroupPiece):
            if _worth_it(piece.obj):
                piece = piece._replace(obj=FramePiece(piece.obj))
        elif _worth_it(piece):
            piece = FramePiece(piece)
        out.append(piece)
    return out


def arrived(piece: Any) -> Any:
    """The piece itself where it came unpickled (``backend="threads"`` passes items as
    they are, so a FramePiece is still wrapped)."""
    if type(piece) is FramePiece:
        return piece.frame
    if isinstance(piece, GroupPiece) and type(piece.obj) is FramePiece:
        return piece._replace(obj=piece.obj.frame)
    return piece


def run_sent_piece(job: Any, piece: Any) -> tuple:
    """`pieces.run_piece` on a piece sent by `outgoing`: what the workers run."""
    from ipyparmap.frames.pieces import run_piece

    return run_piece(job, arrived(piece))
