"""What items print, log and display reaches the user intact (real worker processes).

- Nothing printed before a worker dies is lost, whatever killed it (the status board's
  output log, wire/board.py; read by engine/local.py after a death).
- Each item's stream is its own: partial lines never merge across items, and lines
  redrawn with ``\\r`` show as one line per item (views/textui.py's OutputPrinter).
- Log records go through this process's logging (process/capture.py ships them).
- Rich displays are kept per item, and shown as tagged text without a notebook.

Kernel and notebook counterparts: tests/test_kernel_output.py.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import ROOT, notebook_function, run_python, wait_for

import ipyparmap as pm
from ipyparmap.wire import board as B


def render(text: str) -> list[str]:
    """What a terminal shows for ``text``: ``\\r`` returns to the start of the line and
    what follows overwrites it (trailing blanks dropped)."""
    lines, column = [""], 0
    for char in text:
        if char == "\n":
            lines.append("")
            column = 0
        elif char == "\r":
            column = 0
        else:
            line = lines[-1].ljust(column)
            lines[-1] = line[:column] + char + line[column + 1 :]
            column += 1
    return [line.rstrip() for line in lines if line.strip()]


def run_in_terminal(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a fresh interpreter whose stdout and stderr are one terminal."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            assert ready, f"no output for {timeout} s: {out[-2000:]!r}"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        proc.wait(timeout)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode().replace("\r\n", "\n")  # the terminal's own newline translation


# -- nothing printed before a death is lost ---------------------------------------------------
DEATHS = {
    "os._exit": "os._exit(3)",
    "SIGKILL": "os.kill(os.getpid(), signal.SIGKILL)",
    "segfault": "import ctypes; ctypes.string_at(0)",
    # the OOM killer's way: SIGKILL from another process, while the item runs
    "SIGKILL from outside": "open(marker, 'w').write(str(os.getpid())); time.sleep(60)",
    "timeout": "time.sleep(60)",
}


def _dying_item(death: str, marker: str):
    return notebook_function(
        f"""
        import os, signal, sys, time
        def item(x):
            if x == 1:
                print("flushed", x, flush=True)
                print("unflushed", x)
                sys.stderr.write("to stderr\\n")
                sys.stdout.write("partial, no newline")
                {DEATHS[death]}
            return x
        """,
        "item",
        marker=marker,
    )


def _kill_when_marked(marker: str) -> threading.Thread:
    def read() -> str:
        try:
            with open(marker) as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def kill():
        os.kill(int(wait_for(read, timeout=60, what="the item's pid")), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("death", list(DEATHS))
def test_a_line_printed_right_before_the_worker_dies_is_kept(death, tmp_path, capfd):
    marker = str(tmp_path / "pid")
    item = _dying_item(death, marker)
    if death == "SIGKILL from outside":
        _kill_when_marked(marker)
    options = {"timeout": 1.5} if death == "timeout" else {}
    res = pm.parmap(item, range(3), workers=2, errors="collect", progress=False, **options)
    assert res[0] == 0 and res[2] == 2
    assert res[1].kind == ("timeout" if death == "timeout" else "crashed")
    kept = res.outputs[1]
    assert kept.stdout == "flushed 1\nunflushed 1\npartial, no newline"
    assert kept.stderr == "to stderr\n"
    out, err = capfd.readouterr()
    assert out.splitlines() == ["[1] flushed 1", "[1] unflushed 1", "[1] partial, no newline"]
    assert "[1] to stderr\n" in err


def test_an_interrupt_keeps_what_killed_items_printed(tmp_path):
    """Ctrl-C kills the busy workers: what their items printed just before (not yet
    streamed: that happens every 0.1 s) is still kept, from the pipe and the board."""
    import _thread

    marker = tmp_path / "printed"
    talk = notebook_function(
        """
        def talk(x):
            import pathlib, sys, time
            print(f"about to wait {x}")
            sys.stdout.write(f"no newline {x}")
            pathlib.Path(MARKER + str(x)).touch()
            time.sleep(60)
        """,
        "talk",
        MARKER=str(marker),
    )
    timer = threading.Thread(
        target=lambda: (
            wait_for(lambda: all(os.path.exists(f"{marker}{i}") for i in (0, 1)))
            and _thread.interrupt_main()
        )
    )
    timer.start()
    try:
        with pytest.raises(pm.Interrupted) as info:
            pm.parmap(talk, range(2), workers=2, chunksize=1, progress=False)
    finally:
        timer.join(30)
    outputs = info.value.results.outputs
    for i in (0, 1):
        assert outputs[i].stdout == f"about to wait {i}\nno newline {i}"


def test_what_was_sent_before_a_death_is_not_shown_twice(capfd):
    """The board keeps only what no message carried: text streamed earlier (an Output
    after 0.1 s) and the text after it both arrive, each once."""
    item = notebook_function(
        """
        import os, time
        def item(x):
            print("early", x)
            time.sleep(0.4)  # the worker streams it meanwhile
            print("late", x)
            if x == 0:
                os._exit(1)
            return x
        """,
        "item",
    )
    res = pm.parmap(item, range(2), workers=2, errors="collect", progress=False)
    assert res[0].kind == "crashed" and res[1] == 1
    assert res.outputs[0].stdout == "early 0\nlate 0\n"
    out = capfd.readouterr().out
    assert sorted(out.splitlines()) == ["[0] early 0", "[0] late 0", "[1] early 1", "[1] late 1"]


def test_more_text_than_the_board_holds_is_kept_when_the_worker_dies():
    """A full output log is sent at once and starts over: 1 MB printed in a burst, then
    a crash, all arrive."""
    item = notebook_function(
        """
        import os, sys
        def item(x):
            for i in range(1024):
                sys.stdout.write(f"{i:05d} " + "x" * 1017 + "\\n")
            sys.stdout.write("last words")
            os._exit(1)
        """,
        "item",
    )
    res = pm.parmap(item, [0], workers=1, errors="collect", progress=False)
    assert res[0].kind == "crashed"
    text = res.outputs[0].stdout
    assert len(text) == 1024 * 1024 + len("last words")
    lines = text.splitlines()
    assert [int(line[:5]) for line in lines[:-1]] == list(range(1024))
    assert lines[-1] == "last words"


def test_the_board_keeps_only_what_no_message_carried():
    """wire/board.py's output log on its own: entries, sequence numbers, a torn entry."""
    import mmap

    board = B.Board(mmap.mmap(-1, B.BOARD_SIZE))
    board.reset()
    assert board.unsent() == []
    assert board.log_append(7, 0, "stdout", b"one\n")
    assert board.log_append(7, 1, "log", b"pickled")
    assert board.unsent() == [(7, 0, "stdout", b"one\n"), (7, 1, "log", b"pickled")]
    board.seen = board.log_sequence()  # a message carried it, and the worker died before
    assert board.unsent() == []  # ...it could empty the log: nothing is shown twice
    board.log_sent()
    assert board.unsent() == []
    assert board.log_append(8, 2, "stderr", b"two")
    assert board.unsent() == [(8, 2, "stderr", b"two")]
    board.shared[2] += 5  # a length stored ahead of its bytes: the torn end is skipped
    assert board.unsent() == [(8, 2, "stderr", b"two")]
    assert not board.log_append(8, 2, "stdout", b"x" * B.BOARD_SIZE)  # full: caller sends
    assert board.forwarding() == 0  # a new board: nothing forwarded (a drop-in Process)
    board.set_forwarding(3, b"levels")
    assert (board.forwarding(), board.levels()) == (3, b"levels")
    assert board.unsent() == [(8, 2, "stderr", b"two")]  # the levels sit apart from the log
    board.close()


def test_workers_take_the_kernels_logging_levels_logger_by_logger():
    """A worker ships what the parent's loggers of the same name let through, no more:
    the parent's own DEBUG logger (a kernel's IPKernelApp is one) does not make every
    worker ship every DEBUG record."""
    out = run_python(
        """
        import logging, pickle
        import ipyparmap as pm
        from ipyparmap.process.capture import kernel_log_levels

        logging.getLogger("kernel.app").setLevel(logging.DEBUG)
        logging.getLogger("mine").setLevel(logging.INFO)
        version, levels = kernel_log_levels()
        assert kernel_log_levels() == (version, levels)  # cached
        assert pickle.loads(levels) == (
            logging.WARNING, 0, {"kernel.app": logging.DEBUG, "mine": logging.INFO}
        )

        def item(x):
            return [logging.getLogger(name).getEffectiveLevel() for name in ("lib", "mine")]

        print(pm.parmap(item, range(2), workers=2, progress=False))
        logging.getLogger("lib").setLevel(logging.DEBUG)  # seen by the next run
        assert kernel_log_levels()[0] == version + 1
        print(pm.parmap(item, range(2), workers=2, progress=False))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[[30, 20], [30, 20]]", "[[10, 20], [10, 20]]"]


# -- each item's stream is its own ------------------------------------------------------------
def test_partial_lines_never_run_into_another_items_output(capfd):
    item = notebook_function(
        """
        import sys, time
        def item(x):
            sys.stdout.write(f"start {x}")
            time.sleep(0.25 if x == 0 else 0.05)
            sys.stdout.write(f" end {x}")
            return x
        """,
        "item",
    )
    res = pm.parmap(item, range(3), workers=2, progress=False)
    assert res == [0, 1, 2]
    assert {i: o.stdout for i, o in res.outputs.items()} == {
        i: f"start {i} end {i}" for i in range(3)
    }
    out = capfd.readouterr().out
    assert sorted(out.splitlines()) == [f"[{i}] start {i} end {i}" for i in range(3)]


_BARS = """
import sys, time
import ipyparmap as pm

def bar(x):
    for step in range(6):
        sys.stderr.write(f"\\rbar {x}: {step * 20:3d}% " + "#" * step)
        time.sleep(0.06)
    sys.stderr.write("\\n")
    print(f"done {x}")
    return x

res = pm.parmap(bar, range(4), workers=2, progress=PROGRESS)
print("results", res.values())
print("raw", repr(res.outputs[3].stderr))
"""


def test_progress_bars_of_two_items_stay_apart_on_a_terminal():
    screen = render(run_in_terminal(_BARS.replace("PROGRESS", "False")))
    bars = [line for line in screen if line.startswith("[") and "bar " in line]
    assert sorted(bars) == [f"[{x}] bar {x}: 100% #####" for x in range(4)], screen
    assert sorted(line for line in screen if "done" in line) == [
        f"[{x}] done {x}" for x in range(4)
    ]
    assert "results [0, 1, 2, 3]" in screen
    raw = "".join(f"\rbar 3: {step * 20:3d}% " + "#" * step for step in range(6)) + "\n"
    assert f"raw {raw!r}" in screen  # res.outputs keeps the text as written


def test_the_text_bar_and_workers_lines_share_a_terminal():
    screen = render(run_in_terminal(_BARS.replace("PROGRESS", "'text'")))
    for line in screen:  # every line is one thing: an item's, the bar's, or ours
        assert (
            line.startswith(("[0] ", "[1] ", "[2] ", "[3] ", "parmap [", "results", "raw"))
            and line.count("[") - line.count("[#") - line.count("[.") <= 2
        ), screen
    assert sorted(line for line in screen if " bar " in line) == [
        f"[{x}] bar {x}: 100% #####" for x in range(4)
    ]
    assert any(line.startswith("parmap [") and "4/4 done" in line for line in screen), screen


def test_unfinished_lines_show_their_final_state_in_a_file(capfd):
    item = notebook_function(
        """
        import sys
        def item(x):
            for step in range(3):
                sys.stdout.write(f"\\r{x}: step {step}")
            return x
        """,
        "item",
    )
    res = pm.parmap(item, range(2), workers=2, progress=False)
    assert res.outputs[1].stdout == "\r1: step 0\r1: step 1\r1: step 2"
    out = capfd.readouterr().out
    assert "\r" not in out  # a file gets no redrawing, only each line's final state
    assert sorted(out.splitlines()) == ["[0] 0: step 2", "[1] 1: step 2"]


# -- logging ----------------------------------------------------------------------------------
_LOGGING = """
import logging, sys
import ipyparmap as pm

logging.basicConfig(level=logging.INFO, format="FMT %(levelname)s %(name)s | %(message)s",
                    stream=sys.stdout)
logging.getLogger("chatty").setLevel(logging.DEBUG)

def item(x):
    log = logging.getLogger("work")
    log.debug("hidden %d", x)
    log.info("info %d", x)
    log.warning("warning %s", x)
    logging.getLogger("chatty").debug("debug shown %d", x)
    if x == 1:
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("failed %d", x)
    return x

res = pm.parmap(item, range(2), workers=2, progress=False)
print("kept", [(r.levelname, r.getMessage(), r.parmap_item) for r in res.outputs[1].logs])
"""


def test_worker_log_records_go_through_the_parents_logging():
    out = run_python(_LOGGING)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for x in range(2):
        assert f"FMT INFO work | [{x}] info {x}" in lines
        assert f"FMT WARNING work | [{x}] warning {x}" in lines
        assert f"FMT DEBUG chatty | [{x}] debug shown {x}" in lines
    assert "hidden" not in out.stdout + out.stderr
    assert "FMT ERROR work | [1] failed 1" in lines
    assert "ZeroDivisionError: division by zero" in lines  # the traceback, as text
    assert (
        "kept [('INFO', 'info 1', 1), ('WARNING', 'warning 1', 1), ('DEBUG', 'debug shown 1', 1), "
        "('ERROR', 'failed 1', 1)]"
    ) in lines


def test_without_logging_configured_warnings_still_reach_stderr():
    out = run_python(
        """
        import logging
        import ipyparmap as pm

        def item(x):
            logging.getLogger("work").info("quiet %d", x)
            logging.getLogger("work").warning("loud %d", x)
            return x

        pm.parmap(item, range(2), workers=2, progress=False)
        """
    )
    assert out.returncode == 0, out.stderr
    assert sorted(out.stderr.splitlines()) == ["[0] loud 0", "[1] loud 1"]  # Python's last resort
    assert "quiet" not in out.stdout + out.stderr


# -- rich displays ----------------------------------------------------------------------------
@pytest.mark.parametrize("shell", [False, True], ids=["script", "terminal IPython"])
def test_displays_are_kept_per_item_and_shown_as_text_without_a_notebook(shell, capfd):
    if shell:  # an IPython shell that is no kernel prints displays: ours are tagged
        from IPython.core.interactiveshell import InteractiveShell

        InteractiveShell.instance()
    item = notebook_function(
        """
        def item(x):
            class Table:
                def _repr_html_(self):
                    return f"<table><td>{x}</td></table>"
                def __repr__(self):
                    return f"Table({x})"
            print("before", x)
            display(Table())  # no import: a builtin in a notebook, and in workers
            return x
        """,
        "item",
    )
    res = pm.parmap(item, range(2), workers=2, progress=False)
    assert res == [0, 1]
    shown = res.outputs[1].displays
    assert len(shown) == 1
    assert shown[0].data == {"text/html": "<table><td>1</td></table>", "text/plain": "Table(1)"}
    assert shown[0]._repr_mimebundle_() == (shown[0].data, {})
    out = capfd.readouterr().out
    assert sorted(out.splitlines()) == [
        "[0] Table(0)",
        "[0] before 0",
        "[1] Table(1)",
        "[1] before 1",
    ]


def test_ipython_display_and_matplotlib_in_a_worker():
    pytest.importorskip("matplotlib")
    item = notebook_function(
        """
        def item(x):
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from IPython.display import HTML, display
            display(HTML(f"<b>{x}</b>"), metadata={"item": x})
            plt.plot([0, x])
            plt.show()
            return x
        """,
        "item",
    )
    res = pm.parmap(item, range(2), workers=2, progress=False)
    html, figure = res.outputs[1].displays
    assert html.data["text/html"] == "<b>1</b>" and html.metadata == {"item": 1}
    assert figure.data["text/plain"].startswith("<Figure size")
    import base64

    assert base64.b64decode(figure.data["image/png"]).startswith(b"\x89PNG")


def test_display_in_a_worker_never_imports_ipython():
    item = notebook_function(
        """
        import sys
        def item(x):
            display({"x": x})
            return "IPython" in sys.modules
        """,
        "item",
    )
    pm.shutdown()  # a fresh worker: another test's may have imported IPython
    res = pm.parmap(item, range(2), workers=1, progress=False)
    assert res == [False, False]
    assert res.outputs[0].displays[0].data == {"text/plain": "{'x': 0}"}
