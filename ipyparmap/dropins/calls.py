"""Callable wrappers that travel to workers for the drop-in classes (layer: api).

They are plain picklable objects (this module imports nothing, so a worker can load it
when it unpickles one), so a notebook-defined function inside one is still pickled by
value by cloudpickle.
"""

from __future__ import annotations

from typing import Any

# Tokens of pools whose initializer already ran in this process.
_initialized: set = set()


def _is_parcel(initargs: tuple) -> bool:
    kind = type(initargs[0]) if len(initargs) == 1 else None
    return kind is not None and (kind.__module__, kind.__name__) == (
        "ipyparmap.dropins.handover", "Parcel",
    )  # fmt: skip


class PoolCall:
    """Call ``func`` for an item, after running the pool's ``initializer`` once per process.

    ``mode`` says how the item becomes arguments: ``"one"`` ``func(item)``, ``"star"``
    ``func(*item)``, ``"apply"`` ``func(*args, **kwargs)`` with ``item = (args, kwargs)``.
    """

    __slots__ = ("func", "initargs", "initializer", "mode", "token")

    def __init__(self, func, mode: str = "one", initializer=None, initargs=(), token=None):
        self.func = func
        self.mode = mode
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.token = token

    def __getstate__(self):
        return (self.func, self.mode, self.initializer, self.initargs, self.token)

    def __setstate__(self, state):
        self.func, self.mode, self.initializer, self.initargs, self.token = state

    def __call__(self, item: Any) -> Any:
        if self.initializer is not None and self.token not in _initialized:
            initargs = self.initargs
            if _is_parcel(initargs):  # pickled as for a spawned child: dropins/handover.py
                initargs = initargs[0].open()
            self.initializer(*initargs)
            _initialized.add(self.token)
        if self.mode == "one":
            return self.func(item)
        if self.mode == "star":
            return self.func(*item)
        args, kwargs = item
        return self.func(*args, **kwargs)


class ProcessCall:
    """Run a drop-in ``Process`` in its worker as ``multiprocessing`` runs a child.

    ``parcel`` (dropins/handover.py) opens to ``(target, args, kwargs)``, or to the
    ``Process`` object itself for a subclass overriding ``run()``. The worker takes the
    process's name and authkey; an uncaught exception's traceback, or the message of
    ``sys.exit("reason")``, is written to this process's own ``sys.stderr`` (which the
    target may have redirected); the call returns the exit code.
    """

    __slots__ = ("authkey", "name", "parcel")

    def __init__(self, name: str, authkey: bytes, parcel):
        self.name, self.authkey, self.parcel = name, authkey, parcel

    def __getstate__(self):
        return (self.name, self.authkey, self.parcel)

    def __setstate__(self, state):
        self.name, self.authkey, self.parcel = state

    def __call__(self, item: Any = None) -> int:
        import multiprocessing
        import sys
        import traceback

        me = multiprocessing.current_process()
        me.name = self.name
        code = 0
        try:
            what = self.parcel.open()
            me.authkey = self.authkey
            if isinstance(what, tuple):
                target, args, kwargs = what
                if target is not None:
                    target(*args, **kwargs)
            else:
                what.run()
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                sys.stderr.write(f"{exc.code}\n")
                code = 1
        except BaseException:
            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        return code
