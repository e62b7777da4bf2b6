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


FROM_MULTIPROCESSING = [
    (
        "md",
        "# Coming from `multiprocessing`\n\nThe classic example, in a notebook. Under the "
        "`spawn` start method (the default on macOS and Windows, and on Linux from Python "
        "3.14) it fails: workers cannot import a function defined in the notebook.",
    ),
    ("code", "def square(x):\n    return x * x\n\nnumbers = range(10)"),
    (
        "md",
        "With the standard library the workers die while unpickling `square`, and "
        "`Pool.map` would wait forever; here the wait is bounded to show it.",
    ),
    (
        "code",
        "import multiprocessing\n\nctx = multiprocessing.get_context('spawn')\n"
        "with ctx.Pool(2) as pool:\n    pending = pool.map_async(square, numbers)\n"
        "    try:\n        pending.get(timeout=5)\n    except multiprocessing.TimeoutError:\n"
        "        print('the standard library pool never answered')",
        IGNORE,
    ),
    (
        "md",
        "## Change only the import\n\n`ipyparmap` has the same `Pool`, `Process` and "
        "`ProcessPoolExecutor`, and they work with notebook functions and lambdas.",
    ),
    (
        "code",
        "import ipyparmap as multiprocessing\n\nwith multiprocessing.Pool(2) as pool:\n"
        "    print(pool.map(square, numbers))\n"
        "    print(pool.apply_async(lambda x: x + 1, (41,)).get())",
    ),
    (
        "code",
        "def greet(name):\n    print(f'hello {name} from a worker')\n\n"
        "p = multiprocessing.Process(target=greet, args=('notebook',))\np.start()\np.join()\n"
        "p.exitcode",
    ),
    (
        "code",
        "with multiprocessing.ProcessPoolExecutor(2) as executor:\n"
        "    print(list(executor.map(square, numbers)))",
    ),
    (
        "md",
        "## Queues, locks and `Manager`\n\nThe rest of the tutorial surface is there too: "
        "`Queue`, `Pipe`, `Lock`, `Event`, `Value`, `Array`, `Barrier`, `Manager`... "
        "(the standard library's own, from its spawn context). Pass them to a `Process`, "
        "or to a `Pool`'s `initializer`, as with the standard library. The classic "
        "producer and consumer:",
    ),
    (
        "code",
        "def producer(queue):\n    for i in range(5):\n        queue.put(i * i)\n"
        "    queue.put(None)  # no more\n\n"
        "queue = multiprocessing.Queue()\n"
        "p = multiprocessing.Process(target=producer, args=(queue,))\np.start()\n"
        "while (item := queue.get()) is not None:\n    print('got', item)\np.join()",
    ),
    (
        "md",
        "A `Manager` dict filled by several processes (its proxies also work as "
        "arguments of `Pool.map`):",
    ),
    (
        "code",
        "def record(shared, key):\n    shared[key] = key * 10\n\n"
        "with multiprocessing.Manager() as manager:\n    shared = manager.dict()\n"
        "    procs = [multiprocessing.Process(target=record, args=(shared, k)) "
        "for k in range(3)]\n"
        "    for proc in procs:\n        proc.start()\n"
        "    for proc in procs:\n        proc.join()\n"
        "    print(sorted(shared.items()))",
    ),
    ("md", "A worker that dies fails its own task instead of hanging the pool:"),
    (
        "code",
        "import os\n\ndef fragile(x):\n    if x == 3:\n        os._exit(1)\n    return x\n\n"
        "with multiprocessing.Pool(2) as pool:\n    try:\n        pool.map(fragile, range(6))\n"
        "    except multiprocessing.WorkerCrashed as crash:\n        print('crashed:', type(crash).__name__)",
    ),
    (
        "md",
        "## Then grow into `%%parmap`\n\nThe same work as a cell magic, with failures "
        "collected, per-item output and timings:",
    ),
    ("code", "%load_ext ipyparmap"),
    ("code", "%%parmap -o squares x in numbers\nsquare(x)"),
    ("code", "squares.ok, squares.values()"),
]


LARGE_ARRAYS = [
    (
        "md",
        "# Large arrays\n\nNumPy arrays in items, globals and results do not go through "
        "the pipe to the workers: each is copied once into anonymous shared memory and "
        "mapped by the receiver. Allocate big inputs with `pm.shared_array` and even "
        "that copy goes.",
    ),
    ("code", "import numpy as np\nimport ipyparmap as pm"),
    (
        "md",
        "## Plain arrays\n\nNothing to do: map over them as over anything else. Each "
        "array is copied once (a few GB/s), whatever its size.",
    ),
    (
        "code",
        "images = [np.full((512, 512), i, dtype=np.float32) for i in range(8)]\n"
        "means = pm.parmap(lambda img: float(img.mean()), images, workers=2, progress=False)\n"
        "list(means)",
    ),
    (
        "md",
        "## Arrays in shared memory from the start\n\n`pm.shared_array(shape, dtype)` "
        "returns a zero-filled NumPy array in shared memory. Passed to workers (as an "
        "item, inside one, or as a global the function uses) it travels by reference: "
        "no copy at all, and views of it too.",
    ),
    (
        "code",
        "stack = pm.shared_array((8, 512, 512), dtype=np.float32)  # 8 MB\n"
        "for i in range(8):\n    stack[i] = i\n\n"
        "def mean_of(i):\n    return float(stack[i].mean())\n\n"
        "list(pm.parmap(mean_of, range(8), workers=2, progress=False))",
    ),
    (
        "md",
        "Workers map the same memory, so they see what you write into it, also between "
        "calls (the function is not sent again):",
    ),
    (
        "code",
        "stack[3] = 30\nlist(pm.parmap(mean_of, [3], workers=2, progress=False))",
    ),
    (
        "md",
        "What a worker writes stays in that worker (its pages are copied on write), so a "
        "function cannot change your arrays behind your back:",
    ),
    (
        "code",
        "def scribble(i):\n    stack[i] = -1\n    return float(stack[i].mean())\n\n"
        "list(pm.parmap(scribble, [0], workers=1, progress=False)), float(stack[0].mean())",
    ),
    (
        "md",
        "Return results you want to keep: large result arrays come back through shared "
        "memory the same way.",
    ),
]


PANDAS = [
    (
        "md",
        "# pandas: change one word\n\nThe slow line of exploratory data work is usually a "
        "pandas `apply` with a Python function. Add `.parmap` and the same frame comes back, "
        "computed by every core.",
    ),
    (
        "code",
        "import os\nimport time\n\nimport numpy as np\nimport pandas as pd\n"
        "import ipyparmap as pm\n\n"
        "df = pd.DataFrame(\n"
        "    {\n"
        "        'user': [f'u{i % 7}' for i in range(300)],\n"
        "        'amount': np.round(np.linspace(1, 90, 300), 2),\n"
        "        'text': [f'Item {i} , bought' for i in range(300)],\n"
        "    },\n"
        "    index=pd.date_range('2024-01-01', periods=300, freq='h', name='when'),\n"
        ")\ndf.head(3)",
    ),
    (
        "md",
        "## The slow serial line\n\nA row-wise function that takes a few milliseconds a row "
        "(here it sleeps, to stand for real work):",
    ),
    (
        "code",
        "def score(row):\n    time.sleep(0.003)  # pretend to work\n"
        "    return row['amount'] * len(row['text'].split())\n\n"
        "serial = df.apply(score, axis=1)",
    ),
    (
        "md",
        "## Change one word\n\n`df.apply` becomes `df.parmap.apply`. One progress panel "
        "counts the rows (a static summary once it is done).",
    ),
    ("code", "parallel = df.parmap.apply(score, axis=1)", IGNORE),
    ("md", "The same values, dtype and index as pandas gives:"),
    ("code", "pd.testing.assert_series_equal(parallel, serial)\nparallel.equals(serial), parallel.dtype"),
    (
        "md",
        "## An error on one row\n\nThe first failing row stops the call. The error is the "
        "function's own exception type, and names the row by its index label:",
    ),
    (
        "code",
        "PRICES = {f'u{i}': i + 1.0 for i in range(6)}  # no price for u6\n\n"
        "def priced(row):\n    return row['amount'] * PRICES[row['user']]",
    ),
    ("code", "try:\n    df.parmap.apply(priced, axis=1, progress=False)\n"
             "except KeyError as exc:\n    print(str(exc).splitlines()[0])"),
    (
        "md",
        "Not caught, the cell shows the worker's traceback with the line that failed:",
    ),
    ("code", "df.parmap.apply(priced, axis=1, progress=False)", {"tags": ["raises-exception", "nbval-ignore-output"]}),
    (
        "md",
        '## `errors="collect"`: every row, failures marked\n\nEach failing row is NaN; the '
        "failures are listed in `attrs['parmap_failures']` (label, position, exception).",
    ),
    (
        "code",
        "prices = df.parmap.apply(priced, axis=1, errors='collect', progress=False)\n"
        "failed = prices.attrs['parmap_failures']\n"
        "len(failed), int(prices.isna().sum()), failed[0].item, type(failed[0].exception).__name__",
    ),
    ("code", "prices.dropna().equals(df[df['user'] != 'u6'].apply(priced, axis=1))"),
    (
        "md",
        "## groupby\n\nWhole groups go to the workers; the result is pandas' own, keys and "
        "all. `transform` and `agg` with a Python function work the same way.",
    ),
    (
        "code",
        "def features(rows):\n    time.sleep(0.02)\n"
        "    return pd.Series({'n': len(rows), 'total': rows['amount'].sum()})\n\n"
        "per_user = df.groupby('user').parmap.apply(features, progress=False)\n"
        "per_user.equals(df.groupby('user').apply(features)), per_user.shape",
    ),
    (
        "code",
        "centred = df.groupby('user')['amount'].parmap.transform(lambda a: a - a.mean(), progress=False)\n"
        "centred.equals(df.groupby('user')['amount'].transform(lambda a: a - a.mean()))",
    ),
    (
        "md",
        "## rolling\n\nEach piece carries the rows its windows reach, so every window sees "
        "what it sees in a serial call (offset windows such as `'6h'` too).",
    ),
    (
        "code",
        "spread = lambda w: w.max() - w.min()\n"
        "df['amount'].rolling('6h').parmap.apply(spread, progress=False).equals(\n"
        "    df['amount'].rolling('6h').apply(spread))",
    ),
    (
        "md",
        "## Small inputs stay here\n\nA call first runs rows in the kernel for up to 10 ms: "
        "a small or cheap input never leaves it, and is as fast as pandas.",
    ),
    ("code", "pids = df.head(20).parmap.apply(lambda row: os.getpid(), axis=1)\nset(pids) == {os.getpid()}"),
    (
        "md",
        "## The cell magic over rows or groups\n\n`%%parmap` walks `df.iterrows()` or "
        "`df.groupby(...)` with tuple targets, when the body is a few lines of notebook code "
        "and a list of results is what you want.",
    ),
    ("code", "%load_ext ipyparmap"),
    ("code", "%%parmap -o totals --no-progress user, rows in df.groupby('user')\nuser, float(round(rows['amount'].sum(), 2))"),
    ("code", "totals[:3]"),
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
    build("from-multiprocessing", FROM_MULTIPROCESSING)
    build("large-arrays", LARGE_ARRAYS)
    build("pandas", PANDAS)
