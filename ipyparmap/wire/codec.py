"""The pickling both ends share: cloudpickle, loaded on first use (layer: wire).

Why cloudpickle for everything: functions, lambdas and classes defined in a notebook or
in ``__main__`` cannot be pickled by reference (a spawned worker has no such
``__main__``), so cloudpickle pickles them by value. For plain data it is as fast as
``pickle`` (it subclasses the C pickler), and results that are instances of such classes
come back as instances of the parent's own class.

cloudpickle is imported on first use: ``import ipyparmap`` stays light.
"""

from __future__ import annotations

from typing import Any

PROTOCOL = 5
# Exceptions raised while pickling that mean "this object can't be pickled". SystemExit
# is here because a __reduce__ that calls sys.exit() must not end the caller's program;
# KeyboardInterrupt is not, so the user can still interrupt a long pickling.
PICKLING_ERRORS = (Exception, SystemExit)

_cloudpickle = None


def cloudpickle_module():
    """The cloudpickle module, imported the first time it is wanted."""
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle

        _cloudpickle = cloudpickle
    return _cloudpickle


def dumps(obj: Any) -> bytes:
    return cloudpickle_module().dumps(obj, protocol=PROTOCOL)


def loads(blob: bytes) -> Any:
    import pickle

    return pickle.loads(blob)


def error_text(error: BaseException) -> str:
    """What went wrong, for a message: ``TypeError``'s own text, else ``Name: text``."""
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if not isinstance(error, TypeError) else text
