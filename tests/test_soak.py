"""Long-running soak tests: `pytest -m slow` (not part of the default run)."""

from __future__ import annotations

import itertools

import helpers
import psutil
import pytest
from conftest import workers

import ipyparmap as pm

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]


@pytest.mark.timeout(900)
def test_ten_million_item_generator_keeps_memory_flat():
    me = psutil.Process()
    generator = (i for i in range(10_000_000))
    samples = []
    count = 0
    last = None
    for count, value in enumerate(pm.imap(helpers.square, generator, workers=2), 1):
        last = value
        if count % 1_000_000 == 0:
            samples.append(me.memory_info().rss)
    assert count == 10_000_000 and last == 9_999_999**2
    # RSS swings by ~50 MB with the look-ahead window and the allocator; a leak grows
    # with the items: the lowest of the last samples stays near the first ones
    growth = min(samples[-3:]) - max(samples[:2])
    assert growth < 50 * 2**20, [s // 2**20 for s in samples]


@pytest.mark.timeout(900)
def test_many_small_calls_do_not_grow_fds_threads_or_memory():
    me = psutil.Process()
    for _ in range(200):  # warm up: caches, the pool
        pm.parmap(helpers.square, range(2), workers=2)
    before = (me.num_fds(), me.num_threads(), me.memory_info().rss)
    for _ in range(5000):
        pm.parmap(helpers.square, range(2), workers=2)
    after = (me.num_fds(), me.num_threads(), me.memory_info().rss)
    assert after[0] <= before[0] and after[1] <= before[1], (before, after)
    assert after[2] - before[2] < 20 * 2**20, (before, after)
    assert len(workers()) == 2


def test_unordered_imap_of_an_infinite_generator_can_be_abandoned():
    it = pm.imap(helpers.square, itertools.count(), ordered=False, workers=2)
    seen = set(itertools.islice(it, 200_000))
    it.close()
    assert len(seen) == 200_000
