"""``%config Parmap.<name>`` values are the defaults of pm.parmap, pm.imap and
pm.parmap_async in that kernel; an argument passed explicitly always wins."""

from __future__ import annotations

import inspect

import pytest

import ipyparmap as pm
from ipyparmap import api

pytestmark = pytest.mark.usefixtures("no_leaks")


def _fails_on_two(x):
    if x == 2:
        raise ValueError("two")
    return x


@pytest.fixture
def configured():
    """api.configure_defaults, undone after the test."""
    yield api.configure_defaults
    api.configure_defaults({})


def test_configured_defaults_apply_to_every_api_function(configured):
    configured({"workers": 1, "errors": "collect", "progress": False})
    res = pm.parmap(_fails_on_two, range(4))
    assert res.stats.workers == 1
    assert res[:2] == [0, 1] and isinstance(res[2], pm.Failure)
    assert [type(v).__name__ for v in pm.imap(_fails_on_two, range(4))][2] == "Failure"
    run = pm.parmap_async(_fails_on_two, range(4))
    later = run.result(timeout=60)
    assert later.stats.workers == 1 and isinstance(later[2], pm.Failure)


def test_an_explicit_argument_wins_even_when_it_equals_the_default(configured):
    configured({"errors": "collect", "workers": 1, "progress": False})
    with pytest.raises(pm.TaskError):
        pm.parmap(_fails_on_two, range(4), errors="raise")
    with pytest.raises(pm.TaskError):
        list(pm.imap(_fails_on_two, range(4), errors="raise"))
    with pytest.raises(pm.TaskError):
        pm.parmap_async(_fails_on_two, range(4), errors="raise").result(timeout=60)
    assert pm.parmap(abs, [1, 2], workers=2).stats.workers == 2


def test_without_configuration_the_table_defaults_hold():
    assert api._configured == {}
    with pytest.raises(pm.TaskError):
        pm.parmap(_fails_on_two, range(4), progress=False)


def test_configure_defaults_refuses_what_is_not_an_option(configured):
    with pytest.raises(TypeError, match="not run options: worker"):
        configured({"worker": 1})


def test_signatures_read_as_the_plain_defaults():
    text = str(inspect.signature(pm.parmap))
    assert "errors: 'str' = 'raise'" in text and "workers: 'int | None' = None" in text
    assert "_Default" not in pm.parmap.__doc__ + text
    assert "%config Parmap" in pm.parmap.__doc__


def test_the_magics_publish_config_and_unloading_withdraws_it():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    try:
        ip.run_line_magic("config", "Parmap.workers = 1")
        ip.run_line_magic("config", "Parmap.errors = 'collect'")
        assert api._configured == {"workers": 1, "errors": "collect"}
        res = pm.parmap(_fails_on_two, range(4), progress=False)
        assert res.stats.workers == 1 and isinstance(res[2], pm.Failure)
        ip.run_line_magic("config", "Parmap.errors = 'raise'")  # back to the default
        assert api._configured == {"workers": 1}
        with pytest.raises(pm.TaskError):
            pm.parmap(_fails_on_two, range(4), progress=False)
    finally:
        ip.run_line_magic("config", "Parmap.workers = None")
        ip.run_line_magic("config", "Parmap.errors = 'raise'")
        ip.run_line_magic("unload_ext", "ipyparmap")
    assert api._configured == {}
