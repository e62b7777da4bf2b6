"""Background runs: ``parmap_async`` returns a `Run` at once (layer: engine).

A Run owns one thread that drives a Runner to the end, so the notebook stays free.
The thread starts with a copy of the caller's context variables: ipykernel keeps the
"current cell" in a ContextVar, so worker output printed by the run goes to the cell
that started it, not to whatever cell runs later.

A Run is a ``concurrent.futures.Future`` look-alike (``done``, ``result``,
``exception``, ``cancel``, ``add_done_callback``), awaitable (``await run`` in a
kernel), with the live ``progress`` model and a snapshot of the ``results`` so far.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections.abc import Callable
from typing import Any

from ipyparmap.engine.run import Runner
from ipyparmap.errors import Cancelled
from ipyparmap.results import Results


class Run:
    """A map running in the background. Create it with `parmap_async`."""

    def __init__(self, runner: Runner, on_finish: Callable[[Results], None] | None = None):
        self._runner = runner
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._on_finish = on_finish
        self._cancel_asked = False
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._main,), name="ipyparmap-run", daemon=True
        )
        self._future.set_running_or_notify_cancel()
        self._thread.start()

    def _main(self) -> None:
        try:
            results = self._runner.results()
        except BaseException as exc:  # handed to whoever asks for the result
            partial = getattr(exc, "results", None)
            if self._on_finish is not None and partial is not None:
                self._on_finish(partial)
            self._future.set_exception(exc)
        else:
            if self._on_finish is not None:
                self._on_finish(results)
            self._future.set_result(results)

    # -- the Future interface -------------------------------------------------------------
    def done(self) -> bool:
        return self._future.done()

    def running(self) -> bool:
        return not self._future.done()

    def cancelled(self) -> bool:
        """True when the run ended because it was cancelled."""
        return self._future.done() and isinstance(self._future.exception(), Cancelled)

    def cancel(self) -> bool:
        """Stop the run (within ~0.1 s); finished results are kept. False if already done."""
        if self._future.done():
            return False
        self._cancel_asked = True
        self._runner.cancel()
        return True

    def result(self, timeout: float | None = None) -> Results:
        """Wait for the Results. Raises what the run raised (``pm.Cancelled`` after
        ``cancel()``, ``TaskError`` ...), or ``concurrent.futures.TimeoutError``."""
        return self._future.result(_check_timeout(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(_check_timeout(timeout))

    def add_done_callback(self, fn: Callable[[Run], Any]) -> None:
        """Call ``fn(run)`` when the run ends (at once if it has ended)."""
        self._future.add_done_callback(lambda _future: fn(self))

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self._future).__await__()

    # -- live views ---------------------------------------------------------------------
    @property
    def progress(self):
        """The live progress model (counts, rate, ETA, per-worker state)."""
        return self._runner.progress

    @property
    def results(self) -> Results:
        """The results so far: finished values; unfinished slots hold ``pm.PENDING``."""
        if self._future.done() and self._future.exception() is None:
            return self._future.result()
        return self._runner.snapshot()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run's thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __repr__(self) -> str:
        progress = self._runner.progress
        done = f"{progress.done}/{progress.total if progress.total is not None else '?'} done"
        if not self._future.done():
            state = "cancelling" if self._cancel_asked else "running"
        elif self.cancelled():
            state = "cancelled"
        elif self._future.exception() is not None:
            state = f"failed ({type(self._future.exception()).__name__})"
        else:
            state = "finished"
        return f"<Run {state}: {done}, {progress.failed} failed>"


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(
            f"timeout must be a non-negative number of seconds or None, got {timeout!r}"
        )
    return timeout
