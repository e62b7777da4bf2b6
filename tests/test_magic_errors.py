"""The magic's own errors: one clear line per mistake, and the right In[N] (issue 15).

Through IPython's InteractiveShell (``run_cell``, so what a user sees is what IPython
prints) and through a real kernel.
"""

from __future__ import annotations

import re

import pytest
from conftest import children

import ipyparmap as pm

IPython = pytest.importorskip("IPython")
from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    yield ip
    ip.run_line_magic("unload_ext", "ipyparmap")


@pytest.fixture
def ip(shell, no_leaks):
    shell.run_line_magic("config", "Parmap.workers = 2")
    yield shell
    for name in ("res", "g", "undefined_name"):
        shell.user_ns.pop(name, None)
    shell.run_line_magic("config", "Parmap.workers = None")


def shown(ip, capsys, source: str) -> str:
    """What IPython prints for a cell (stdout and stderr, colours removed)."""
    capsys.readouterr()
    ip.run_cell(source, store_history=True)
    out = capsys.readouterr()
    return ANSI.sub("", out.out + out.err).strip()


@pytest.mark.parametrize(
    ("source", "line"),
    [
        (
            "%%parmap x in 5\nx",
            "TypeError: EXPR '5' is not iterable (got int): give a list, a range, a "
            "generator or another iterable, e.g. %%parmap x in range(5)",
        ),
        (
            "res = %parmap len 5",
            "TypeError: EXPR '5' is not iterable (got int): give a list, a range, a "
            "generator or another iterable, e.g. res = %parmap f range(5)",
        ),
        (
            "%%parmap x in undefined_nam\nx",
            "NameError: name 'undefined_nam' is not defined (in the EXPR of %parmap: "
            "'undefined_nam'): define it in an earlier cell, or did you mean 'undefined_name'?",
        ),
        (
            "res = %parmap 42 [1, 2]",
            "TypeError: 42 is not callable (it is 42 (int)): %parmap FUNC EXPR maps a "
            "function over EXPR, e.g. res = %parmap len words",
        ),
        (
            "res = %parmap lambda: 1 [1, 2]",
            "TypeError: func <lambda>() cannot take one positional argument, but each item "
            "is passed as one (too many positional arguments); use star=True to unpack "
            "tuples into arguments",
        ),
        (
            "res = %parmap lambda x: (yield x) [1, 2]",
            "TypeError: func is a generator function: its results would be generators, "
            "which cannot be sent back from a worker; return list(...) instead",
        ),
        (
            "%%parmap x in range(3) -w 0\nx",
            "UsageError: -w/--workers must be a positive integer, got '0'",
        ),
    ],
)
def test_each_mistake_is_one_line_that_names_it_and_the_fix(ip, capsys, source, line):
    ip.user_ns["undefined_name"] = 1  # for the "did you mean"
    pm.shutdown()
    assert shown(ip, capsys, source) == line
    assert children() == []  # nothing started


def test_a_syntax_error_in_the_body_names_its_own_cell(ip, capsys):
    assert shown(ip, capsys, "1 + 1") == f"Out[{ip.execution_count - 1}]: 2"
    number = ip.execution_count  # the next cell's In[N]
    text = shown(ip, capsys, "%%parmap x in range(3)\ny = 1\nz = (\n")
    assert text.splitlines() == [
        f"UsageError: syntax error in the %%parmap body (Cell In[{number}], line 3): "
        "'(' was never closed",
        "    z = (",
        "        ^",
    ]
    number = ip.execution_count
    text = shown(ip, capsys, "%%parmap x in range(3)\nbreak\n")  # found compiling the tree
    assert text.splitlines() == [
        f"UsageError: syntax error in the %%parmap body (Cell In[{number}], line 2): "
        "'break' outside loop",
        "    break",
        "    ^^^^^",
    ]


def test_an_error_in_the_users_own_code_in_expr_keeps_its_traceback_from_the_cell(ip, capsys):
    ip.run_cell("def g():\n    return 1 / 0\n", store_history=True)
    number = ip.execution_count
    text = shown(ip, capsys, "%%parmap x in g()\nx")
    assert "ZeroDivisionError: division by zero" in text
    assert f"Cell In[{number}], line 1\n----> 1 %%parmap x in g()" in text  # EXPR, in the cell
    assert "return 1 / 0" in text  # and the user's function
    assert "magics/commands.py" not in text and "_evaluate" not in text  # not the magic's


def test_the_errors_keep_their_python_types(ip):
    with pytest.raises(TypeError) as info:
        ip.run_cell_magic("parmap", "x in 5", "x")
    assert type(info.value).__name__ == "TypeError"
    assert len(info.value._render_traceback_()) == 1
    with pytest.raises(NameError) as info:
        ip.run_cell_magic("parmap", "x in nowhere_defined", "x")
    assert info.value.name == "nowhere_defined"
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("parmap", "x in range(2)", "x +* 2")
    assert isinstance(info.value.__cause__, SyntaxError)


def test_a_name_error_deep_in_the_users_code_is_not_blamed_on_expr(ip):
    ip.run_cell("def g():\n    return missing_everywhere\n")
    with pytest.raises(NameError) as info:
        ip.run_cell_magic("parmap", "x in g()", "x")
    assert "in the EXPR" not in str(info.value)
    assert not hasattr(info.value, "_render_traceback_")  # a normal traceback: it is deep


# ------------------------------------------------------------------------ a real kernel
# (the ``kernel`` fixture of conftest.py: it skips without ipykernel)
def test_in_a_real_kernel_mistakes_are_one_line_and_cell_numbers_are_right(kernel):
    reply = kernel.run("%%parmap x in 5\nx")
    assert reply.status == "error" and reply.error["ename"] == "TypeError"
    lines = ANSI.sub("", reply.traceback).splitlines()
    assert lines == [
        "TypeError: EXPR '5' is not iterable (got int): give a list, a range, a generator "
        "or another iterable, e.g. %%parmap x in range(5)"
    ]
    counted = kernel.run("print(get_ipython().execution_count)")
    # IPython 9 counts the next cell while one runs: this cell is one less
    this_cell = int(counted.stdout) - 1
    kernel.run("1 + 1")
    reply = kernel.run("%%parmap x in range(3)\ny = (\n")
    assert (
        f"UsageError: syntax error in the %%parmap body (Cell In[{this_cell + 2}], line 2): "
        "'(' was never closed"
    ) in reply.stderr
    assert len(reply.stderr.strip().splitlines()) == 3  # the line, the source, the caret
    # a failing item still shows its TaskError, with the cell's line, as before
    reply = kernel.run("%%parmap x in range(3)\n10 // (x - 1)\n")
    assert reply.error["ename"] == "TaskError" and "10 // (x - 1)" in reply.traceback
