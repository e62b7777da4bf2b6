"""Whether a function would pickle as last time, without pickling it (layer: wire).

Pickling a notebook function with cloudpickle costs 30-60 µs even for ``lambda x: x*x``
(by value: code object, globals, closure), which is a sixth of a small warm call. A
*fingerprint* is a tuple of objects, compared by identity, that determines that pickle
completely: the function, its code, defaults, annotations, closure contents, the value
of every global name its code mentions (recursively for functions it calls), and the
number of imported modules (cloudpickle records which submodules of the modules used are
imported, for the worker to import them too). It exists only when every one of those
values is immutable (numbers, strings, bytes, None, tuples and frozensets of these), a
module or class that is pickled by reference, a builtin, or a function that itself has a
fingerprint. Anything mutable (a list, a dict, an array, a class defined in the
notebook, an instance) means "no fingerprint": such a function is pickled on every
call, since its pickle could change without any name being rebound.

Below serialize and localmodules in the wire layer: what "pickled by reference" means is
cloudpickle's business and localmodules' (`by_reference`), so the caller passes that
test in.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

#: Exact types whose values can't change in place.
_ATOMIC = frozenset({int, float, complex, bool, str, bytes, type(None), type(Ellipsis)})
#: Give up on functions that reach more objects than this (the pickle is not cheap to
#: skip checking, and deep graphs are where surprises live).
MAX_PARTS = 200
#: How deep to follow functions that call functions.
MAX_DEPTH = 4

_MISSING = object()  # a global name not defined (yet): defining it changes the pickle
#: Module globals cloudpickle sends with every function by value.
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")


class _Unstable(Exception):
    """Internal: something reachable could change without being rebound."""


def fingerprint(func: Any, by_reference: Callable[[Any], bool]) -> tuple | None:
    """A tuple to compare (element by element, with ``is``) with a later one, or None
    when ``func``'s pickle can't be vouched for this way.

    ``by_reference(obj)`` says whether a module or class is pickled by reference (its
    name only), so its contents don't matter.
    """
    # Any import since changes it: cloudpickle also records which submodules of the
    # modules a function uses are imported (the worker imports them too).
    parts: list = [len(sys.modules)]
    try:
        _function(func, parts, by_reference, set(), 0)
    except _Unstable:
        return None
    return tuple(parts)


def same(old: tuple, new: tuple) -> bool:
    """Whether two fingerprints are identical, part for part (the module count, a
    number made afresh each time, by value)."""
    return (
        len(old) == len(new)
        and old[0] == new[0]
        and all(a is b for a, b in zip(old[1:], new[1:], strict=True))
    )


def _function(func, parts: list, by_reference, seen: set, depth: int) -> None:
    if type(func) is not types.FunctionType or depth > MAX_DEPTH:
        raise _Unstable
    parts.append(func)
    if id(func) in seen:  # recursion: its parts are in already
        return
    seen.add(id(func))
    if func.__dict__ or func.__kwdefaults__:  # mutable dicts pickled along
        raise _Unstable
    code = func.__code__
    parts += (code, func.__name__, func.__qualname__, func.__module__, func.__doc__)
    _value(func.__defaults__, parts, by_reference, seen, depth)
    for name, annotation in func.__annotations__.items():  # a dict: may change in place
        parts.append(name)
        _value(annotation, parts, by_reference, seen, depth)
    for cell in func.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell (a name not assigned yet)
            contents = _MISSING
        _value(contents, parts, by_reference, seen, depth)
    namespace = func.__globals__
    for name in _BASE_GLOBALS + global_names(code):
        _value(namespace.get(name, _MISSING), parts, by_reference, seen, depth)
    if len(parts) > MAX_PARTS:
        raise _Unstable


def _value(value, parts: list, by_reference, seen: set, depth: int) -> None:
    kind = type(value)
    if kind in _ATOMIC or value is _MISSING:
        parts.append(value)
    elif kind is tuple or kind is frozenset:
        parts.append(value)  # the same object can't hold other elements later...
        for element in value:  # ...but its elements must not change either
            _value(element, parts, by_reference, seen, depth)
    elif kind is types.FunctionType:
        _function(value, parts, by_reference, seen, depth + 1)
    elif kind is types.BuiltinFunctionType:  # len, math.sqrt; not [].append (bound)
        owner = value.__self__
        if owner is not None and not (type(owner) is types.ModuleType and by_reference(owner)):
            raise _Unstable
        parts.append(value)
    elif (kind is types.ModuleType or isinstance(value, type)) and by_reference(value):
        parts.append(value)
    else:
        raise _Unstable


_names_of: dict = {}  # code object -> global names it and its nested code mention


def global_names(code: types.CodeType) -> tuple:
    """The names ``code`` and the code nested in it look up (globals, and attribute
    names too, as cloudpickle counts them), sorted; cached per code object."""
    names = _names_of.get(code)
    if names is None:
        found: set[str] = set()
        stack = [code]
        while stack:
            current = stack.pop()
            found.update(current.co_names)
            stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
        names = tuple(sorted(found))
        if len(_names_of) > 1024:  # notebooks make new code objects all day
            _names_of.clear()
        _names_of[code] = names
    return names
