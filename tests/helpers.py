"""Functions the tests map over; importable by name in workers (tests/ is on sys.path)."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from pathlib import Path


def square(x):
    return x * x


def add(a, b):
    return a + b


def sleep_then(x, seconds=0.001):
    time.sleep(seconds)
    return x


def sleepy(pair):
    value, seconds = pair
    time.sleep(seconds)
    return value


def pid_of(_):
    return os.getpid()


def parent_pid(_):
    return os.getppid()


def env_of(name):
    return os.environ.get(name)


def shout(x):
    print(f"hello {x}")
    print(f"warn {x}", file=sys.stderr)
    return x


def tiny_with_events(x):
    """A tiny item, except a few that raise or print (deep in chunks run in blocks)."""
    if x in (12_345, 12_346, 29_999):
        raise ValueError(f"bad item {x}")
    if x == 20_001:
        print(f"printed by {x}")
    return x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


# -- crash table actions -----------------------------------------------------------------
def die(how: str):
    """Do one bad thing in this process."""
    if how == "raise":
        raise ValueError("boom from die()")
    if how == "exit":
        sys.exit(3)
    if how == "_exit":
        os._exit(3)
    if how == "_exit_later":  # let other tasks finish first
        time.sleep(1)
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    if how == "segfault":
        faulthandler._sigsegv()
    raise AssertionError(how)


class BadToPickle:
    """Does ``how`` when pickled (in the process that pickles it)."""

    def __init__(self, how: str):
        self.how = how

    def __reduce__(self):
        die(self.how)


class BadToUnpickle:
    """Pickles fine; does ``how`` when unpickled (in the process that loads it)."""

    def __init__(self, how: str):
        self.how = how

    def __reduce__(self):
        return die, (self.how,)


def act(x):
    """Map function of the crash table: behave for plain items, misbehave for markers."""
    if isinstance(x, tuple) and x[0] == "run":
        die(x[1])
    if isinstance(x, tuple) and x[0] == "result-pickle":
        return BadToPickle(x[1])
    if isinstance(x, tuple) and x[0] == "result-unpickle":
        return BadToUnpickle(x[1])
    return x


def crash_once(args):
    """Crash the worker the first time it sees ``marker``; succeed afterwards."""
    value, marker = args
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed once")
        os._exit(7)
    return value


def write_pid_and_sleep(args):
    """Write this worker's pid to ``path`` and sleep (a target to kill from outside)."""
    value, path, seconds = args
    if path:
        Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return value


def nested_parmap(n):
    import ipyparmap as pm

    return list(pm.parmap(square, range(n), progress=False)), len(
        __import__("psutil").Process().children()
    )


# -- drop-in classes --------------------------------------------------------------------
_init_calls = []


def record_init(tag):
    """An initializer: remembers that it ran in this process."""
    _init_calls.append(tag)


def init_count(_):
    return os.getpid(), len(_init_calls)


class Payload:
    """An argument to check that the pool does not keep arguments alive."""

    def __init__(self, value):
        self.value = value


def payload_value(payload):
    return payload.value


def raise_key_error(x):
    raise KeyError(f"no {x}")


def rendezvous(args):
    """Meet ``n`` tasks in ``folder``: True if all arrived within ``timeout`` seconds.

    Tasks that run one after another never meet, so this proves they ran at once.
    """
    folder, name, n, timeout = args
    Path(folder, name).touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(Path(folder).iterdir())) >= n:
            return True
        time.sleep(0.01)
    return False


_hoard = []


def hoard(args):
    """Keep ``megabytes`` of memory alive in this worker, then return ``value``."""
    value, megabytes = args
    if megabytes:
        _hoard.append(bytearray(megabytes * 2**20))
    return value, os.getpid()


def swell_and_die(megabytes):
    """Grow, stay a while (long enough to be sampled), then die as the OOM killer does."""
    block = bytearray(megabytes * 2**20)
    time.sleep(1.5)
    os.kill(os.getpid(), signal.SIGKILL)
    return len(block)


def chatter(megabytes):
    """Print ``megabytes`` of text."""
    line = "x" * 1023 + "\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    return megabytes


def big_result(megabytes):
    return b"r" * (megabytes * 2**20)


def exit_on(x, bad=7):
    """Kill this worker on item ``bad``: a crash that must be pinned on that item."""
    if x == bad:
        os._exit(3)
    return x
