"""The template process (process/template.py): forks replacement workers; runs no thread
and no user code; its death costs no run anything; it leaks nothing; only its parent
can talk to it, and what it hears is never unpickled."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import textwrap
import time

import helpers
import psutil
import pytest
from conftest import children, is_template, run_python, start_python, wait_for, workers

import ipyparmap as pm
from ipyparmap import system
from ipyparmap.process import pool as P
from ipyparmap.process import resources
from ipyparmap.process import template as T

pytestmark = [
    pytest.mark.usefixtures("no_leaks"),
    pytest.mark.skipif(not T.available(), reason="the template needs fork and pidfds"),
]


def _gone(pids) -> bool:
    def ended(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(ended(pid) for pid in pids)


def _template_of(pool: P.Pool) -> T.Template:
    """The pool's template, once it is up (the first replacement starts it)."""
    template = pool.launcher.template
    assert template is not None
    wait_for(template.usable, timeout=30, what="the template to boot")
    return template


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _crashing_items(count: int, every: int) -> list:
    return [("run", "_exit") if i % every == every - 1 else i for i in range(count)]


def test_a_replacement_worker_is_forked_from_a_thread_free_template():
    pool = P.Pool()
    try:
        first = pool.spawn()  # the first replacement: an interpreter, and the template starts
        assert not isinstance(first.proc, T.ForkedProcess)
        template = _template_of(pool)
        forked = pool.spawn()
        assert isinstance(forked.proc, T.ForkedProcess)
        assert forked.recv()[0] == pm_ready(forked.pid)
        me = psutil.Process(forked.pid)
        assert me.ppid() == template.pid
        # its own process group, in the template's session (not ours: no terminal signal)
        assert os.getpgid(forked.pid) == forked.pid
        assert os.getsid(forked.pid) == template.pid != os.getsid(0)
        assert _threads(template.pid) == 1  # no thread, before and after forking
        # a replacement of the pool's first workers is forked too once the template is up
        later = pool.acquire(1)
        assert isinstance(later[0].proc, T.ForkedProcess)
        # it reports how a forked worker ended, as Popen would
        forked.kill()
        assert forked.reap(10) == -signal.SIGKILL
        assert not forked.alive()
        pool.discard(forked)
        pool.release([first, *later])
    finally:
        pool.shutdown()
    wait_for(lambda: template.proc.poll() is not None, timeout=10, what="the template to exit")


def pm_ready(pid: int):
    from ipyparmap.wire import messages as M

    return M.Ready(pid)


def test_a_forked_worker_starts_in_the_world_of_a_spawned_one(tmp_path, monkeypatch):
    """Same working directory, environment, sys.path, parent and arguments as an
    interpreter started for the same pool (the drop-in Pool, with and without the
    template)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IPYPARMAP_TEST_WORLD", "forked or not")
    seen: dict[bool, set] = {True: set(), False: set()}
    for template in (True, False):
        with monkeypatch.context() as patch:
            if not template:  # as where there are no pidfds: interpreters only
                patch.setattr(T, "available", lambda: False)
            with pm.Pool(2, maxtasksperchild=1) as pool:
                for ppid, world in pool.map(_world, range(6), chunksize=1):
                    seen[ppid != os.getpid()].add(world)
    assert seen[True] and seen[False], "no worker was forked, or none spawned"
    assert seen[True] == seen[False]
    [(cwd, env, _path, parent, argc)] = seen[True]
    assert cwd == str(tmp_path) and dict(env)["IPYPARMAP_TEST_WORLD"] == "forked or not"
    assert parent == os.getpid() and argc == 4


def test_a_pools_first_workers_are_forks_of_the_template():
    """A new pool starts one interpreter, the template, and forks its workers from it
    (no interpreter start per worker): their parent is the template."""
    pool = P.Pool()
    try:
        workers = pool.acquire(3)
        template = pool.launcher.template
        assert template is not None and template.usable()
        assert all(isinstance(w.proc, T.ForkedProcess) for w in workers)
        for worker in workers:
            assert worker.recv()[0] == pm_ready(worker.pid)
            assert psutil.Process(worker.pid).ppid() == template.pid
        ours = {p.pid for p in psutil.Process().children()}
        assert template.pid in ours and not ours & {w.pid for w in workers}
        pool.release(workers)
    finally:
        pool.shutdown()
    wait_for(lambda: template.proc.poll() is not None, timeout=10, what="the template to exit")


def test_the_first_call_of_a_script_forks_its_workers(tmp_path):
    """``parmap`` in a fresh interpreter: the workers that run the items are children
    of the template, not of the caller, and nothing is left when it exits."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {tests!r})\n" + textwrap.dedent("""
        import os, helpers, ipyparmap as pm
        from ipyparmap.process import pool as P
        ppids = set(pm.parmap(helpers.parent_pid, range(4), workers=2, chunksize=1))
        template = P.default_pool().launcher.template
        print("FORKED", ppids == {template.pid} and template.pid != os.getpid(), flush=True)
    """)
    out = run_python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "FORKED True" in out.stdout


def test_the_first_call_starts_the_template_before_it_loads_the_engine():
    """The template boots while the caller loads the engine and cloudpickle, instead of
    after (W4): when ``parmap`` imports them, the template process runs."""
    code = textwrap.dedent("""
        import sys

        class Watch:
            def find_spec(self, name, path=None, target=None):
                if name in ("ipyparmap.engine.run", "ipyparmap.engine.local", "cloudpickle"):
                    from ipyparmap.process import pool as P
                    pool = P._default_pool
                    template = pool.launcher.template if pool is not None else None
                    running = template is not None and template.proc.poll() is None
                    print(name, "TEMPLATE RUNS", running, flush=True)
                return None

        sys.meta_path.insert(0, Watch())
        import ipyparmap as pm
        assert list(pm.parmap(abs, [-1, -2], workers=2, progress=False)) == [1, 2]
    """)
    out = run_python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.split("\n")[:3])
    assert lines == [
        "cloudpickle TEMPLATE RUNS True",
        "ipyparmap.engine.local TEMPLATE RUNS True",
        "ipyparmap.engine.run TEMPLATE RUNS True",
    ], out.stdout


def test_a_template_is_started_ahead_only_for_a_call_that_needs_new_workers():
    pool = P.Pool()
    try:
        pool.launcher.enabled = False
        pool.prewarm(2)  # interpreters, no template
        pool.launcher.enabled = True
        pool.start_template(2)  # two warm workers: this call forks none
        assert pool.launcher.template is None
        pool.start_template(3)  # one more worker than are warm: it boots now
        template = _template_of(pool)
        workers = pool.acquire(3)
        assert pool.launcher.template is template
        pool.release(workers)
    finally:
        pool.shutdown()
    pool.start_template(2)  # a pool shut down starts nothing
    assert pool.launcher.template is None
    assert children() == []


def _heavy_loaded(_):
    loaded = sorted(m for m in ("multiprocessing", "subprocess") if m in sys.modules)
    return os.getppid(), loaded


def test_the_template_loads_neither_multiprocessing_nor_subprocess():
    """What the template loads, every worker it forks holds: not ``subprocess`` (only
    its parent starts processes) nor ``multiprocessing`` (a worker sets what a spawned
    child has when code imports it)."""
    pm.shutdown()  # a cold default pool, whose template is up before the call
    pool = P.default_pool()
    cpus = resources.cpu_count()
    pool.start_template(2, resources.thread_limits(2, cpus))  # the call's environment
    template = _template_of(pool)
    try:
        run = pm.parmap(_heavy_loaded, range(4), workers=2, chunksize=1, progress=False)
        assert run.values() == [(template.pid, [])] * 4
    finally:
        pm.shutdown()


def test_a_replaced_template_stays_until_its_workers_exit():
    """Workers with another environment get a new template; the old one forks no more
    but stays until its forks have exited, so that they stay in our process tree (an
    orphan is adopted by init: no leak check or memory sum of our descendants finds
    it), and the pool's shutdown leaves neither behind."""
    pool = P.Pool()
    try:
        first = pool.acquire(1, {"IPYPARMAP_TEST_ENV": "a"})
        old = pool.launcher.template
        pool.release(first)
        both = pool.acquire(2, {"IPYPARMAP_TEST_ENV": "b"})  # the warm one, and a new one
        new = pool.launcher.template
        assert new is not old and old.dead
        assert first[0] in both and old.proc.poll() is None  # it lingers for its fork
        assert psutil.Process(first[0].pid).ppid() == old.pid
        assert {w.pid for w in both} <= {p.pid for p in workers()}
        pool.release(both)
    finally:
        pool.shutdown()
    assert old.proc.poll() is not None and new.proc.poll() is not None
    assert children() == []


def test_a_template_that_is_slow_to_boot_is_not_waited_for(monkeypatch):
    """A call does not wait for a template longer than a spawn would take: past
    `TEMPLATE_BOOT_WAIT` its workers are interpreters (the template, once up, forks
    later ones)."""
    monkeypatch.setattr(P, "TEMPLATE_BOOT_WAIT", 0.0)
    pool = P.Pool()
    try:
        workers = pool.acquire(2)  # the template has had no time to boot
        assert not any(isinstance(w.proc, T.ForkedProcess) for w in workers)
        template = _template_of(pool)
        later = pool.acquire(1)
        assert isinstance(later[0].proc, T.ForkedProcess)
        assert psutil.Process(later[0].pid).ppid() == template.pid
        pool.release(workers + later)
    finally:
        pool.shutdown()


def _world(_):
    import multiprocessing

    world = (
        os.getcwd(),
        tuple(sorted(os.environ.items())),
        tuple(sys.path),
        multiprocessing.parent_process().pid,
        len(sys.argv),
    )
    return os.getppid(), world


def test_the_template_never_runs_user_code(tmp_path, monkeypatch):
    """A module of the user's, imported by the function: its top-level code records the
    pid of every process that runs it. Workers forked from the template do; the
    template never does (and stays without threads)."""
    log = tmp_path / "pids"
    (tmp_path / "recorder.py").write_text(
        f"import os\nwith open({str(log)!r}, 'a') as out:\n"
        "    out.write(f'{os.getpid()} {os.getppid()}\\n')\n"
    )
    (tmp_path / "usermod.py").write_text(
        textwrap.dedent("""
        import os

        def work(x):
            import recorder  # imported by the workers only, from the folder on sys.path

            if x % 5 == 4:
                os._exit(1)
            return x
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import usermod

    res = pm.parmap(usermod.work, range(40), workers=2, chunksize=1, errors="collect")
    assert [r.kind for r in res.failures] == ["crashed"] * 8
    pool = P.default_pool()
    template = _template_of(pool)

    def own_fds() -> int | None:  # besides one pidfd per forked worker not reaped yet
        forked = psutil.Process(template.pid).children()  # (a zombie still has its pidfd)
        fds = len(os.listdir(f"/proc/{template.pid}/fd")) - len(forked)
        try:  # None while one is ending: its pidfd is being closed and it reaped
            return None if any(p.status() == "zombie" for p in forked) else fds
        except psutil.NoSuchProcess:
            return None

    # (the run's unused spare may still be ending)
    fds_before = wait_for(own_fds, timeout=10, what="the template's forks to settle")
    res = pm.parmap(usermod.work, range(40), workers=2, chunksize=1, errors="collect")
    assert len(res.failures) == 8
    wait_for(lambda: own_fds() == fds_before, timeout=10, what="the template's fds to settle")
    lines = [line.split() for line in log.read_text().splitlines()]
    ran = {int(pid) for pid, _ in lines}
    assert template.pid not in ran
    assert os.getpid() not in ran
    assert any(int(ppid) == template.pid for _, ppid in lines), "no forked worker imported it"
    assert _threads(template.pid) == 1
    # its memory holds no trace of the module either
    with open(f"/proc/{template.pid}/maps") as maps:
        assert "recorder" not in maps.read()


def test_a_killed_template_costs_the_run_nothing(tmp_path):
    """Kill the template in the middle of a run full of crashes: the run completes
    (replacements are interpreters again, or come from a new template), the workers it
    had forked keep working, and nothing hangs or leaks."""
    items = [(i, 0.02) for i in range(60)]
    crash_at = set(range(4, 60, 6))
    marker = tmp_path / "kill"

    def start_killer():
        import threading

        def kill():
            wait_for(marker.exists, timeout=60, what="the run to reach its middle")
            template = P.default_pool().launcher.template
            if template is not None:
                os.kill(template.pid, signal.SIGKILL)
                marker.write_text(str(template.pid))

        thread = threading.Thread(target=kill)
        thread.start()
        return thread

    thread = start_killer()
    args = [
        ("crash", i) if i in crash_at else ("mark", str(marker)) if i == 30 else item
        for i, item in enumerate(items)
    ]
    res = pm.parmap(_crash_or_sleep, args, workers=2, chunksize=1, errors="collect")
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(e.index for e in res.failures) == sorted(crash_at)
    assert {e.kind for e in res.failures} == {"crashed"}
    assert [r for i, r in enumerate(res) if i not in crash_at] == [
        i for i in range(60) if i not in crash_at
    ]
    killed = int(marker.read_text() or 0)
    assert killed, "the template was up when the run reached its middle"
    wait_for(lambda: _gone([killed]), timeout=10, what="the killed template to be reaped")
    # the pool keeps working, warm workers forked by the dead template included
    assert pm.parmap(helpers.square, range(8), workers=2) == [x * x for x in range(8)]


def _crash_or_sleep(arg):
    kind, value = arg if isinstance(arg, tuple) and isinstance(arg[0], str) else ("", arg)
    if kind == "crash":
        os._exit(1)
    if kind == "mark":
        open(value, "w").close()
        # give the killer its moment: the next items run after the template died
        deadline = time.monotonic() + 30
        while os.path.getsize(value) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return 30
    number, seconds = value
    time.sleep(seconds)
    return number


def test_a_worker_outliving_its_template_still_ends_cleanly():
    """The template died: its forked worker's exit status is unknown, but the handle
    says it ended, reaping does not hang and stopping it works."""
    pool = P.Pool()
    try:
        pool.release([pool.spawn()])
        template = _template_of(pool)
        forked = pool.spawn()
        assert isinstance(forked.proc, T.ForkedProcess)
        os.kill(template.pid, signal.SIGKILL)
        template.proc.wait(10)
        assert forked.alive()  # the worker lives on: it has its own lifeline to us
        forked.kill()
        assert forked.reap(10) is None  # nobody can say how it ended
        assert not forked.alive()
        pool.discard(forked)
        # the next replacement is an interpreter again, and starts a new template
        again = pool.spawn()
        assert not isinstance(again.proc, T.ForkedProcess)
        assert pool.launcher.template is not template
        pool.release([again])
    finally:
        pool.shutdown()


def test_no_process_is_left_after_shutdown():
    items = _crashing_items(30, every=5)
    pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
    template = _template_of(P.default_pool())
    forked: list = []
    for _ in range(20):  # until a forked worker is among the warm ones
        pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
        forked = [p.pid for p in psutil.Process(template.pid).children()]
        if forked:
            break
    assert forked, "no worker was forked"
    pids = [template.pid, *forked, *(p.pid for p in children())]
    pm.shutdown()
    wait_for(lambda: _gone(pids), timeout=10, what="the template and its workers to exit")
    assert children() == []


PARENT_SCRIPT = """
import os, time
import ipyparmap as pm
from ipyparmap.process import pool as P
items = [("run", "_exit") if i % 5 == 4 else i for i in range(20)]
pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
template = P.default_pool().launcher.template
while not template.usable():
    time.sleep(0.02)
import psutil
for _ in range(20):  # until a forked worker is among the warm ones
    pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
    forked = [p.pid for p in psutil.Process(template.pid).children() if p.status() != "zombie"]
    if forked:
        break
print("PIDS", template.pid, *forked, flush=True)
time.sleep(60)
"""


def test_the_template_and_its_workers_exit_when_the_parent_is_killed():
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = start_python(
        f"import sys; sys.path.insert(0, {tests!r}); import helpers\n" + PARENT_SCRIPT
    )
    try:
        line = ""
        deadline = time.monotonic() + 60
        while not line.startswith("PIDS") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) >= 2, line  # the template and at least one forked worker
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: _gone(pids), timeout=10, what="the template and its workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Trap:
    """Unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_the_template_unpickles_nothing_and_listens_nowhere(tmp_path):
    template = T.Template(P.worker_env())
    try:
        wait_for(template.usable, timeout=30, what="the template to boot")
        me = psutil.Process(template.pid)
        for conn in me.net_connections(kind="all"):
            assert conn.family == __import__("socket").AF_UNIX, conn
            assert not conn.laddr and not conn.raddr, conn  # socketpairs: no path, no port
        trap = tmp_path / "unpickled"
        for frame in (pickle.dumps(_Trap(str(trap))), b"F" + pickle.dumps(_Trap(str(trap)))):
            template.channel.send(frame)  # not a fork request with 3 descriptors: ignored
        template.collect(wait=0.2)
        assert not trap.exists()
        assert not template.dead and template.proc.poll() is None
        # it still forks
        board = os.memfd_create("test-board")
        os.ftruncate(board, 64 * 1024)
        a, b = __import__("socket").socketpair()
        c, d = __import__("socket").socketpair()
        child = template.fork(str(tmp_path), (b.fileno(), d.fileno(), board))
        for fd in (b, d):
            fd.close()
        os.close(board)
        assert child is not None
        c.close()  # its lifeline: it exits
        assert child.wait(10) == 0
        os.close(child.pidfd)
        a.close()
    finally:
        template.close()
    assert template.proc.returncode == 0


def test_no_template_without_pidfds():
    """Portable mode (no pidfd): every worker is an interpreter, no template starts."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {tests!r})\n" + textwrap.dedent("""
        import os, helpers, ipyparmap as pm
        from ipyparmap.process import pool as P
        items = [("run", "_exit") if i % 5 == 4 else i for i in range(20)]
        pm.parmap(helpers.act, items, workers=2, chunksize=1, errors="collect")
        print("TEMPLATE", P.default_pool().launcher.template, flush=True)
        ppids = set(pm.parmap(helpers.parent_pid, range(4), workers=2, chunksize=1))
        print("SPAWNED", ppids == {os.getpid()}, flush=True)
    """)
    out = run_python(code, env={system.MASK_ENV: "pidfd"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TEMPLATE None" in out.stdout
    assert "SPAWNED True" in out.stdout  # the pool's workers are our own children


def test_templates_are_found_by_the_leak_checks():
    """The tests' leak checks see the template: it is our child until it exits."""
    pool = P.Pool()
    try:
        pool.release([pool.spawn()])
        template = _template_of(pool)
        assert any(is_template(p) and p.pid == template.pid for p in children())
        assert template.pid not in {p.pid for p in workers()}
    finally:
        pool.shutdown()


# -- modules preloaded in the template --------------------------------------------------
def _booted(template: T.Template) -> T.Template:
    wait_for(lambda: template.usable() or template.dead, timeout=60, what="the template")
    return template


def _fork_one(template: T.Template, cwd: str):
    """Fork a bare worker; return (process, our channel end, our lifeline end)."""
    import socket

    board = os.memfd_create("test-board")
    os.ftruncate(board, 64 * 1024)
    ours, theirs = socket.socketpair()
    life_ours, life_theirs = socket.socketpair()
    try:
        child = template.fork(cwd, (theirs.fileno(), life_theirs.fileno(), board))
    finally:
        theirs.close()
        life_theirs.close()
        os.close(board)
    return child, ours, life_ours


def _end(child, *sockets) -> None:
    for sock in sockets:
        sock.close()  # its lifeline and channel: it exits
    child.wait(10)
    os.close(child.pidfd)


def test_numpy_is_preloaded_when_openblas_is_told_to_use_one_thread(tmp_path):
    pytest.importorskip("numpy")
    env = {**P.worker_env(), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    template = _booted(T.Template(env, ("numpy",)))
    try:
        assert template.usable()
        assert _threads(template.pid) == 1
        with open(f"/proc/{template.pid}/maps") as maps:
            assert "numpy" in maps.read()
        child, *ends = _fork_one(template, str(tmp_path))
        assert child is not None
        _end(child, *ends)
    finally:
        template.close()


@pytest.mark.parametrize("what", ["openblas", "python"])
def test_a_module_that_starts_a_thread_at_import_is_refused(tmp_path, what):
    """Importing it left a thread running: the template says which and exits rather
    than ever fork again; the launcher never asks for it again."""
    env = P.worker_env()
    if what == "openblas":
        pytest.importorskip("numpy")
        env.update(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
        name = "numpy"
    else:
        (tmp_path / "spawns_a_thread.py").write_text(
            "import threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
        name = "spawns_a_thread"
    template = _booted(T.Template(env))
    try:
        assert template.usable()
        template.preload({name})
        wait_for(lambda: template.collect(0.05) or template.dead, timeout=60, what="refusal")
        assert template.refused == {name}
        template.proc.wait(10)  # it ended (exited, or killed once its channel closed)
        child, *ends = _fork_one(template, str(tmp_path))
        assert child is None  # and forks nothing
        for sock in ends:
            sock.close()
    finally:
        template.close()
    launcher = T.Launcher()
    launcher.template = template
    launcher.preload = {name}
    assert launcher.fork(env, str(tmp_path), (0, 1, 2), want_template=False) is None
    assert launcher.unsafe == {name} and not launcher.preload


def test_a_fork_asked_behind_an_import_waits_for_it(tmp_path):
    """Modules sent to a template that is still booting are imported after its READY;
    a fork asked meanwhile is answered after the import. Giving up on it after
    FORK_TIMEOUT would drop a working template (a cold pandas import can take that
    long) and start every worker as an interpreter."""
    seconds = T.FORK_TIMEOUT + 1.0
    (tmp_path / "slow_to_import.py").write_text(f"import time\ntime.sleep({seconds})\n")
    env = P.worker_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    template = T.Template(env)
    try:
        template.preload({"slow_to_import"})  # before it booted: its READY comes first
        assert _booted(template).usable()
        asked = time.monotonic()
        child, *ends = _fork_one(template, str(tmp_path))
        assert child is not None and not template.dead
        assert time.monotonic() - asked >= seconds - 1.0  # it was answered after the import
        _end(child, *ends)
        assert template.usable()  # the import is done: it forks at once again
        child, *ends = _fork_one(template, str(tmp_path))
        assert child is not None
        _end(child, *ends)
    finally:
        template.close()


def _draw_or_die(x):
    import numpy

    if x % 3 == 2:
        os._exit(1)
    return os.getpid(), os.getppid(), float(numpy.random.random())


def test_forked_workers_get_their_own_numpy_random_state():
    """Forks of a template that has ``numpy.random`` loaded would all draw the same
    numbers (the template's state); each gets fresh entropy, as a spawned worker has."""
    pytest.importorskip("numpy")
    launcher = P.default_pool().launcher
    launcher.preload.add("numpy.random")  # as if a function had used it
    pm.parmap(helpers.act, _crashing_items(6, every=3), workers=2, errors="collect")
    template = _template_of(P.default_pool())
    assert "numpy.random" in template.preloaded
    res = pm.parmap(_draw_or_die, range(30), workers=2, chunksize=1, errors="collect")
    first: dict = {}
    for value in res:
        if not isinstance(value, pm.Failure):
            pid, ppid, draw = value
            if ppid == template.pid:
                first.setdefault(pid, draw)
    assert len(first) >= 2, "fewer than 2 forked workers drew"
    assert len(set(first.values())) == len(first)


def test_only_installed_third_party_modules_are_preloaded(tmp_path, monkeypatch):
    import cloudpickle

    numpy = pytest.importorskip("numpy")
    (tmp_path / "mylocal.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylocal

    def uses_all(x):
        return numpy.sqrt(mylocal.double(x)) + len(os.sep) + len(sys.argv)

    found = T.installed_modules(cloudpickle.dumps(uses_all))
    assert "numpy" in found
    assert not {"mylocal", "os", "sys", "__main__", "ipyparmap", "cloudpickle"} & found

    def only_says_its_name(x):  # a string is not an import
        return "numpy" in sys.modules and x.numpy

    assert T.installed_modules(cloudpickle.dumps(only_says_its_name)) == set()
    big = numpy.zeros(3)

    def uses_an_array(i):  # an array global: numpy's reconstructor, a GLOBAL
        return big[i]

    assert T.installed_modules(cloudpickle.dumps(uses_an_array)) == {"numpy"}


def test_a_template_serves_one_environment(tmp_path):
    """Workers with another environment (the caller changed os.environ, or a call asked
    for other thread limits) are not forked from a template made for others: the next
    replacement starts a template for theirs; a first worker keeps the old one."""
    launcher = T.Launcher()
    env_a = P.worker_env({"IPYPARMAP_TEST_ENV": "a"})
    env_b = P.worker_env({"IPYPARMAP_TEST_ENV": "b"})
    try:
        assert launcher.fork(env_a, str(tmp_path), (0, 1, 2), want_template=True) is None
        first = launcher.template
        wait_for(first.usable, timeout=30, what="the template to boot")
        # a first worker with another environment: an interpreter; the template stays
        assert launcher.fork(env_b, str(tmp_path), (0, 1, 2), want_template=False) is None
        assert launcher.template is first and not first.dead
        # a replacement with it: a template of its own
        launcher.fork(env_b, str(tmp_path), (0, 1, 2), want_template=True)
        second = launcher.template
        assert second is not first and second.env == env_b
        wait_for(lambda: first.proc.poll() is not None, timeout=10, what="the old template")
        assert launcher.failed == 0
    finally:
        launcher.close()


def _register_exit_note(folder):
    import atexit
    import threading

    pid = os.getpid()

    def late():  # a non-daemon thread the exit waits for, as at any interpreter exit
        time.sleep(0.05)
        with open(os.path.join(folder, f"thread-{pid}"), "w"):
            pass

    threading.Thread(target=late).start()
    atexit.register(lambda: open(os.path.join(folder, f"atexit-{pid}"), "w").close())
    return pid, os.getppid()


def test_a_forked_worker_exits_like_an_interpreter(tmp_path):
    """It skips tearing the interpreter down, not what an exit does for the program:
    its threads are waited for and its atexit functions run."""
    with pm.Pool(2, maxtasksperchild=1) as pool:
        seen = []
        deadline = time.monotonic() + 60
        while not any(ppid != os.getpid() for _, ppid in seen):
            seen += pool.map(_register_exit_note, [str(tmp_path)] * 4, chunksize=1)
            assert time.monotonic() < deadline, "no worker was forked"
    forked = [pid for pid, ppid in seen if ppid != os.getpid()]
    wait_for(lambda: _gone(forked), timeout=10, what="the forked workers to exit")
    for pid in forked:
        assert (tmp_path / f"atexit-{pid}").exists()
        assert (tmp_path / f"thread-{pid}").exists()


def test_a_cold_call_readies_what_its_workers_need_before_it_forks_them():
    """A first call of a function using NumPy and a big global: the template is asked
    to import NumPy, and the global is copied into shared memory, before the first
    worker is forked (W6b: the copy overlaps the template's boot and import, and the
    workers need not import NumPy each)."""
    pytest.importorskip("numpy")
    code = textwrap.dedent("""
        import numpy as np
        import ipyparmap as pm
        from ipyparmap.process import template as T
        from ipyparmap.wire import serialize as S

        events = []
        for cls, name in ((T.Template, "preload"), (T.Template, "fork"),
                          (T.Template, "order"), (S.Packed, "share")):
            original = getattr(cls, name)
            def spy(*args, _original=original, _name=name, **kwargs):
                if _name != "preload" or args[1]:
                    events.append(_name if _name != "order" else "fork")
                return _original(*args, **kwargs)
            setattr(cls, name, spy)

        BIG = np.arange(1 << 20, dtype=np.float64)  # 8 MB: shared, not pickled in-band

        def f(i):
            return float(BIG[i])

        assert pm.parmap(f, range(4), workers=2, progress=False) == [0.0, 1.0, 2.0, 3.0]
        first_fork = events.index("fork")
        print("EVENTS", events[:first_fork + 1])
        print("READY", "preload" in events[:first_fork] and "share" in events[:first_fork])
    """)
    out = run_python(code, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "READY True" in out.stdout, out.stdout
