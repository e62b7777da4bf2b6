"""Terminal views: a one-line progress bar and worker-output forwarding (layer: views).

Both only write to streams looked up at call time (``sys.stdout``/``sys.stderr``),
because IPython kernels swap those objects per cell.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from ipyparmap.figures import format_seconds
from ipyparmap.views.progress import ProgressModel

__all__ = ["OutputPrinter", "TextProgress", "format_seconds", "status_line"]


def status_line(model: ProgressModel, width: int = 24) -> str:
    """``[#######.....] 43/100 done, 2 failed, 12.3 items/s, 3.1 s, ETA 4.2 s`` while
    running; once the run ended, the bar and the summary (the line ``Results.summary()``
    and the panel show): ``[###...] 80/100 done, 19 cancelled, 1 error, 3.2 s, ...``"""
    parts = model.summary_parts() if model.ended is not None else model.status_parts()
    fraction = model.fraction
    if fraction is not None:
        filled = round(fraction * width)
        parts[0] = f"[{'#' * filled}{'.' * (width - filled)}] {parts[0]}"
    return ", ".join(parts)


class TextProgress:
    """Renders a ProgressModel as one line on stderr.

    Live (by default: when stderr is a terminal) the line is redrawn in place with
    ``\\r`` once the run has lasted ``delay`` seconds, so short runs draw nothing while
    running. Not live (a log file) nothing is drawn while running. The final line is
    printed when something was drawn, or always with ``summary=True``. ``live=True``
    suits a Jupyter kernel without ipywidgets: its stderr is no terminal, but the
    notebook honours ``\\r``.
    """

    def __init__(
        self,
        label: str = "parmap",
        delay: float = 0.5,
        summary: bool = False,
        live: bool | None = None,
    ):
        self.label = label
        self.delay = delay
        self.summary = summary
        self.live = live
        self.shown = False
        self._width = 0

    def __call__(self, model: ProgressModel, final: bool) -> None:
        stream = sys.stderr
        live = isatty(stream) if self.live is None else self.live
        if final:
            if self.shown or self.summary:
                self._draw(stream, model, live, end="\n")
        elif live and model.elapsed >= self.delay:
            self._draw(stream, model, live, end="")

    def _draw(self, stream, model: ProgressModel, live: bool, end: str) -> None:
        line = f"{self.label} {status_line(model)}"
        prefix = "\r" if live else ""
        with _lock:  # a worker's unfinished line may be drawn there (OutputPrinter)
            slot = _slot(stream, "stderr") if live else None
            bottom = _bottom.get(slot) if slot is not None else None
            other = bottom if bottom is not None and bottom.owner is not self else None
            if other is not None:
                _clear(other)
            stream.write(prefix + line.ljust(self._width) + end)
            stream.flush()
            if slot is not None:
                if not end:  # the bar has the bottom: the other line waits for it to end
                    _bottom[slot] = _Line(self, line, stream)
                elif other is not None:
                    _redraw(other)  # the final line goes above it
                else:
                    _bottom.pop(slot, None)
        self._width = len(line)
        self.shown = True


def isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Line:
    """The unfinished line at the bottom of an output, redrawn in place with ``\\r``:
    the text bar's, or an item's (a progress bar, a partial line)."""

    __slots__ = ("owner", "stream", "text")

    def __init__(self, owner: Any, text: str, stream):
        self.owner, self.text, self.stream = owner, text, stream


# slot -> the line drawn last there and not finished yet; a slot is "tty" for a terminal
# (stdout and stderr share its last line), or a stream's name in a Jupyter kernel (each
# stream has an output of its own); files and pipes have none (nothing is redrawn)
_bottom: dict[str, _Line] = {}
_lock = threading.RLock()  # runs in background threads print too


def _slot(stream, name: str) -> str | None:
    if isatty(stream):
        return "tty"
    if type(stream).__module__.startswith("ipykernel"):
        return name
    return None


def _clear(line: _Line) -> None:
    """Blank a drawn unfinished line; the cursor stays at the start of it."""
    line.stream.write("\r" + " " * len(line.text) + "\r")
    line.stream.flush()


def _redraw(line: _Line) -> None:
    line.stream.write(line.text)
    line.stream.flush()


def _final(line: str) -> str:
    """What a line written with carriage returns shows in the end: each ``\\r`` part
    overwrites the start of the line, as on a terminal."""
    if "\r" not in line:
        return line
    shown = ""
    for part in line.split("\r"):
        shown = part + shown[len(part) :]
    return shown


class OutputPrinter:
    """Forwards what workers' items produce to this process, each item apart.

    Text goes to ``sys.stdout``/``sys.stderr``, each line tagged with its item
    (``[3] ...``; ``tag=False``: passed through as written, the drop-ins' way). An
    item's lines never merge with another's: a partial line waits for the rest of it
    (or for the end of its item), and a line rewritten with ``\\r`` (a progress bar)
    shows its final state, or, on a terminal and in a notebook, is redrawn in place
    while it is the only one at the bottom of its output (other items' finished lines
    are written above it; the text bar has the bottom first). Log records go through
    this process's logging as if logged here, their message tagged; rich displays
    are shown with IPython's ``display`` after a tag line, or as their text where
    there is no notebook.
    """

    def __init__(self, tag: bool = True):
        self.tag = tag
        # (index, stream) -> what the item wrote since its last newline (raw)
        self.partial: dict[tuple, str] = {}

    def __call__(self, index: int, stream: str, payload) -> None:
        if stream == "stdout" or stream == "stderr":
            if self.tag:
                with _lock:
                    self._text(index, stream, payload)
            else:
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.write(payload)
                target.flush()
        elif stream == "log":
            self._log(index, payload)
        elif stream == "display":
            self._display(index, payload)

    def _tag(self, index) -> str:
        if not self.tag:
            return ""
        return f"[{index}] " if index is not None and index >= 0 else "[worker] "

    # -- text ----------------------------------------------------------------------------
    def _text(self, index: int, stream: str, text: str) -> None:
        key = (index, stream)
        target = sys.stdout if stream == "stdout" else sys.stderr
        if key in self.partial:
            text = self.partial.pop(key) + text
        elif not _bottom and text[-1:] == "\n" and "\r" not in text:
            # the common case, whole lines with nothing drawn below them: just tag them
            tag = self._tag(index)
            target.write(tag + text[:-1].replace("\n", "\n" + tag) + "\n")
            target.flush()
            return
        slot = _slot(target, stream)
        *lines, rest = text.split("\n")
        if lines:
            self._finish(key, target, slot, [_final(line) for line in lines])
        if rest:
            self.partial[key] = rest
            if slot is not None:
                self._draw(key, target, slot)
        elif slot is not None:
            self._promote(slot)
        target.flush()

    def _finish(self, key: tuple, target, slot: str | None, lines: list[str]) -> None:
        """Write finished lines of ``key``, above whatever line is unfinished there."""
        tag = self._tag(key[0])
        text = "".join(f"{tag}{line}\n" for line in lines)
        bottom = _bottom.get(slot) if slot is not None else None
        if bottom is None:
            target.write(text)
            return
        _clear(bottom)
        target.write(text)
        target.flush()
        if bottom.owner == (self, key):  # it was this very line: finished now
            del _bottom[slot]
        else:
            _redraw(bottom)

    def _draw(self, key: tuple, target, slot: str) -> None:
        """Show the unfinished line of ``key`` in place, if the bottom is free or its."""
        text = self._tag(key[0]) + _final(self.partial[key])
        bottom = _bottom.get(slot)
        if bottom is None:
            target.write(text)
        elif bottom.owner == (self, key):
            target.write("\r" + text.ljust(len(bottom.text)))
        else:
            return  # another line is drawn there: this one shows when it ends
        _bottom[slot] = _Line((self, key), text, target)

    def _promote(self, slot: str) -> None:
        """The bottom of ``slot`` is free: draw the next unfinished line that waits."""
        if slot in _bottom:
            return
        for key in self.partial:
            target = sys.stdout if key[1] == "stdout" else sys.stderr
            if _slot(target, key[1]) == slot:
                self._draw(key, target, slot)
                target.flush()
                return

    def items_ended(self, indices) -> None:
        """These items ended: their unfinished lines are finished as they stand."""
        with _lock:
            for key in [key for key in self.partial if key[0] in indices]:
                self._end(key)

    def close(self) -> None:
        """The run ended: every unfinished line is finished as it stands."""
        with _lock:
            for key in list(self.partial):
                self._end(key)

    def _end(self, key: tuple) -> None:
        rest = _final(self.partial.pop(key))
        target = sys.stdout if key[1] == "stdout" else sys.stderr
        slot = _slot(target, key[1])
        if rest.strip():
            self._finish(key, target, slot, [rest])
        elif slot is not None and slot in _bottom and _bottom[slot].owner == (self, key):
            _clear(_bottom.pop(slot))  # only blanks were left: nothing to keep
        if slot is not None:
            self._promote(slot)
        target.flush()

    # -- log records and rich displays ---------------------------------------------------
    def _log(self, index: int, record) -> None:
        """Hand a worker's log record to the logger of its name here: this process's
        levels, handlers and format apply; its message is tagged with the item."""
        import copy
        import logging

        from ipyparmap.results import log_record

        record = log_record(record)
        logger = logging.getLogger(record.name)
        if not logger.isEnabledFor(record.levelno):
            return
        if self.tag:
            record = copy.copy(record)
            record.msg = f"{self._tag(index)}{record.msg}"
        with _lock:
            drawn = list(_bottom.values())  # handlers write anywhere: no half-drawn line
            for line in drawn:
                _clear(line)
            try:
                logger.handle(record)
            finally:
                for line in drawn:
                    if line in _bottom.values():
                        _redraw(line)

    def _display(self, index: int, shown) -> None:
        """A rich display: a tag line and the bundle where IPython shows displays,
        its text (tagged) elsewhere."""
        from ipyparmap.results import DisplayData

        shown = DisplayData.from_message(shown)
        with _lock:
            if (index, "stdout") in self.partial:  # a display starts on a line of its own
                self._end((index, "stdout"))
            if not _can_display():
                text = "\n".join(shown.text.splitlines() or [""]) + "\n"
                if self.tag:
                    self._text(index, "stdout", text)
                else:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                return
            from IPython.display import display, update_display

            drawn = list(_bottom.values())
            for line in drawn:
                _clear(line)
            if self.tag and not shown.update:
                what = shown.text if "\n" not in shown.text and len(shown.text) <= 60 else None
                sys.stdout.write(f"{self._tag(index)}display: {what or shown.kind()}\n")
                sys.stdout.flush()
            if shown.update:
                update_display(
                    shown.data, raw=True, metadata=shown.metadata, display_id=shown.display_id
                )
            else:
                display(shown.data, raw=True, metadata=shown.metadata, display_id=shown.display_id)
            for line in drawn:
                if line in _bottom.values():
                    _redraw(line)


def _can_display() -> bool:
    """Whether IPython shows rich displays here: a kernel (or anything that publishes
    displays somewhere, ``%%capture`` too), not a terminal IPython, whose publisher
    prints the text untagged."""
    if "IPython" not in sys.modules:
        return False
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        return False
    return type(InteractiveShell.instance().display_pub) is not DisplayPublisher
