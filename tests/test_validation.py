"""API misuse gets a clear error before any worker starts (the error contract of docs/api.md)."""

from __future__ import annotations

import asyncio
import functools
import threading

import helpers
import pytest
from conftest import children

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


@pytest.fixture(autouse=True)
def cold_pool(no_leaks):
    pm.shutdown()
    yield
    # misuse must not have started any worker
    assert children() == [], children()


@pytest.mark.parametrize("entry", [pm.parmap, pm.imap])
@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"workers": 0}, ValueError, "workers must be a positive integer or None, got 0"),
        ({"workers": -1}, ValueError, "workers must be a positive integer"),
        (
            {"workers": 2.5},
            TypeError,
            "workers must be a positive integer or None, got 2.5 (float)",
        ),
        ({"workers": "4"}, TypeError, "workers must be a positive integer or None, got '4' (str)"),
        ({"workers": True}, TypeError, "got True (bool)"),
        ({"workers": 100_000}, ValueError, "usable CPUs"),
        ({"chunksize": 0}, ValueError, "chunksize must be a positive integer or None"),
        ({"chunksize": -3}, ValueError, "chunksize must be a positive integer or None"),
        ({"chunksize": 1.5}, TypeError, "chunksize must be a positive integer or None"),
        ({"errors": "ignore"}, ValueError, "errors must be 'raise' or 'collect', got 'ignore'"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": -1}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a positive number"),
        (
            {"timeout": "10s"},
            TypeError,
            "timeout must be a positive number of seconds or None, got '10s'",
        ),
        ({"retries": -1}, ValueError, "retries must be a non-negative integer"),
        ({"retries": 1.5}, TypeError, "retries must be a non-negative integer"),
        (
            {"progress": "bar"},
            ValueError,
            "progress must be 'auto', 'widget', 'text' or False, got 'bar'",
        ),
        ({"progress": 1}, ValueError, "progress must be"),
        ({"star": 1}, TypeError, "star must be a bool, got 1 (int)"),
        ({"backend": "spark"}, ValueError, "backend must be None, 'local', 'threads', 'dask'"),
    ],
)
def test_bad_options(entry, kwargs, exc, message):
    with pytest.raises(exc) as info:
        entry(helpers.square, [1, 2], **kwargs)
    assert message in str(info.value)


def test_imap_ordered_must_be_bool():
    with pytest.raises(TypeError, match="ordered must be a bool, got 'yes'"):
        pm.imap(helpers.square, [1], ordered="yes")
    with pytest.raises(TypeError, match="ordered must be a bool"):
        pm.imap(helpers.square, [1], ordered="no")


def test_misspelled_keyword():
    with pytest.raises(TypeError, match="unexpected keyword argument 'worker'"):
        pm.parmap(helpers.square, [1], worker=4)


@pytest.mark.parametrize(
    "func, message",
    [
        (None, "func must be callable, got NoneType"),
        ("f", "func must be callable, got str"),
    ],
)
def test_func_not_callable(func, message):
    with pytest.raises(TypeError, match=message):
        pm.parmap(func, [1, 2])


def test_swapped_arguments_are_noticed():
    with pytest.raises(TypeError, match=r"got list \(did you swap func and iterable\?\)"):
        pm.parmap([1, 2], helpers.square)


@pytest.mark.parametrize("iterable, name", [(5, "int"), (None, "NoneType")])
def test_iterable_not_iterable(iterable, name):
    with pytest.raises(TypeError, match=f"iterable must be iterable, got {name}"):
        pm.parmap(helpers.square, iterable)


def test_async_function_rejected():
    async def fetch(x):
        await asyncio.sleep(0)
        return x

    with pytest.raises(TypeError, match="async functions are not supported"):
        pm.parmap(fetch, [1])
    with pytest.raises(TypeError, match="async functions are not supported"):
        pm.parmap(functools.partial(fetch), [1])


def test_generator_function_rejected():
    def gen(x):
        yield x

    with pytest.raises(TypeError, match=r"generator function.*return list\(\.\.\.\) instead"):
        pm.parmap(gen, [1])


def test_wrong_arity_is_caught_before_running():
    with pytest.raises(TypeError, match="cannot take one positional argument"):
        pm.parmap(lambda: 1, [1, 2])
    with pytest.raises(TypeError, match="star=True"):
        pm.parmap(helpers.add, [(1, 2)])


def test_unpicklable_function_names_the_global():
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(pm.SerializationError) as info:
        pm.parmap(uses_lock, [1, 2])
    text = str(info.value)
    assert "uses_lock" in text and "closure variable 'lock'" in text and "lock" in text


def test_unpicklable_bound_method_names_the_attribute():
    class Holder:
        def __init__(self):
            self.conn = threading.Lock()

        def work(self, x):
            return x

    with pytest.raises(pm.SerializationError, match=r"__self__\.conn"):
        pm.parmap(Holder().work, [1])


def test_partial_with_unpicklable_argument_names_it():
    with pytest.raises(pm.SerializationError, match="the partial's argument 0"):
        pm.parmap(functools.partial(helpers.add, threading.Lock()), [1])
