"""%%parmap --bg in a real kernel: the notebook stays free, output goes to the right cell."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ipykernel")


def test_bg_cell_returns_at_once_binds_results_and_routes_output(kernel):
    first = kernel.submit(
        "%%parmap --bg -o bgres x in range(8) --chunksize 1\n"
        "import time\n"
        "time.sleep(0.3)\n"
        "print('bg item', x)\n"
        "x * 3\n"
    )
    reply = kernel.collect(first, timeout=30)
    assert reply.status == "ok"
    assert "<Run running" in reply.result["text/plain"]
    # the notebook is free: another cell runs while the background run goes on
    started = time.monotonic()
    other = kernel.run("print('other cell', 1 + 1)")
    assert other.stdout == "other cell 2\n"
    assert time.monotonic() - started < 5
    # worker output keeps arriving for the *first* cell, after it finished
    late = kernel.collect(first, timeout=60, until=lambda r: "[7] bg item 7" in r.stdout)
    assert "[7] bg item 7" in late.stdout
    assert "bg item" not in other.stdout
    check = kernel.run(
        "import time\n"
        "deadline = time.monotonic() + 30\n"
        "while 'bgres' not in globals() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(list(bgres))"
    )
    assert check.stdout.strip() == "[0, 3, 6, 9, 12, 15, 18, 21]"


def test_await_a_run_in_the_kernel(kernel):
    reply = kernel.run(
        "import ipyparmap as pm\n"
        "run = pm.parmap_async(lambda x: x + 1, range(4))\n"
        "print(list(await run))"
    )
    assert reply.status == "ok", reply.traceback
    assert reply.stdout.strip() == "[1, 2, 3, 4]"
