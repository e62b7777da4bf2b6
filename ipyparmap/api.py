"""The Python API: ``parmap``, ``imap``, ``parmap_async`` and friends (layer: api).

This module wires the pieces: it validates the call (before any worker starts),
chooses the progress view and the output forwarding, picks the engine (a `LocalEngine`
on the warm default pool, or an `ExecutorEngine` for ``backend=``) and has
`engine.run.map_run` build the run's `Runner`.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ipyparmap.options import BY_NAME, Options, check_options, short_repr
from ipyparmap.wire import messages as M

if TYPE_CHECKING:  # (loaded by the engine: a script's first call starts its template first)
    from ipyparmap.engine.background import Run
    from ipyparmap.results import Results


# ---------------------------------------------------------------- %config Parmap defaults
#: Defaults set with ``%config Parmap.<name>`` (or ``c.Parmap`` in a profile): the magics,
#: when loaded, publish the traits that differ from the options table here
#: (`configure_defaults`); this module never imports IPython.
_configured: dict[str, Any] = {}


def configure_defaults(values: dict[str, Any]) -> None:
    """Make ``values`` (option name -> value) the defaults of `parmap`, `imap` and
    `parmap_async` in this process, where a call does not pass the option itself; ``{}``
    clears them. The magics call it with the ``%config Parmap`` traits."""
    global _configured
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise TypeError(f"not run options: {', '.join(sorted(unknown))}")
    _configured = dict(values)  # replaced, never changed: a running call reads a whole one


class _Default:
    """An option's default in the API signatures (`_option_defaults`): it reads as the
    value in ``help()`` and ``inspect.signature``, and tells the call that the option
    was not passed, so a configured default may stand in for it while an explicit
    argument always wins, even one equal to the table's default."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _option_defaults(func: Callable) -> Callable:
    """Turn ``func``'s run-option defaults into `_Default` markers, in place: the
    source, and so the docs, keep the plain defaults, and no wrapper adds a frame."""
    func.__kwdefaults__ = {
        name: _Default(value) if name in BY_NAME else value
        for name, value in func.__kwdefaults__.items()
    }
    return func


def _given(**values: Any) -> dict[str, Any]:
    """The options of a call: what it passed, else the configured default, else the
    table's."""
    configured = _configured
    for name, value in values.items():
        if type(value) is _Default:
            values[name] = configured.get(name, value.value)
    return values


@_option_defaults
def parmap(
    func: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    chunksize: int | None = None,
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    progress: str | bool = "auto",
    star: bool = False,
    backend: Any = None,
    max_memory: int | str | None = None,
) -> Results:
    """Run ``func(item)`` for every item of ``iterable`` in worker processes.

    Returns a `Results` (a list, in input order). Functions, lambdas,
    closures and classes defined in a notebook or in ``__main__`` work: they are pickled
    with cloudpickle and run in spawned workers. The items run with the caller's working
    directory, environment, ``sys.path`` and module versions as they are at the call
    (see "What the workers see" in the user guide).

    An option not passed takes its ``%config Parmap.<name>`` value where the magics are
    loaded (``%load_ext ipyparmap``), else the default shown; a passed one always wins.

    Args:
        func: the function to map; called as ``func(item)`` (``func(*item)`` if ``star``).
        iterable: any iterable, also a lazy or infinite one (items are taken as needed).
        workers: worker processes; None uses every usable CPU (affinity and cgroup
            quota aware).
        chunksize: items per message; None adapts it to the measured task duration.
        errors: ``"raise"`` stops at the first failed item and raises (TaskError,
            WorkerCrashed, TaskTimeout or SerializationError, with the partial results
            in ``.results``); ``"collect"`` runs everything and puts a
            `Failure` in each failed slot.
        timeout: seconds one item may run; its worker is killed after that (the other
            workers carry on). None or ``float("inf")``: no limit.
        retries: how many more times to run an item that raised, crashed its worker or
            timed out.
        progress: ``"auto"`` (the widget panel in a Jupyter kernel with ipywidgets, a
            text bar on a terminal, nothing when output is not a terminal),
            ``"widget"`` (the panel where it can be shown, else the text bar), ``"text"``
            or False.
        star: call ``func(*item)``, like ``itertools.starmap``.
        backend: None or ``"local"`` (the warm local process pool), ``"dask"`` (the
            current ``distributed.Client``), a ``distributed.Client``, or any
            ``concurrent.futures.Executor``.
        max_memory: a worker whose memory (RSS) exceeds this, in bytes or as ``"2GB"``,
            is stopped during an item (which fails as ``"memory"``, with
            `MemoryLimitExceeded`) or replaced by a fresh one after an item. Local pool
            only.

    Raises:
        Interrupted: on Ctrl-C / "interrupt kernel", with ``.results``.
    """
    options = check_options(**_given(
        workers=workers, chunksize=chunksize, errors=errors, timeout=timeout, retries=retries,
        progress=progress, star=star, backend=backend, max_memory=max_memory,
    ))  # fmt: skip
    _check_call(func, iterable, options)
    if os.environ.get(M.WORKER_ENV):
        from ipyparmap.engine.serial import serial_results

        return serial_results(func, iterable, options)
    runner = _runner(func, iterable, options, keep_details=True)
    return runner.results()


def parmap_counted(func: Callable[..., Any], items: list, counts: list[int], unit: str,
                   before: int = 0, **run_options: Any) -> Results:  # fmt: skip
    """`parmap` whose progress counts ``counts[i]`` units (``unit``) for item ``i``, plus
    ``before`` already done: the pandas accessors send pieces of a frame and count rows
    (or groups). For the package's own callers; options as `parmap`'s."""
    defaults = parmap.__kwdefaults__
    unknown = set(run_options) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected run options: {', '.join(sorted(unknown))}")
    options = check_options(**_given(**{**defaults, **run_options}))
    _check_call(func, items, options)
    if os.environ.get(M.WORKER_ENV):
        from ipyparmap.engine.serial import serial_results

        return serial_results(func, items, options)
    counting = (counts, unit, before)
    return _runner(func, items, options, keep_details=True, counting=counting).results()


@_option_defaults
def imap(
    func: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    ordered: bool = True,
    workers: int | None = None,
    chunksize: int | None = None,
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    progress: str | bool = "auto",
    star: bool = False,
    backend: Any = None,
    max_memory: int | str | None = None,
) -> Iterator[Any]:
    """Like `parmap`, but yield results as they come.

    ``ordered=True`` yields in input order, ``ordered=False`` in completion order. The
    input is consumed with a bounded look-ahead, so infinite generators work and memory
    stays flat. With ``errors="collect"`` a failed item yields its Failure. Leaving the
    loop early stops the workers' remaining work.

    Validation errors are raised here, at the call, not at the first ``next()``.
    """
    options = check_options(**_given(
        workers=workers, chunksize=chunksize, errors=errors, timeout=timeout, retries=retries,
        progress=progress, star=star, backend=backend, ordered=ordered, max_memory=max_memory,
    ))  # fmt: skip
    _check_call(func, iterable, options)
    if os.environ.get(M.WORKER_ENV):
        from ipyparmap.engine.serial import serial_values

        return serial_values(func, iterable, options)
    runner = _runner(func, iterable, options, keep_details=False)
    return runner.values(ordered)


@_option_defaults
def parmap_async(
    func: Callable[..., Any],
    iterable: Iterable[Any],
    *,
    workers: int | None = None,
    chunksize: int | None = None,
    errors: str = "raise",
    timeout: float | None = None,
    retries: int = 0,
    progress: str | bool = "auto",
    star: bool = False,
    backend: Any = None,
    max_memory: int | str | None = None,
    on_finish: Callable[[Results], Any] | None = None,
) -> Run:
    """Like `parmap`, but return a `Run` at once.

    The map runs in a background thread; the caller (a notebook) stays free. ``run``
    is a ``concurrent.futures.Future`` look-alike: ``run.done()``, ``run.result()``,
    ``run.cancel()``, ``run.add_done_callback(fn)``; ``await run`` in a kernel;
    ``run.progress`` is the live progress model and ``run.results`` the results so far.
    ``on_finish(results)`` is called in the run's thread when it ends (with the partial
    Results if it failed or was cancelled).

    Argument errors are raised here, before anything starts.
    """
    from ipyparmap.engine.background import Run

    options = check_options(**_given(
        workers=workers, chunksize=chunksize, errors=errors, timeout=timeout, retries=retries,
        progress=progress, star=star, backend=backend, max_memory=max_memory,
    ))  # fmt: skip
    _check_call(func, iterable, options)
    runner = _runner(func, iterable, options, keep_details=True, background=True)
    return Run(runner, on_finish)


def shutdown() -> None:
    """Stop the warm worker pool. The next call starts a fresh one."""
    global _shutdowns
    from ipyparmap.process.pool import shutdown_default_pool

    _shutdowns += 1
    shutdown_default_pool()


#: How many times `shutdown` was called: a prewarm asked for before one is void.
_shutdowns = 0


def shutdowns() -> int:
    """How many times `shutdown` was called in this process (see `prewarm`)."""
    return _shutdowns


def prewarm(since: int | None = None) -> int:
    """Start the warm pool's workers now, for the next call (``%load_ext ipyparmap``
    does, unless ``Parmap.prewarm`` is False); return how many were started.

    As many as a call with the default ``workers`` would use (``%config
    Parmap.workers``, else every usable CPU), started at once and booting in the
    background. Nothing when the pool is up already, inside a worker, or when
    `shutdown` was called after ``since`` (a `shutdowns` count): a shutdown always wins.
    """
    if os.environ.get(M.WORKER_ENV) or (since is not None and since != _shutdowns):
        return 0
    from ipyparmap.process.pool import default_pool

    workers, env = _local_workers(_configured.get("workers"))  # as a call's workers get
    return default_pool().prewarm(workers, env)


def set_idle_timeout(seconds: float | None) -> None:
    """How long idle workers beyond the warm count stay up.

    The warm pool keeps as many idle workers as there are usable CPUs (the default
    ``workers``) for the next call; a call with more ``workers`` starts more, and those
    stop after ``seconds`` without work (default 60). ``None``: they stay up until
    `shutdown`.
    """
    import math

    if seconds is not None and (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or math.isnan(seconds)
        or seconds <= 0
    ):
        raise ValueError(f"seconds must be a positive number or None, got {seconds!r}")
    from ipyparmap.process import pool

    pool.IDLE_SECONDS = None if seconds is None or math.isinf(seconds) else float(seconds)
    pool.default_pool().idle_seconds = pool.IDLE_SECONDS


def shared_array(shape: int | tuple[int, ...], dtype: Any = float) -> Any:
    """A zero-filled NumPy array in shared memory: passed to workers (as an item, in
    one, or as a global the function uses) it travels by descriptor, with no copy.

    Plain arrays are copied once into shared memory when a chunk goes out (~4 GB/s);
    fill a ``shared_array`` instead when the same big arrays go to workers again and
    again, or are too big to copy. Workers map the same memory: they see what you write
    into it, also between calls (a function using it as a global is not sent again),
    while what a worker writes stays in that worker (copy-on-write). Don't change it
    while a run is reading it.

    Arrays are carved from a few large anonymous memory files (arenas), so any number
    of them holds only a handful of file descriptors; an array of 64 MiB or more gets
    one of its own. An array's memory is freed with the last reference to it (views
    included) and may then be reused for a new array, zeroed; a worker that kept a view
    of it past its task would see that reuse, as it sees your writes.
    """
    import numpy as np

    from ipyparmap.wire.sharedmem import allocate

    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = 1
    for size in shape:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"shape must hold non-negative ints, got {shape!r}")
        count *= size
    # A worker returning the array drops it once sent, before the parent maps it: there,
    # each array gets memory of its own, never reused under the parent.
    in_worker = bool(os.environ.get(M.WORKER_ENV))
    buffer = allocate(count * dtype.itemsize, dedicated=in_worker)
    return np.ndarray(shape, dtype=dtype, buffer=buffer)


def cpu_count() -> int:
    """Usable CPUs (affinity mask and cgroup quota aware): the default worker count."""
    from ipyparmap.process.resources import cpu_count as _cpu_count

    return _cpu_count()


# ---------------------------------------------------------------------------- helpers
def _runner(func, iterable, options: Options, keep_details: bool, background: bool = False,
            counting: tuple | None = None):  # fmt: skip
    if options.backend in (None, "local"):
        workers, env = _local_workers(options.workers)
        _start_template(workers, env, iterable)  # first thing: it boots meanwhile
    from ipyparmap.engine.run import function_name, map_run

    progress = _progress_model(options.progress)
    if progress is not None and counting is not None:
        progress.count_by(*counting)
    if background:
        if progress is None:  # a Run always has a live model, even with no view
            from ipyparmap.views.progress import ProgressModel

            progress = ProgressModel()
        progress.background = True
    name = function_name(func)
    if options.backend == "threads":
        from ipyparmap.engine.executor import ExecutorEngine
        from ipyparmap.engine.threads import ThreadPerTask, default_thread_count

        if options.max_memory is not None:
            raise ValueError("max_memory= needs the local backend (threads share our memory)")
        if options.timeout is not None:  # an abandoned thread takes its chunk with it
            options = options._replace(chunksize=1)
        workers = options.workers or default_thread_count()
        engine = ExecutorEngine(ThreadPerTask(workers), func_name=name)
    elif options.backend not in (None, "local"):
        from ipyparmap.engine.executor import ExecutorEngine, resolve_backend

        backend = resolve_backend(options.backend)
        if options.timeout is not None:
            raise ValueError(
                "timeout= needs the local backend: a task in an executor or on a Dask "
                "cluster cannot be killed"
            )
        if options.max_memory is not None:
            raise ValueError("max_memory= needs the local backend (its workers are ours)")
        engine = ExecutorEngine(backend, func_name=name)
        workers = options.workers or backend.concurrency()
    else:  # local: `workers` and `env` from the top
        from ipyparmap.engine.local import LocalEngine
        from ipyparmap.process.pool import default_pool

        engine = LocalEngine(default_pool(), env=env, func_name=name)
    return map_run(
        func, iterable, options, engine, workers=workers, progress=progress,
        on_output=_output_forwarder(), keep_details=keep_details,
        packing=engine.packing,
    )  # fmt: skip


def _progress_model(mode):
    """A model with a view for ``mode``, or None when nothing would be shown.

    ``"auto"``: the widget panel inside a Jupyter kernel with ipywidgets importable, a
    text bar on a terminal, nothing otherwise. ``"widget"``: the panel where it can be
    shown, else the text bar (with a final line). ``"text"``: the text bar. In a kernel
    the text bar redraws in place (the notebook honours ``\\r``) and always ends with a
    summary line.
    """
    if mode is False:
        return None
    import sys

    from ipyparmap.views.textui import TextProgress, isatty
    from ipyparmap.views.widget import in_kernel

    kernel = in_kernel()
    if mode == "auto" and not kernel and not isatty(sys.stderr):
        return None
    from ipyparmap.views.progress import ProgressModel

    if kernel and mode in ("auto", "widget"):
        from ipyparmap.views.widget import ProgressPanel, widgets_available

        if widgets_available(warn=mode == "widget"):
            model = ProgressModel()
            model.listeners.append(ProgressPanel())
            return model
    model = ProgressModel()
    summary = kernel or mode in ("text", "widget")
    model.listeners.append(TextProgress(summary=summary, live=True if kernel else None))
    return model


def _output_forwarder():
    from ipyparmap.views.textui import OutputPrinter

    return OutputPrinter()


def _local_workers(requested: int | None) -> tuple[int, Callable[[], dict]]:
    """How many local workers a call asking for ``requested`` gets, and their thread
    limits (a function: the environment is built only if a worker is started)."""
    from ipyparmap.process.resources import cpu_count as _cpu_count
    from ipyparmap.process.resources import resolve_workers, thread_limits

    cpus = _cpu_count()
    workers = resolve_workers(requested, cpus)
    return workers, functools.partial(thread_limits, workers, cpus)


def _start_template(workers: int, env: Callable[[], dict], iterable: Any) -> None:
    """A cold pool forks a call's workers from its template process: start it first
    thing, so that it boots while this process loads the engine and cloudpickle (a
    script's first call). Nothing for an input known to be empty (it starts no worker)."""
    try:
        if len(iterable) == 0:
            return
    except Exception:  # not sized (a generator): it probably has items
        pass
    from ipyparmap.process.pool import default_pool

    default_pool().start_template(workers, env)


def _check_call(func: Any, iterable: Any, options: Options) -> None:
    """Reject a function or input that cannot work, before any worker starts."""
    if not callable(func):
        hint = " (did you swap func and iterable?)" if callable(iterable) else ""
        raise TypeError(f"func must be callable, got {type(func).__name__}{hint}")
    try:
        iter(iterable)
    except TypeError:
        raise TypeError(
            f"iterable must be iterable, got {type(iterable).__name__} ({short_repr(iterable)})"
        ) from None
    try:
        if options.star in _checked_functions.get(func, ()):
            return  # checked before (inspect.signature costs ~35 us a call)
    except TypeError:  # not weak-referenceable (a builtin...): check every time
        pass
    _check_function(func, options.star)
    try:
        _checked_functions.setdefault(func, set()).add(options.star)
    except TypeError:
        pass


# Functions that passed _check_function, with the star modes they passed for.
_checked_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_function(func: Any, star: bool) -> None:
    import inspect

    target = func
    while hasattr(target, "func") and not inspect.isroutine(target):  # functools.partial
        target = target.func
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            "async functions are not supported: wrap the call, e.g. lambda x: asyncio.run(f(x))"
        )
    if inspect.isgeneratorfunction(target):
        raise TypeError(
            "func is a generator function: its results would be generators, which "
            "cannot be sent back from a worker; return list(...) instead"
        )
    if not star:
        _check_arity(func)


def _check_arity(func: Any) -> None:
    import inspect

    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    try:
        signature.bind(None)
    except TypeError as exc:
        name = getattr(func, "__qualname__", None) or type(func).__name__
        raise TypeError(
            f"func {name}{signature} cannot take one positional argument, but each item "
            f"is passed as one ({exc}); use star=True to unpack tuples into arguments"
        ) from None
