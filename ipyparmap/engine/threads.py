"""``backend="threads"``: items run in threads of this process, for I/O-bound work (layer: engine).

Processes are for work that keeps a CPU busy; work that mostly waits (downloads,
queries, files on a network share) runs as well in threads, which start in
microseconds and share the caller's memory (nothing is copied to a worker). The run is
the usual `ExecutorEngine`, with `ThreadTasks` as its backend: each chunk runs in a
thread of its own (at most ``workers`` at once), and the engine sees everything it
sees with processes:

- **per-item output**: while a threads run is active, ``sys.stdout``/``sys.stderr``
  are wrapped by `ThreadRouter`, which sends what a task thread writes to that task
  (tagged with its item, forwarded to the cell while the item runs, kept in
  ``Results.outputs``) and passes everything else through unchanged;
- **timeouts**: the engine reads the running item and its start from the task's own
  position record; an item past ``timeout=`` fails as ``timeout`` and its thread is
  *abandoned* (Python cannot stop a thread: it runs on in the background until the
  item returns, and its result is dropped). With a timeout, chunks hold one item;
- **interrupts**: finished results are kept, running tasks are abandoned like timed
  out ones, nothing new starts.
"""

from __future__ import annotations

import itertools
import sys
import threading
from concurrent.futures import Future
from typing import Any

from ipyparmap.engine.executor import TaskBackend
from ipyparmap.engine.feed import AS_IS
from ipyparmap.process.worker import run_items
from ipyparmap.wire import board as B
from ipyparmap.wire import messages as M


def default_thread_count() -> int:
    """Threads when ``workers`` is not given: I/O-bound work wants more than the CPUs
    (the standard library's ThreadPoolExecutor default)."""
    from ipyparmap.process.resources import cpu_count

    return min(32, cpu_count() + 4)


class _Task:
    """One chunk running in its own thread: where it is, and what it wrote."""

    __slots__ = ("future", "lines", "lock", "positions", "slot", "times")

    def __init__(self, slot: int):
        self.future: Future = Future()
        self.slot = slot
        self.positions = [B.IDLE, B.LOADING, 1]  # [_, running position, span]
        self.times = [0.0]  # when the running item started (time.monotonic())
        self.lines: list = []  # (position, stream, text) written, not yet forwarded
        self.lock = threading.Lock()

    def take_lines(self) -> list:
        with self.lock:
            lines, self.lines = self.lines, []
        return lines


class ThreadRouter:
    """Stands in for sys.stdout or sys.stderr while threads runs are active: text a task
    thread writes goes to its task, the rest to the stream it replaced."""

    def __init__(self, name: str, original: Any, local: threading.local):
        self._name, self._original, self._local = name, original, local

    def write(self, text: str) -> int:
        task = getattr(self._local, "task", None)
        if task is None:
            return self._original.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            with task.lock:
                task.lines.append((task.positions[1], self._name, text))
        return len(text)

    def flush(self) -> None:
        if getattr(self._local, "task", None) is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno... of the original
        return getattr(self._original, name)


class _Routing:
    """Installs the routers for as long as any threads run needs them (counted)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.users = 0
        self.saved: tuple | None = None

    def acquire(self) -> None:
        with self.lock:
            self.users += 1
            if self.users == 1:
                self.saved = sys.stdout, sys.stderr
                sys.stdout = ThreadRouter("stdout", sys.stdout, self.local)
                sys.stderr = ThreadRouter("stderr", sys.stderr, self.local)

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.saved is not None:
                # put back only what is still ours (someone may have replaced it since)
                if isinstance(sys.stdout, ThreadRouter):
                    sys.stdout = self.saved[0]
                if isinstance(sys.stderr, ThreadRouter):
                    sys.stderr = self.saved[1]
                self.saved = None


_routing = _Routing()


class ThreadPerTask(TaskBackend):
    """Each chunk in a thread of its own, at most ``workers`` at a time."""

    name = "threads"
    packing = AS_IS  # items, the function and results stay as they are: no pickling
    capture = False  # the router captures, per thread
    abandons = True  # a timed-out or interrupted task's thread is left to finish alone

    def __init__(self, workers: int):
        super().__init__(None)
        self.workers = workers
        self.tasks: dict[Future, _Task] = {}
        self.busy_slots: set[int] = set()  # worker ids shown: "thread 1", "thread 2"...
        self.slots_lock = threading.Lock()
        self.routing = False

    def concurrency(self) -> int:
        return self.workers

    def depth(self, workers: int) -> int:
        return workers  # one thread per task in flight: no queue beyond them

    def prepare(self, func: Any, payload: Any) -> Any:
        if not self.routing:
            _routing.acquire()
            self.routing = True
        return func  # the same process: nothing to unpickle

    def submit(self, func: Any, items: list, star: bool, capture: bool) -> Future:
        with self.slots_lock:  # the lowest number no running thread has
            slot = next(n for n in itertools.count(1) if n not in self.busy_slots)
            self.busy_slots.add(slot)
        task = _Task(slot)
        self.tasks[task.future] = task
        thread = threading.Thread(
            target=self._run, args=(task, func, items, star),
            name=f"ipyparmap-thread-{task.slot}", daemon=True,
        )  # fmt: skip
        thread.start()
        return task.future

    def _run(self, task: _Task, func: Any, items: list, star: bool) -> None:
        _routing.local.task = task
        try:
            _, values, errors, timings, began = run_items(
                func, items, star, 1, task.positions, task.times
            )
            outcome = M.TaskDone(
                values, errors, timings, began, task.take_lines(), (None, None),
                f"thread {task.slot}",
            )  # fmt: skip
        except BaseException as exc:  # a bug of ours: fail the task, not the thread
            task.future.set_exception(exc)
        else:
            task.future.set_result(outcome)
        finally:
            _routing.local.task = None
            with self.slots_lock:
                self.busy_slots.discard(task.slot)

    def running_since(self, future: Future) -> tuple[int, float] | None:
        """(position, start) of the item the task runs now, if it started one."""
        task = self.tasks.get(future)
        if task is None or task.positions[1] < 0:
            return None
        return task.positions[1], task.times[0]

    def take_output(self, future: Future) -> list:
        task = self.tasks.get(future)
        return task.take_lines() if task is not None else []

    def forget(self, future: Future) -> None:
        """The engine is done with this task (finished, or abandoned: its thread runs
        on, and its result is dropped)."""
        self.tasks.pop(future, None)

    def cancel(self, futures: list) -> None:
        pass  # threads cannot be stopped: the engine abandons them

    def release(self) -> None:
        if self.routing:
            self.routing = False
            _routing.release()
