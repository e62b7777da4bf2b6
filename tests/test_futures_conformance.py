"""The ProcessPoolExecutor drop-in against the standard library's documented behaviour,
and Pool.imap's chunksize (issue 16). Each test names the CPython test it mirrors
(Lib/test/test_concurrent_futures.py in 3.11, Lib/test/_test_multiprocessing.py)."""

from __future__ import annotations

import helpers
import pytest

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


# -- Pool.imap chunksize ---------------------------------------------------------------------
def _raising_input(n: int, bad: int):
    for i in range(n):
        if i == bad:
            raise SyntaxError("input broke")
        yield i


@pytest.mark.parametrize("chunksize", [1, 2, 3, 5])
def test_imap_raises_at_the_start_of_the_raising_chunk(chunksize):
    # mirrors _TestPool.test_imap_handle_iterable_exception: with chunksize c and the
    # input raising at item 10, exactly (10 // c) * c results come before the error
    with pm.Pool(2) as pool:
        it = pool.imap(helpers.square, _raising_input(20, 10), chunksize)
        expected = (10 // chunksize) * chunksize
        for i in range(expected):
            assert it.next(30) == i * i
        with pytest.raises(SyntaxError, match="input broke"):
            it.next(30)


def test_imap_unordered_raising_input_stops_at_a_chunk_start():
    # mirrors _TestPool.test_imap_unordered_handle_iterable_exception (the error may
    # come at any time; no item of the raising chunk is ever run)
    with pm.Pool(2) as pool:
        it = pool.imap_unordered(helpers.square, _raising_input(20, 10), 3)
        seen = []
        with pytest.raises(SyntaxError):
            for _ in range(20):
                seen.append(it.next(30))
        assert set(seen) <= {i * i for i in range(9)}


def test_imap_honours_chunksize():
    # the stdlib sends chunks of exactly `chunksize` items: the same worker runs them
    with pm.Pool(2) as pool:
        pids = list(pool.imap(helpers.pid_of, range(12), chunksize=4))
        for start in range(0, 12, 4):
            assert len(set(pids[start : start + 4])) == 1
        pids = list(pool.imap_unordered(helpers.pid_of, range(8), chunksize=8))
        assert len(set(pids)) == 1
