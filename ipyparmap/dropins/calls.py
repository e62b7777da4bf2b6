"""Callable wrappers that travel to workers for the drop-in classes (layer: api).

They are plain picklable objects (this module imports nothing, so a worker can load it
when it unpickles one), so a notebook-defined function inside one is still pickled by
value by cloudpickle.
"""

from __future__ import annotations

from typing import Any

# Tokens of pools whose initializer already ran in this process.
_initialized: set = set()


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
            self.initializer(*self.initargs)
            _initialized.add(self.token)
        if self.mode == "one":
            return self.func(item)
        if self.mode == "star":
            return self.func(*item)
        args, kwargs = item
        return self.func(*args, **kwargs)
