"""Unit tests of the L0/L1 pieces: planner, progress model, resources, text views."""

from __future__ import annotations

import heapq
import io
import math
import os
import random
import sys

import pytest
from conftest import ROOT, run_python

from ipyparmap.engine import plan
from ipyparmap.process import resources
from ipyparmap.views import textui
from ipyparmap.views.progress import ProgressModel


# -- chunk planner -------------------------------------------------------------------------
def simulate(durations: list[float], workers: int, chunksize=None, overhead=0.0002) -> tuple:
    """Discrete-event run of the planner's decisions: (makespan, number of chunks).

    Each chunk costs ``overhead`` seconds of messaging plus its items' durations, and a
    worker asks for a new chunk when its current one ends, as in the runner.
    """
    planner = plan.ChunkPlanner(workers, chunksize)
    next_item, chunks, makespan = 0, 0, 0.0
    free = [(0.0, w) for w in range(workers)]
    while next_item < len(durations):
        now, w = heapq.heappop(free)
        size = planner.next_size(len(durations) - next_item)
        work = durations[next_item : next_item + size]
        next_item += len(work)
        chunks += 1
        end = now + overhead + sum(work)
        planner.record(len(work), sum(work))
        makespan = max(makespan, end)
        heapq.heappush(free, (end, w))
    return makespan, chunks


def test_tiny_items_are_batched():
    makespan, chunks = simulate([1e-6] * 100_000, workers=2)
    assert chunks < 100  # not 100,000 messages
    assert makespan < 0.1


def test_long_items_go_one_by_one():
    _, chunks = simulate([0.05] * 40, workers=2)
    assert chunks == 40


def _pareto_sorted():
    rng = random.Random(7)
    return sorted(min(2.0, 0.005 * rng.paretovariate(1.5)) for _ in range(400))


@pytest.mark.parametrize(
    "durations",
    [
        _pareto_sorted(),  # heavy-tailed, heaviest last: the worst case for static chunks
        [0.0005] * 2000 + [0.2] * 4,  # fast items, then a few slow ones at the very end
    ],
    ids=["pareto-heaviest-last", "slow-tail"],
)
@pytest.mark.parametrize("workers", [2, 4])
def test_uneven_items_balance_close_to_ideal(durations, workers):
    makespan, _ = simulate(durations, workers)
    ideal = max(sum(durations) / workers, max(durations))
    assert makespan / ideal < 1.1, makespan / ideal


def test_fixed_chunksize_is_respected():
    planner = plan.ChunkPlanner(2, chunksize=7)
    assert [planner.next_size(100 - 7 * i) for i in range(3)] == [7, 7, 7]


def test_growth_is_capped_after_one_fast_item():
    planner = plan.ChunkPlanner(2)
    assert planner.next_size() == 1
    planner.record(1, 1e-9)  # a suspiciously fast first item
    assert planner.next_size() <= plan.GROWTH


def test_tail_share_shrinks_chunks_near_the_end():
    slow = plan.ChunkPlanner(2)
    slow.record(10, 0.1)  # 10 ms items
    assert slow.next_size(remaining=8) == 2  # 8 / (2 * 2 workers)
    tiny = plan.ChunkPlanner(2)
    tiny.record(100, 1e-5)  # 0.1 us items: a 2 ms chunk floor, but at most an even split
    assert tiny.next_size(remaining=8) == 4


# -- progress model ----------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_model_throttles_and_computes_rate_and_eta():
    clock = FakeClock()
    seen = []
    model = ProgressModel(total=100, clock=clock, max_rate=10)
    model.listeners.append(lambda m, final: seen.append((m.done, final)))
    for _ in range(10):
        model.add(1)  # same instant: throttled, no refresh
    assert seen == []
    clock.now += 0.5
    model.add(10)
    assert seen == [(20, False)]
    assert model.rate == pytest.approx(40.0)  # 20 items in 0.5 s
    assert model.eta == pytest.approx(80 / 40.0)
    assert model.fraction == pytest.approx(0.2)
    clock.now += 0.05
    model.add(1, failed=1)
    assert len(seen) == 1  # 0.05 s < 1/10 s: throttled
    model.finish()
    assert seen[-1] == (21, True)
    assert model.failed == 1
    assert model.elapsed == pytest.approx(0.55)


def test_progress_worker_states():
    model = ProgressModel(clock=FakeClock())
    model.worker(11).state = "busy"
    model.worker(12).state = "idle"
    assert model.running == 1
    assert model.eta is None  # unknown total


# -- resources --------------------------------------------------------------------------------
def _cgroup_tree(tmp_path, proc_line: str, files: dict[str, str]):
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    root = tmp_path / "fs"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_quota(tmp_path):
    proc, root = _cgroup_tree(tmp_path, "0::/user/app", {"user/app/cpu.max": "150000 100000\n"})
    assert resources.cgroup_cpu_limit(proc, root) == 2


def test_cgroup_v2_quota_on_a_parent(tmp_path):
    proc, root = _cgroup_tree(
        tmp_path,
        "0::/user/app",
        {"user/app/cpu.max": "max 100000\n", "user/cpu.max": "100000 100000\n"},
    )
    assert resources.cgroup_cpu_limit(proc, root) == 1


def test_cgroup_v2_no_quota(tmp_path):
    proc, root = _cgroup_tree(tmp_path, "0::/", {"cpu.max": "max 100000\n"})
    assert resources.cgroup_cpu_limit(proc, root) is None


def test_cgroup_v1_quota(tmp_path):
    proc, root = _cgroup_tree(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert resources.cgroup_cpu_limit(proc, root) == 3


def test_cgroup_v1_unlimited(tmp_path):
    proc, root = _cgroup_tree(
        tmp_path,
        "4:cpu,cpuacct:/",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert resources.cgroup_cpu_limit(proc, root) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_cpu_count_honours_affinity():
    out = run_python(
        "import os, ipyparmap as pm; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "print(pm.cpu_count())"
    )
    assert out.stdout.strip() == "1", out.stderr


def test_resolve_workers_caps_absurd_counts():
    assert resources.resolve_workers(None, cpus=4) == 4
    assert resources.resolve_workers(3, cpus=4) == 3
    with pytest.raises(ValueError, match="far more than the 2 usable CPUs"):
        resources.resolve_workers(100_000, cpus=2)


def test_describe_exit():
    assert resources.describe_exit(3) == "exited with code 3"
    assert "SIGKILL" in resources.describe_exit(-9) and "out of memory" in resources.describe_exit(
        -9
    )
    assert resources.describe_exit(-11) == "killed by SIGSEGV"
    assert resources.signal_name(0) is None


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "psutil"])
def test_rss_bytes_of_a_live_and_of_a_gone_process(monkeypatch, proc):
    """Read from /proc/PID/statm where there is one (no psutil import in the caller),
    else through psutil: the same figure, the resident pages."""
    import subprocess

    import psutil

    monkeypatch.setattr(resources.system, "has_proc", lambda: proc)
    code = "import sys; print('up', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdout.readline() == b"up\n"  # booted: now it waits, unchanging
        ours = resources.rss_bytes(child.pid)
        theirs = psutil.Process(child.pid).memory_info().rss
        assert ours == theirs  # an idle process: its resident pages do not move
    finally:
        child.communicate(b"")
    assert resources.rss_bytes(child.pid) is None


def test_thread_limits_leave_user_settings(monkeypatch):
    monkeypatch.setenv("MKL_NUM_THREADS", "5")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = resources.thread_limits(workers=2, cpus=8)
    assert env["OMP_NUM_THREADS"] == "4"
    assert "MKL_NUM_THREADS" not in env


# -- text views -------------------------------------------------------------------------------
class TTY(io.StringIO):
    def isatty(self):
        return True


def test_text_progress_draws_on_a_terminal_after_the_delay(monkeypatch):
    stream = TTY()
    monkeypatch.setattr(sys, "stderr", stream)
    clock = FakeClock()
    model = ProgressModel(total=10, clock=clock)
    view = textui.TextProgress(delay=0.5)
    model.listeners.append(view)
    clock.now += 0.2
    model.add(2)
    assert stream.getvalue() == ""  # a short run draws nothing
    clock.now += 0.6
    model.add(3)
    assert "\r" in stream.getvalue() and "5/10 done" in stream.getvalue()
    model.finish()
    assert stream.getvalue().endswith("\n")


def test_text_progress_quiet_off_a_terminal_unless_asked(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    clock = FakeClock()
    for summary, expected in ((False, ""), (True, "3/3 done, 0 failed")):
        model = ProgressModel(total=3, clock=clock)
        model.listeners.append(textui.TextProgress(summary=summary))
        clock.now += 1
        model.add(3)
        model.finish()
        assert expected in stream.getvalue()
        if not expected:
            assert stream.getvalue() == ""


def test_output_printer_tags_each_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    printer = textui.OutputPrinter()
    printer(3, "stdout", "a\nb")
    printer(3, "stdout", "c\n")
    printer(4, "stdout", "d\n")
    assert out.getvalue() == "[3] a\n[3] bc\n[4] d\n"


def test_format_seconds():
    assert textui.format_seconds(3.21) == "3.2 s"
    assert textui.format_seconds(75) == "1:15"
    assert textui.format_seconds(3700) == "1:01:40"
    assert textui.format_seconds(None) == "?"
    assert math.isfinite(0.0)


def test_repo_root_is_the_package_parent():
    assert (ROOT / "ipyparmap" / "__init__.py").exists()


def test_a_new_workers_board_reads_idle_before_it_boots():
    """Chunk ids start at 0: a fresh (zeroed) board would read "chunk 0, position 0",
    and a worker dying before its first store would be blamed for item 0 of chunk 0."""
    from ipyparmap.process.pool import spawn_worker, worker_env
    from ipyparmap.wire import board as B

    worker = spawn_worker(worker_env())
    try:
        chunk_id, position, span, _started = worker.board.read()
        assert (chunk_id, position, span) == (B.IDLE, B.LOADING, 1)
    finally:
        worker.kill()
        worker.reap(5)
        worker.close()


def test_chunk_ids_are_unique_across_runs():
    """A warm worker's board may still show a chunk of an earlier run: ids never repeat
    within the process, so it cannot be mistaken for a chunk of this one."""
    from ipyparmap.engine.feed import ItemFeed

    def ids(n):
        feed = ItemFeed(abs, range(n), plan.ChunkPlanner(1, chunksize=1))
        return [feed.next_chunk(None).id for _ in range(n)]

    first, second = ids(5), ids(5)
    assert len(set(first + second)) == 10 and min(second) > max(first)


def test_a_remainder_worth_less_than_a_message_goes_as_one_chunk():
    planner = plan.ChunkPlanner(2)
    planner.record(1000, 1e-4)  # 0.1 us items: 8 of them are far below SPLIT_SECONDS
    planner.largest = 64
    assert planner.next_size(remaining=8) == 8  # not split over the two workers
    slow = plan.ChunkPlanner(2)
    slow.record(10, 0.1)  # 10 ms items: worth splitting
    slow.largest = 64
    assert slow.next_size(remaining=8) == 2


def test_a_call_starts_from_what_the_last_call_of_its_function_measured():
    first = plan.ChunkPlanner(2)
    first.recall(b"key-a")
    assert first.per_item is None and first.next_size(2) == 1  # never seen: measure
    first.record(4, 4e-6)
    first.remember(b"key-a")
    again = plan.ChunkPlanner(2)
    again.recall(b"key-a")
    assert again.per_item == pytest.approx(1e-6)
    assert again.next_size(2) == 2  # two tiny items: one message to one worker
    other = plan.ChunkPlanner(2)
    other.recall(b"key-b")  # another function knows nothing
    assert other.per_item is None
    fixed = plan.ChunkPlanner(2, chunksize=1)
    fixed.recall(b"key-a")  # a fixed chunksize is never overridden
    assert fixed.next_size(2) == 1


def test_a_misleading_remembered_time_still_grows_chunks_gradually():
    remembered = plan.ChunkPlanner(2)
    remembered.record(1, 1e-7)
    remembered.remember(b"key-c")
    planner = plan.ChunkPlanner(2)
    planner.recall(b"key-c")  # this call's items may be far slower than the last call's
    assert planner.next_size(remaining=100) <= plan.GROWTH


def test_tinier_items_run_in_larger_timing_blocks():
    def stride(per_item):
        planner = plan.ChunkPlanner(2)
        planner.record(1000, per_item * 1000)
        return planner.timing_stride()

    assert stride(1e-3) == 1  # slow items: a clock read each
    assert stride(1e-6) == plan.FAST_STRIDE  # tiny: blocks of 64
    assert plan.FAST_STRIDE < stride(1e-7) < plan.MAX_STRIDE  # tinier: ~20 us blocks
    assert stride(3e-8) == plan.MAX_STRIDE  # W1's x*x: the largest block
    assert stride(0.0) == plan.MAX_STRIDE


def test_after_import_runs_its_hook_before_names_are_copied_out(tmp_path, monkeypatch):
    from ipyparmap.importhooks import AfterImport

    (tmp_path / "watched_mod.py").write_text("def show():\n    return 'original'\n")
    (tmp_path / "broken_hook_mod.py").write_text("value = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("watched_mod", "broken_hook_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    def patch(module):
        module.show = lambda: "patched"

    def fail(module):
        raise RuntimeError("a hook that fails")

    finder = AfterImport({"watched_mod": patch, "broken_hook_mod": fail}, once=True).install()
    try:
        from watched_mod import show  # the name copied out is the patched one

        assert show() == "patched"
        assert finder in sys.meta_path  # one name left to wait for
        import broken_hook_mod  # the hook's failure does not break the import

        assert broken_hook_mod.value == 1
        assert finder not in sys.meta_path  # once: gone when every name was seen
    finally:
        finder.remove()
    seen = []
    again = AfterImport({"watched_mod": seen.append}).install()  # imported already: at once
    try:
        assert seen == [sys.modules["watched_mod"]] and again in sys.meta_path
        (tmp_path / "added_later_mod.py").write_text("value = 1\n")
        monkeypatch.delitem(sys.modules, "added_later_mod", raising=False)
        again.add("added_later_mod", seen.append)  # watched from now on
        import added_later_mod

        assert seen[-1] is added_later_mod
    finally:
        again.remove()
