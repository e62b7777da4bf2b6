"""%%parmap in a real Jupyter kernel (ipykernel through jupyter_client)."""

from __future__ import annotations

import psutil
import pytest
from conftest import wait_for, workers

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")


def test_worker_prints_arrive_in_the_cell_and_the_value_is_out(kernel):
    reply = kernel.run("%%parmap x in range(4)\nprint('hello from', x)\nx * 2")
    assert reply.status == "ok", reply.traceback
    for i in range(4):
        assert f"[{i}] hello from {i}\n" in reply.stdout
    assert reply.result["text/plain"] == "[0, 2, 4, 6]"
    assert "4/4 done" in reply.result["text/html"]


def test_failing_cell_shows_the_cell_source_line(kernel):
    reply = kernel.run(
        "%%parmap -o failed x in range(5)\nvalue = 10 // (x - 2)  # boom when x == 2\nvalue\n"
    )
    assert reply.status == "error"
    assert reply.error["ename"] == "TaskError"
    text = reply.traceback
    assert "item 2 (2)" in text
    assert "value = 10 // (x - 2)  # boom when x == 2" in text
    assert "ZeroDivisionError" in text
    check = kernel.run("print(type(failed).__name__, failed[2].kind, failed[0])")
    assert check.stdout.strip() == "Results error -5"


def test_interrupt_stops_the_run_binds_partial_results_and_kernel_lives(kernel):
    msg_id = kernel.submit(
        "%%parmap -o partial x in range(12) --chunksize 1\n"
        "import time\n"
        "print('start', x, flush=True)\n"
        "time.sleep(0.02 if x < 4 else 60)\n"
        "x\n"
    )
    # live output: we see items 4 and 5 start while the cell is still running
    kernel.collect(
        msg_id, timeout=60, until=lambda r: "[4] start 4" in r.stdout and "[5] start 5" in r.stdout
    )
    busy = [proc.pid for proc in workers(kernel.pid)]
    kernel.manager.interrupt_kernel()
    reply = kernel.collect(msg_id, timeout=30)
    assert reply.status == "error" and reply.error["ename"] == "Interrupted"
    assert "partial" in reply.traceback  # it says where the partial results went
    assert kernel.manager.is_alive()
    check = kernel.run(
        "print(len(partial), partial.values()[:4], sorted({f.kind for f in partial.failures}))"
    )
    assert check.stdout.strip() == "12 [0, 1, 2, 3] ['cancelled']"
    # the two busy workers were killed, no process leaked
    wait_for(
        lambda: (
            not [p for p in busy if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        ),
        timeout=10,
    )
    again = kernel.run("%%parmap x in range(3)\nx + 1")
    assert again.status == "ok" and again.result["text/plain"] == "[1, 2, 3]"


def test_drop_ins_with_notebook_functions_and_lambdas(kernel):
    reply = kernel.run(
        "import ipyparmap as multiprocessing\n"
        "def square(x):\n"
        "    print('sq', x)\n"
        "    return x * x\n"
        "with multiprocessing.Pool(2) as pool:\n"
        "    print('map', pool.map(square, range(3)))\n"
        "    print('apply', pool.apply_async(lambda x: print('lam', x) or x, (7,)).get(30))\n"
        "    print('imap', list(pool.imap(square, [5])))\n"
        "p = multiprocessing.Process(target=lambda: print('from process'))\n"
        "p.start(); p.join(30)\n"
        "print('exitcode', p.exitcode)\n"
        "with multiprocessing.ProcessPoolExecutor(2) as ex:\n"
        "    print('submit', ex.submit(square, 9).result(30))\n"
        "    print('exmap', list(ex.map(lambda x: -x, [1, 2])))\n"
    )
    assert reply.status == "ok", reply.traceback
    out = reply.stdout
    for text in (
        "sq 0",
        "sq 2",
        "map [0, 1, 4]",
        "lam 7",
        "apply 7",
        "sq 5",
        "imap [25]",
        "from process",
        "exitcode 0",
        "sq 9",
        "submit 81",
        "exmap [-1, -2]",
    ):
        assert text in out, (text, out)


def test_warm_calls_see_every_change_to_notebook_globals(kernel):
    # The second and later calls may reuse the pickled function (fingerprint.py): each
    # kind of change a notebook makes between cells must still reach the workers.
    # f reaches only immutable values (cacheable); g reads a list (pickled every call).
    steps = [
        ("K = 1\nM = 0\nL = [1]\ndef helper(x):\n    return x + K\n"
         "def f(x):\n    return helper(x) + M\n"
         "def g(x):\n    return x + L[0]\n", "([1, 2], [1, 2])"),
        ("pass", "([1, 2], [1, 2])"),  # unchanged: the same answers, f from its cache
        ("K = 10", "([10, 11], [1, 2])"),  # a global of a helper rebound
        ("M = 100", "([110, 111], [1, 2])"),  # a global rebound
        ("def helper(x):\n    return -x", "([100, 99], [1, 2])"),  # a helper redefined
        ("L[0] = 100", "([100, 99], [100, 101])"),  # a list mutated in place
    ]  # fmt: skip
    for cell, expected in steps:
        assert kernel.run(cell).status == "ok"
        reply = kernel.run(
            "import ipyparmap as pm\n"
            "(list(pm.parmap(f, [0, 1], workers=2)), list(pm.parmap(g, [0, 1], workers=2)))"
        )
        assert reply.status == "ok", reply.traceback
        assert reply.result["text/plain"] == expected, (cell, reply.result)
    cached = kernel.run(
        "from ipyparmap.wire import serialize\n"
        "serialize.pickle_function(f) is serialize.pickle_function(f), "
        "serialize.pickle_function(g) is serialize.pickle_function(g)"
    )
    assert cached.result["text/plain"] == "(True, False)"
