"""The Jupyter progress panel without a browser.

Widget state is checked through a recording comm (every message ipywidgets would send to
a frontend) and a recording display (what would land in the cell's output, computed by
IPython's real display formatter). The last test runs notebooks in a real kernel with
nbclient and checks what a saved notebook holds.
"""

from __future__ import annotations

import copy
import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from types import SimpleNamespace

import comm
import nbformat
import pytest
from comm.base_comm import BaseComm
from conftest import ROOT, run_python
from IPython.core.formatters import DisplayFormatter
from nbclient import NotebookClient

from ipyparmap import api
from ipyparmap.views import textui, widget
from ipyparmap.views.progress import BUSY, DEAD, IDLE, ProgressModel
from ipyparmap.views.widget import WIDGET_VIEW, ProgressPanel, Summary


class FakeClock:
    def __init__(self):
        self.now = 50.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def comms(monkeypatch):
    """Every comm message ipywidgets sends: (comm_id, msg_type, data)."""
    log: list = []

    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            log.append(SimpleNamespace(id=self.comm_id, type=msg_type, data=copy.deepcopy(data)))

    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    return log


def updates(log, w, since: int = 0) -> list[dict]:
    """The state updates sent for widget ``w`` (log entries from ``since`` on)."""
    return [
        m.data["state"]
        for m in log[since:]
        if m.id == w.model_id and m.type == "comm_msg" and m.data.get("method") == "update"
    ]


class Screen:
    """A cell's output area: display/update_display with IPython's real formatter."""

    def __init__(self):
        self.formatter = DisplayFormatter()
        self.calls: list = []
        self.slots: dict = {}
        self.history: list = []  # every bundle published, in order

    def _bundle(self, obj, raw):
        return dict(obj) if raw else self.formatter.format(obj)[0]

    def display(self, obj, raw=False, display_id=None):
        assert display_id is True
        slot = f"slot{len(self.slots)}"
        self.slots[slot] = self._bundle(obj, raw)
        self.history.append(self.slots[slot])
        self.calls.append(("display", slot))
        return SimpleNamespace(display_id=slot)

    def update_display(self, obj, raw=False, display_id=None):
        assert display_id in self.slots
        self.slots[display_id] = self._bundle(obj, raw)
        self.history.append(self.slots[display_id])
        self.calls.append(("update", display_id))

    @property
    def only(self) -> dict:
        assert len(self.slots) == 1, self.slots
        return next(iter(self.slots.values()))


@pytest.fixture
def screen():
    return Screen()


def start(screen, total=100, workers=2, delay=0.5):
    clock = FakeClock()
    model = ProgressModel(total=total, clock=clock)
    for pid in range(11, 11 + workers):
        model.worker(pid).state = IDLE
    panel = ProgressPanel(delay=delay, display=screen.display, update_display=screen.update_display)
    model.listeners.append(panel)
    return model, clock, panel


def run_items(model, clock, pid, count, seconds=0.1, failed=0):
    state = model.worker(pid)
    state.state, state.current = BUSY, model.done
    clock.advance(seconds)
    state.busy += seconds
    state.done += count - failed
    model.add(count, failed)


# -- short runs -------------------------------------------------------------------------------
def test_a_short_run_shows_no_panel_only_the_summary(comms, screen):
    model, clock, panel = start(screen, total=10)
    run_items(model, clock, 11, 5, seconds=0.2)
    run_items(model, clock, 12, 5, seconds=0.1)
    model.finish()
    assert comms == []  # no widget was ever created
    assert panel.panel is None
    # the place was kept with an invisible placeholder, then filled with the summary
    assert screen.calls == [("display", "slot0"), ("update", "slot0")]
    bundle = screen.only
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"] == "parmap: 10/10 done, 0 failed, 0.30 s, on 2 workers"
    assert "10/10 done" in bundle["text/html"] and "ipyparmap-summary" in bundle["text/html"]


def test_a_run_with_no_refresh_at_all_displays_just_the_summary(comms, screen):
    model, _clock, _panel = start(screen, total=3)
    model.add(3)  # same instant: throttled, no refresh before the end
    model.finish()
    assert comms == []
    assert screen.calls == [("display", "slot0")]
    assert screen.only["text/plain"] == "parmap: 3/3 done, 0 failed, 0.00 s, on 2 workers"


def test_summary_object_renders_text_and_html():
    model = ProgressModel(total=4, clock=FakeClock())
    model.add(4, failed=1)
    model.finish()
    summary = Summary("work", model)
    assert repr(summary) == "work: 3/4 done, 1 failed, 0.00 s"  # done: the ones that succeeded
    html = summary._repr_mimebundle_()["text/html"]
    assert "#d9534f" in html  # the danger colour
    assert "width:100.0%" in html


# -- the panel --------------------------------------------------------------------------------
def test_a_long_run_builds_the_panel_and_updates_it(comms, screen):
    model, clock, panel = start(screen, total=100)
    run_items(model, clock, 11, 5, seconds=0.3)
    assert panel.panel is None  # 0.3 s: still nothing but the placeholder
    assert screen.only == {
        "text/plain": "parmap: starting",
        "text/html": "<div class='ipyparmap-summary'></div>",  # renders as nothing
    }
    run_items(model, clock, 12, 5, seconds=0.3)  # 0.6 s: the panel appears
    assert panel.panel is not None
    assert "ipyparmap-panel" in panel.panel._dom_classes
    bundle = screen.only
    assert bundle[WIDGET_VIEW]["model_id"] == panel.panel.model_id
    # readable without a widget frontend: not "VBox(children=...)"
    assert bundle["text/plain"].startswith("parmap: 10/100 done · 0 failed · ")
    assert "ETA" in bundle["text/plain"]
    assert "VBox" not in bundle["text/plain"]
    assert "ipyparmap-summary" in bundle["text/html"]

    bar, status = panel.bar, panel.status
    assert (bar.value, bar.max, bar.bar_style) == (10, 100, "")
    assert status.value.startswith("10/100 done · 0 failed · ")
    assert "items/s" in status.value and "ETA" in status.value
    assert panel.accordion.selected_index is None  # per-worker rows start collapsed
    assert panel.accordion.titles == ("Workers: 2 of 2 busy",)

    mark = len(comms)
    run_items(model, clock, 11, 30)
    assert bar.value == 40
    assert updates(comms, bar, mark) == [{"value": 40}]  # only what changed is sent

    for _ in range(6):
        run_items(model, clock, 12, 10)
    model.finish()
    assert (bar.value, bar.max, bar.bar_style) == (100, 100, "success")
    assert status.value == model.summary()
    assert status.value.startswith("100/100 done, 0 failed, ")
    final = screen.only  # the slot was updated with the final bundle
    assert screen.calls[-1] == ("update", "slot0")
    assert final[WIDGET_VIEW]["model_id"] == panel.panel.model_id
    assert re.fullmatch(
        r"parmap: 100/100 done, 0 failed, \d+\.\d s, workers busy \d\.\d\d of 2",
        final["text/plain"],
    ), final["text/plain"]
    assert "100/100 done, 0 failed" in final["text/html"]


@pytest.mark.parametrize("seconds", [0.05, 0.3, 2.0])
def test_every_bundle_of_the_slot_has_the_same_text_keys(comms, screen, seconds):
    """Placeholder, panel and summary all carry text/plain "parmap: ..." and a summary
    div, so output comparisons that ignore display updates (nbval) can normalise them."""
    model, clock, _panel = start(screen, total=40)
    for _ in range(4):
        run_items(model, clock, 11, 10, seconds=seconds)
    model.finish()
    assert screen.history
    for bundle in screen.history:
        assert set(bundle) - {WIDGET_VIEW} == {"text/plain", "text/html"}
        assert bundle["text/plain"].startswith("parmap: ")
        assert bundle["text/html"].startswith("<div class='ipyparmap-summary'")


def test_each_refresh_is_one_message_per_changed_widget(comms, screen):
    model, clock, panel = start(screen, total=100, delay=0)
    run_items(model, clock, 11, 10)
    mark = len(comms)
    # one refresh changes the bar's value and style, the status, the table and the title
    model.worker(12).state = DEAD
    model.worker(13).state = BUSY
    run_items(model, clock, 11, 10, seconds=0.5, failed=2)  # 0.5 s: the rows update too
    sent: dict = {}
    for m in comms[mark:]:
        assert m.type == "comm_msg" and m.data["method"] == "update"
        sent.setdefault(m.id, []).append(m.data["state"])
    assert all(len(states) == 1 for states in sent.values()), sent  # hold_sync batched
    assert sent[panel.bar.model_id] == [{"value": 20, "bar_style": "danger"}]
    assert set(sent) == {
        panel.bar.model_id,
        panel.status.model_id,
        panel.workers.model_id,
        panel.accordion.model_id,
    }


def test_failures_turn_the_bar_red_while_running_and_at_the_end(comms, screen):
    model, clock, panel = start(screen, total=20, delay=0)
    run_items(model, clock, 11, 5)
    assert panel.bar.bar_style == ""
    run_items(model, clock, 11, 5, failed=1)
    assert panel.bar.bar_style == "danger"
    assert "<b style='color:#d9534f'>1 failed</b>" in panel.status.value
    run_items(model, clock, 12, 10)
    model.finish()
    assert panel.bar.bar_style == "danger"
    assert screen.only["text/plain"].startswith("parmap: 19/20 done, 1 failed, ")


def test_a_stopped_run_ends_in_the_warning_style(comms, screen):
    model, clock, panel = start(screen, total=50, delay=0)
    run_items(model, clock, 11, 7)
    model.finish()  # interrupted: the runner finishes the model with items left
    assert (panel.bar.value, panel.bar.bar_style) == (7, "warning")
    assert screen.only["text/plain"].startswith("parmap: 7/50 done, 43 cancelled, ")


def test_an_input_of_unknown_length(comms, screen):
    model, clock, panel = start(screen, total=None, delay=0)
    run_items(model, clock, 11, 9)
    assert panel.bar.value == 0  # no fraction to show while running
    assert panel.status.value.startswith("9 done · 0 failed")
    model.finish()
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (1, 1, "success")
    assert screen.only["text/plain"].startswith("parmap: 9 done, 0 failed, ")


def test_worker_rows(comms, screen):
    model, clock, panel = start(screen, total=100, workers=3, delay=0)
    model.worker(11).rss = 50 * 1024 * 1024
    run_items(model, clock, 12, 4)
    model.worker(12).current = 17
    model.worker(13).state = DEAD
    model.worker(14).state = IDLE
    model.worker(14).restarts = 1
    clock.advance(0.2)
    model.maybe_refresh()
    assert "pid 14" not in panel.workers.value  # the rows update at most twice a second
    clock.advance(0.3)
    model.maybe_refresh()
    table = panel.workers.value
    rows = re.findall(r"<tr class='ipyparmap-worker'>(.*?)</tr>", table)
    assert len(rows) == 4
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    texts = [[re.sub(r"<[^>]+>", "", c) for c in row] for row in cells]
    assert texts[0] == ["pid 11", "idle", "", "0", "0.00 s", "50.0 MB", "0"]
    assert texts[1] == ["pid 12", "busy", "17", "4", "0.10 s", "", "0"]
    assert texts[2][:2] == ["pid 13", "dead"]
    assert texts[3][0] == "pid 14" and texts[3][-1] == "1"
    assert panel.accordion.titles == ("Workers: 1 of 3 busy, 1 restart",)


def test_worker_rows_of_other_engines_show_their_ids(comms, screen):
    model, clock, panel = start(screen, total=10, workers=0, delay=0)
    model.worker("tcp://10.0.0.5:40123").state = BUSY
    model.worker("host<1>:42").state = IDLE
    run_items(model, clock, "tcp://10.0.0.5:40123", 2)
    table = panel.workers.value
    assert "<td>10.0.0.5:40123</td>" in table  # as the report's timeline names it
    assert "<td>host&lt;1&gt;:42</td>" in table  # escaped


def test_a_blocking_run_has_no_cancel_button(comms, screen):
    model, clock, panel = start(screen)
    model.cancel = lambda: None  # a blocking run can be cancelled only by an interrupt
    run_items(model, clock, 11, 5, seconds=0.6)
    assert panel.panel is not None and panel.cancel_button is None


def test_the_cancel_button_of_a_background_run_cancels_it(comms, screen, no_leaks):
    import helpers
    from conftest import wait_for

    import ipyparmap as pm

    panel = ProgressPanel(delay=0.2, display=screen.display, update_display=screen.update_display)
    run = pm.parmap_async(
        helpers.sleepy, [(i, 0.1) for i in range(40)], workers=2, chunksize=1, progress=False
    )
    run.progress.listeners.append(panel)
    wait_for(
        lambda: panel.cancel_button is not None and run.progress.done >= 2,
        timeout=30,
        what="the panel with its Cancel button",
    )
    panel.cancel_button.click()  # what a click in the browser does, through the widget model
    with pytest.raises(pm.Cancelled) as info:
        run.result(timeout=30)
    assert panel.cancel_button.disabled
    assert 2 <= sum(not isinstance(v, pm.Failure) for v in info.value.results) < 40
    wait_for(lambda: panel.final, timeout=10)
    assert panel.cancel_button.layout.display == "none"  # gone once the run is over
    assert panel.bar.bar_style == "warning"


def test_a_run_stopped_by_its_first_failure_reads_the_same_everywhere(
    comms, screen, monkeypatch, no_leaks
):
    """Issue 14: the panel, the text bar, Results.summary() and the exception all give
    the run's figures from its RunStats: done, failures by kind, cancelled, total."""
    import helpers

    import ipyparmap as pm
    from ipyparmap.errors import render_error

    def fails_on_80(x):
        time.sleep(0.02)  # long enough for the panel, and items left to cancel
        return helpers.fail_on(x, bad=80)

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    model = ProgressModel()
    panel = ProgressPanel(delay=0, display=screen.display, update_display=screen.update_display)
    model.listeners += [panel, textui.TextProgress(summary=True, live=False)]
    monkeypatch.setattr(api, "_progress_model", lambda mode: model)
    with pytest.raises(pm.TaskError) as info:
        pm.parmap(fails_on_80, range(100), workers=2, chunksize=1)

    results = info.value.results
    line = results.summary()
    counts = re.match(r"(\d+)/(\d+) done, (\d+) cancelled, 1 error, ", line)
    assert counts, line
    done, total, cancelled = map(int, counts.groups())
    assert total == 100 and cancelled > 0 and done + cancelled + 1 == total
    assert done == sum(not isinstance(v, pm.Failure) for v in results)
    assert results.stats.failures == {"error": 1, "cancelled": cancelled}

    assert panel.panel is not None and panel.final  # the widget path, to its end
    assert re.sub(r"<[^>]+>", "", panel.status.value) == line  # the panel's last status
    assert "<b style='color:#d9534f'>1 error</b>" in panel.status.value
    assert (panel.bar.bar_style, panel.bar.value) == ("danger", done + 1)
    assert screen.only["text/plain"] == f"parmap: {line}"  # what a saved notebook shows
    assert model.summary() == line
    assert stderr.getvalue().rstrip("\n").endswith(f"] {line}")  # the text bar's last line
    assert f"partial results: {line} -> in" in render_error(info.value)[1]  # the exception


def test_a_run_with_a_timeout_shows_the_same_true_busy_figure_everywhere(
    comms, screen, monkeypatch, no_leaks
):
    """Issue 15: the timed-out item kept its worker busy until it was killed, so "workers
    busy" counts that time (it read 0.00x before), and every view shows the same figure."""
    import helpers

    import ipyparmap as pm

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    model = ProgressModel()
    panel = ProgressPanel(delay=0, display=screen.display, update_display=screen.update_display)
    model.listeners += [panel, textui.TextProgress(summary=True, live=False)]
    monkeypatch.setattr(api, "_progress_model", lambda mode: model)
    items = [(0, 0.3), (1, 30), (2, 0.3)]
    res = pm.parmap(helpers.sleepy, items, workers=2, timeout=0.8, errors="collect")

    stats = res.stats
    assert stats.failures == {"timeout": 1}
    assert stats.task_time >= 0.8 + 0.6 - 0.05  # the killed item's time is counted
    busy = re.search(r"workers busy (\d\.\d\d) of 2", res.summary())
    assert busy, res.summary()
    assert float(busy.group(1)) == pytest.approx(stats.busy_workers, abs=0.005)
    assert 0.9 < stats.busy_workers <= 2
    line = res.summary()
    assert re.sub(r"<[^>]+>", "", panel.status.value) == line  # the panel
    assert screen.only["text/plain"] == f"parmap: {line}"  # a saved notebook
    assert model.summary() == line
    assert stderr.getvalue().rstrip("\n").endswith(f"] {line}")  # the text bar
    report = res.report()._repr_html_()
    assert f"workers busy {busy.group(1)} of 2" in report  # the timeline's title
    assert f"{busy.group(1)} of 2 on average" in report  # the report's table
    assert busy.group(0) in res._repr_html_()


def test_a_panel_object_is_displayable_before_anything_ran():
    panel = ProgressPanel()
    assert repr(panel) == "parmap: starting"
    assert panel._repr_mimebundle_() == {
        "text/plain": "parmap: starting",
        "text/html": "<div class='ipyparmap-summary'></div>",
    }


# -- choosing the view ------------------------------------------------------------------------
def listener_types(model):
    return None if model is None else [type(v).__name__ for v in model.listeners]


def test_api_picks_the_panel_only_in_a_kernel_with_ipywidgets(monkeypatch):
    monkeypatch.setattr(widget, "in_kernel", lambda: False)
    monkeypatch.setattr(textui, "isatty", lambda stream: False)
    assert api._progress_model(False) is None
    assert api._progress_model("auto") is None  # a script writing to a file: nothing
    text = api._progress_model("widget")  # no kernel: a widget cannot show, text instead
    assert listener_types(text) == ["TextProgress"]
    assert text.listeners[0].summary and text.listeners[0].live is None
    assert listener_types(api._progress_model("text")) == ["TextProgress"]

    monkeypatch.setattr(widget, "in_kernel", lambda: True)
    model = api._progress_model("auto")
    assert listener_types(model) == ["ProgressPanel"]
    assert listener_types(api._progress_model("widget")) == ["ProgressPanel"]
    kernel_text = api._progress_model("text")
    assert listener_types(kernel_text) == ["TextProgress"]
    assert kernel_text.listeners[0].live is True and kernel_text.listeners[0].summary

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # ipywidgets not installed
    fallback = api._progress_model("auto")
    assert listener_types(fallback) == ["TextProgress"]
    assert fallback.listeners[0].live is True  # the notebook honours \r
    with pytest.warns(UserWarning, match="progress='widget' needs ipywidgets"):
        assert listener_types(api._progress_model("widget")) == ["TextProgress"]


def test_not_a_kernel_here_nor_in_terminal_ipython():
    assert widget.in_kernel() is False  # pytest, even with IPython and ipykernel imported
    out = run_python(
        """
        import ipykernel.zmqshell
        from IPython.terminal.interactiveshell import TerminalInteractiveShell
        shell = TerminalInteractiveShell.instance()
        from ipyparmap import api
        from ipyparmap.views import widget
        print(widget.in_kernel(), api._progress_model("auto"))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None"]  # stderr is a pipe here: no text bar either


def run_in_a_terminal(argv: list[str], env: dict, timeout: float = 90) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; return (code, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{argv} did not finish in {timeout} s: {out[-2000:]!r}")
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(master)


def test_terminal_ipython_gets_the_text_bar(tmp_path):
    code = (
        "import time, ipyparmap as pm; from ipyparmap.views.widget import in_kernel; "
        "print('KERNEL', in_kernel()); "
        "r = pm.parmap(time.sleep, [0.1] * 16, workers=2, chunksize=1); print('DONE', len(r))"
    )
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), TERM="dumb")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "IPython", "--simple-prompt", "--no-banner", "-c", code]
    returncode, out = run_in_a_terminal(argv, env)
    assert returncode == 0, out
    assert "KERNEL False" in out
    lines = out.split("\r")
    drawn = [line for line in lines if line.startswith("parmap [")]
    assert len(drawn) >= 2, out  # redrawn in place while running (the run lasts ~0.8 s)
    assert drawn[-1].startswith("parmap [########################] 16/16 done, 0 failed, ")
    assert "DONE 16" in out
    assert "Box(" not in out and "IntProgress" not in out


def test_choosing_a_view_in_a_script_imports_no_ipython_or_widgets():
    out = run_python(
        """
        import sys
        from ipyparmap import api
        for mode in ("auto", "widget", "text", False):
            api._progress_model(mode)
        print(sorted(m for m in ("IPython", "ipywidgets", "ipykernel", "comm") if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- a real kernel ----------------------------------------------------------------------------
NOTEBOOK = [
    """\
import time
import ipyparmap as pm
from ipyparmap.views.widget import in_kernel
assert in_kernel()

def slow(x):
    time.sleep(0.15)
    print("child-out", x)
    return x * x

def fails_on_3(x):
    time.sleep(0.15)
    if x == 3:
        raise ValueError("three")
    return x""",
    "res = pm.parmap(slow, range(12), workers=2, chunksize=1)\nassert res.ok",
    "short = pm.parmap(abs, range(5), workers=2)",
    'bad = pm.parmap(fails_on_3, range(10), workers=2, chunksize=1, errors="collect")',
    "pm.shutdown()",
]


def kernel_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    return env


def panel_outputs(cell) -> list[dict]:
    return [o["data"] for o in cell.outputs if o["output_type"] == "display_data"]


def child(state: dict, ref: str) -> dict:
    return state[ref.removeprefix("IPY_MODEL_")]


@pytest.mark.timeout(300)
def test_in_a_real_kernel_the_saved_notebook_holds_widget_and_readable_summary(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK]
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        store_widget_state=True,
    )
    client.execute(env=kernel_env(tmp_path))
    nbformat.validate(nb)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]

    def panel_state(data):
        vbox = state[data[WIDGET_VIEW]["model_id"]]
        assert vbox["model_name"] == "VBoxModel"
        assert "ipyparmap-panel" in vbox["state"]["_dom_classes"]
        row = child(state, vbox["state"]["children"][0])
        bar = child(state, row["state"]["children"][0])
        assert bar["model_name"] == "IntProgressModel"
        return bar["state"]

    # the long run: one display slot, the live panel plus the final summary as text
    (data,) = panel_outputs(nb.cells[1])
    assert re.fullmatch(
        r"parmap: 12/12 done, 0 failed, \d+\.\d+ s, workers busy \d\.\d\d of 2",
        data["text/plain"],
    ), data["text/plain"]
    assert "12/12 done, 0 failed" in data["text/html"]
    bar = panel_state(data)
    assert (bar["value"], bar["max"], bar["bar_style"]) == (12, 12, "success")
    stdout = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.get("name") == "stdout")
    assert "[3] child-out 3" in stdout  # worker output reaches the cell

    # the short run: no widget, just the summary
    (data,) = panel_outputs(nb.cells[2])
    assert WIDGET_VIEW not in data
    assert data["text/plain"].startswith("parmap: 5/5 done, 0 failed, ")

    # failures: the danger style, and the count in the summary
    (data,) = panel_outputs(nb.cells[3])
    assert data["text/plain"].startswith("parmap: 9/10 done, 1 error, ")  # as res.summary()
    assert panel_state(data)["bar_style"] == "danger"
