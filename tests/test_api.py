"""parmap / imap behaviour: notebook-style functions, ordering, laziness, outputs."""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import pickle

import helpers
import psutil
import pytest
from conftest import children, notebook_function, run_python

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_parmap_returns_results_in_input_order():
    res = pm.parmap(helpers.square, range(50), workers=2)
    assert isinstance(res, pm.Results) and isinstance(res, list)
    assert res == [x * x for x in range(50)]
    assert res.ok and res.failures == []
    assert res.stats.items == 50 and res.stats.workers == 2


def test_empty_input_starts_no_worker():
    assert pm.parmap(helpers.square, []) == []
    assert list(pm.imap(helpers.square, [])) == []
    assert children() == []


def test_lambda_closure_nested_and_notebook_globals():
    offset = 5

    def outer(k):
        def inner(x):
            return x * k + offset

        return inner

    assert pm.parmap(lambda x: x + offset, range(4), workers=2) == [5, 6, 7, 8]
    assert pm.parmap(outer(3), range(4), workers=2) == [5, 8, 11, 14]
    func = notebook_function(
        """
        import math
        data = {i: i * 10 for i in range(10)}
        def lookup(x):
            return data[x] + math.floor(2.5)
        """,
        "lookup",
    )
    assert func.__module__ == "__main__"
    assert pm.parmap(func, range(4), workers=2) == [2, 12, 22, 32]


def test_main_classes_and_instances_round_trip():
    ns = {"__name__": "__main__"}
    exec(
        "class Point:\n"
        "    def __init__(self, x): self.x = x\n"
        "    def double(self): return Point(self.x * 2)\n"
        "def double(p): return p.double()\n",
        ns,
    )
    Point = ns["Point"]
    res = pm.parmap(ns["double"], [Point(i) for i in range(5)], workers=2)
    assert all(type(p) is Point for p in res)  # the parent's own class, not a copy
    assert [p.x for p in res] == [0, 2, 4, 6, 8]


def test_builtins_and_c_functions():
    assert pm.parmap(len, ["a", "bb", "ccc"], workers=2) == [1, 2, 3]
    assert pm.parmap(math.sqrt, [4, 9], workers=2) == [2.0, 3.0]
    assert pm.parmap(operator.itemgetter(0), [(1, 2), (3, 4)], workers=2) == [1, 3]


def test_star_unpacks_arguments():
    assert pm.parmap(helpers.add, [(1, 2), (3, 4)], star=True, workers=2) == [3, 7]
    res = pm.parmap(helpers.add, [(1, 2), 5], star=True, errors="collect", workers=2)
    assert res[0] == 3
    assert res[1].kind == "error"
    assert "star=True needs a tuple of arguments" in str(res[1].exception)
    assert "5 (int)" in str(res[1].exception)


def test_scripts_and_python_c_main_functions_without_main_guard(tmp_path):
    code = """
        import multiprocessing
        multiprocessing.set_start_method("spawn", force=True)  # forcing spawn breaks nothing
        import ipyparmap as pm
        SCALE = 3
        class Box:
            def __init__(self, v): self.v = v
        def work(x):
            return Box(x * SCALE)
        res = pm.parmap(work, range(6), workers=2, progress=False)
        print("RESULT", [b.v for b in res], type(res[0]).__name__)
    """
    for script in (None, tmp_path / "no_guard.py"):
        out = run_python(code, script=script, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        # printed once: workers do not re-run the script (no recursive pools)
        assert out.stdout.count("RESULT") == 1, out.stdout
        assert "RESULT [0, 3, 6, 9, 12, 15] Box" in out.stdout


def test_workers_are_spawned_interpreters_not_forks():
    """Never forks of the caller: interpreters we started, or forks of the template
    process, itself an interpreter we started (process/template.py)."""
    pids = set(pm.parmap(helpers.pid_of, range(20), workers=2, chunksize=1))
    me = os.getpid()
    assert me not in pids
    for pid in pids:
        proc = psutil.Process(pid)
        parent = proc.parent()
        if parent.pid != me:  # forked by the template, which we started as an interpreter
            assert parent.ppid() == me
            assert "ipyparmap.process.template" in " ".join(parent.cmdline())
        else:
            assert "ipyparmap.process.worker" in " ".join(proc.cmdline())  # exec'd
        assert os.getpgid(pid) == pid  # its own process group: group signals miss it
        assert os.getsid(pid) != os.getsid(0)  # not in our session either


def test_warm_pool_is_reused_across_calls():
    first = set(pm.parmap(helpers.pid_of, range(8), workers=2, chunksize=1))
    second = set(pm.parmap(helpers.pid_of, range(8), workers=2, chunksize=1))
    assert first == second and len(first) == 2


def test_parmap_after_shutdown_starts_a_fresh_pool():
    before = set(pm.parmap(helpers.pid_of, range(4), workers=2, chunksize=1))
    pm.shutdown()
    assert children() == []
    after = set(pm.parmap(helpers.pid_of, range(4), workers=2, chunksize=1))
    assert after and not (before & after)


def test_blas_threads_limited_in_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = pm.cpu_count()
    res = pm.parmap(helpers.env_of, ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"], workers=2)
    assert res == [str(max(1, cpus // 2))] * 2


def test_user_set_thread_variables_are_respected(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    pm.shutdown()  # the environment is fixed when a worker starts
    assert pm.parmap(helpers.env_of, ["OMP_NUM_THREADS"], workers=1) == ["7"]


def test_imap_ordered_and_unordered():
    pairs = [(0, 0.4), (1, 0.0), (2, 0.0), (3, 0.0)]
    assert list(pm.imap(helpers.sleepy, pairs, workers=2, chunksize=1)) == [0, 1, 2, 3]
    unordered = list(pm.imap(helpers.sleepy, pairs, workers=2, chunksize=1, ordered=False))
    assert sorted(unordered) == [0, 1, 2, 3]
    assert unordered[-1] == 0  # the slow item finishes last


def test_imap_consumes_lazily_with_bounded_look_ahead():
    pulled = itertools.count()

    def numbers():
        for i in itertools.count():  # infinite
            next(pulled)
            yield i

    it = pm.imap(helpers.sleep_then, numbers(), workers=2)
    got = [next(it) for _ in range(300)]
    assert got == list(range(300))
    taken = next(pulled)
    it.close()  # leaving early stops the workers' remaining work
    # look-ahead is bounded (1024 items here), the infinite input is not drained
    assert taken < 300 + 1024 + 100, taken


def test_imap_break_stops_work_and_pool_stays_usable():
    for value in pm.imap(helpers.sleep_then, range(100), workers=2, chunksize=1):
        if value == 3:
            break
    assert pm.parmap(helpers.square, range(3), workers=2) == [0, 1, 4]


def test_worker_output_is_forwarded_and_kept_per_item(capfd):
    res = pm.parmap(helpers.shout, range(3), workers=2)
    out, err = capfd.readouterr()
    for i in range(3):
        assert f"[{i}] hello {i}\n" in out
        assert f"[{i}] warn {i}\n" in err
        assert res.outputs[i].stdout == f"hello {i}\n"
        assert res.outputs[i].stderr == f"warn {i}\n"


def test_nested_parmap_runs_serially_in_the_worker():
    res = pm.parmap(helpers.nested_parmap, [3, 4], workers=2)
    assert res[0] == ([0, 1, 4], 0)  # no grandchildren: the inner map ran in the worker
    assert res[1] == ([0, 1, 4, 9], 0)


def test_results_api_and_pickling():
    res = pm.parmap(helpers.fail_on, range(6), errors="collect", workers=2)
    assert not res.ok
    assert [f.index for f in res.failures] == [3]
    assert res.values(default=-1) == [0, 1, 2, -1, 4, 5]
    assert "5/6 done, 1 error" in res.summary()
    assert "bad item 3" in res._repr_html_()
    again = pickle.loads(pickle.dumps(res))
    assert again.values(default=-1) == res.values(default=-1)
    assert again.stats.items == 6
    assert len(res.durations) == 6 and all(d is not None for d in res.durations)
    assert set(res.worker_of) <= set(res.stats.busy)


def test_cpu_count_is_positive_and_default_worker_count():
    assert pm.cpu_count() >= 1
    res = pm.parmap(helpers.square, range(4))
    assert res.stats.workers == min(4, pm.cpu_count())


def test_tiny_items_are_batched_and_long_items_sent_alone():
    tiny = pm.parmap(helpers.square, range(20_000), workers=2)
    assert tiny == [x * x for x in range(20_000)]
    assert tiny.stats.chunks < 200  # not 20,000 messages
    slow = pm.parmap(helpers.sleepy, [(i, 0.03) for i in range(12)], workers=2)
    assert slow.stats.chunks == 12  # ~30 ms items go one per message, for balance


def test_a_function_used_again_stays_loaded_past_the_cache_size():
    """The parent mirrors each worker's LRU of loaded functions: a function used again
    must be the most recent on both sides, or the worker evicts one the parent still
    counts as loaded, and the next call using it fails ("could not be unpickled").
    The pandas accessors meet this: each call sends a new function (its pieces' job)."""
    from ipyparmap.wire import messages as M

    funcs = [functools.partial(operator.add, n) for n in range(M.FUNCTION_CACHE + 2)]
    first = funcs[0]
    for func in funcs[: M.FUNCTION_CACHE]:
        assert pm.parmap(func, [1], workers=1, progress=False) == [func(1)]
    assert pm.parmap(first, [1], workers=1, progress=False) == [first(1)]  # used again
    for func in funcs[M.FUNCTION_CACHE :]:  # two new ones: each side evicts its oldest
        assert pm.parmap(func, [1], workers=1, progress=False) == [func(1)]
    assert pm.parmap(first, [2], workers=1, progress=False) == [first(2)]
