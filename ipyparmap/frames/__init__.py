"""pandas accessors: ``df.parmap`` and ``s.parmap`` (layer: api).

``import ipyparmap`` calls `register_when_imported`: if pandas is imported already the
accessors are registered at once, else a finder on ``sys.meta_path`` waits for
``import pandas`` and registers them right after it (no pandas import of our own, so
``import ipyparmap`` stays light). `register_pandas` registers them explicitly and sets
the defaults of their calls. The accessors themselves are in `accessors` (Series,
DataFrame), `groupby` and `windows` (rolling, expanding); the part that runs in the
workers in `pieces`.
"""

from __future__ import annotations

import sys
from typing import Any

from ipyparmap.importhooks import AfterImport

_registered = False
_hook: AfterImport | None = None  # waits for ``import pandas``


def register_pandas(serial_seconds: float | None = None, **defaults: Any) -> None:
    """Register the ``.parmap`` accessors of pandas Series and DataFrame (imports pandas).

    ``import ipyparmap`` does this by itself when pandas is, or later gets, imported;
    call it to set the defaults of the accessors' calls (``workers=``, ``progress=``,
    ``errors=``, ``chunksize=`` (rows per piece), ``timeout=``, ``retries=``,
    ``backend=``; a call's own arguments win) and ``serial_seconds`` (how long a call
    runs its first rows in the kernel before it sends the rest to the workers; default
    0.01, 0 sends every row). Calling it again replaces the defaults.
    """
    _register()
    from ipyparmap.frames import accessors

    unknown = set(defaults) - set(accessors.RUN_OPTIONS)
    if unknown:
        raise TypeError(f"not run options of the accessors: {', '.join(sorted(unknown))}")
    accessors.DEFAULTS.clear()
    accessors.DEFAULTS.update({k: v for k, v in defaults.items() if v is not None})
    if serial_seconds is not None:
        if (
            isinstance(serial_seconds, bool)
            or not isinstance(serial_seconds, (int, float))
            or not serial_seconds >= 0
        ):
            raise ValueError(f"serial_seconds must be a number >= 0, got {serial_seconds!r}")
        accessors.SERIAL_SECONDS = float(serial_seconds)


def _register() -> None:
    global _registered
    if _registered:
        return
    import pandas as pd

    from ipyparmap.frames.accessors import DataFrameAccessor, SeriesAccessor
    from ipyparmap.frames.groupby import GroupByAccessorProperty

    pd.api.extensions.register_series_accessor("parmap")(SeriesAccessor)
    pd.api.extensions.register_dataframe_accessor("parmap")(DataFrameAccessor)
    try:
        from pandas.api.typing import DataFrameGroupBy, SeriesGroupBy
    except ImportError:  # pandas before 2.1
        from pandas.core.groupby import DataFrameGroupBy, SeriesGroupBy
    for cls in (DataFrameGroupBy, SeriesGroupBy):
        if "parmap" not in vars(cls):
            cls.parmap = GroupByAccessorProperty()
    from ipyparmap.frames.windows import WindowAccessor, window_classes

    for cls in window_classes():  # Rolling, Expanding and their groupby forms
        if "parmap" not in vars(cls):
            cls.parmap = GroupByAccessorProperty(WindowAccessor)
    _registered = True


def _register_quietly() -> None:
    """Registration as a side effect of an import: a failure warns, never breaks it."""
    try:
        _register()
    except Exception as exc:  # e.g. a pandas too old or too new for the accessors
        import warnings

        warnings.warn(f"ipyparmap: the pandas accessors are not available: {exc}", stacklevel=3)


def register_when_imported() -> None:
    """Register now if pandas is imported, else when it is (see the module's doc)."""
    if _registered:
        return
    global _hook
    if _hook is None or _hook not in sys.meta_path:
        _hook = AfterImport({"pandas": lambda _pandas: _register_quietly()}, once=True)
        _hook.install()
