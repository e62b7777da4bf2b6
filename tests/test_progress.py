"""The UI-free progress model (fake clock), the text view's modes, and how a real run feeds it."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import run_python

from ipyparmap.figures import format_seconds
from ipyparmap.views import textui
from ipyparmap.views.progress import BUSY, DEAD, IDLE, ProgressModel


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def recorder(model: ProgressModel) -> list:
    calls: list = []
    model.listeners.append(lambda m, final: calls.append((m.done, m.failed, final)))
    return calls


# -- throttling -------------------------------------------------------------------------------
def test_refreshes_are_throttled_to_max_rate(clock):
    model = ProgressModel(total=10_000, clock=clock, max_rate=10)
    calls = recorder(model)
    for _ in range(10_000):  # one item every millisecond for 10 s of fake time
        clock.advance(0.001)
        model.add(1)
    assert 95 <= len(calls) <= 100  # ~10 per second, never more
    assert all(not final for *_, final in calls)
    model.finish()
    assert calls[-1] == (10_000, 0, True)


def test_maybe_refresh_without_news_still_refreshes_on_time(clock):
    model = ProgressModel(total=5, clock=clock, max_rate=4)
    calls = recorder(model)
    assert model.maybe_refresh() is False  # nothing elapsed yet
    clock.advance(0.2)
    assert model.maybe_refresh() is False  # 0.2 s < 1/4 s
    clock.advance(0.1)
    assert model.maybe_refresh() is True  # elapsed time and ETA move even without items
    assert calls == [(0, 0, False)]


def test_finish_always_notifies_once_with_final(clock):
    model = ProgressModel(total=3, clock=clock)
    calls = recorder(model)
    model.add(3)  # same instant: throttled
    model.finish()
    assert calls == [(3, 0, True)]


# -- figures ----------------------------------------------------------------------------------
def test_rate_starts_with_the_first_sample_then_smooths(clock):
    model = ProgressModel(total=1000, clock=clock, max_rate=10)
    clock.advance(1.0)
    model.add(100)
    assert model.rate == pytest.approx(100.0)  # the first sample counts fully
    clock.advance(1.0)
    model.add(200)
    assert model.rate == pytest.approx(0.7 * 100 + 0.3 * 200)
    for _ in range(40):  # a steady 50 items/s: the smoothed rate converges to it
        clock.advance(0.2)
        model.add(10)
    assert model.rate == pytest.approx(50.0, rel=0.01)


def test_eta_elapsed_and_fraction(clock):
    model = ProgressModel(total=100, clock=clock)
    assert model.eta is None  # no rate yet
    assert model.fraction == 0.0
    clock.advance(2.0)
    model.add(40)
    assert model.eta == pytest.approx(60 / 20.0)
    assert model.fraction == pytest.approx(0.4)
    assert model.elapsed == pytest.approx(2.0)
    clock.advance(1.0)
    model.add(60)
    model.finish()
    clock.advance(5.0)  # after the end, elapsed stays the wall time of the run
    assert model.elapsed == pytest.approx(3.0)
    assert model.eta == 0.0
    assert model.average_rate == pytest.approx(100 / 3.0)


def test_unknown_total(clock):
    model = ProgressModel(total=None, clock=clock)
    clock.advance(1.0)
    model.add(7)
    assert model.eta is None and model.fraction is None
    assert not model.complete
    model.finish()
    assert model.complete  # an input of unknown length is complete when the run ends
    assert model.summary().startswith("7 done, 0 failed, 1.0 s")


def test_zero_total(clock):
    model = ProgressModel(total=0, clock=clock)
    model.finish()
    assert model.fraction is None
    assert model.complete
    assert model.summary() == "0/0 done, 0 failed, 0.00 s"


def test_worker_states_busy_time_and_busy_workers(clock):
    model = ProgressModel(total=8, clock=clock)
    a, b = model.worker(11), model.worker(12)
    assert model.worker(11) is a  # one record per pid
    assert a.state == "starting"
    a.state, a.current = BUSY, 3
    b.state = IDLE
    assert model.running == 1
    assert model.live_workers == 2
    b.state = DEAD
    model.worker(13).state = BUSY  # the replacement
    assert model.running == 2
    assert model.live_workers == 2
    assert model.busy_workers is None  # nothing ran yet
    clock.advance(2.0)
    a.busy, b.busy = 1.5, 2.5
    assert model.task_time == pytest.approx(4.0)
    assert model.busy_workers == pytest.approx(2.0)


# -- summary line -----------------------------------------------------------------------------
def test_summary_when_all_done(clock):
    model = ProgressModel(total=100, clock=clock)
    model.worker(1).busy = 3.0
    model.worker(2).busy = 3.4
    clock.advance(3.2)
    model.add(100)
    model.finish()
    assert model.summary() == "100/100 done, 0 failed, 3.2 s, workers busy 2.00 of 2"


def test_summary_of_a_short_run_has_no_busy_figure_and_counts_workers_not_replacements(clock):
    model = ProgressModel(total=5, clock=clock)
    model.worker(1).busy = 0.2
    model.worker(2).state = DEAD  # crashed and replaced
    model.worker(3).busy = 0.1
    model.worker(3).restarts = 1
    clock.advance(0.4)
    model.add(5, failed=1)
    model.finish()
    assert model.summary() == "4/5 done, 1 failed, 0.40 s, on 2 workers"  # done: succeeded


def test_a_worker_killed_at_the_end_still_counts(clock):
    model = ProgressModel(total=4, clock=clock)
    model.worker(1).state = IDLE
    model.worker(2).state = DEAD  # timed out on the last item: nobody replaced it
    clock.advance(1.0)
    model.add(4, failed=1)
    model.finish()
    assert model.summary() == "3/4 done, 1 failed, 1.0 s, on 2 workers"


def test_summary_with_failures_and_an_early_stop(clock):
    model = ProgressModel(total=100, clock=clock)
    model.worker(1).busy = 0.5
    clock.advance(0.5)
    model.add(37, failed=1)
    model.finish()
    # the items left when the run ended are counted as cancelled, as Results counts them
    # (and the busy figure is left out: the time spent on the cancelled ones is unknown)
    assert model.summary() == "36/100 done, 63 cancelled, 1 failed, 0.50 s, on 1 worker"


# -- robustness -------------------------------------------------------------------------------
def test_a_failing_view_is_switched_off_and_the_others_go_on(clock):
    model = ProgressModel(total=10, clock=clock)

    def broken(m, final):
        raise RuntimeError("comm closed")

    model.listeners.append(broken)
    calls = recorder(model)
    clock.advance(1.0)
    with pytest.warns(RuntimeWarning, match="switched off: RuntimeError: comm closed"):
        model.add(5)
    assert broken not in model.listeners
    model.finish()
    assert calls == [(5, 0, False), (5, 0, True)]


# -- formatting -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (0.0, "0.00 s"),
        (0.256, "0.26 s"),
        (3.21, "3.2 s"),
        (75, "1:15"),
        (3700, "1:01:40"),
    ],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
    assert textui.format_seconds(seconds) == text  # the text view uses the same


# -- the text view in its modes ---------------------------------------------------------------
def test_text_view_live_off_a_terminal_redraws_in_place(monkeypatch, clock):
    stream = io.StringIO()  # not a terminal, like a kernel's stderr
    monkeypatch.setattr(sys, "stderr", stream)
    model = ProgressModel(total=10, clock=clock)
    model.listeners.append(textui.TextProgress(live=True, delay=0.5))
    clock.advance(0.2)
    model.add(1)
    assert stream.getvalue() == ""  # shorter than the delay: nothing
    clock.advance(0.5)
    model.add(4)
    clock.advance(0.5)
    model.add(5)
    model.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3  # two redraws and the final line
    assert text.endswith("\n")
    assert "10/10 done, 0 failed" in text.rsplit("\r", 1)[1]


def test_text_view_not_live_on_a_terminal_when_told(monkeypatch, clock):
    class TTY(io.StringIO):
        def isatty(self):
            return True

    stream = TTY()
    monkeypatch.setattr(sys, "stderr", stream)
    model = ProgressModel(total=2, clock=clock)
    model.listeners.append(textui.TextProgress(live=False))
    clock.advance(1.0)
    model.add(2)
    model.finish()
    assert stream.getvalue() == ""  # not live, no summary asked, nothing drawn


# -- a real run feeds the model ---------------------------------------------------------------
def test_a_real_run_feeds_counts_workers_and_busy_time():
    out = run_python(
        """
        import time
        import ipyparmap as pm
        from ipyparmap import api
        from ipyparmap.views.progress import ProgressModel

        calls = []
        model = ProgressModel()
        model.listeners.append(lambda m, final: calls.append((m.done, final, m.elapsed)))
        api._progress_model = lambda mode: model  # the same hook the API uses
        res = pm.parmap(time.sleep, [0.05] * 40, workers=2, chunksize=1)  # ~1 s
        assert res.ok
        assert model.total == 40 and model.done == 40 and model.failed == 0
        assert [final for _, final, _ in calls].count(True) == 1 and calls[-1][1]
        assert calls[-1][0] == 40
        assert len(model.workers) == 2
        assert sum(w.done for w in model.workers.values()) == 40
        assert all(w.state == "idle" for w in model.workers.values())
        assert model.task_time >= 1.9  # 40 x 0.05 s of sleeping
        assert model.busy_workers is not None
        # the local engine samples busy workers' memory every 0.5 s and feeds the model
        assert any(w.rss for w in model.workers.values())
        # the throttle holds on a real clock: at most 10 refreshes per second, plus the end
        refreshes = sum(1 for _, final, _ in calls if not final)
        assert refreshes <= model.elapsed * 10 + 1, (refreshes, model.elapsed)
        # refreshes are monotonic in done
        dones = [d for d, _, _ in calls]
        assert dones == sorted(dones)
        print("OK", model.summary())
        pm.shutdown()
        """,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK 40/40 done, 0 failed" in out.stdout


def test_failures_reach_the_model():
    out = run_python(
        """
        import ipyparmap as pm
        from ipyparmap import api
        from ipyparmap.views.progress import ProgressModel

        model = ProgressModel()
        api._progress_model = lambda mode: model
        res = pm.parmap(lambda x: 1 / x, range(-3, 3), workers=2, errors="collect")
        assert len(res.failures) == 1
        assert (model.done, model.failed) == (6, 1)
        print("OK", model.summary())
        pm.shutdown()
        """,
        timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK 5/6 done, 1 error" in out.stdout  # the final line comes from the run's stats


# -- a model counting rows (the pandas accessors) -----------------------------------------
def test_a_model_counting_by_weights_reads_in_its_unit(clock):
    model = ProgressModel(clock=clock)
    model.count_by([7, 7, 3], "rows", before=5)  # 5 rows ran before, in the kernel
    model.set_items(3)
    assert (model.total, model.done, model.ok) == (22, 5, 5)
    clock.advance(1)
    model.add(1, indices=[1])
    model.add(1, 1, indices=(2,))  # a lost piece: its 3 rows failed
    assert (model.done, model.failed, model.items_done) == (15, 3, 2)
    # the rate counts only rows run since the start (7 in the first second), not `before`
    assert model.status_parts()[:3] == ["12/22 rows done", "3 failed", "7.0 rows/s"]
    model.finish()  # piece 0 never came back: its rows cancelled
    assert model.summary_parts()[:3] == ["12/22 rows done", "7 cancelled", "3 failed"]
    assert model.failure_parts() == ["3 failed"]


def test_an_unweighted_model_reads_as_before(clock):
    model = ProgressModel(clock=clock)
    model.set_items(4)
    model.add(2, indices=[0, 1])
    assert (model.total, model.done) == (4, 2)
    assert model.status_parts()[0] == "2/4 done" and "items/s" in model.status_parts()[2]


def test_text_status_line_counts_the_models_unit(clock):
    model = ProgressModel(clock=clock)
    model.count_by([10, 10], "rows")
    model.set_items(2)
    model.add(1, indices=[0])
    assert "10/20 rows done" in textui.status_line(model)
