"""Frames the pandas accessor tests share: awkward indexes (strings, datetimes,
MultiIndex, duplicates) and a grouped frame."""

from __future__ import annotations

import numpy as np
import pandas as pd

INDEXES = ["range", "strings", "datetimes", "multi", "duplicates"]


def make_index(kind: str, n: int):
    if kind == "range":
        return pd.RangeIndex(n)
    if kind == "strings":
        return pd.Index([f"row{i}" for i in range(n)], name="key")
    if kind == "datetimes":
        return pd.date_range("2024-01-01", periods=n, freq="h", name="when")
    if kind == "multi":
        return pd.MultiIndex.from_arrays([[i // 5 for i in range(n)], [f"k{i}" for i in range(n)]],
                                         names=["a", "b"])  # fmt: skip
    if kind == "duplicates":
        return pd.Index([i % 4 for i in range(n)])
    raise ValueError(kind)


def grouped_frame(n: int = 50, kind: str = "strings"):
    """Keys ``k`` (10 letters, unsorted, uneven groups) and ``k2``; values ``v`` (int),
    ``w`` (float)."""
    return pd.DataFrame(
        {
            "k": list("bacabdeffg") * (n // 10),
            "k2": np.arange(n) % 3,
            "v": np.arange(n),
            "w": np.arange(n) * 0.5,
        },
        index=make_index(kind, n),
    )


def assert_same(got, expected):
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        pd.testing.assert_series_equal(got, expected)
