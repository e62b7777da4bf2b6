"""Progress overhead: a 100k-tiny-item map with progress on vs off, in a real kernel.

Runs one notebook cell in a fresh ipykernel (nbclient), so the widget panel sends its
comm messages over IOPub exactly as in Jupyter. Modes are interleaved, round after
round, to spread machine noise evenly; the report gives medians.

    .venv/bin/python benchmarks/progress_overhead.py [--items 100000] [--rounds 15]

Modes:
  off     progress=False (no model at all)
  auto    progress="auto": the panel (it appears after 0.5 s; a faster map only gets
          the summary line)
  panel   the panel forced visible from the first refresh (delay=0):
          the worst case, every refresh renders and sends widget updates
  text    progress="text" (the kernel's live text bar)

Two measures: wall time per mode (medians, and the difference to "off"), and, in a
second series with the progress entry points wrapped in timers, the share of the wall
time spent inside progress code (choosing the view, feeding the model, refreshing and
rendering). The second is far less sensitive to machine noise on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

import nbformat
from nbclient import NotebookClient

CELL = """
import json, time
import ipyparmap as pm
from ipyparmap import api
from ipyparmap.engine import local
from ipyparmap.engine import run as runner
from ipyparmap.views.progress import ProgressModel
from ipyparmap.views.widget import ProgressPanel

ITEMS, ROUNDS = {items}, {rounds}
original = api._progress_model

def forced_panel(mode):
    model = ProgressModel()
    model.listeners.append(ProgressPanel(delay=0))
    return model

# Time spent in progress code, counted at the outermost progress call only.
spent = [0.0]
depth = [0]

def timed(func):
    def wrapper(*args, **kwargs):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                spent[0] += time.perf_counter() - start
    return wrapper

def instrument():
    for owner, name in [(ProgressModel, "add"), (ProgressModel, "maybe_refresh"),
                        (ProgressModel, "finish"), (ProgressModel, "worker"),
                        (runner.Runner, "worker_state"),
                        (local.LocalEngine, "_refresh_progress")]:
        setattr(owner, name, timed(getattr(owner, name)))

def run(mode):
    chooser = forced_panel if mode == "panel" else original
    api._progress_model = timed(chooser)
    progress = {{"off": False, "auto": "auto", "panel": "auto", "text": "text"}}[mode]
    spent[0] = 0.0
    start = time.perf_counter()
    res = pm.parmap(lambda x: x + 1, range(ITEMS), workers=2, progress=progress)
    elapsed = time.perf_counter() - start
    api._progress_model = original
    assert len(res) == ITEMS and res[-1] == ITEMS
    return elapsed, spent[0]

modes = ["off", "auto", "panel", "text"]
times = {{mode: [] for mode in modes}}
shares = {{mode: [] for mode in modes}}
for instrumented in (False, True):
    if instrumented:
        instrument()
    for mode in modes:  # warm the pool, the function cache and the imports
        run(mode)
    for r in range(ROUNDS):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            elapsed, in_progress = run(mode)
            if instrumented:
                shares[mode].append(in_progress / elapsed)
            else:
                times[mode].append(elapsed)
pm.shutdown()
print("RESULT " + json.dumps({{"times": times, "shares": shares}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(CELL.format(**vars(args))))]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    NotebookClient(nb, timeout=1800, kernel_name="python3").execute(env=env)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("name") == "stdout")
    line = next(line for line in text.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    times, shares = result["times"], result["shares"]
    displays = sum(o["output_type"] == "display_data" for o in nb.cells[0].outputs)

    def median(values):
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    base = median(times["off"])
    print(f"{args.items} tiny items, 2 workers, {args.rounds} rounds, in a kernel")
    print(f"({displays} progress displays in the cell)")
    print(
        f"{'mode':6} {'median s':>9} {'min s':>8} {'max s':>8} {'vs off':>8}"
        f" {'in progress code (median share of wall)':>40}"
    )
    for mode, values in times.items():
        med = median(values)
        print(
            f"{mode:6} {med:9.4f} {min(values):8.4f} {max(values):8.4f} "
            f"{(med / base - 1) * 100:+7.1f}% {median(shares[mode]) * 100:39.2f}%"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
