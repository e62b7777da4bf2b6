"""``import ipyparmap as multiprocessing``: the standard library's names, and passing its
queues, locks, shared values, pipes and Manager proxies to ipyparmap's workers as the
standard library passes them to spawned children (issue 16). Real processes; targets
are defined as in a notebook (pickled by value)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import threading

import pytest
from conftest import notebook_function, open_fds, run_python, wait_for

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")

NAMES = (
    "Process", "Pool", "Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Lock", "RLock",
    "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier", "Value", "Array",
    "RawValue", "RawArray", "Manager", "current_process", "parent_process",
    "active_children", "get_context", "set_start_method", "get_start_method",
    "TimeoutError", "AuthenticationError", "cpu_count", "freeze_support",
)  # fmt: skip


def started(*procs):
    for proc in procs:
        proc.start()
    return procs


def joined(*procs, timeout=60):
    for proc in procs:
        proc.join(timeout)
        assert not proc.is_alive(), f"{proc} still running after {timeout} s"
    return [proc.exitcode for proc in procs]


# -- the names ----------------------------------------------------------------------------
def test_every_common_multiprocessing_name_is_importable_from_ipyparmap():
    for name in NAMES:
        assert getattr(pm, name) is not None, name
        assert name in pm.__all__, name
    assert pm.AuthenticationError is multiprocessing.AuthenticationError
    assert pm.TimeoutError is multiprocessing.TimeoutError
    from ipyparmap import Lock, Manager, Pipe, Queue, Value  # noqa: F401


def test_a_name_ipyparmap_does_not_provide_says_what_to_use_instead():
    with pytest.raises(AttributeError, match=r"use multiprocessing\.get_logger"):
        pm.get_logger  # noqa: B018
    with pytest.raises(AttributeError, match=r"use multiprocessing\.set_executable"):
        pm.set_executable  # noqa: B018
    with pytest.raises(AttributeError, match=r"import multiprocessing\.shared_memory"):
        pm.shared_memory  # noqa: B018
    assert not hasattr(pm, "no_such_name")


def test_the_only_start_method_is_spawn():
    assert pm.get_start_method() == "spawn"
    pm.set_start_method("spawn")
    ctx = pm.get_context()
    assert pm.get_context("spawn") is ctx
    assert ctx.get_start_method() == "spawn"
    assert ctx.Process is pm.Process and ctx.Queue is pm.Queue
    for method in ("fork", "forkserver"):
        with pytest.raises(ValueError, match="always spawned"):
            pm.get_context(method)
        with pytest.raises(ValueError, match="always spawned"):
            pm.set_start_method(method)
    with pytest.raises(ValueError):
        pm.get_context("bogus")


# -- passing them to Process ----------------------------------------------------------------
PRODUCER = """
def producer(q, n):
    for i in range(n):
        q.put(i * i)
    q.put(None)
"""
CONSUMER = """
def consumer(inbox, outbox):
    while (item := inbox.get()) is not None:
        outbox.put(item + 1)
    outbox.put(None)
"""


def test_the_tutorial_producer_consumer_with_queues_and_notebook_targets():
    producer = notebook_function(PRODUCER, "producer")
    consumer = notebook_function(CONSUMER, "consumer")
    inbox, outbox = pm.Queue(), pm.Queue()
    procs = started(
        pm.Process(target=producer, args=(inbox, 20)),
        pm.Process(target=consumer, args=(inbox, outbox)),
    )
    got = []
    while (item := outbox.get(timeout=60)) is not None:
        got.append(item)
    assert got == [i * i + 1 for i in range(20)]
    assert joined(*procs) == [0, 0]


CONTENDED = """
def contended(counter, lock, rounds):
    import time
    for _ in range(rounds):
        with lock:  # a read-sleep-write race that only the lock prevents
            value = counter.value
            time.sleep(0.001)
            counter.value = value + 1
"""


@pytest.mark.parametrize("make_lock", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"])
def test_a_lock_contended_by_two_workers(make_lock):
    contended = notebook_function(CONTENDED, "contended")
    counter = pm.RawValue("i", 0)
    lock = getattr(pm, make_lock)() if "Lock" in make_lock else getattr(pm, make_lock)(1)
    procs = [pm.Process(target=contended, args=(counter, lock, 40)) for _ in range(2)]
    assert joined(*started(*procs)) == [0, 0]
    assert counter.value == 80


INCREMENT = """
def increment(value, numbers, rounds):
    for _ in range(rounds):
        with value.get_lock():
            value.value += 1
    with numbers.get_lock():
        numbers[0] += 1
"""


def test_a_value_incremented_under_its_lock_by_n_processes():
    increment = notebook_function(INCREMENT, "increment")
    value, numbers = pm.Value("i", 0), pm.Array("d", [0.0, 0.0])
    procs = [pm.Process(target=increment, args=(value, numbers, 200)) for _ in range(4)]
    assert joined(*started(*procs)) == [0, 0, 0, 0]
    assert value.value == 800
    assert numbers[:] == [4.0, 0.0]


FILL = """
def fill(shared, key):
    shared[key] = key * 10
"""


def test_a_manager_dict_filled_by_workers():
    fill = notebook_function(FILL, "fill")
    with pm.Manager() as manager:
        shared = manager.dict()
        procs = [pm.Process(target=fill, args=(shared, k)) for k in range(3)]
        assert joined(*started(*procs)) == [0, 0, 0]
        # a proxy as a per-task argument: workers share this process's authkey
        with pm.Pool(2) as pool:
            pool.starmap(fill, [(shared, k) for k in range(3, 6)])
        assert dict(shared) == {k: k * 10 for k in range(6)}


BARRIER = """
def meet(barrier, arrived, results):
    with arrived.get_lock():
        arrived.value += 1
    barrier.wait(60)
    results.put(arrived.value)  # after the barrier everybody has arrived
"""


def test_a_barrier_with_n_processes():
    meet = notebook_function(BARRIER, "meet")
    n = 3
    barrier, arrived, results = pm.Barrier(n), pm.Value("i", 0), pm.Queue()
    procs = [pm.Process(target=meet, args=(barrier, arrived, results)) for _ in range(n)]
    started(*procs)
    assert [results.get(timeout=60) for _ in range(n)] == [n] * n
    assert joined(*procs) == [0] * n


ECHO = """
def echo(conn, writer):
    while (message := conn.recv()) is not None:
        conn.send(message * 2)
    writer.send("bye")
    writer.close()
"""


def test_a_pipe_both_ways_and_a_one_way_pipe():
    echo = notebook_function(ECHO, "echo")
    here, there = pm.Pipe()
    reader, writer = pm.Pipe(duplex=False)
    (proc,) = started(pm.Process(target=echo, args=(there, writer)))
    for message in (1, "ab", [3]):
        here.send(message)
        assert here.poll(60)
        assert here.recv() == message * 2
    here.send(None)
    assert reader.poll(60) and reader.recv() == "bye"
    assert joined(proc) == [0]


WAITER = """
def waiter(event, woken):
    if event.wait(60):
        woken.value = 1
"""


def test_an_event_wakes_a_waiting_worker():
    waiter = notebook_function(WAITER, "waiter")
    event, woken = pm.Event(), pm.Value("i", 0)
    (proc,) = started(pm.Process(target=waiter, args=(event, woken)))
    wait_for(lambda: proc.pid is not None, timeout=10)
    proc.join(0.5)
    assert proc.is_alive() and woken.value == 0  # still waiting
    event.set()
    assert joined(proc) == [0]
    assert woken.value == 1


CONDITION = """
def notify(cond, box):
    with cond:
        box.value = 7
        cond.notify_all()
"""


def test_a_condition_notifies_across_processes():
    notify = notebook_function(CONDITION, "notify")
    cond, box = pm.Condition(), pm.RawValue("i", 0)
    with cond:
        (proc,) = started(pm.Process(target=notify, args=(cond, box)))
        assert cond.wait_for(lambda: box.value == 7, timeout=60)
    assert joined(proc) == [0]


JOINABLE = """
def work(tasks, done):
    while True:
        item = tasks.get()
        done.put(item * 3)
        tasks.task_done()
        if item is None or item < 0:
            return
"""


def test_a_joinable_queue_and_a_simple_queue():
    work = notebook_function(JOINABLE.replace("item * 3", "item * 3 if item else 0"), "work")
    tasks, done = pm.JoinableQueue(), pm.SimpleQueue()
    (proc,) = started(pm.Process(target=work, args=(tasks, done)))
    for item in (1, 2, -1):
        tasks.put(item)
    tasks.join()
    assert sorted(done.get() for _ in range(3)) == [-3, 3, 6]
    assert joined(proc) == [0]


# -- initargs ---------------------------------------------------------------------------
INIT = """
def init(queue):
    global LOG
    LOG = queue

def task(x):
    import os
    LOG.put((os.getpid(), x))
    return x * 2
"""


def test_a_queue_in_pool_initargs_logs_from_the_workers():
    init = notebook_function(INIT, "init")
    task = init.__globals__["task"]
    log = pm.Queue()
    with pm.Pool(2, initializer=init, initargs=(log,)) as pool:
        assert pool.map(task, range(8), chunksize=1) == [x * 2 for x in range(8)]
        records = [log.get(timeout=60) for _ in range(8)]
    assert sorted(x for _, x in records) == list(range(8))
    assert os.getpid() not in {pid for pid, _ in records}


def test_a_queue_in_executor_initargs_logs_from_the_workers():
    init = notebook_function(INIT, "init")
    task = init.__globals__["task"]
    log = pm.Queue()
    with pm.ProcessPoolExecutor(2, initializer=init, initargs=(log,)) as pool:
        assert list(pool.map(task, range(4))) == [0, 2, 4, 6]
        records = [log.get(timeout=60) for _ in range(4)]
    assert sorted(x for _, x in records) == list(range(4))


def test_a_lock_made_in_a_fork_context_says_to_use_ipyparmaps():
    lock = multiprocessing.get_context("fork").Lock()
    proc = pm.Process(target=print, args=(lock,))
    with pytest.raises(RuntimeError, match="fork context") as info:
        proc.start()
    assert "ipyparmap.Lock()" in "".join(getattr(info.value, "__notes__", []))


def test_workers_started_before_multiprocessing_was_loaded_get_its_authkey_later():
    """A script's first parmap does not load multiprocessing in the caller, so its warm
    workers start without our authkey (there is none yet); once the caller has one,
    the next call gives it to them, as a spawned child of ours would have it (a
    Manager's proxies authenticate with it)."""
    out = run_python("""
        import sys
        import ipyparmap as pm

        def pid(_):
            import os
            return os.getpid()

        def key(_):
            import multiprocessing
            return bytes(multiprocessing.current_process().authkey)

        first = set(pm.parmap(pid, range(8), workers=2, chunksize=1, progress=False))
        print("LOADED", "multiprocessing" in sys.modules)
        import multiprocessing
        keys = pm.parmap(key, range(8), workers=2, chunksize=1, progress=False)
        again = set(pm.parmap(pid, range(8), workers=2, chunksize=1, progress=False))
        print("SAME", again == first)
        print("KEY", set(keys) == {bytes(multiprocessing.current_process().authkey)})
    """)
    assert out.returncode == 0, out.stderr
    assert "LOADED False" in out.stdout
    assert "SAME True" in out.stdout  # the same warm workers
    assert "KEY True" in out.stdout


def test_a_worker_loads_multiprocessing_only_when_asked_and_is_then_our_spawned_child():
    """Workers (and their template) boot without multiprocessing; code that imports it
    in a worker finds what a spawned child of ours has: our authkey, a pool worker's
    name, ``parent_process()`` and our logger's level."""
    out = run_python("""
        import logging, multiprocessing, os, sys
        import ipyparmap as pm

        def probe(_):
            loaded = "multiprocessing" in sys.modules
            import multiprocessing, multiprocessing.util
            me = multiprocessing.current_process()
            level = multiprocessing.util.get_logger().level
            return (loaded, bytes(me.authkey), me.name, multiprocessing.parent_process().pid,
                    level)

        multiprocessing.log_to_stderr(logging.WARNING)
        rows = pm.parmap(probe, range(2), workers=2, chunksize=1, progress=False)
        print("LOADED", any(row[0] for row in rows))
        print("KEY", {row[1] for row in rows} == {bytes(multiprocessing.current_process().authkey)})
        print("NAMES", all(row[2].startswith("SpawnPoolWorker-") for row in rows))
        print("PARENT", {row[3] for row in rows} == {os.getpid()})
        print("LEVEL", {row[4] for row in rows} == {logging.WARNING})
    """)
    assert out.returncode == 0, out.stderr
    for line in ("LOADED False", "KEY True", "NAMES True", "PARENT True", "LEVEL True"):
        assert line in out.stdout, out.stdout


def _thread_names(_):
    import threading

    return [thread.name for thread in threading.enumerate()]


def test_items_see_no_thread_of_ours_in_a_worker():
    """As in a spawned child, code in a worker finds only its main thread (the worker's
    watcher is a bare thread: a threading.Thread would cost each forked worker pages)."""
    assert (
        pm.parmap(_thread_names, range(4), workers=2, chunksize=1).values() == [["MainThread"]] * 4
    )


# -- Process: the rest of its API ---------------------------------------------------------
REPORT = """
def report(queue):
    import multiprocessing, os
    parent = multiprocessing.parent_process()
    me = multiprocessing.current_process()
    queue.put((parent.pid, parent.name, parent.is_alive(), me.name, bytes(me.authkey),
               os.getppid()))
"""


def test_process_name_authkey_sentinel_parent_process_and_active_children():
    report = notebook_function(REPORT, "report")
    queue = pm.Queue()
    proc = pm.Process(target=report, args=(queue,), name="reporter")
    assert proc.authkey == multiprocessing.current_process().authkey
    proc.authkey = b"secret key"
    with pytest.raises(ValueError):
        proc.sentinel  # noqa: B018
    proc.start()
    assert proc in pm.active_children()
    parent_pid, parent_name, alive, name, authkey, ppid = queue.get(timeout=60)
    assert (parent_pid, alive, name, authkey) == (os.getpid(), True, "reporter", b"secret key")
    assert parent_name == multiprocessing.current_process().name and ppid == os.getpid()
    assert multiprocessing.connection.wait([proc.sentinel], 60) == [proc.sentinel]
    assert joined(proc) == [0]
    assert proc not in pm.active_children()


FAILING = """
def failing(path, how):
    import sys
    sys.stderr = open(path, "w")
    if how == "raise":
        raise ValueError("boom in the child")
    sys.exit("the reason")
"""


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_the_child_prints_its_traceback_or_exit_message_to_its_own_stderr(how, tmp_path, capfd):
    failing = notebook_function(FAILING, "failing")
    path = tmp_path / "stderr.txt"
    proc = pm.Process(target=failing, args=(str(path), how), name="failing")
    proc.start()
    assert joined(proc) == [1]
    text = path.read_text()
    if how == "raise":
        assert "Process failing:" in text and "ValueError: boom in the child" in text
    else:
        assert text == "the reason\n"
    out, err = capfd.readouterr()
    assert "boom" not in out + err and "the reason" not in out + err


SUBCLASS = """
import concurrent.futures
import multiprocessing

class Worker(multiprocessing.Process):
    def __init__(self, queue, **kwargs):
        super().__init__(**kwargs)
        self.queue = queue

    def run(self):
        self.queue.put(("ran", multiprocessing.current_process().name))
"""


def test_a_subclass_holding_a_queue_runs_its_run_method():
    source = SUBCLASS.replace("multiprocessing.Process", "Process")
    ns = {"Process": pm.Process}
    worker_class = notebook_function(source, "Worker", **ns)
    queue = pm.Queue()
    (proc,) = started(worker_class(queue, name="sub"))
    assert queue.get(timeout=60) == ("ran", "sub")
    assert joined(proc) == [0]


def test_without_pidfd_parent_process_is_still_there(monkeypatch):
    monkeypatch.setenv("IPYPARMAP_MASK", "pidfd")
    report = notebook_function(REPORT, "report")
    queue = pm.Queue()
    (proc,) = started(pm.Process(target=report, args=(queue,)))
    parent_pid, _, alive, *_ = queue.get(timeout=60)
    assert (parent_pid, alive) == (os.getpid(), True)
    assert joined(proc) == [0]


def test_per_task_arguments_refuse_a_queue_as_the_standard_library_does():
    queue = pm.Queue()
    with pm.Pool(1) as pool, pytest.raises(RuntimeError, match="through inheritance"):
        pool.map(print, [queue])
    with pm.ProcessPoolExecutor(1) as pool:
        future = pool.submit(print, pm.Lock())  # as the stdlib: the error is the future's
        with pytest.raises(RuntimeError, match="inheritance") as caught:
            future.result(30)
    assert isinstance(caught.value.__cause__, concurrent.futures.process._RemoteTraceback)


def test_apply_async_reports_an_unpicklable_argument_on_its_result():
    errors = []
    with pm.Pool(1) as pool:
        result = pool.apply_async(print, (pm.Lock(),), error_callback=errors.append)
        with pytest.raises(RuntimeError, match="inheritance"):
            result.get(60)
        assert not result.successful() and isinstance(errors[0], RuntimeError)
        assert pool.apply(abs, (-3,)) == 3  # the pool goes on


def test_an_unpicklable_function_fails_its_future_with_its_own_error():
    lock = threading.Lock()
    with pm.ProcessPoolExecutor(1) as pool:
        future = pool.submit(lambda: lock)
        error = future.exception(30)
        assert isinstance(error, TypeError) and "_thread.lock" in str(error)
        assert any("lock" in note for note in getattr(error, "__notes__", []))  # names it
        assert pool.submit(abs, -2).result(60) == 2  # the pool goes on


def test_submit_passes_self_and_fn_as_keywords():
    with pm.ProcessPoolExecutor(1) as pool:
        assert pool.submit(dict, self=2, fn=3).result(60) == {"self": 2, "fn": 3}


def test_replacement_workers_open_the_same_initargs_again():
    # maxtasksperchild=1: every task has a fresh worker, and each one fetches the
    # queue's descriptors anew (the standard library pickles initargs per child)
    init = notebook_function(INIT, "init")
    task = init.__globals__["task"]
    log = pm.Queue()
    with pm.Pool(1, initializer=init, initargs=(log,), maxtasksperchild=1) as pool:
        assert pool.map(task, range(3), chunksize=1) == [0, 2, 4]
        records = [log.get(timeout=60) for _ in range(3)]
    assert sorted(x for _, x in records) == [0, 1, 2]
    assert len({pid for pid, _ in records}) == 3


def test_what_a_process_put_in_a_queue_arrives_after_it_exited():
    producer = notebook_function(PRODUCER, "producer")
    queue = pm.Queue()
    (proc,) = started(pm.Process(target=producer, args=(queue, 50)))
    assert joined(proc) == [0]  # the worker flushed its queue before exiting
    assert [queue.get(timeout=60) for _ in range(51)] == [i * i for i in range(50)] + [None]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_handed_over_descriptors_are_closed_when_the_workers_are_done():
    producer = notebook_function(PRODUCER, "producer")
    init = notebook_function(INIT, "init")
    queue = pm.Queue()
    for _ in range(2):  # warm: the handover server, the queue's own threads
        (proc,) = started(pm.Process(target=producer, args=(queue, 1)))
        joined(proc)
        assert [queue.get(timeout=60) for _ in range(2)] == [0, None]
    with pm.Pool(1, initializer=init, initargs=(queue,)) as pool:
        pool.map(init.__globals__["task"], [5])
    assert queue.get(timeout=60)[1] == 5
    before = open_fds()
    for _ in range(3):
        (proc,) = started(pm.Process(target=producer, args=(queue, 1)))
        joined(proc)
        proc.close()  # its sentinel (a pidfd) is released here, as with the stdlib
        assert [queue.get(timeout=60) for _ in range(2)] == [0, None]
        with pm.Pool(1, initializer=init, initargs=(queue,)) as pool:
            pool.map(init.__globals__["task"], [5])
        assert queue.get(timeout=60)[1] == 5
    wait_for(lambda: open_fds() <= before, timeout=10,
             what="the handed-over descriptors to be closed")  # fmt: skip


def test_a_client_stalled_in_the_handover_handshake_holds_up_no_worker():
    import socket

    from ipyparmap.dropins import handover

    producer = notebook_function(PRODUCER, "producer")
    queue = pm.Queue()
    server = handover._the_server()
    stalled = socket.socket(socket.AF_UNIX)  # connects, then never answers the challenge
    stalled.connect(server.address)
    intruder = multiprocessing.connection  # a client with the wrong secret is turned away
    with pytest.raises(multiprocessing.AuthenticationError):
        intruder.Client(server.address, family="AF_UNIX", authkey=b"x" * 32)
    try:
        (proc,) = started(pm.Process(target=producer, args=(queue, 2)))
        joined(proc)
        assert proc.exitcode == 0
        assert [queue.get(timeout=60) for _ in range(3)] == [0, 1, None]
    finally:
        stalled.close()


CHILD = """
def child(q, *args, **kwargs):
    import multiprocessing, os
    current = multiprocessing.current_process()
    q.put(args)
    q.put(kwargs)
    q.put(current.name)
    q.put(bytes(current.authkey))
    q.put(os.getpid())
"""


def test_process_as_cpythons_test_process_checks_it():
    # after Lib/test/_test_multiprocessing.py::_TestProcess.test_process
    child = notebook_function(CHILD, "child")
    q = pm.Queue()
    args, kwargs = (1, 2, "3"), {"hello": 23, "bye": 2.54}
    p = pm.Process(target=child, args=(q, *args), kwargs=kwargs, name="SomeProcess")
    p.daemon = True
    assert p.authkey == pm.current_process().authkey
    assert not p.is_alive() and p.daemon and p.exitcode is None
    assert p not in pm.active_children() and type(pm.active_children()) is list
    p.start()
    assert p.exitcode is None and p.is_alive() and p in pm.active_children()
    assert q.get(timeout=60) == args
    assert q.get(timeout=60) == kwargs
    assert q.get(timeout=60) == "SomeProcess"
    assert q.get(timeout=60) == pm.current_process().authkey
    assert q.get(timeout=60) == p.pid
    assert joined(p) == [0]
    assert not p.is_alive() and p not in pm.active_children()
    p.close()
    with pytest.raises(ValueError):
        p.sentinel  # noqa: B018


EXIT = """
def exiting(path, reason):
    import sys
    sys.stderr = open(path, "w")
    sys.exit(reason)
"""


@pytest.mark.parametrize(
    ("reason", "code", "text"),
    [([1, 2, 3], 1, "[1, 2, 3]\n"), ("ignore this", 1, "ignore this\n"), (True, 1, ""),
     (False, 0, ""), (8, 8, ""), (None, 0, "")],
)  # fmt: skip
def test_sys_exit_codes_and_messages_as_cpythons_test_sys_exit(reason, code, text, tmp_path):
    exiting = notebook_function(EXIT, "exiting")
    path = tmp_path / "stderr.txt"
    (proc,) = started(pm.Process(target=exiting, args=(str(path), reason)))
    assert joined(proc) == [code]
    assert path.read_text() == text


FORKED = """
def in_forked_child(result):
    import ipyparmap as pm

    def put(q):
        q.put("from the grandchild")

    q = pm.Queue()
    p = pm.Process(target=put, args=(q,))
    p.start()
    result.put(q.get(timeout=60))
    p.join(60)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_hands_over_through_its_own_server():
    producer = notebook_function(PRODUCER, "producer")
    queue = pm.Queue()
    (proc,) = started(pm.Process(target=producer, args=(queue, 1)))  # the server runs here
    joined(proc)
    in_forked_child = notebook_function(FORKED, "in_forked_child")
    fork = multiprocessing.get_context("fork")
    result = fork.Queue()
    child = fork.Process(target=in_forked_child, args=(result,))
    child.start()
    try:
        assert result.get(timeout=60) == "from the grandchild"
    finally:
        child.join(60)
    assert child.exitcode == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_joined_process_garbage_collected_releases_its_descriptors():
    import gc

    def run_one():
        proc = pm.Process(target=print, args=("collected",))
        proc.start()
        joined(proc)

    run_one()
    gc.collect()
    before = open_fds()
    for _ in range(3):
        run_one()
    gc.collect()
    wait_for(lambda: open_fds() <= before, timeout=10,
             what="the collected processes' descriptors to be closed")  # fmt: skip


def _worker_name(_):
    me = multiprocessing.current_process()
    return me.name, me._identity, os.getpid()


def test_pool_workers_are_named_as_the_standard_librarys():
    # tutorials print current_process().name to show the work spread over workers
    with pm.Pool(2) as pool:
        seen = set(pool.map(_worker_name, range(40), chunksize=1))
    names = {name for name, _, _ in seen}
    assert all(name.startswith("SpawnPoolWorker-") for name in names), names
    by_pid = {pid: (name, identity) for name, identity, pid in seen}
    assert len(set(by_pid.values())) == len(by_pid)  # one name per worker process
    assert all(identity == (int(name.rsplit("-", 1)[1]),) for name, identity in by_pid.values())


class _CountsItsPickling:
    pickled = 0

    def __reduce__(self):
        type(self).pickled += 1
        return (int, (7,))


def test_submit_pickles_its_arguments_once():
    # (they were pickled once to check them and again to send them: a large array
    # argument cost a copy more)
    _CountsItsPickling.pickled = 0
    with pm.ProcessPoolExecutor(1) as pool:
        assert pool.submit(abs, _CountsItsPickling()).result(60) == 7
    assert _CountsItsPickling.pickled == 1
