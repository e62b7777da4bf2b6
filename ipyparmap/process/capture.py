"""What items produce besides results: text, log records, rich displays (layer: process).

Worker side (process/worker.py imports this module, so it keeps to the worker's
positive rule: the wire layer and the standard library; IPython and matplotlib are
used only once user code has imported them):

- `CapturedStream` stands in for ``sys.stdout``/``sys.stderr`` while a chunk runs and
  hands every write to the `OutputSink`, with the running item's position.
- `OutputSink` keeps what waits for the next message (an `Output` every 0.1 s, or the
  chunk's `ResultBatch`) and, in a pool worker, a copy of it in the output log of the
  status board (wire/board.py), which the parent reads when the worker dies before the
  message went out: nothing written before a death is lost, flushed or not.
- `install` (a pool worker's start): a ``display`` builtin, and hooks that run when
  user code imports ``IPython.core.display_functions`` (``IPython.display.display``
  then sends MIME bundles to the parent) or ``matplotlib.pyplot`` (``plt.show()`` on a
  non-interactive backend shows the open figures as PNG). A root logging handler ships
  log records to the parent while the parent asks for it (`OutputSink.begin`).

The parent tells a worker, on its board, whether to forward logs and displays, and
the kernel's logging levels (`kernel_log_levels`; a drop-in ``Process`` does not: its worker keeps
Python's defaults, and ``display`` prints as IPython does without a shell). The parent
side of the rest is `unsent_output` (after a death), results.py (`DisplayData`,
`log_record`), engine/outcomes.py (kept per item) and views/textui.py (shown).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
from typing import Any

from ipyparmap.importhooks import AfterImport
from ipyparmap.wire import board as B
from ipyparmap.wire import messages as M

_ENCODING = ("utf-8", "surrogatepass")  # any str a stream accepts survives the log


class CapturedStream:
    """Stands in for sys.stdout/sys.stderr while a chunk runs; tags text with the item."""

    def __init__(self, sink: OutputSink, name: str, original):
        self._sink = sink
        self._name = name
        self._original = original
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._sink.add(self._name, text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        # C-level writers (faulthandler, subprocess) get the real descriptor.
        return self._original.fileno()


class OutputSink:
    """What the items wrote, waiting to be sent, tagged with the position of its item.

    ``positions[1]`` is the running item's position (the status board, or a list). In
    a pool worker ``board`` keeps a copy of everything pending in its output log, and
    ``send`` sends a wire tuple (the caller holds ``lock``, which orders all sends).
    """

    def __init__(self, positions, board: B.Board | None = None, send=None):
        self._positions = positions
        self.lock = threading.Lock()
        self.pending: list = []
        self.chunk_id = B.IDLE
        # While a block of tiny items runs (see worker.run_items): (its values list, how
        # long that list was when the block began); the item printing is the one after
        # the results produced since.
        self.block: tuple | None = None
        self.board = board
        self.send = send
        self.levels = 0  # the version of the kernel's logging levels applied (0: none)
        self.leveled: set = set()  # loggers whose level we set from the kernel's
        self.shipper: logging.Handler | None = None

    def position(self) -> int:
        position = self._positions[1]
        block = self.block
        if block is not None:
            position += len(block[0]) - block[1]
        return position

    def begin(self, chunk_id: int) -> None:
        """A chunk starts: take the kernel's logging levels, if they changed (a read of
        shared memory per chunk; the parent writes them at the start of each run)."""
        self.chunk_id = chunk_id
        board = self.board
        if board is not None:
            version = board.forwarding()
            if version != self.levels:
                self._forward_logs(version, board.levels() if version else b"")

    def add(self, stream: str, text, data: bytes | None = None) -> None:
        """Keep ``text`` written to ``stream`` ("stdout", "stderr"; "log": a record's
        fields, ``data`` their pickle) by the running item."""
        position = self.position()
        with self.lock:
            self.pending.append((position, stream, text))
            board = self.board
            if board is not None:
                if data is None:
                    data = text.encode(*_ENCODING)
                if not board.log_append(self.chunk_id, position, stream, data):
                    self._flush_or_exit()  # the log is full: what it holds goes now

    def take(self) -> list:
        """Pending output, emptied, with adjacent pieces of one item's stream joined
        (``print`` writes the text and the newline separately); call with ``lock`` held,
        and `sent` once a message carried it."""
        pieces, self.pending = self.pending, []
        # [position, stream, [texts]]: joined once; joining text by text was quadratic
        # (tests/faults/test_concurrency.py::test_a_task_printing_50_mb never finished)
        runs: list = []
        for position, stream, text in pieces:
            if runs and runs[-1][0] == position and runs[-1][1] == stream and stream != "log":
                runs[-1][2].append(text)
            else:
                runs.append((position, stream, [text]))
        return [
            (position, stream, texts[0] if stream == "log" else "".join(texts))
            for position, stream, texts in runs
        ]

    def sequence(self) -> int:
        """The number of the output log's content, for the message that carries it."""
        return self.board.log_sequence() if self.board is not None else -1

    def sent(self) -> None:
        """A message carried what `take` returned: the output log starts over."""
        if self.board is not None:
            self.board.log_sent()

    def flush_locked(self) -> None:
        """Send what is pending now, as an `Output` (the caller holds ``lock``)."""
        lines = self.take()
        if lines:
            self.send(M.pack(M.Output(self.chunk_id, lines, self.sequence())))
            self.sent()

    def _flush_or_exit(self) -> None:
        try:
            self.flush_locked()
        except OSError:
            os._exit(0)  # the parent is gone: nobody wants our results

    def forwarding(self) -> bool:
        """Whether the parent takes displays and log records from this process."""
        board = self.board
        return self.send is not None and board is not None and board.forwarding() > 0

    def display(self, data: dict, metadata: dict, display_id=None, update=False) -> None:
        """Send a rich display of the running item, after the text printed before it."""
        message = M.pack(
            M.Display(self.chunk_id, self.position(), data, metadata, display_id, update)
        )
        with self.lock:
            self._flush_or_exit()
            try:
                self.send(message)
            except OSError:
                os._exit(0)

    def _forward_logs(self, version: int, levels: bytes) -> None:
        """Ship log records to the parent, with the kernel's levels, so that a record
        is sent when the kernel would let it through (version 0: stop, and leave
        logging as Python has it)."""
        root = logging.getLogger()
        if self.shipper is None:
            self.shipper = _LogShipper(self)
        for name in self.leveled:
            logging.getLogger(name).setLevel(logging.NOTSET)
        self.leveled = set()
        if not version:
            root.removeHandler(self.shipper)
            root.setLevel(logging.WARNING)
            logging.disable(logging.NOTSET)
        else:
            root_level, disabled, named = pickle.loads(levels)
            if self.shipper not in root.handlers:
                root.addHandler(self.shipper)  # logging.basicConfig in the worker: a no-op
            root.setLevel(root_level)
            logging.disable(disabled)
            for name, level in named.items():
                logging.getLogger(name).setLevel(level)
            self.leveled = set(named)
        self.levels = version


class _LogShipper(logging.Handler):
    """The worker's root handler: each record goes to the parent, which hands it to
    the kernel's logging (its levels, handlers and format; views/textui.py)."""

    def __init__(self, sink: OutputSink):
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = record_fields(record)
            data = pickle.dumps(fields)
        except Exception:
            self.handleError(record)  # what logging does with a broken record
            return
        self.sink.add("log", fields, data)


_SIMPLE = (str, int, float, bool, type(None))
_FORMATTER = logging.Formatter()


def record_fields(record: logging.LogRecord) -> dict:
    """A log record as plain data: its message formatted, its exception as text."""
    fields = {}
    for key, value in record.__dict__.items():
        if type(value) in _SIMPLE:
            fields[key] = value
        elif key not in ("msg", "args", "exc_info"):
            try:
                fields[key] = str(value)  # an extra= object: its text
            except Exception:
                pass
    fields["msg"] = record.getMessage()
    fields["args"] = None
    fields["exc_info"] = None
    if record.exc_info and not record.exc_text:
        fields["exc_text"] = _FORMATTER.formatException(record.exc_info)
    return fields


# -- rich display in a worker ---------------------------------------------------------------
_sink: OutputSink | None = None  # the pool worker's, once installed

_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
    ("application/pdf", "_repr_pdf_"),
)


class DisplayHandle:
    """What ``display(obj, display_id=...)`` returns in a worker: update it in place."""

    def __init__(self, display_id: str):
        self.display_id = display_id

    def __repr__(self) -> str:
        return f"<DisplayHandle display_id={self.display_id}>"

    def display(self, obj, **kwargs) -> None:
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs) -> None:
        display(obj, display_id=self.display_id, update=True, **kwargs)


def display(*objs, include=None, exclude=None, metadata=None, transient=None, display_id=None,
            raw=False, clear=False, **kwargs):  # fmt: skip
    """``IPython.display.display`` in a worker: each object's MIME bundle goes to the
    parent, which shows it in the cell, tagged with the item. Where nobody takes it
    (outside a run), the objects are printed, as IPython does without a shell."""
    sink = _sink
    if sink is None or not sink.forwarding():
        print(*objs)
        return None
    if transient and transient.get("display_id"):
        display_id = transient["display_id"]
    if display_id is True:
        display_id = os.urandom(8).hex()
    if not objs and display_id:
        objs, raw = ({},), True  # a placeholder to update later
    for obj in objs:
        if raw:
            data, md = dict(obj), dict(metadata or {})
        else:
            data, md = _format(obj, include, exclude)
            if not data:
                continue  # it displayed itself (_ipython_display_), or nothing to show
            if metadata:
                md.update(metadata)
        _publish(sink, data, md, display_id, bool(kwargs.get("update")))
    return DisplayHandle(display_id) if display_id else None


def publish_display_data(data, metadata=None, *, transient=None, **kwargs) -> None:
    """``IPython.display.publish_display_data`` in a worker."""
    sink = _sink
    if sink is None or not sink.forwarding():
        print(data.get("text/plain", data) if isinstance(data, dict) else data)
        return
    display_id = (transient or {}).get("display_id")
    _publish(sink, dict(data), dict(metadata or {}), display_id, bool(kwargs.get("update")))


def _publish(sink: OutputSink, data: dict, metadata: dict, display_id, update: bool) -> None:
    import base64

    for mime, value in list(data.items()):
        if isinstance(value, (bytes, bytearray, memoryview)):
            data[mime] = base64.b64encode(value).decode("ascii")  # as Jupyter stores it
    try:
        sink.display(data, metadata, display_id, update)
    except (pickle.PicklingError, TypeError, AttributeError):  # not plain data: its text
        sink.display({"text/plain": str(data.get("text/plain", ""))}, {}, display_id, update)


def _format(obj, include, exclude) -> tuple[dict, dict]:
    """The MIME bundle of ``obj``: IPython's formatters when user code loaded them, our
    own reading of the ``_repr_*_`` methods otherwise; matplotlib figures as PNG."""
    formatters = sys.modules.get("IPython.core.formatters")
    if formatters is not None:
        global _formatter
        if _formatter is None:
            _formatter = formatters.DisplayFormatter()
        data, metadata = _formatter.format(obj, include=include, exclude=exclude)
        data, metadata = dict(data), dict(metadata)
    else:
        data, metadata = _plain_format(obj, include, exclude)
    figure = sys.modules.get("matplotlib.figure")
    if (
        figure is not None
        and isinstance(obj, figure.Figure)
        and "image/png" not in data
        and _wanted("image/png", include, exclude)
    ):
        data["image/png"] = _figure_png(obj)
    return data, metadata


_formatter: Any = None


def _wanted(mime: str, include, exclude) -> bool:
    return (not include or mime in include) and (not exclude or mime not in exclude)


def _plain_format(obj, include, exclude) -> tuple[dict, dict]:
    data: dict = {}
    metadata: dict = {}
    if isinstance(obj, type):  # a class, not an instance: its repr only
        return {"text/plain": repr(obj)}, {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method):
        bundle = method(include=include, exclude=exclude)
        if isinstance(bundle, tuple):
            bundle, metadata = bundle[0], dict(bundle[1] or {})
        data.update(bundle or {})
    for mime, name in _MIME_METHODS:
        method = getattr(obj, name, None)
        if mime in data or not callable(method) or not _wanted(mime, include, exclude):
            continue
        value = method()
        if isinstance(value, tuple):
            value, metadata[mime] = value
        if value is not None:
            data[mime] = value
    if "text/plain" not in data and _wanted("text/plain", include, exclude):
        data["text/plain"] = repr(obj)
    return {k: v for k, v in data.items() if _wanted(k, include, exclude)}, metadata


def _figure_png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")  # as the inline backend
    return buffer.getvalue()


# -- hooks on user imports --------------------------------------------------------------------
def _patch_ipython_display(module) -> None:
    """IPython's display functions publish through a shell, which a worker has not:
    ours send the bundle to the parent (``IPython.display`` copies them next)."""
    module.display = display
    module.publish_display_data = publish_display_data
    original = module.clear_output

    def clear_output(wait=False):
        if _sink is None or not _sink.forwarding():
            original(wait)  # an item cannot clear a cell other items print into

    module.clear_output = clear_output


_STATIC_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def _patch_pyplot(pyplot) -> None:
    """``plt.show()`` in a worker, on a backend that cannot show anything there
    (Agg, or the notebook's inline backend inherited from the kernel): each open
    figure is displayed in the cell, then closed, as the inline backend does."""
    original = pyplot.show

    def show(*args, **kwargs):
        if _sink is None or not _sink.forwarding():
            return original(*args, **kwargs)
        backend = str(pyplot.get_backend()).lower()
        if backend not in _STATIC_BACKENDS and "inline" not in backend:
            return original(*args, **kwargs)
        helpers = sys.modules["matplotlib._pylab_helpers"]
        for manager in helpers.Gcf.get_all_fig_managers():
            display(manager.canvas.figure)
        pyplot.close("all")
        return None

    show.__doc__ = original.__doc__
    pyplot.show = show


# the import hooks of a worker (`install` puts the finder on sys.meta_path)
_import_hooks = AfterImport(
    {
        "IPython.core.display_functions": _patch_ipython_display,
        "matplotlib.pyplot": _patch_pyplot,
    }
)


def install(sink: OutputSink) -> None:
    """A pool worker's start: ``display`` as a builtin (as in a notebook), and the
    import hooks. Nothing is imported."""
    global _sink
    import builtins

    _sink = sink
    if not hasattr(builtins, "display"):
        builtins.display = display
    _import_hooks.install()
    os.register_at_fork(after_in_child=_forked)


def on_import(name: str, hook) -> None:
    """Run ``hook(module)`` right after module ``name`` is imported in this worker (once
    `install` has run; the worker's settings for ``multiprocessing``)."""
    _import_hooks.add(name, hook)


def _forked() -> None:
    """A child forked by an item has no pipe or board of its own: its output stays its
    own, as before (and a lock another thread held at the fork is not held here)."""
    sink = _sink
    if sink is not None:
        sink.board = None
        sink.send = None
        sink.lock = threading.Lock()


# -- parent side ------------------------------------------------------------------------------
_LEVELS_KEY = "ipyparmap levels"  # our entry in the root logger's level cache
_levels: list = [0, b""]  # the last levels written on boards: [version, pickle]


def kernel_log_levels() -> tuple[int, bytes]:
    """This process's logging levels, for workers to mirror: ``(version, pickle of
    (root level, logging.disable level, {logger name: level set}))``. A worker that
    takes them ships exactly the records that loggers of the same name here would let
    through. The version changes with the levels. Cached in the root logger's level
    cache, which ``setLevel``, ``dictConfig`` and ``logging.disable`` empty: a warm call
    pays a dict lookup, not a walk over every logger."""
    root = logging.getLogger()
    cache = getattr(root, "_cache", None)
    if isinstance(cache, dict):
        known = cache.get(_LEVELS_KEY)
        if known is not None:
            return known
    named = {
        name: logger.level
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and logger.level
    }
    disabled = logging.root.manager.disable
    levels = pickle.dumps((root.level, disabled, named))
    if len(levels) > B.LEVELS_SIZE:  # thousands of leveled loggers: the lowest level for all
        lowest = min([root.level or logging.WARNING, *named.values()])
        levels = pickle.dumps((lowest, disabled, {}))
    if levels != _levels[1]:
        _levels[:] = [_levels[0] + 1, levels]
    known = (_levels[0], levels)
    if isinstance(cache, dict):
        cache[_LEVELS_KEY] = known
    return known


def unsent_output(board: B.Board, chunk_id: int) -> list:
    """After a worker died (its messages read): what its items wrote that no message
    brought, as `Output.lines` (entries of another chunk get position -1)."""
    lines = []
    for chunk, position, stream, data in board.unsent():
        if chunk != chunk_id:
            position = -1
        try:
            payload = pickle.loads(data) if stream == "log" else bytes(data).decode(*_ENCODING)
        except Exception:
            continue
        lines.append((position, stream, payload))
    return lines
