"""The messages between the parent and a worker: one named record each (layer: wire).

Every message is one pickled tuple ``(TAG, *fields)`` sent over the worker's own
socketpair (wire/channel.py), with shared-memory descriptors attached where a record
has a ``table``. Senders build the record by field name and send `pack(record)`, a
plain tuple (pickling a named tuple costs ~1.5 µs more per message, a measurable share
of a warm 2-item call); receivers get the record back with `unpack`, and read fields
by name. Items, results and the function travel as separately pickled blobs, so a blob
that cannot be unpickled is reported as such (`LoadFailed`) rather than breaking the
message stream.

Parent -> worker: `Init` (once, first), `World` (what changed in the kernel's working
directory, environment, ``sys.path`` and local modules, only when something did),
`Preload` (modules a function with big globals needs), `LoadFunction` (cached by key),
`RunChunk`, `Stop`. Worker -> parent: `Ready`,
`ResultBatch`, `Output`, `Display`, `LoadFailed`. Chunks run as tasks of another
executor (engine/executor.py) come back as `TaskDone` or `TaskFailed`, returned by
`process.worker.run_task`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: How many distinct functions a worker keeps loaded (the parent mirrors this LRU).
FUNCTION_CACHE = 8

#: Environment variable set in every worker: nested parmap calls run serially there.
WORKER_ENV = "IPYPARMAP_WORKER"


# -- parent -> worker ---------------------------------------------------------------
class Init(NamedTuple):
    """First message to a new worker: its settings: ``sys_path``, and ``parent``
    (``authkey``, ``pid``, ``name``: the worker takes our ``multiprocessing`` authkey and
    gets a ``parent_process()``, as a spawned ``multiprocessing`` child does)."""

    TAG = "init"
    settings: dict


class World(NamedTuple):
    """What changed in the caller's world since this worker last heard of it, sent
    before a chunk only when something did (process/pool.py ``WorkerHandle.sync_world``).

    ``cwd``: the working directory (None: unchanged); ``env_set`` (name -> value) and
    ``env_unset`` (names): environment variables, never the worker's own (its
    `WORKER_ENV` flag, the thread limits the pool set); ``sys_path``: the whole new
    ``sys.path`` (None: unchanged); ``modules``: local modules the caller has loaded
    whose version changed, name -> version number (None: the caller no longer has it);
    ``values``: the pickled ``{name: module}`` of those whose file no longer holds the
    caller's code (wire/localmodules.py `ModuleTable`), or None.
    """

    TAG = "world"
    cwd: str | None
    env_set: dict
    env_unset: tuple
    sys_path: list | None
    modules: dict
    values: bytes | None


class LoadFunction(NamedTuple):
    """The pickled function, cached in the worker under ``key``; ``table`` places its
    large global buffers in the descriptors that come with the frame."""

    TAG = "func"
    key: bytes
    blob: bytes
    sources: dict  # linecache entries of notebook cells, for tracebacks
    table: list | None


class RunChunk(NamedTuple):
    """Run the function ``key`` over the pickled ``items``.

    The clock is read every ``stride`` items (1: exact per-item durations; more:
    blocks of ``stride`` items run with ``map()``, see wire/board.py). ``fresh_rss``:
    report the current RSS read now (max_memory decides on it), not one up to 0.5 s old.
    """

    TAG = "chunk"
    chunk_id: int
    key: bytes
    items: bytes
    star: bool
    stride: int
    table: list | None
    fresh_rss: bool = False


class Preload(NamedTuple):
    """Import these installed modules now: the function about to come needs them (its
    large globals are being hashed and copied meanwhile, so the imports overlap that)."""

    TAG = "preload"
    modules: tuple


class Stop(NamedTuple):
    """Exit cleanly."""

    TAG = "stop"


# -- worker -> parent ---------------------------------------------------------------
class Ready(NamedTuple):
    """The worker booted and waits for work."""

    TAG = "ready"
    pid: int


class ResultBatch(NamedTuple):
    """Results of positions ``start`` .. ``start+count-1`` of chunk ``chunk_id``.

    ``values`` is pickled on its own (a value that fails to unpickle in the parent can't
    make the rest unreadable); ``errors`` maps a position (relative to ``start``) to an
    ErrorInfo tuple ``(exception blob or None, type name, message, traceback text)``;
    ``timings`` is the plain tuple of a `Timings`; ``began`` the wall-clock time the
    batch's first item started; ``outputs`` what the items wrote, as `Output.lines`;
    ``memory_kb`` the worker's (peak, current) RSS; ``done`` is True on the chunk's
    last batch; ``seq`` the number of the output log this batch emptied (see
    `Output`).
    """

    TAG = "results"
    chunk_id: int
    start: int
    values: bytes
    table: list | None
    errors: dict
    timings: tuple
    began: float
    outputs: list
    memory_kb: tuple
    done: bool
    seq: int = -1


class Output(NamedTuple):
    """What items wrote while they run, every 0.1 s (or when the worker's output log
    is full): ``lines`` is ``[(position, stream, text)]``, ``stream`` "stdout" or
    "stderr", or "log" with a log record's fields (a dict) in place of the text.

    ``seq`` is the number of the worker's output log (wire/board.py) that this message
    emptied: after a death, the parent reads the log only if no message carried it.
    """

    TAG = "output"
    chunk_id: int
    lines: list
    seq: int = -1


class Display(NamedTuple):
    """A rich display of the item at ``position`` (``display(obj)``, ``plt.show()``):
    ``data`` a MIME bundle (``{"text/plain": ..., "text/html": ...}``, binary types as
    base64 text), ``metadata`` its metadata, ``display_id`` (None, or the id of an
    updatable display), ``update`` True to update that display in place. Sent at once,
    after the text printed before it."""

    TAG = "display"
    chunk_id: int
    position: int
    data: dict
    metadata: dict
    display_id: str | None = None
    update: bool = False


class LoadFailed(NamedTuple):
    """The function (``what`` "func", ``ident`` its key) or a chunk's items ("chunk",
    its id) could not be loaded; sent in answer to the `RunChunk` that needed them, so
    each report ends exactly one chunk. ``info`` is an ErrorInfo or None."""

    TAG = "load_error"
    what: str
    ident: Any
    info: tuple | None


# -- a chunk run as a task of another executor (engine/executor.py) ---------------------
class TaskDone(NamedTuple):
    """What `process.worker.run_task` returns for a chunk that ran."""

    values: bytes
    errors: dict
    timings: tuple
    began: float
    outputs: list
    memory_kb: tuple
    worker: str  # who ran it: a Dask worker's address, else host:pid


class TaskFailed(NamedTuple):
    """What `process.worker.run_task` returns when the function ("func") or the items
    ("chunk") could not be unpickled."""

    what: str
    info: tuple


_WORKER_TO_PARENT = (Ready, ResultBatch, Output, Display, LoadFailed)
_RECORDS = (Init, World, Preload, LoadFunction, RunChunk, Stop, *_WORKER_TO_PARENT)
_BY_TAG: dict[str, Any] = {record.TAG: record for record in _RECORDS}


def pack(record: NamedTuple) -> tuple:
    """The wire form of ``record``: a plain tuple ``(TAG, *fields)``."""
    return (record.TAG, *record)


def unpack(message: tuple) -> Any:
    """The record a wire tuple stands for (ValueError for an unknown tag)."""
    try:
        record = _BY_TAG[message[0]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not an ipyparmap message: {message!r:.80}") from None
    return record._make(message[1:])


class Timings:
    """How long the items of one result batch ran, kept per timing block.

    ``seconds[j]`` is the time of block ``j``: items ``j*stride .. j*stride+stride-1``
    of the batch's ``count`` (the last block may be shorter). With stride 1 that is
    one figure per item; tiny items are timed in blocks, and a block's time is split
    evenly over its items only when someone asks (`per_item`): a million-item run
    sends and sums ~16,000 figures, not a million.
    """

    __slots__ = ("count", "seconds", "stride")

    def __init__(self, stride: int, count: int, seconds):
        self.stride, self.count, self.seconds = stride, count, seconds

    @classmethod
    def single(cls, seconds: float) -> Timings:
        return cls(1, 1, [seconds])

    def total(self) -> float:
        return sum(self.seconds)

    def per_item(self) -> list[float]:
        stride, count = self.stride, self.count
        if stride == 1:
            return list(self.seconds)
        spans: list[float] = []
        for block, seconds in enumerate(self.seconds):
            size = min(stride, count - block * stride)
            spans.extend([seconds / size] * size)
        return spans
