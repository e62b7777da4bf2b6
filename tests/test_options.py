"""The run options are declared once, in ipyparmap.options.OPTIONS, and everything that
takes or describes them agrees with that table."""

from __future__ import annotations

import inspect
import re

import pytest

import ipyparmap as pm
from ipyparmap import options as O

# Keyword parameters of the API functions that are not run options.
NOT_OPTIONS = {"parmap_async": {"on_finish"}}


@pytest.mark.parametrize("func", [pm.parmap, pm.imap, pm.parmap_async])
def test_api_signatures_agree_with_the_table(func):
    """The signatures stay written out (IDEs and the docs read them); this keeps them true."""
    params = inspect.signature(func).parameters
    options = {
        name: p.default
        for name, p in params.items()
        if p.kind is p.KEYWORD_ONLY and name not in NOT_OPTIONS.get(func.__name__, ())
    }
    # Each default is a marker (api._Default: "not passed", so a %config default may
    # stand in) that reads as the table's default, in help() and here.
    given = {name: default.value for name, default in options.items()}
    declared = {o.name: o.default for o in O.OPTIONS if func.__name__ in o.apis}
    assert given == declared
    assert {name: repr(default) for name, default in options.items()} == {
        name: repr(value) for name, value in declared.items()
    }


def test_every_api_in_the_table_exists():
    for option in O.OPTIONS:
        assert option.apis and set(option.apis) <= set(O.API_FUNCTIONS), option.name


def test_parmap_docstring_documents_exactly_its_options():
    doc = inspect.getdoc(pm.parmap)
    args = doc.split("Args:")[1].split("Raises:")[0]
    documented = re.findall(r"^    (\w+):", args, flags=re.MULTILINE)
    assert documented == ["func", "iterable"] + [o.name for o in O.OPTIONS if "parmap" in o.apis]


def test_options_record_is_generated_from_the_table():
    assert O.Options._fields == tuple(o.name for o in O.OPTIONS)
    assert O.Options() == tuple(o.default for o in O.OPTIONS)
    assert O.check_options() == O.Options()


def test_check_options_is_keyword_only():
    with pytest.raises(TypeError):
        O.check_options(2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'worker'"):
        O.check_options(worker=2)
    options = O.check_options(workers=2, timeout=float("inf"), progress=True, max_memory="1KB")
    assert (options.workers, options.timeout, options.progress, options.max_memory) == (
        2,
        None,
        "auto",
        1024,
    )


def test_none_is_accepted_exactly_where_it_is_the_default():
    for option in O.OPTIONS:
        if option.default is None:
            assert option.validate(None) is None
        else:
            with pytest.raises((TypeError, ValueError), match=option.name):
                option.validate(None)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("workers", "0", "-w/--workers must be a positive integer, got '0'"),
        ("workers", "03", "-w/--workers must be a positive integer, got '03'"),
        ("chunksize", "1_000", "--chunksize must be a positive integer, got '1_000'"),
        ("errors", "ignore", "--errors must be one of: raise, collect; got 'ignore'"),
        ("timeout", "nan", "--timeout must be a positive number of seconds, got 'nan'"),
        ("retries", "-0", "--retries must be a non-negative integer, got '-0'"),
        ("backend", "spark", "--backend must be local, threads or dask, got 'spark'"),
        ("max_memory", "0", "--max-memory must be a positive size, got '0'"),
    ],
)
def test_flag_text_goes_through_the_same_check(name, text, message):
    with pytest.raises(ValueError) as info:
        O.BY_NAME[name].from_text(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("workers", "+3", 3),
        ("timeout", "inf", None),
        ("timeout", "2", 2.0),
        ("max_memory", "1KB", 1024),
    ],
)
def test_flag_text_values(name, text, value):
    assert O.BY_NAME[name].from_text(text) == value


def test_a_new_option_reaches_the_record_the_check_and_the_docs():
    extra = O.Option(
        name="nice",
        default=0,
        check=O._non_negative_int,
        accepts="a non-negative integer",
        help="Scheduling priority of the workers.",
        flag=O.Flag(("--nice",), "N", O._int_text, accepts="a non-negative integer"),
        trait="Integer",
        apis=("parmap",),
    )
    table = (*O.OPTIONS, extra)
    record = O.options_record(table)
    assert record().nice == 0
    assert O.validated(table, record, {"nice": 5}).nice == 5
    with pytest.raises(ValueError, match="nice must be a non-negative integer, got -1"):
        O.validated(table, record, {"nice": -1})
    assert "| `nice` | `0` | a non-negative integer | Scheduling priority" in O.markdown_table(
        table
    )


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "4"])
def test_dropins_check_through_the_table_in_the_stdlib_words(value, monkeypatch):
    from ipyparmap.dropins import compat

    with pytest.raises(ValueError, match=r"^Chunksize must be 1\+, not "):
        compat._check_chunksize(value)
    with pytest.raises(ValueError, match=r"^Number of processes must be at least 1$"):
        compat.Pool(processes=value)  # refused before any worker starts
    # the table decides: a looser check there is a looser drop-in
    monkeypatch.setitem(
        compat.OPTIONS, "chunksize", O.BY_NAME["chunksize"]._replace(check=lambda o, v, n: v)
    )
    assert compat._check_chunksize(value) == value


def test_repeated_options_are_checked_by_type_and_value_not_only_by_equality():
    assert O.check_options(workers=1, timeout=2).workers == 1
    first = O.check_options(workers=1, timeout=2)
    assert O.check_options(workers=1, timeout=2) is first  # the same values: not again
    with pytest.raises(TypeError, match="workers must be a positive integer"):
        O.check_options(workers=True, timeout=2)  # True == 1, but it is refused
    assert O.check_options(workers=1, timeout=2.0).timeout == 2.0  # 2 == 2.0: same value
    with pytest.raises(ValueError, match="timeout"):
        O.check_options(workers=1, timeout=float("nan"))
    with pytest.raises(ValueError, match="timeout"):
        O.check_options(workers=1, timeout=float("nan"))  # nan != nan: checked every time


def test_the_first_check_in_a_process_is_a_real_one():
    import subprocess
    import sys

    code = "from ipyparmap.options import check_options as c; print(c() is not None, c())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True Options(workers=None")
