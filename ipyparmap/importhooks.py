"""Run a function right after a module is first imported (layer: bottom; stdlib only).

ipyparmap adapts a few modules the user imports without importing them itself: in a
worker, IPython's display functions and ``matplotlib.pyplot.show`` (process/capture.py);
in the kernel, pandas gets the ``.parmap`` accessors (frames/__init__.py). A hook must
run after the module's own code and before anyone can copy its names with ``from ...
import``, so it wraps the module's loader: `AfterImport` is a ``sys.meta_path`` finder
that finds nothing itself; for a watched name it asks the other finders for the spec and
has the loader run the hook right after it executed the module. A hook that raises never
breaks the user's import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

Hook = Callable[[ModuleType], Any]


class AfterImport:
    """The finder: ``hooks`` maps module names to what to run once each is imported;
    ``once``: forget a name after its first import, and leave ``sys.meta_path`` when
    no name is left."""

    def __init__(self, hooks: dict[str, Hook], once: bool = False):
        self.hooks = dict(hooks)
        self.once = once

    def install(self) -> AfterImport:
        """Go first on ``sys.meta_path``; run the hooks of modules imported already."""
        sys.meta_path.insert(0, self)
        for name, hook in list(self.hooks.items()):
            module = sys.modules.get(name)
            if module is not None:
                if self.once:
                    self._forget(name)
                _run_quietly(hook, module)
        return self

    def add(self, name: str, hook: Hook) -> None:
        """Watch ``name`` too; run ``hook`` at once if it is imported already."""
        module = sys.modules.get(name)
        if module is not None and self.once:
            _run_quietly(hook, module)
            return
        self.hooks[name] = hook
        if module is not None:
            _run_quietly(hook, module)

    def remove(self) -> None:
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        hook = self.hooks.get(name)
        if hook is None:
            return None
        if self.once:
            self._forget(name)
        spec = _spec_from_the_others(self, name, path, target)
        if spec is None:
            return None
        run = getattr(spec.loader, "exec_module", None)
        if run is None:  # an old-style loader: nothing to wrap
            return spec

        def exec_module(module: ModuleType) -> None:
            run(module)
            _run_quietly(hook, module)

        try:
            spec.loader.exec_module = exec_module
        except Exception:  # a loader that takes no attributes: no hook, a normal import
            pass
        return spec

    def invalidate_caches(self) -> None:
        pass

    def _forget(self, name: str) -> None:
        self.hooks.pop(name, None)
        if not self.hooks:
            self.remove()


def _spec_from_the_others(me: AfterImport, name: str, path: Any, target: Any) -> Any:
    for finder in list(sys.meta_path):
        find = getattr(finder, "find_spec", None)
        if finder is me or find is None:
            continue
        spec = find(name, path, target)
        if spec is not None:
            return spec
    return None


def _run_quietly(hook: Hook, module: ModuleType) -> None:
    try:
        hook(module)
    except Exception:  # never break the user's import for our sake
        pass
