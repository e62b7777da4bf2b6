"""backend="threads": I/O-bound work in threads of this process, with the same Results,
failures, per-item output, timeouts and interrupts as processes."""

from __future__ import annotations

import _thread
import sys
import threading

import pytest
from conftest import wait_for

import ipyparmap as pm
from ipyparmap.engine.threads import ThreadRouter


def _no_router_left():
    return not isinstance(sys.stdout, ThreadRouter) and not isinstance(sys.stderr, ThreadRouter)


def test_waiting_items_overlap_instead_of_queueing_behind_the_cpus():
    lock, running, most = threading.Lock(), [0], [0]
    all_in = threading.Event()

    def wait_for_the_others(x):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] == 20:
                all_in.set()
        all_in.wait(30)  # with fewer than 20 at once this would wait the full 30 s
        with lock:
            running[0] -= 1
        return x * 2

    res = pm.parmap(wait_for_the_others, range(20), backend="threads", workers=20)
    assert res == [x * 2 for x in range(20)] and res.ok
    assert most[0] == 20
    assert _no_router_left()


def test_print_is_kept_per_item_and_reaches_our_stdout(capsys):
    def talk(x):
        print(f"hello {x}")
        print(f"warn {x}", file=sys.stderr)
        return x

    res = pm.parmap(talk, range(4), backend="threads", workers=2, progress=False)
    assert res == [0, 1, 2, 3]
    assert [res.outputs[i].stdout for i in range(4)] == [f"hello {i}\n" for i in range(4)]
    assert res.outputs[2].stderr == "warn 2\n"
    out = capsys.readouterr()
    assert "[2] hello 2" in out.out and "[3] warn 3" in out.err
    print("main thread")  # after the run: straight through, untagged
    assert capsys.readouterr().out == "main thread\n"
    assert _no_router_left()


def test_failures_retries_and_imap_behave_as_with_processes():
    res = pm.parmap(lambda x: 1 / x, range(-2, 3), backend="threads", errors="collect")
    assert res[2].kind == "error" and isinstance(res[2].exception, ZeroDivisionError)
    assert [res[i] for i in (0, 1, 3, 4)] == [-0.5, -1.0, 1.0, 0.5]
    with pytest.raises(pm.TaskError) as caught:
        pm.parmap(lambda x: 1 / x, range(-2, 3), backend="threads", workers=1)
    assert caught.value.results[:2] == [-0.5, -1.0]
    assert list(pm.imap(abs, range(-3, 3), backend="threads")) == [3, 2, 1, 0, 1, 2]


def test_a_stuck_item_times_out_and_its_thread_is_abandoned():
    release = threading.Event()

    def maybe_stuck(x):
        if x == 2:
            release.wait(60)  # held until the test lets it go, after parmap returned
        return x

    try:
        res = pm.parmap(maybe_stuck, range(5), backend="threads", timeout=0.3, errors="collect")
        assert not release.is_set()  # parmap returned while the item was still stuck
        assert [res[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
        assert res[2].kind == "timeout" and isinstance(res[2].exception, pm.TaskTimeout)
        assert "thread was abandoned" in str(res[2].exception)
    finally:
        release.set()


def test_interrupt_keeps_finished_results_and_abandons_running_threads():
    release = threading.Event()
    started = threading.Event()

    def item(x):
        if x >= 2:
            started.set()
            release.wait(60)
        return x

    timer = threading.Thread(target=lambda: started.wait(30) and _thread.interrupt_main())
    timer.start()
    try:
        with pytest.raises(pm.Interrupted) as caught:
            pm.parmap(item, range(6), backend="threads", workers=2, chunksize=1)
        results = caught.value.results
        assert results[:2] == [0, 1]
        assert all(f.kind == "cancelled" for f in results[2:])
        assert _no_router_left()
    finally:
        release.set()
        timer.join(10)
    wait_for(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("ipyparmap-thread")],
        what="abandoned threads to end once their items return",
    )


def test_threads_refuse_max_memory():
    with pytest.raises(ValueError, match="max_memory= needs the local backend"):
        pm.parmap(abs, [1], backend="threads", max_memory="1GB")
