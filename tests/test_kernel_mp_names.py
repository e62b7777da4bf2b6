"""``import ipyparmap as multiprocessing`` tutorial code in a real Jupyter kernel: a
``Process`` + ``Queue`` producer/consumer, a ``Manager`` dict, a ``Pool`` logging through
a ``Queue`` in ``initargs``, with notebook-defined targets (issue 16)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")


def test_process_and_queue_tutorial_in_a_kernel(kernel):
    reply = kernel.run(
        "import ipyparmap as multiprocessing\n"
        "def producer(q):\n"
        "    for i in range(5):\n"
        "        q.put(i * i)\n"
        "    q.put(None)\n"
        "q = multiprocessing.Queue()\n"
        "p = multiprocessing.Process(target=producer, args=(q,))\n"
        "p.start()\n"
        "got = []\n"
        "while (item := q.get(timeout=60)) is not None:\n"
        "    got.append(item)\n"
        "p.join(60)\n"
        "print('got', got, p.exitcode)\n"
    )
    assert reply.status == "ok", reply.traceback
    assert "got [0, 1, 4, 9, 16] 0" in reply.stdout


def test_manager_dict_and_pool_initargs_queue_in_a_kernel(kernel):
    reply = kernel.run(
        "import ipyparmap as multiprocessing\n"
        "def fill(d, k):\n"
        "    d[k] = k * 10\n"
        "def init(q):\n"
        "    global LOG\n"
        "    LOG = q\n"
        "def task(x):\n"
        "    LOG.put(x)\n"
        "    return x\n"
        "with multiprocessing.Manager() as manager:\n"
        "    d = manager.dict()\n"
        "    ps = [multiprocessing.Process(target=fill, args=(d, k)) for k in range(3)]\n"
        "    for p in ps: p.start()\n"
        "    for p in ps: p.join(60)\n"
        "    print('dict', sorted(d.items()))\n"
        "log = multiprocessing.Queue()\n"
        "with multiprocessing.Pool(2, initializer=init, initargs=(log,)) as pool:\n"
        "    print('map', pool.map(task, range(4)))\n"
        "    print('log', sorted(log.get(timeout=60) for _ in range(4)))\n"
    )
    assert reply.status == "ok", reply.traceback
    out = reply.stdout
    assert "dict [(0, 0), (1, 10), (2, 20)]" in out, out
    assert "map [0, 1, 2, 3]" in out and "log [0, 1, 2, 3]" in out, out


def test_a_failing_process_prints_its_traceback_in_the_cell(kernel):
    reply = kernel.run(
        "import ipyparmap as multiprocessing\n"
        "def bad():\n"
        "    raise ValueError('boom in the child')\n"
        "p = multiprocessing.Process(target=bad, name='bad')\n"
        "p.start(); p.join(60)\n"
        "print('exitcode', p.exitcode)\n"
    )
    assert reply.status == "ok", reply.traceback
    assert "exitcode 1" in reply.stdout
    assert "Process bad:" in reply.stderr and "ValueError: boom in the child" in reply.stderr
