"""Terminal views: a one-line progress bar and worker-output forwarding (layer: views).

Both only write to streams looked up at call time (``sys.stdout``/``sys.stderr``),
because IPython kernels swap those objects per cell.
"""

from __future__ import annotations

import sys

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
        stream.write(prefix + line.ljust(self._width) + end)
        stream.flush()
        self._width = len(line)
        self.shown = True


def isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class OutputPrinter:
    """Forwards a worker's captured output here, each line tagged with its item: ``[3] ...``."""

    def __init__(self, tag: bool = True):
        self.tag = tag
        self._at_line_start: dict[tuple[int, str], bool] = {}

    def __call__(self, index: int, stream: str, text: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        if self.tag:
            text = self._tagged(index, stream, text)
        target.write(text)
        target.flush()

    def _tagged(self, index: int, stream: str, text: str) -> str:
        tag = f"[{index}] " if index >= 0 else "[worker] "
        key = (index, stream)
        start = self._at_line_start.get(key, True)
        lines = text.splitlines(keepends=True)
        out = []
        for line in lines:
            out.append(tag + line if start else line)
            start = line.endswith("\n")
        self._at_line_start[key] = start
        return "".join(out)
