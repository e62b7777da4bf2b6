"""Where W7's memory goes: the breakdown behind the W7 section of docs/benchmarks.md.

    .venv/bin/python -m benchmarks.memory            # all three parts below
    .venv/bin/python -m benchmarks.memory processes  # W7's peak, process by process
    .venv/bin/python -m benchmarks.memory imports    # what loading each part costs
    .venv/bin/python -m benchmarks.memory fork       # what a fork costs doing nothing

W7 is one figure: the peak of the summed PSS of a script running W2 and all its
descendants. This splits it three ways:

- ``processes``: the same script (the ipyparmap contender of W7), sampled every 5 ms;
  at the sample with the highest sum, each process's PSS, private dirty pages
  (written since a fork, or never shared) and shared pages, by role (the caller, the
  template, a forked worker, a spawned worker);
- ``imports``: in fresh interpreters, the anonymous memory (PSS) that the interpreter
  with its ``site``, cloudpickle, the caller's first-call modules and the worker's
  modules add, in the order a call loads them;
- ``fork``: an interpreter that imported what the template imports and froze its
  objects (``gc.freeze()``), forked, both sides then doing nothing: the pages each
  side holds privately anyway (the floor of every forked worker).

Figures are kB (1024 bytes) as the kernel reports them; the W7 figure itself is MB
(10^6 bytes). Nothing here changes ipyparmap or asserts anything: it prints.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

from . import scripts as S
from . import workloads as W
from .run import compile_bytecode

ROLLUP_FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Private_Dirty", "Shared_Clean", "Shared_Dirty")


def rollup(pid: int) -> dict[str, int] | None:
    """The kB fields of ``/proc/PID/smaps_rollup`` (None: the process is gone)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as source:
            for line in source:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return None
    return fields


def _role(proc, script_pid: int, template_pids: set[int]) -> str:
    if proc.pid == script_pid:
        return "caller (the script)"
    try:
        command = " ".join(proc.cmdline())
        parent = proc.ppid()
    except Exception:  # gone meanwhile
        return "?"
    if "process.template import serve" in command:
        if parent == script_pid:
            template_pids.add(proc.pid)
            return "template"
        return "forked worker"  # a fork keeps the template's command line
    if parent in template_pids:
        return "forked worker"
    return "spawned worker"


def processes() -> None:
    import psutil

    contender = next(c for c in S.CONTENDERS if c.name == "ipyparmap")
    n20 = max(1, int(W.spin_per_second() * W.W2_SECONDS))
    text = S.script(S.W7_PRELUDE, contender)
    best_total, best = 0, []
    with S.script_file(text) as (folder, path, env):
        proc = subprocess.Popen(
            [sys.executable, path, str(n20)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            sample = [(p, rollup(p.pid)) for p in tree]
            sample = [(p, r) for p, r in sample if r]
            total = sum(r["Pss"] for _, r in sample)
            if total > best_total:
                templates: set[int] = set()
                best_total = total
                best = [(p.pid, _role(p, proc.pid, templates), r) for p, r in sample]
            time.sleep(0.005)
        proc.kill()
        proc.wait()
    megabytes = best_total * 1024 / 1e6
    print(f"W7, ipyparmap: peak summed PSS {megabytes:.2f} MB ({best_total} kB)", end="")
    print(f" in {len(best)} processes\n")
    print(f"{'role':22} {'pid':>7} " + " ".join(f"{f:>13}" for f in ROLLUP_FIELDS))
    for pid, role, fields in best:
        print(f"{role:22} {pid:>7} " + " ".join(f"{fields.get(f, 0):>13}" for f in ROLLUP_FIELDS))


_IMPORT_PROBE = """
import sys
def anon():
    with open("/proc/self/smaps_rollup") as source:
        for line in source:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1])
steps = {steps!r}
last = anon()
print(f"{{'interpreter and site':58}} {{last:>7}} kB", flush=True)
for label, code in steps:
    before = set(sys.modules)
    exec(code, {{}})
    now = anon()
    added = len(set(sys.modules) - before)
    print(f"{{label:58}} {{now - last:>+7}} kB  ({{added}} modules)", flush=True)
    last = now
"""

_CALLER_STEPS = [
    ("import ipyparmap", "import ipyparmap"),
    ("cloudpickle (the function goes by value)", "import cloudpickle"),
    (
        "ipyparmap's first-call modules (api, engine, pool)",
        "import ipyparmap.api, ipyparmap.engine.local",
    ),
    (
        "a first call (W2's function, 2 workers)",
        "import ipyparmap, benchmarks.workloads as w; ipyparmap.parmap(w.spin, [1000] * 100, "
        "workers=2, progress=False)",
    ),
]
_TEMPLATE_STEPS = [
    ("cloudpickle", "import cloudpickle"),
    (
        "the worker's modules (process.worker, process.template)",
        "import resource, ipyparmap.process.worker, ipyparmap.process.template",
    ),
]


def imports() -> None:
    env = dict(os.environ, PYTHONPATH=S.pythonpath_with_root())
    for title, steps in (("the caller", _CALLER_STEPS), ("the template", _TEMPLATE_STEPS)):
        print(f"\nAnonymous memory (PSS) a fresh interpreter adds, as {title} loads it:")
        code = _IMPORT_PROBE.format(steps=steps)
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd="/")
    bare = subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(_IMPORT_PROBE.format(steps=[]))],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    print("\nWithout site (python -S), for comparison:", bare.stdout.strip().split()[-2], "kB")


_FORK_PROBE = """
import gc, os, sys
import cloudpickle, resource
import ipyparmap.process.worker, ipyparmap.process.template
gc.freeze()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(r, 1)
    os._exit(0)
print(os.getpid(), pid, flush=True)
os.read(r, 1)
"""


def fork() -> None:
    env = dict(os.environ, PYTHONPATH=S.pythonpath_with_root())
    command = [sys.executable, "-c", _FORK_PROBE]
    proc = subprocess.Popen(command, env=env, cwd="/", stdout=subprocess.PIPE, text=True)
    try:
        template, child = map(int, proc.stdout.readline().split())
        time.sleep(0.5)  # both sides are blocked in read(): let the fork settle
        print("\nAn idle fork of an interpreter with the template's imports (kB):")
        print(f"{'':10} " + " ".join(f"{f:>13}" for f in ROLLUP_FIELDS))
        for label, pid in (("template", template), ("fork", child)):
            fields = rollup(pid) or {}
            print(f"{label:10} " + " ".join(f"{fields.get(f, 0):>13}" for f in ROLLUP_FIELDS))
    finally:
        proc.kill()
        proc.wait()
        try:
            os.kill(child, 9)
        except (OSError, UnboundLocalError):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "what", nargs="?", default="all", choices=["all", "processes", "imports", "fork"]
    )
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/smaps_rollup"):
        sys.exit("benchmarks.memory reads /proc/PID/smaps_rollup: Linux only")
    # Bytecode as an installed package has it: compiling a module from source at import
    # (PYTHONDONTWRITEBYTECODE, an edited file) leaves ~2 MB more in the measured heap.
    compile_bytecode()
    if args.what in ("all", "processes"):
        processes()
    if args.what in ("all", "imports"):
        imports()
    if args.what in ("all", "fork"):
        fork()


if __name__ == "__main__":
    main()
