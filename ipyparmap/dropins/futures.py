"""Worker-side pieces of the ``ProcessPoolExecutor`` drop-in (layer: api).

They travel to workers inside the executor's calls, so, like dropins/calls.py, this
module imports nothing at module level: a worker loads it when it unpickles a call.

- `ResultCall` pickles the function's result in the worker, as
  ``concurrent.futures.process`` does before sending it back: an exception raised while
  pickling it (``PicklingError``, or a ``SystemExit`` from a ``__reduce__``) becomes the
  future's exception itself, not ipyparmap's ``SerializationError``.
- `GuardedInitializer` marks an initializer's failure (`InitializerFailed`), which
  breaks the executor as the standard library's does (``BrokenProcessPool`` for pending
  and later futures).
"""

from __future__ import annotations

from typing import Any


class InitializerFailed(Exception):
    """The executor's ``initializer`` raised in a worker (the message names the error)."""


class _Wrapping:
    """A callable around the user's ``func`` that pickles as just that function (the
    wrapper's class travels by reference; cloudpickle takes the function by value)."""

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func

    def __getstate__(self):
        return self.func

    def __setstate__(self, state):
        self.func = state


class GuardedInitializer(_Wrapping):
    """The user's initializer; when it raises, the worker logs "Exception in
    initializer:" and the traceback on the ``concurrent.futures`` logger, as the stdlib
    does, and the task fails with `InitializerFailed`, which the parent turns into a
    broken pool."""

    __slots__ = ()

    def __call__(self, *args: Any) -> None:
        try:
            self.func(*args)
        except BaseException as exc:
            import logging

            # the standard library's words and logger (printed to stderr unless the
            # initializer itself routed that logger elsewhere)
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            # The standard library's worker exits here, which flushes what its queues
            # still buffer (a QueueHandler's log record, for one) before the pool is
            # seen broken; ours lives on, so flush them now, as its exit would
            # (CPython's test_concurrent_futures, FailingInitializer test_initializer).
            from multiprocessing import util

            util._run_finalizers()
            raise InitializerFailed(f"{type(exc).__name__}: {exc}") from None


class PickledResult:
    """A result pickled in the worker (``data``), or the pickled exception its pickling
    raised (``error``, with the worker's traceback text in ``tb``)."""

    __slots__ = ("data", "error", "tb")

    def __init__(self, data: bytes | None, error: bytes | None = None, tb: str = ""):
        self.data, self.error, self.tb = data, error, tb

    def __getstate__(self):
        return (self.data, self.error, self.tb)

    def __setstate__(self, state):
        self.data, self.error, self.tb = state


class ResultCall(_Wrapping):
    """``func(*args, **kwargs)`` whose result comes back as a `PickledResult`."""

    __slots__ = ()

    def __call__(self, /, *args: Any, **kwargs: Any) -> PickledResult:
        # positional-only: ``submit(fn, self=1)`` passes ``self`` on to ``fn``
        value = self.func(*args, **kwargs)
        from ipyparmap.wire.codec import dumps

        try:
            return PickledResult(dumps(value))
        except BaseException as exc:  # SystemExit too: the stdlib sends it back as is
            import pickle
            import traceback

            text = "".join(traceback.format_exception(exc))
            try:
                error = dumps(exc)
            except BaseException:
                error = dumps(pickle.PicklingError(f"{type(exc).__name__}: {exc}"))
            return PickledResult(None, error, text)
