"""backend=: concurrent.futures executors and a real Dask LocalCluster."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import helpers
import pytest
from conftest import notebook_function, wait_for

import ipyparmap as pm


# -- concurrent.futures -------------------------------------------------------------------------
@pytest.fixture(params=["thread", "process"])
def executor(request, no_leaks):
    ex = ThreadPoolExecutor(3) if request.param == "thread" else ProcessPoolExecutor(2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_executor_runs_notebook_functions_and_collects_failures(executor):
    func = notebook_function("scale = 3\ndef f(x):\n    return x * scale\n", "f")
    assert pm.parmap(func, range(10), backend=executor) == [x * 3 for x in range(10)]
    res = pm.parmap(helpers.fail_on, range(6), backend=executor, errors="collect")
    assert res.values(default=-1) == [0, 1, 2, -1, 4, 5]
    assert isinstance(res[3].exception, ValueError) and "bad item 3" in res[3].traceback
    with pytest.raises(pm.TaskError):
        pm.parmap(helpers.fail_on, range(6), backend=executor)
    assert list(pm.imap(helpers.square, range(5), backend=executor)) == [0, 1, 4, 9, 16]


def test_a_big_global_reaches_an_executors_workers(executor):
    # 800 KB: the local pool shares it through memory; executors' workers get it inside
    # the pickle (they failed with "out-of-band data but no buffers argument")
    np = pytest.importorskip("numpy")
    big = np.zeros(100_000, dtype=np.int64)
    big[5] = 21
    func = notebook_function("def f(i):\n    return int(BIG[i]) * 2\n", "f", BIG=big)
    assert pm.parmap(func, [4, 5], backend=executor) == [0, 42]


@pytest.mark.usefixtures("no_leaks")
def test_process_executor_captures_worker_output(capfd):
    with ProcessPoolExecutor(2) as ex:
        res = pm.parmap(helpers.shout, range(3), backend=ex)
    out = capfd.readouterr().out
    assert res.outputs[1].stdout == "hello 1\n" and "[1] hello 1" in out


@pytest.mark.usefixtures("no_leaks")
def test_process_executor_crash_is_reported_not_hung():
    with ProcessPoolExecutor(2) as ex:
        items = [0, ("run", "_exit"), 2, 3]
        res = pm.parmap(helpers.act, items, backend=ex, errors="collect", chunksize=1)
    assert res[1].kind == "crashed" and isinstance(res[1].exception, pm.WorkerCrashed)
    # the standard library's pool breaks as a whole: the rest failed or were cancelled
    assert all(isinstance(v, pm.Failure) or v == i for i, v in enumerate(res))


@pytest.mark.usefixtures("no_leaks")
def test_bad_backends():
    with pytest.raises(ValueError, match="backend must be"):
        pm.parmap(helpers.square, [1], backend=object())
    ex = ThreadPoolExecutor(1)
    ex.shutdown()
    with pytest.raises(ValueError, match="the executor is shut down"):
        pm.parmap(helpers.square, [1], backend=ex)
    with ThreadPoolExecutor(1) as live, pytest.raises(ValueError, match="timeout= needs the local"):
        pm.parmap(helpers.square, [1], backend=live, timeout=5)


# -- Dask ------------------------------------------------------------------------------------------
distributed = pytest.importorskip("distributed")
# the Dask fixtures (cluster, client) are in conftest.py


def test_dask_runs_notebook_functions(client):
    func = notebook_function(
        "import math\nbase = 10\ndef f(x):\n    return math.floor(x) + base\n", "f"
    )
    res = pm.parmap(func, [0.5, 1.5, 2.5], backend=client)
    assert res == [10, 11, 12]
    assert all(str(w).startswith("tcp://127.0.0.1:") for w in res.worker_of)
    assert pm.parmap(func, [3.5], backend="dask") == [13]  # the current client


def test_dask_failures_and_outputs(client, capfd):
    res = pm.parmap(helpers.fail_on, range(6), backend=client, errors="collect")
    assert [f.index for f in res.failures] == [3]
    assert "bad item 3" in str(res[3].exception)
    res = pm.parmap(helpers.shout, range(2), backend=client)
    assert res.outputs[0].stdout == "hello 0\n"
    assert "[0] hello 0" in capfd.readouterr().out


def test_dask_killed_worker_is_reported_not_hung(client):
    items = [0, 1, ("run", "_exit_later"), 3]
    res = pm.parmap(helpers.act, items, backend=client, errors="collect", chunksize=1)
    assert res[2].kind == "crashed", res[2]
    assert "KilledWorker" in str(res[2].exception)
    assert [res[i] for i in (0, 1, 3)] == [0, 1, 3]
    wait_for(
        lambda: len(client.scheduler_info()["workers"]) == 2,
        timeout=60,
        what="the nanny to restart the killed worker",
    )


def test_dask_closed_client(cluster):
    c = distributed.Client(cluster)
    c.close()
    with pytest.raises(ValueError, match="the Dask client is closed"):
        pm.parmap(helpers.square, [1], backend=c)


def test_no_dask_client(cluster):
    with pytest.raises(ValueError, match=r"needs a running distributed\.Client"):
        pm.parmap(helpers.square, [1], backend="dask")


def test_dask_stays_optional():
    assert (
        "distributed"
        not in __import__("subprocess")
        .run(
            [
                __import__("sys").executable,
                "-c",
                "import sys, ipyparmap as pm; pm.parmap(abs, [-1]); print(sorted(sys.modules))",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(__import__("conftest").ROOT)},
        )
        .stdout
    )


def test_magic_backend_dask(client):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    ip.user_ns["offset"] = 5
    res = ip.run_cell_magic("parmap", "x in range(4) --backend dask", "x + offset")
    assert res == [5, 6, 7, 8]
    assert all(str(w).startswith("tcp://") for w in res.worker_of)
    client.close()
    with pytest.raises(UsageError, match="--backend dask: "):
        ip.run_cell_magic("parmap", "x in range(4) --backend dask", "x")


# Interrupting and cancelling a Dask run: in tests/test_engines.py, with every other engine.
