"""Spare workers (process/pool.py `Pool.order_spare`): a replacement known to be coming
(a worker that retires after its chunk with ``maxtasksperchild``; the next crash after a
crash) is forked from the template ahead of need, so it does not wait for a fork. A
spare must run in the caller's world as it is when it is used, and nothing of it may be
left behind: no process, no descriptor, no exit status nobody collects."""

from __future__ import annotations

import os
import sys
import time

import helpers
import psutil
import pytest
from conftest import children, open_fds, wait_for

import ipyparmap as pm
from ipyparmap.process import pool as P
from ipyparmap.process import template as T

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(not T.available(), reason="spares are forked from the template"),
]


class _Spy:
    """Counts the spares ordered and taken, and the workers forked or started on the
    spot (`spawn_worker`)."""

    def __init__(self, monkeypatch):
        self.ordered: list[P.PendingWorker] = []
        self.taken: list[int] = []  # pids of the spares that became workers
        self.taken_spares: list[P.PendingWorker] = []
        self.primed = 0  # spares taken with a function already sent (loaded meanwhile)
        self.spawned = 0
        order, take, spawn = P.order_worker, P.PendingWorker.take, P.spawn_worker

        def order_worker(*args, **kwargs):
            spare = order(*args, **kwargs)
            if spare is not None:
                self.ordered.append(spare)
            return spare

        def taking(spare):
            worker = take(spare)
            if worker is not None:
                self.taken.append(worker.pid)
                self.taken_spares.append(spare)
                self.primed += bool(worker.functions)
            return worker

        def spawn_worker(*args, **kwargs):
            self.spawned += 1
            return spawn(*args, **kwargs)

        monkeypatch.setattr(P, "order_worker", order_worker)
        monkeypatch.setattr(P.PendingWorker, "take", taking)
        monkeypatch.setattr(P, "spawn_worker", spawn_worker)


def _where(x):
    """Where an item runs; ``(x, gate)``: first wait (at most 60 s) until ``gate`` exists."""
    if isinstance(x, tuple):
        x, gate = x
        for _ in range(6000):
            if os.path.exists(gate):
                break
            time.sleep(0.01)
    return os.getpid(), os.getcwd(), os.environ.get("IPYPARMAP_TEST_SPARE"), sys.path[-1], x


def test_retiring_workers_are_replaced_by_spares_forked_ahead(monkeypatch):
    spy = _Spy(monkeypatch)
    with pm.Pool(2, maxtasksperchild=1) as pool:
        out = pool.map(helpers.act, range(40), chunksize=1)
    assert out == list(range(40))
    # the pool's two first workers, and maybe a replacement whose spare was not in yet
    # when the template had to import something: every other one was a spare
    assert spy.spawned <= 4, spy.spawned
    assert len(spy.taken) >= 36
    assert len(set(spy.taken)) == len(spy.taken)  # each spare ran once
    # each was sent the function while its predecessor worked (its first chunk, only
    # the items)
    assert spy.primed >= 36


def test_spares_are_stopped_at_shutdown_and_leave_nothing(monkeypatch):
    """A pool terminated while its workers run their last task before retiring: the
    spares forked for them end with it, and nothing of them is left."""
    spy = _Spy(monkeypatch)
    fds = open_fds()
    pool = pm.Pool(2, maxtasksperchild=1)
    try:
        assert pool.map(helpers.act, range(4), chunksize=1) == list(range(4))
        pool.map_async(helpers.sleepy, [(i, 60) for i in range(6)], chunksize=1)
        template = pool._engine.processes.launcher.template
        assert template is not None

        def spares_forked():  # two workers busy, and a spare forked for each
            template.collect(0.05)
            waiting = [spare for spare in spy.ordered if spare._new is not None]
            return len(waiting) >= 2 and all(s._pending.answer for s in waiting)

        wait_for(spares_forked, timeout=30, what="the spares to be forked")
        forked = [p.pid for p in psutil.Process(template.pid).children()]
    finally:
        pool.terminate()
        pool.join()

    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(pid) for pid in [template.pid, *forked]), timeout=10,
             what="the spares, the workers and the template to exit")  # fmt: skip
    assert children() == []
    assert open_fds() == fds  # channels, lifelines, boards and pidfds of the spares: closed


def _changed_world(tmp_path, monkeypatch, change: str, spares: bool) -> tuple[list, _Spy]:
    """The worlds items see on a drop-in pool's fresh workers when the caller changes
    ``change`` while its first items run (the replacements for their workers are
    being forked then), with or without spares."""
    gate = tmp_path / f"gate-{change}-{spares}"
    with monkeypatch.context() as patch:
        spy = _Spy(patch)
        if not spares:
            patch.setattr(P.Pool, "order_spare", lambda self, env_extra=None: None)
        with pm.Pool(2, maxtasksperchild=1) as pool:
            items = [(0, str(gate)), (1, str(gate)), *range(2, 8)]
            result = pool.map_async(_where, items, chunksize=1)
            if spares:
                wait_for(lambda: len(spy.ordered) >= 2, timeout=30, what="spares")
            spy.waiting = [spare for spare in spy.ordered if spare._new is not None]
            if change == "env":
                patch.setenv("IPYPARMAP_TEST_SPARE", "new")
            else:
                patch.chdir(tmp_path)
                patch.setattr(sys, "path", [*sys.path, str(tmp_path / "last")])
            gate.write_text("open")
            seen = result.get(120)
        return seen, spy


@pytest.mark.parametrize("change", ["folder and sys.path", "env"])
def test_a_spare_runs_in_the_world_of_a_worker_forked_when_it_is_used(
    tmp_path, monkeypatch, change
):  # fmt: skip
    """Spares forked before the caller changed its folder and sys.path are used, and
    their items see what items on workers forked after the change see; a change of the
    environment drops them (a template serves one environment), and they leave
    nothing (the ``no_leaks`` fixture)."""
    plain, _ = _changed_world(tmp_path, monkeypatch, change, spares=False)
    seen, spy = _changed_world(tmp_path, monkeypatch, change, spares=True)
    assert spy.waiting, "no spare was waiting"
    assert [w[1:] for w in seen] == [w[1:] for w in plain]
    assert all(spare._new is None for spare in spy.waiting)  # used or dropped
    used = set(spy.waiting) & set(spy.taken_spares)
    if change == "env":
        assert not used  # dropped: they have the old environment
    else:
        assert used, "no item ran on a spare forked before the change"


def test_after_a_crash_the_next_replacement_is_a_spare(monkeypatch):
    """A function that crashed its worker may well do it again: the next replacement
    is forked ahead; the spare left at the end of the run is stopped with it."""
    items = [("run", "_exit") if i % 4 == 3 else i for i in range(24)]
    pm.parmap(helpers.act, items[:4], workers=2, chunksize=1, errors="collect")
    template = P.default_pool().launcher.template  # started by that crash's replacement
    assert template is not None
    wait_for(template.usable, timeout=30, what="the template to boot")
    spy = _Spy(monkeypatch)
    out = pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
    assert sum(isinstance(x, pm.Failure) for x in out) == 6
    # the first crash's replacement is forked then, the last ones may find no work left
    assert len(spy.taken) >= 2, spy.taken
    # the run is over: its last spare is dropped, only the warm workers stay
    wait_for(
        lambda: len([p for p in psutil.Process(template.pid).children()
                     if p.status() != psutil.STATUS_ZOMBIE]) <= 2,
        timeout=10, what="the unused spare to exit",
    )  # fmt: skip
    assert not template.exits  # every forked worker's exit was collected or dropped


def test_a_cancelled_fork_leaves_no_descriptor_and_no_exit_status():
    """A spare cancelled before and after its fork's answer came: its pidfd is closed
    and its exit status, when the template reports it, is dropped, not kept for
    nobody."""
    pool = P.Pool()
    try:
        pool.release(pool.acquire(1))
        template = pool.launcher.template
        assert template is not None and template.usable()
        fds = open_fds()
        early = pool.order_spare()
        late = pool.order_spare()
        assert early is not None and late is not None
        pool.cancel_spare(early)  # (most likely before its answer)
        wait_for(lambda: late._pending.answer is not None or template.collect(0.05),
                 timeout=10, what="the fork's answer")  # fmt: skip
        pool.cancel_spare(late)  # after it

        def settled():  # both answered, both exits reported (and dropped)
            template.collect(0.05)
            return not template._waiting and not template._unwanted

        wait_for(settled, timeout=10, what="the cancelled forks' exits to be reported")
        assert not template.exits
        assert open_fds() == fds
    finally:
        pool.shutdown()
