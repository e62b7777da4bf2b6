"""The caller's own modules: which they are, and the copies of them workers hold (layer: wire).

A module of the user's own files (next to the notebook, on ``sys.path`` by hand, an
editable install) is user code: a function of it is pickled by value
(`register_local_modules`), never by name, and a warm worker must never run a copy older
than the caller's (the module table: `module_table` in the caller, `install_modules`
in the worker). Installed modules and the standard library go by name
(`by_reference`), and are what the template process may preload (`installed_roots`).
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import sys
import threading
import time
import types
from typing import Any

from ipyparmap.wire.codec import PICKLING_ERRORS, cloudpickle_module, dumps, error_text, loads
from ipyparmap.wire.fingerprint import global_names


# -- which modules are the caller's own -----------------------------------------------------------
def by_reference(obj: Any) -> bool:
    """Whether cloudpickle pickles a module or class by its name only (so what it holds
    is not part of the pickle): importable, and not one of the user's own modules."""
    if isinstance(obj, types.ModuleType):
        name, module = obj.__name__, obj
    else:
        name = getattr(obj, "__module__", None)
        module = sys.modules.get(name) if isinstance(name, str) else None
        if module is None or _lookup(module, obj.__qualname__) is not obj:
            return False
    if name == "__main__" or sys.modules.get(name) is not module:
        return False
    module_of_cloudpickle = getattr(cloudpickle_module(), "cloudpickle", None)
    registered = getattr(module_of_cloudpickle, "_is_registered_pickle_by_value", None)
    if registered is None or registered(module) or name in _by_value:
        return False
    return not _remembered_is_local(name, module)


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


_by_value: set[str] = set()
_installed: tuple[str, ...] | None = None


def installed_roots() -> tuple[str, ...]:
    """Folders of installed code: the standard library and site-packages (real paths,
    each ending in a separator).

    Named by ``site`` (loaded at every start), not by ``sysconfig.get_paths()``, which
    names the same folders but loads the interpreter's build configuration for it:
    ~0.25 MB more in a script's first call."""
    global _installed
    if _installed is None:
        import site

        roots = {os.path.dirname(os.__file__)}
        roots.update(getattr(site, "getsitepackages", list)())
        if hasattr(site, "getusersitepackages"):
            roots.add(site.getusersitepackages())
        _installed = tuple(os.path.realpath(r) + os.sep for r in roots if r)
    return _installed


def is_local_module(module: types.ModuleType) -> bool:
    """A module of the user's own source files (next to the notebook, on sys.path by
    hand, an editable install), as opposed to the standard library or installed ones."""
    name = getattr(module, "__name__", "")
    if name == "__main__" or name.partition(".")[0] == "ipyparmap":
        return False
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):  # builtins, C extensions
        return False
    folder, name = os.path.split(path)
    real = _real_folders.get(folder)
    if real is None:  # one realpath per folder: a kernel's first scan sees ~1,000 modules
        real = os.path.join(os.path.realpath(folder), "")
        if os.path.isabs(folder):  # a relative one depends on the working directory
            _real_folders[folder] = real
    real_path = os.path.realpath(path) if os.path.islink(path) else real + name
    return not real_path.startswith(installed_roots())


_real_folders: dict[str, str] = {}  # folder -> its real path, with a trailing separator


def _is_local(name: str, module: Any) -> bool:
    """Whether ``sys.modules[name]`` is a module of the user's own files."""
    return isinstance(module, types.ModuleType) and _remembered_is_local(name, module)


def _remembered_is_local(name: str, module: Any) -> bool:
    """`is_local_module` of ``sys.modules[name]``, remembered while it is that object."""
    known = _local_modules.get(name)
    if known is None or known[0] is not module:
        known = _local_modules[name] = (module, is_local_module(module))
    return known[1]


_local_modules: dict = {}  # module name -> (module, is_local_module(module))


def register_local_modules(func: Any) -> list[str]:
    """Have cloudpickle pickle the user's own modules that ``func`` uses by value.

    A warm worker imported such a module once; if the file was edited (and reloaded in
    the kernel) since, pickling by reference would run the stale copy. By value, the
    worker always runs the code the caller has.
    """
    added = []
    for obj in reachable(func):
        module = (
            obj
            if isinstance(obj, types.ModuleType)
            else sys.modules.get(getattr(obj, "__module__", None) or "")
        )
        if module is None or module.__name__ in _by_value or not is_local_module(module):
            continue
        cloudpickle_module().register_pickle_by_value(module)
        _by_value.add(module.__name__)
        added.append(module.__name__)
    return added


def reachable(func: Any, depth: int = 0):
    """``func`` and the functions, classes and modules it refers to (a few levels deep)."""
    yield func
    if depth >= 2:
        return
    inner = getattr(func, "__func__", None) or getattr(func, "func", None)
    if inner is not None and inner is not func:
        yield from reachable(inner, depth + 1)
    if isinstance(func, functools.partial):
        # the functions a partial is given, also inside a tuple (the pandas accessors
        # send partial(run_piece, PieceJob(func=the user's function, ...)))
        for arg in (*func.args, *func.keywords.values()):
            for ref in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(ref, (types.FunctionType, types.MethodType, functools.partial)):
                    yield from reachable(ref, depth + 1)
    code = getattr(func, "__code__", None)
    if code is None:
        return
    refs = [cell.cell_contents for cell in (func.__closure__ or ()) if _cell_full(cell)]
    glb = getattr(func, "__globals__", {})
    refs += [glb[name] for name in global_names(code) if name in glb]
    for ref in refs:
        if isinstance(ref, (types.FunctionType, types.MethodType, functools.partial)):
            yield from reachable(ref, depth + 1)
        elif isinstance(ref, (type, types.ModuleType)):
            yield ref


def _cell_full(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


# -- the versions of the local modules the caller has loaded ---------------------------------
# A warm worker keeps what it imported. Rule: a worker runs the local modules (as
# is_local_module says) the caller has loaded in the version the caller has loaded, at
# the time of each call; modules the caller never imported are imported from disk as
# usual. The caller sends each worker, when they change, the modules' version numbers
# (`ModuleTable.changes`): a new number when the caller imports a module anew or
# reloads it (importlib.reload, %autoreload: a new ``__spec__``), and when the file
# changes on disk while the caller keeps the code it loaded. A worker drops its copy of
# a module whose number changed (`install_modules`), so its next import reads the file,
# which holds the caller's code, unless the file changed since the caller loaded it:
# then the caller's copy goes by value, pickled from the caller's module object.


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _compiled_from(spec: Any, stamp: tuple[int, int]) -> bool:
    """Whether the module's cached bytecode says it was compiled from the file as it is
    now (``stamp``). Importing a module leaves its bytecode matching the source it read,
    so bytecode of another state means the file changed after the caller imported it
    (in the second and size granularity of the bytecode header). True when no bytecode
    can tell (none written, unreadable, hash-based)."""
    cached = getattr(spec, "cached", None)
    if not isinstance(cached, str):
        return True
    try:
        with open(cached, "rb") as file:
            head = file.read(16)
    except OSError:
        return True
    from importlib.util import MAGIC_NUMBER

    if len(head) < 16 or head[:4] != MAGIC_NUMBER or head[4:8] != bytes(4):
        return True
    seconds, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
    return (seconds, size) == ((stamp[0] // 10**9) & 0xFFFFFFFF, stamp[1] & 0xFFFFFFFF)


_next_version = itertools.count(1).__next__


class _Version:
    """One local module as the caller loaded it: the module and spec objects (a reload
    makes a new spec), its file's stamp then, and whether the file changed since."""

    __slots__ = ("file", "module", "moved", "number", "spec", "stamp")

    def __init__(self, module: types.ModuleType):
        self.module = module
        self.spec = getattr(module, "__spec__", None)
        self.file = module.__file__
        self.stamp = _file_stamp(self.file)
        self.moved = self.stamp is None or not _compiled_from(self.spec, self.stamp)
        self.number = _next_version()


class ModuleTable:
    """The local modules the caller had loaded at one moment (`module_table`):
    ``numbers`` (name -> version number) and ``moved`` (name -> module: those whose file
    no longer holds the caller's code, which go by value)."""

    __slots__ = ("_values", "moved", "numbers")

    def __init__(self, numbers: dict, moved: dict):
        self.numbers, self.moved = numbers, moved
        self._values: bytes | None = None

    def changes(self, held: dict) -> tuple[dict, bytes | None]:
        """What a worker holding the versions ``held`` (name -> number) must be told:
        ``(name -> new number, or None for a module the caller no longer has; the
        pickled copies of the moved ones among them, or None)``."""
        numbers = self.numbers
        changes = {name: number for name, number in numbers.items() if held.get(name) != number}
        changes.update((name, None) for name in held if name not in numbers)
        values = self.values() if any(name in self.moved for name in changes) else None
        return changes, values

    def values(self) -> bytes | None:
        """The moved modules, pickled by value once (None if none could be)."""
        if self._values is None:
            self._values = _pickle_modules(self.moved) or b""
        return self._values or None


EMPTY_MODULES = ModuleTable({}, {})  # what a new worker holds
_versions: dict[str, _Version] = {}
_table = EMPTY_MODULES
_scanned = -1  # len(sys.modules) at the last look for new local modules
_table_lock = threading.Lock()
_warned: set[int] = set()  # version numbers whose module could not be pickled
#: The files are looked at again after this many times the last look took (a ``stat``
#: per module: ~1.6 µs each here), so the looks cost at most ~1% of back-to-back calls.
FILE_CHECK_SPACING = 100
_files_due = float("-inf")  # time.monotonic() from which the files are looked at again


def module_table(check_files: bool = False) -> ModuleTable:
    """The local modules the caller has loaded, now: the same table as last time when
    nothing changed. Per call: a look at ``len(sys.modules)`` (all of it is looked
    through only when that changed), per local module two identity checks, and a
    ``stat`` of each module's file unless the last look was a moment ago (see
    `FILE_CHECK_SPACING`: a file edited since is noticed at the next call after that)
    and ``check_files`` does not insist."""
    global _table, _scanned, _files_due
    modules = sys.modules
    with _table_lock:
        changed = False
        if len(modules) != _scanned:
            _scanned = len(modules)
            for name, module in list(modules.items()):
                if name not in _versions and _is_local(name, module):
                    _versions[name] = _Version(module)
                    changed = True
        started = time.monotonic()
        check_files = check_files or started >= _files_due
        if not changed and not check_files and _same_modules(modules):
            return _table  # the usual call: nothing imported, reloaded or due a look
        for name, version in list(_versions.items()):
            module = modules.get(name)
            spec = getattr(module, "__spec__", None)
            if module is not version.module or spec is not version.spec:
                changed = True  # imported anew, reloaded, or gone
                if module is not None and _is_local(name, module):
                    _versions[name] = _Version(module)
                else:
                    del _versions[name]
            elif check_files and not version.moved and _file_stamp(version.file) != version.stamp:
                version.moved = True  # edited, not reloaded: the file is not the caller's code
                version.number = _next_version()
                changed = True
        if check_files:
            _files_due = started + FILE_CHECK_SPACING * (time.monotonic() - started)
        if changed:
            numbers = {name: version.number for name, version in _versions.items()}
            moved = {name: v.module for name, v in _versions.items() if v.moved}
            _table = ModuleTable(numbers, moved)
            _identities[:] = [
                tuple(_versions),
                [v.module for v in _versions.values()],
                [id(v.spec) for v in _versions.values()],  # a reload's spec is == the old one
            ]
        return _table


_identities: list = [(), [], []]  # names, modules, id(spec) of _versions when _table was made
_spec_of = operator.attrgetter("__spec__")


def _same_modules(modules: dict) -> bool:
    """Whether every module of the table is still the very module, with the very spec
    (no reload): a few passes in C, ~0.5 µs for ten modules."""
    names, known, specs = _identities
    found = list(map(modules.get, names))
    if found != known:
        return False
    try:
        return list(map(id, map(_spec_of, found))) == specs
    except AttributeError:  # someone deleted a __spec__: let the slow path look
        return False


def _pickle_modules(modules: dict) -> bytes | None:
    """``{name: module}`` pickled by value (the caller's code, not the file's); a module
    that cannot be is left out, with a warning: workers import its file instead."""
    cp = cloudpickle_module()
    for name, module in modules.items():
        try:
            cp.register_pickle_by_value(module)
            _by_value.add(name)
        except ValueError:  # left sys.modules meanwhile
            pass
    try:
        return dumps(modules)
    except PICKLING_ERRORS:
        pass
    good = {}
    for name, module in modules.items():
        try:
            dumps(module)
        except PICKLING_ERRORS as exc:
            version = _versions.get(name)
            if version is not None and version.number not in _warned:
                _warned.add(version.number)
                import warnings

                warnings.warn(
                    f"ipyparmap: {name} ({version.file}) changed on disk since this process "
                    f"imported it, and its loaded copy cannot be sent to the workers "
                    f"({error_text(exc)}): they import the file instead. Reload the module "
                    "(importlib.reload) to run the same code everywhere.",
                    stacklevel=2,
                )
        else:
            good[name] = module
    return dumps(good) if good else None


def install_modules(changes: dict, values: bytes | None, held: dict) -> None:
    """Worker side of `ModuleTable.changes`: drop each module whose version changed, so
    its next import reads the file (the caller's code), put in the caller's copies of
    the moved ones instead, and note the versions now held in ``held``."""
    import importlib

    for name, number in changes.items():
        _forget_module(sys.modules, name)
        if number is None:
            held.pop(name, None)
        else:
            held[name] = number
    if values is not None:
        try:
            copies = loads(values)
        except PICKLING_ERRORS as exc:  # never fatal: those modules come from their files
            copies = {}
            sys.__stderr__.write(
                f"ipyparmap worker: the caller's copies of {', '.join(sorted(changes))} could "
                f"not be loaded ({error_text(exc)}); importing their files instead\n"
            )
        for name, module in copies.items():
            if name in changes:
                sys.modules[name] = module
                parent, _, child = name.rpartition(".")
                if parent in sys.modules:
                    setattr(sys.modules[parent], child, module)
    importlib.invalidate_caches()


def _forget_module(modules: dict, name: str) -> None:
    old = modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if old is not None and parent in modules and getattr(modules[parent], child, None) is old:
        delattr(modules[parent], child)  # else "from parent import child" finds it again
