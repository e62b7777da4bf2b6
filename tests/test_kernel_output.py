"""What workers print, log and display reaches a real kernel's cell intact.

Through jupyter_client (tests/kernel_tools.py) for the text of a cell, and nbclient for
what a saved notebook holds (display outputs in order, the panel beside them). Kernels
are started without PYTEST_CURRENT_TEST, else ipykernel drops child output
(/work/shared/TESTING_NOTES.md, pitfall 6). Process-level counterparts:
tests/test_output_capture.py.
"""

from __future__ import annotations

import base64
import os
import re

import pytest

pytest.importorskip("ipykernel")
from test_output_capture import render

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_lines_printed_before_workers_die_reach_the_cell_and_the_results(kernel):
    reply = kernel.run(
        "%%parmap -o died --errors collect x in range(4)\n"
        "import ctypes, os, signal, sys\n"
        "print('flushed', x, flush=True)\n"
        "print('unflushed', x)\n"
        "sys.stdout.write(f'partial {x}')\n"
        "if x == 1: os._exit(1)\n"
        "if x == 2: ctypes.string_at(0)\n"
        "if x == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
        "x\n"
    )
    assert reply.status == "ok", reply.traceback
    screen = render(reply.stdout)
    for x in range(4):
        for line in (f"flushed {x}", f"unflushed {x}", f"partial {x}"):
            assert f"[{x}] {line}" in screen, screen
    check = kernel.run(
        "print([died[0]] + [f.kind for f in died[1:]])\n"
        "print({i: o.stdout for i, o in died.outputs.items()})"
    )
    kinds, outputs = check.stdout.splitlines()
    assert kinds == "[0, 'crashed', 'crashed', 'crashed']"
    assert outputs == repr({x: f"flushed {x}\nunflushed {x}\npartial {x}" for x in range(4)})


def test_partial_lines_and_progress_bars_of_items_stay_apart_in_the_cell(kernel):
    reply = kernel.run(
        "%%parmap -o bars -w 2 x in range(4)\n"
        "import sys, time\n"
        "sys.stdout.write(f'start {x}')\n"
        "for step in range(5):\n"
        "    sys.stderr.write(f'\\rbar {x}: {step * 25:3d}%')\n"
        "    time.sleep(0.05)\n"
        "sys.stderr.write('\\n')\n"
        "sys.stdout.write(f' end {x}')\n"
        "x\n"
    )
    assert reply.status == "ok", reply.traceback
    # the notebook shows each stream with \r moving to the start of the line
    assert sorted(render(reply.stdout)) == [f"[{x}] start {x} end {x}" for x in range(4)]
    assert sorted(render(reply.stderr)) == [f"[{x}] bar {x}: 100%" for x in range(4)]
    check = kernel.run("print(repr(bars.outputs[2].stderr), repr(bars.outputs[2].stdout))")
    raw = "".join(f"\rbar 2: {step * 25:3d}%" for step in range(5)) + "\n"
    assert check.stdout.strip() == f"{raw!r} 'start 2 end 2'"


def test_the_text_bar_and_worker_lines_do_not_mix_in_the_cell(kernel):
    reply = kernel.run(
        "import ipyparmap as pm, sys, time\n"
        "def item(x):\n"
        "    time.sleep(0.15)\n"
        "    print(f'line {x}', file=sys.stderr)\n"
        "    return x\n"
        "res = pm.parmap(item, range(12), workers=2, chunksize=1, progress='text')\n"
    )
    assert reply.status == "ok", reply.traceback
    screen = render(reply.stderr)
    items = sorted(line for line in screen if not line.startswith("parmap ["))
    assert items == sorted(f"[{x}] line {x}" for x in range(12)), screen
    assert screen[-1].startswith("parmap [########################] 12/12 done"), screen


def test_worker_logging_goes_through_the_kernels_configuration(kernel):
    setup = kernel.run(
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='LOG %(levelname)s %(name)s: %(message)s')"
    )
    assert setup.status == "ok", setup.traceback
    try:
        reply = kernel.run(
            "%%parmap -o logged x in range(2)\n"
            "import logging\n"
            "log = logging.getLogger('work')\n"
            "log.debug('debug %d', x)\n"
            "log.info('info %d', x)\n"
            "log.warning('warning %d', x)\n"
            "x\n"
        )
        assert reply.status == "ok", reply.traceback
        lines = reply.stderr.splitlines()
        for x in range(2):
            assert f"LOG INFO work: [{x}] info {x}" in lines
            assert f"LOG WARNING work: [{x}] warning {x}" in lines
        assert "debug" not in reply.stderr
        check = kernel.run("print([(r.levelname, r.getMessage()) for r in logged.outputs[1].logs])")
        assert check.stdout.strip() == "[('INFO', 'info 1'), ('WARNING', 'warning 1')]"
    finally:
        kernel.run(
            "for handler in logging.root.handlers[:]:\n"
            "    logging.root.removeHandler(handler)\n"
            "logging.root.setLevel(logging.WARNING)"
        )


# -- rich output in a notebook, executed with nbclient ---------------------------------------
CELLS = [
    "%load_ext ipyparmap",
    # a run long enough for the live panel (> 0.5 s), with an object that has an HTML repr
    "%%parmap -o tables -w 2 --chunksize 1 x in range(4)\n"
    "import time\n"
    "class Table:\n"
    "    def _repr_html_(self):\n"
    "        return f'<table><tr><td>cell {x}</td></tr></table>'\n"
    "    def __repr__(self):\n"
    "        return f'Table({x})'\n"
    "time.sleep(0.4)\n"
    "display(Table())\n"
    "x",
    # the kernel's inline backend, inherited by the workers (MPLBACKEND)
    "%%parmap -w 1 x in range(1)\nimport matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()\nx",
    # Agg, IPython's own display and HTML
    "%%parmap -o figures -w 2 x in range(2)\n"
    "import matplotlib\n"
    "matplotlib.use('Agg')\n"
    "import matplotlib.pyplot as plt\n"
    "from IPython.display import HTML, display\n"
    "display(HTML(f'<b>html {x}</b>'))\n"
    "plt.plot([0, x])\n"
    "plt.show()\n"
    "x",
    "print([len(tables.outputs[i].displays) for i in range(4)], "
    "[d.kind() for d in figures.outputs[1].displays])",
    "%parmap_pool shutdown",
]


def _displays(cell) -> list[dict]:
    """The display outputs of ``cell`` that are not the panel or its summary."""
    return [
        o["data"]
        for o in cell.outputs
        if o["output_type"] == "display_data" and not o["data"]["text/plain"].startswith("parmap")
    ]


def _text(cell, name: str = "stdout") -> str:
    return "".join(o["text"] for o in cell.outputs if o.get("name") == name)


@pytest.mark.timeout(300)
def test_rich_displays_of_workers_reach_the_saved_notebook_beside_the_panel(tmp_path):
    pytest.importorskip("matplotlib")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "MPLBACKEND")}
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)
    nbformat.validate(nb)
    for cell in nb.cells:  # a saved notebook reads without the widgets: text everywhere
        for output in cell.outputs:
            if output["output_type"] == "display_data":
                assert output["data"]["text/plain"].strip(), output

    tables = nb.cells[1]
    panel = next(o["data"] for o in tables.outputs if o["output_type"] == "display_data")
    assert WIDGET_VIEW in panel and panel["text/plain"].startswith("parmap: 4/4 done")
    shown = _displays(tables)
    assert sorted(d["text/html"] for d in shown) == [
        f"<table><tr><td>cell {x}</td></tr></table>" for x in range(4)
    ]
    assert sorted(d["text/plain"] for d in shown) == [f"Table({x})" for x in range(4)]
    # each display follows a line naming its item
    order = [
        o["text"] if o["output_type"] == "stream" else o["data"]["text/plain"]
        for o in tables.outputs
        if o["output_type"] == "stream" or o["data"]["text/plain"].startswith("Table")
    ]
    for x in range(4):
        tag = next(i for i, text in enumerate(order) if f"[{x}] display: Table({x})" in text)
        assert order[tag + 1] == f"Table({x})", order

    (inline,) = _displays(nb.cells[2])
    assert base64.b64decode(inline["image/png"]).startswith(b"\x89PNG")
    assert "[0] display: <Figure size" in _text(nb.cells[2])

    figures = _displays(nb.cells[3])
    assert sorted(d["text/html"] for d in figures if "text/html" in d) == [
        f"<b>html {x}</b>" for x in range(2)
    ]
    pngs = [d for d in figures if "image/png" in d]
    assert len(pngs) == 2
    assert all(re.match(r"<Figure size \d+x\d+ with 1 Axes>", d["text/plain"]) for d in pngs)
    assert _text(nb.cells[3], "stderr") == ""  # no "cannot show the figure" warning
    assert _text(nb.cells[4]).strip() == "[1, 1, 1, 1] ['text/html', 'image/png']"
