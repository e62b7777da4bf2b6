"""Rebuild the tutorial notebooks from the cells below and store fresh outputs.

    .venv/bin/python notebooks/refresh.py

The notebooks double as tests (pytest --nbval compares a re-run with the stored
outputs), so after changing a cell or the library's output, refresh and review the diff.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

IGNORE = {"tags": ["nbval-ignore-output"]}
RAISES = {"tags": ["raises-exception"]}

GETTING_STARTED = [
    (
        "md",
        "# Getting started with ipyparmap\n\nRun a function over many inputs on all your "
        "cores, straight from a notebook: functions, lambdas and classes defined here work.",
    ),
    ("code", "%load_ext ipyparmap\nimport ipyparmap as pm"),
    (
        "md",
        "## The Python API\n\nDefine a function in a cell, then map it. `pm.parmap` returns a "
        "`Results`: a list in input order.",
    ),
    (
        "code",
        "import time\n\ndef slow_square(x):\n    time.sleep(0.05)  # pretend to work\n"
        "    return x * x",
    ),
    ("code", "res = pm.parmap(slow_square, range(20))\nres[:5]"),
    ("code", "res.ok, len(res), res.stats.items"),
    (
        "md",
        "## The `%%parmap` cell magic\n\nThe cell body is the function: `x` is bound to "
        "each item, the last expression is the item's result. `-o NAME` also binds the "
        "results to a name.",
    ),
    ("code", "%%parmap -o squares x in range(10)\nx * x"),
    ("code", "squares.values()"),
    (
        "md",
        "Tuple targets work, and names from earlier cells (data, functions, modules) are "
        "sent to the workers. Names assigned in the body stay local to each item.",
    ),
    ("code", "offset = 100"),
    ("code", "%%parmap a, b in zip(range(3), range(3, 6))\nproduct = a * b\nproduct + offset"),
    (
        "md",
        "## Worker output\n\n`print` in a worker shows up here, tagged with its item, and "
        "is kept per item in `.outputs` (one worker here, so the order is fixed).",
    ),
    (
        "code",
        "%%parmap -o shouted -w 1 word in ['spam', 'eggs']\nprint(f'working on {word}')\n"
        "word.upper()",
    ),
    ("code", "shouted.outputs[1].stdout"),
    ("md", "## The line magic and `imap`"),
    ("code", "cubes = %parmap lambda x: x ** 3 range(6)\ncubes"),
    (
        "code",
        "total = 0\nfor value in pm.imap(slow_square, range(10), ordered=False):\n"
        "    total += value  # results arrive as they finish\ntotal",
    ),
    ("md", "## The warm pool\n\nWorkers stay up between cells; `%parmap_pool` shows them."),
    ("code", "%parmap_pool", IGNORE),
]

ERROR_HANDLING = [
    (
        "md",
        "# When things go wrong\n\nFailures, crashes and timeouts never hang the notebook "
        "and never lose finished results.",
    ),
    ("code", "%load_ext ipyparmap\nimport os\nimport time\nimport ipyparmap as pm"),
    (
        "code",
        "def risky(x):\n    if x == 3:\n        raise ValueError(f'cannot handle {x}')\n"
        "    return x * 10",
    ),
    ("md", '## `errors="collect"`: keep going\n\nA failed slot holds a `Failure`.'),
    (
        "code",
        "res = pm.parmap(risky, range(6), errors='collect')\nres.ok, [f.index for f in res.failures]",
    ),
    ("code", "print(res.failures[0].describe())"),
    ("code", "res.values(default=None)"),
    (
        "md",
        '## `errors="raise"` (the default): stop at the first failure\n\nThe error shows the '
        "failing item and the cell line that raised, and `-o` keeps the partial results.",
    ),
    ("code", "%%parmap -o partial x in range(6)\nrisky(x)", RAISES),
    ("code", "partial[:3], partial[3].kind"),
    (
        "md",
        "## A worker that dies\n\nA segfault, `os._exit` or the OOM killer fails only the item "
        "that was running; a fresh worker takes over.",
    ),
    ("code", "%%parmap -o crashed --errors collect x in range(5)\nif x == 2:\n    os._exit(1)\nx"),
    ("code", "crashed.values(), crashed[2].kind, crashed[2].exception.exitcode"),
    ("md", "## Timeouts and retries\n\n`--timeout` kills only the worker running a stuck item."),
    (
        "code",
        "%%parmap -o slow --errors collect --timeout 1 x in range(4)\n"
        "time.sleep(30 if x == 1 else 0.01)\nx",
    ),
    ("code", "slow.values(), slow[1].kind"),
    ("code", "flaky = pm.parmap(risky, range(6), errors='collect', retries=2)\nflaky[3].attempts"),
]


def build(name: str, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for entry in cells:
        kind, source, *meta = entry
        cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(
            source
        )
        if meta:
            cell.metadata.update(meta[0])
        nb.cells.append(cell)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(HERE)}},
    )
    client.km = client.create_kernel_manager()
    client.km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    client.execute(env=env)
    nbformat.write(nb, HERE / f"{name}.ipynb")
    print("wrote", HERE / f"{name}.ipynb")


if __name__ == "__main__":
    build("getting-started", GETTING_STARTED)
    build("error-handling", ERROR_HANDLING)
