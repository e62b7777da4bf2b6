"""CPython's ``Lib/test/_test_multiprocessing.py`` with ipyparmap's names swapped in.

The standard library's suite builds its ``processes`` test classes from mixins whose
attributes (``Process``, ``Pool``, ``Queue``, ``Lock``...) are the names under test
(``ProcessesMixin``); here each generated class gets ipyparmap's instead, as
``import ipyparmap as multiprocessing`` would give them, under the spawn start method.
The attributes are set on each generated class, not on the mixin: a test's child process
gets the class by value (this module is not installed), and must see the same names.

Run by tests/test_stdlib_suites.py (``python run.py mp_swapped``); the differences
ipyparmap makes on purpose are listed in expected.py.
"""

from __future__ import annotations

from expected import MULTIPROCESSING, skip_differences
from sources import load

import ipyparmap

suite = load("_test_multiprocessing")

#: The names ``ProcessesMixin`` declares, taken from ipyparmap.
SWAPPED = (
    "Process", "current_process", "parent_process", "active_children", "Pool", "Pipe",
    "Queue", "JoinableQueue", "Lock", "RLock", "Semaphore", "BoundedSemaphore",
    "Condition", "Event", "Barrier", "Value", "Array", "RawValue", "RawArray",
)  # fmt: skip

if suite is not None:
    suite.install_tests_in_module_dict(globals(), "spawn", only_type="processes")
    for _cls in [c for c in globals().values() if getattr(c, "TYPE", None) == "processes"]:
        for _name in SWAPPED:
            _value = getattr(ipyparmap, _name)
            setattr(_cls, _name, _value if isinstance(_value, type) else staticmethod(_value))
        skip_differences(_cls, MULTIPROCESSING)
