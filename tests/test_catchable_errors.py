"""errors="raise": the TaskError is also of the item's own exception type, where it can be.

``except FileNotFoundError:`` around ``pm.parmap`` catches a worker's FileNotFoundError;
the error is still a TaskError with ``.failure``, ``.results`` and the remote traceback.
"""

from __future__ import annotations

import builtins
import json
import pickle
import subprocess

import pytest
from conftest import notebook_function

import ipyparmap as pm
from ipyparmap import errors
from ipyparmap.errors import RemoteException, TaskError, task_error
from ipyparmap.results import Failure

pytestmark = pytest.mark.usefixtures("no_leaks")


def _raise_in_worker(source: str, name: str = "f", **namespace):
    """Run a notebook-style function over range(3) with errors="raise" (item 1 fails)."""
    func = notebook_function(source, name, **namespace)
    with pytest.raises(BaseException) as info:
        pm.parmap(func, range(3), workers=2, progress=False)
    return info.value


# --------------------------------------------------------------------- through workers
def test_a_workers_file_not_found_error_is_caught_by_its_own_type():
    def f(x):
        if x == 1:
            with open("/nonexistent/ipyparmap/data.txt"):
                pass
        return x

    try:
        pm.parmap(f, range(3), workers=2, progress=False)
    except FileNotFoundError as error:
        caught = error
    else:
        pytest.fail("no FileNotFoundError was raised")
    assert isinstance(caught, TaskError) and isinstance(caught, OSError)
    assert caught.errno == 2 and caught.filename == "/nonexistent/ipyparmap/data.txt"
    assert caught.failure.index == 1 and caught.failure.kind == "error"
    assert caught.results[0] == 0 and isinstance(caught.results[1], Failure)
    assert str(caught).startswith("item 1 (1) error: FileNotFoundError(")
    assert type(caught.__cause__) is FileNotFoundError  # the rebuilt remote exception
    assert "open(" in caught.__cause__.__cause__.tb  # and the worker's traceback
    # IPython shows it as before: a TaskError header, the worker's traceback
    rendered = "\n".join(caught._render_traceback_())
    assert "TaskError" in rendered and "Traceback in worker" in rendered
    assert type(caught).__name__ == "TaskError"
    assert type(caught).__qualname__ == "TaskError[FileNotFoundError]"


def test_value_and_key_errors_keep_their_arguments():
    error = _raise_in_worker(
        """
        def f(x):
            if x == 1:
                {}["missing-key"]
            return x
        """
    )
    assert isinstance(error, KeyError) and isinstance(error, TaskError)
    assert error.args == ("missing-key",)  # except KeyError as e: e.args[0] is the key
    assert "item 1 (1) error: KeyError" in str(error)
    error = _raise_in_worker(
        """
        def f(x):
            return int("seven") if x == 1 else x
        """
    )
    assert isinstance(error, ValueError) and isinstance(error, TaskError)


def test_a_notebook_exception_class_is_caught_by_the_notebooks_own_class():
    # a class defined in a notebook cell is pickled by value; cloudpickle gives the
    # class object back when its instance comes home, so `except` in the notebook works
    ns = {"__name__": "__main__"}
    exec(
        "class BadRow(Exception):\n"
        "    def __init__(self, row, why):\n"
        "        super().__init__(row, why)\n"
        "        self.row = row\n"
        "    def __str__(self):\n"
        "        return f'row {self.row}: {self.args[1]}'\n"
        "def f(x):\n"
        "    if x == 1:\n"
        "        raise BadRow(x, 'negative price')\n"
        "    return x\n",
        ns,
    )
    for _ in range(2):  # the same class every call (the cache is per type)
        with pytest.raises(ns["BadRow"]) as info:
            pm.parmap(ns["f"], range(3), workers=2, progress=False)
        assert isinstance(info.value, TaskError)
        assert info.value.row == 1 and info.value.args == (1, "negative price")
        assert "row 1: negative price" in str(info.value)


def test_an_exception_whose_init_does_not_fit_its_args_is_a_plain_task_error():
    # pickle rebuilds an exception as cls(*args): this one cannot come back, so the
    # parent only knows its name and message (a RemoteException), not its class
    ns = {"__name__": "__main__"}
    exec(
        "class BadRow(Exception):\n"
        "    def __init__(self, row, why):\n"
        "        super().__init__(f'row {row}: {why}')\n"
        "def f(x):\n"
        "    if x == 1:\n"
        "        raise BadRow(x, 'negative price')\n"
        "    return x\n",
        ns,
    )
    with pytest.raises(TaskError) as info:
        pm.parmap(ns["f"], range(3), workers=2, progress=False)
    assert type(info.value) is TaskError
    assert isinstance(info.value.__cause__, RemoteException)
    assert "BadRow: row 1: negative price" in str(info.value)


def test_imap_raises_the_same_catchable_error():
    def f(x):
        if x == 2:
            raise PermissionError(13, "denied", "/etc/shadow")
        return x

    seen = []
    with pytest.raises(PermissionError) as info:
        for value in pm.imap(f, range(5), workers=2, progress=False):
            seen.append(value)
    assert isinstance(info.value, TaskError) and info.value.filename == "/etc/shadow"
    assert seen in ([], [0], [0, 1])  # in order, up to the failure


def test_system_exit_and_keyboard_interrupt_in_an_item_stay_a_plain_task_error():
    for raised in ("SystemExit(3)", "KeyboardInterrupt()"):
        error = _raise_in_worker(
            f"""
            def f(x):
                if x == 1:
                    raise {raised}
                return x
            """
        )
        assert type(error) is TaskError, raised  # not the kernel's own exit or interrupt
        assert not isinstance(error, (SystemExit, KeyboardInterrupt))


def test_stop_iteration_stays_a_plain_task_error_so_imap_keeps_working():
    def f(x):
        if x == 1:
            raise StopIteration("done early")
        return x

    with pytest.raises(TaskError) as info:
        list(pm.imap(f, range(3), workers=2, progress=False))
    assert type(info.value) is TaskError  # a StopIteration would end imap's generator
    assert "StopIteration" in str(info.value)


def test_an_exception_that_cannot_come_back_gives_a_plain_task_error():
    def f(x):
        if x == 1:

            class Unpicklable(Exception):
                def __reduce__(self):
                    raise TypeError("no pickling")

            raise Unpicklable("boom")
        return x

    error = _raise_in_worker("def f(x):\n    return g(x)\n", g=f)
    assert type(error) is TaskError
    assert isinstance(error.__cause__, RemoteException)


def test_crashes_timeouts_and_serialization_errors_are_unchanged():
    import helpers

    with pytest.raises(pm.WorkerCrashed) as crashed:
        pm.parmap(helpers.act, [0, ("run", "_exit")], workers=1, progress=False)
    assert type(crashed.value) is pm.WorkerCrashed
    with pytest.raises(pm.SerializationError) as unpicklable:
        pm.parmap(helpers.act, [("result-pickle", "raise")], workers=1, progress=False)
    assert type(unpicklable.value) is pm.SerializationError


# --------------------------------------------------------------------- the rule, type by type
def _failure(exc: BaseException) -> Failure:
    return Failure(4, "item", "error", exc, "Traceback...\n", 123)


def _builtin_exception_types():
    return sorted(
        (t for t in vars(builtins).values() if isinstance(t, type) and issubclass(t, Exception)),
        key=lambda t: t.__name__,
    )


@pytest.mark.parametrize("kind", _builtin_exception_types(), ids=lambda t: t.__name__)
def test_every_builtin_exception_but_stop_iteration_is_mixed(kind):
    special = {
        "ExceptionGroup": ("message", [ValueError("inner")]),
        "UnicodeDecodeError": ("utf-8", b"\xff", 0, 1, "invalid start byte"),
        "UnicodeEncodeError": ("ascii", "\xe9", 0, 1, "not ascii"),
        "UnicodeTranslateError": ("\xe9", 0, 1, "cannot"),
    }
    exc = kind(*special.get(kind.__name__, ("message",)))
    error = task_error("item 4 error", _failure(exc), None, exc)
    assert isinstance(error, TaskError)
    if kind in (StopIteration, StopAsyncIteration):
        assert type(error) is TaskError
        return
    assert isinstance(error, kind), kind
    assert str(error) == "item 4 error"
    assert error.failure.index == 4
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == "item 4 error"


def test_exceptions_of_other_kinds_of_type():
    class Slotted(Exception):
        __slots__ = ("code",)

    class Final(Exception):
        def __init_subclass__(cls, **kwargs):
            raise TypeError("Final cannot be subclassed")

    class NeedsArgs(Exception):
        def __new__(cls, a, b):
            return super().__new__(cls, a, b)

    slotted = Slotted("x")
    slotted.code = 7
    error = task_error("m", _failure(slotted), None, slotted)
    assert isinstance(error, Slotted) and error.code == 7
    final = Final("x")
    assert type(task_error("m", _failure(final), None, final)) is TaskError
    needs = NeedsArgs(1, 2)
    error = task_error("m", _failure(needs), None, needs)
    assert isinstance(error, NeedsArgs) and error.args == (1, 2)
    # C types from the standard library
    for exc in (
        json.JSONDecodeError("bad", "{x", 1),
        subprocess.CalledProcessError(2, ["ls"]),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        SyntaxError("bad", ("f.py", 3, 1, "x +* 2", 3, 2)),
        MemoryError(),
    ):
        error = task_error("m", _failure(exc), None, exc)
        assert isinstance(error, type(exc)) and isinstance(error, TaskError), exc
    assert error.__class__.__mro__[1] is MemoryError  # its first base must be MemoryError's
    decode = task_error("m", _failure(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x")), None,
                        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"))  # fmt: skip
    assert decode.encoding == "utf-8" and decode.start == 0 and str(decode) == "m"
    # never a kernel-level exit or interrupt, nor ours
    for exc in (SystemExit(1), KeyboardInterrupt(), GeneratorExit(), RemoteException("X", "y")):
        assert type(task_error("m", _failure(exc), None, exc)) is TaskError


def test_one_class_per_type():
    a = task_error("a", None, None, ValueError(1))
    b = task_error("b", None, None, ValueError(2))
    assert type(a) is type(b)
    assert errors._mixed_classes[ValueError] is type(a)
