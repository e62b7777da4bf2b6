"""The Jupyter progress panel (layer: views): a ProgressModel drawn with stock ipywidgets.

All widget code of the package lives here. ipywidgets and IPython are imported only
when a panel is actually built or shown, so importing this module is cheap (the API
imports it to ask :func:`in_kernel`).

What the user sees in the cell's output, all in one display slot (a display id):

* runs shorter than ``delay`` (0.5 s): nothing while running, then one summary line;
* longer runs: a panel (``VBox``, CSS class ``ipyparmap-panel``)::

      parmap [=========          ] 45/100 done · 2 failed · 12.3 items/s · 3.1 s · ETA 4.2 s
      > Workers: 2 of 2 busy                      (an Accordion, collapsed; one row a worker)

  refreshed by the model's throttle (at most ~10 times a second; the worker rows at most
  twice a second), every refresh batched with ``hold_sync`` (one comm message per
  changed widget). At the end the status turns into the summary, drawn from the run's
  ``RunStats`` (the line ``Results.summary()`` and a failed run's exception show: items
  done, failures by kind, cancelled items, wall time, workers busy) and the bar into
  ``success`` (all done), ``danger`` (failures; already while running) or ``warning``
  (stopped early).

The refreshes are driven from the thread that runs the map (the kernel's main thread
for ``parmap``). Comm messages go out on the kernel's IOPub channel at once, so the
panel moves while that cell is busy.

The displayed object has a ``_repr_mimebundle_`` with the widget view *and* a readable
``text/plain`` and ``text/html`` summary, and the slot is updated with the final bundle
when the run ends. A notebook saved afterwards and opened where widgets cannot render
(GitHub, nbviewer, nbconvert without widget state, VS Code without widgets) shows
``parmap: 100/100 done, 0 failed, 3.2 s, ...`` instead of ``VBox(children=...)``.
"""

from __future__ import annotations

import html
import sys
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ipyparmap.figures import format_bytes, format_seconds, line_html, worker_label
from ipyparmap.views.progress import BUSY, ProgressModel

PANEL_CLASS = "ipyparmap-panel"
EMPTY_HTML = "<div class='ipyparmap-summary'></div>"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: Seconds between updates of the per-worker rows (the bar and status: every refresh).
TABLE_INTERVAL = 0.5


# ------------------------------------------------------------------------ environment
def in_kernel() -> bool:
    """True inside a Jupyter kernel (ipykernel's ZMQInteractiveShell).

    Looks only at modules already imported: outside IPython this imports nothing.
    Terminal IPython, scripts and plain ``python`` answer False.
    """
    ipython = sys.modules.get("IPython")
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    if ipython is None or zmqshell is None:
        return False
    shell = ipython.get_ipython()
    shell_class = getattr(zmqshell, "ZMQInteractiveShell", None)
    return shell is not None and shell_class is not None and isinstance(shell, shell_class)


def widgets_available(warn: bool = False) -> bool:
    """True when ipywidgets can be imported (``warn``: say so once when it cannot)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError as exc:
        if warn:
            warnings.warn(
                f"progress='widget' needs ipywidgets ({exc}); showing a text bar instead. "
                "Install it with: pip install ipywidgets",
                stacklevel=5,  # the user's parmap()/imap() call
            )
        return False
    return True


# ------------------------------------------------------------------------ text pieces
def status_text(model: ProgressModel) -> str:
    """The running status: ``43/100 done · 2 failed · 12.3 items/s · 3.1 s · ETA 4.2 s``."""
    return " · ".join(model.status_parts())


def line_parts(model: ProgressModel, final: bool) -> tuple[list[str], str]:
    """The pieces of the status line and their separator: the running status, or at the
    end the summary (from the run's stats, as ``Results.summary()`` words it)."""
    if final:
        return model.summary_parts(), ", "
    return model.status_parts(), " · "


def workers_title(model: ProgressModel) -> str:
    """The per-worker section's title: ``Workers: 2 of 2 busy, 1 restart``."""
    title = f"Workers: {model.running} of {model.live_workers} busy"
    restarts = max((w.restarts for w in model.workers.values()), default=0)
    if restarts:
        title += f", {restarts} restart{'s' * (restarts != 1)}"
    return title


_TABLE_STYLE = (
    "<style>.ipyparmap-workers{border-collapse:collapse;font-size:90%}"
    ".ipyparmap-workers th,.ipyparmap-workers td{padding:1px 12px 1px 0;text-align:right}"
    ".ipyparmap-workers th:nth-child(-n+2),.ipyparmap-workers td:nth-child(-n+2)"
    "{text-align:left}"
    ".ipyparmap-workers .busy{color:#1a7f37}.ipyparmap-workers .dead{color:#999}</style>"
)
_TABLE_HEAD = "".join(
    f"<th>{name}</th>" for name in ("worker", "state", "item", "done", "busy", "RSS", "restarts")
)


def workers_html(model: ProgressModel) -> str:
    """One table row per worker: PID, state, current item, items done, busy, RSS, restarts."""
    rows = []
    for w in model.workers.values():
        current = w.current if w.state == BUSY and w.current is not None else ""
        rss = format_bytes(w.rss) if w.rss is not None else ""
        state = html.escape(w.state)
        rows.append(
            f"<tr class='ipyparmap-worker'><td>{html.escape(worker_label(w.pid))}</td>"
            f"<td class='{state}'>{state}</td><td>{current}</td><td>{w.done}</td>"
            f"<td>{format_seconds(w.busy)}</td><td>{rss}</td><td>{w.restarts}</td></tr>"
        )
    return (
        f"{_TABLE_STYLE}<table class='ipyparmap-workers'><tr>{_TABLE_HEAD}</tr>"
        f"{''.join(rows)}</table>"
    )


def bar_style(model: ProgressModel, final: bool) -> str:
    """``danger`` on failure, ``success`` when all is done, ``warning`` when stopped early."""
    if model.failure_parts():
        return "danger"
    if final:
        return "success" if model.complete else "warning"
    return ""


def panel_html(label: str, model: ProgressModel) -> str:
    """A static HTML rendering of the run's state (for viewers without widgets)."""
    fraction = model.fraction
    if fraction is None:
        fraction = 1.0 if model.ended is not None else 0.0
    style = bar_style(model, model.ended is not None)
    colour = {"danger": "#d9534f", "success": "#5cb85c", "warning": "#f0ad4e"}.get(style)
    bar_colour = f"background:{colour};" if colour else "background:#2196f3;"
    parts, sep = line_parts(model, model.ended is not None)
    text = line_html(parts, sep=sep)
    return (
        "<div class='ipyparmap-summary' style='display:flex;align-items:center;gap:8px'>"
        f"<b>{html.escape(label)}</b>"
        "<span style='display:inline-block;width:160px;height:10px;background:#eee'>"
        f"<span style='display:block;height:100%;width:{fraction * 100:.1f}%;{bar_colour}'>"
        f"</span></span><span>{text}</span></div>"
    )


class Summary:
    """The final line of a short run: no widget, just ``text/plain`` and ``text/html``."""

    def __init__(self, label: str, model: ProgressModel):
        self.text = f"{label}: {model.summary()}"
        self.html = panel_html(label, model)

    def __repr__(self) -> str:
        return self.text

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        return {"text/plain": self.text, "text/html": self.html}


# ------------------------------------------------------------------------ the panel
class ProgressPanel:
    """A ProgressModel listener that shows the run in the current cell as a widget panel.

    ``display``/``update_display`` default to IPython's; tests pass recorders. The panel
    is built when the run has lasted ``delay`` seconds; before that only an empty
    placeholder reserves its place above any worker output.
    """

    def __init__(
        self,
        label: str = "parmap",
        delay: float = 0.5,
        display: Callable[..., Any] | None = None,
        update_display: Callable[..., Any] | None = None,
    ):
        self.label = label
        self.delay = delay
        self._display = display
        self._update_display = update_display
        self.display_id: str | None = None
        self.model: ProgressModel | None = None
        self.final = False
        # the widgets, once built
        self.panel: Any = None
        self.bar: Any = None
        self.status: Any = None
        self.workers: Any = None
        self.accordion: Any = None
        self.cancel_button: Any = None  # background runs only (see _build)
        self._table_at: float | None = None  # elapsed time of the last worker-table update

    # -- the listener -----------------------------------------------------------------
    def __call__(self, model: ProgressModel, final: bool) -> None:
        self.model = model
        if final:
            self.final = True
            if self.panel is not None:
                self._render(model, final=True)
                self._show(self, update=True)
            else:  # a short run: the summary line only
                self._show(Summary(self.label, model), update=self.display_id is not None)
            return
        if self.panel is None:
            if model.elapsed < self.delay:
                if self.display_id is None:  # keep our place above the workers' output
                    self._show(self._placeholder(), update=False)
                return
            self._build(model)
            self._show(self, update=True)
        else:
            self._render(model, final=False)

    # -- the display bundle -----------------------------------------------------------
    def __repr__(self) -> str:
        return self.text()

    def text(self) -> str:
        model = self.model
        if model is None:
            return f"{self.label}: starting"
        return f"{self.label}: {model.summary() if self.final else status_text(model)}"

    def _placeholder(self) -> dict:
        """What keeps the slot before the panel: nothing visible (an empty ``div``)."""
        return {"text/plain": f"{self.label}: starting", "text/html": EMPTY_HTML}

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs) -> dict:
        """The widget view (once built) with ``text/plain`` and ``text/html`` fallbacks.

        Every bundle this slot ever holds (placeholder, panel, summary) has the same
        ``text/plain`` and ``text/html`` keys, the text starting with ``"parmap: "``: tools
        that compare outputs but ignore display updates (nbval) can then normalise the
        slot with two patterns, whatever state they saw.
        """
        if self.model is None:
            return self._placeholder()
        bundle = {"text/plain": self.text(), "text/html": panel_html(self.label, self.model)}
        if self.panel is not None and self.panel.comm is not None:
            bundle[WIDGET_VIEW] = {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.panel.model_id,
            }
        return bundle

    def _show(self, obj: Any, update: bool) -> None:
        """Display ``obj`` (a bundle, or an object with ``_repr_mimebundle_``) in our slot.

        Bundles are published raw: IPython's formatters have nothing to add, and
        skipping them keeps the fixed cost of a short run's summary low.
        """
        if self._display is None:
            from IPython.display import display, update_display

            self._display, self._update_display = display, update_display
        bundle = obj if isinstance(obj, dict) else obj._repr_mimebundle_()
        if self.display_id is None:
            handle = self._display(bundle, raw=True, display_id=True)
            self.display_id = getattr(handle, "display_id", None) or str(handle)
        elif update:
            self._update_display(bundle, raw=True, display_id=self.display_id)

    # -- the widgets ------------------------------------------------------------------
    def _build(self, model: ProgressModel) -> None:
        """Create the widgets already in the model's state: each opens its comm once.

        Layouts and styles are widgets too (a comm each), so the plain ones are shared.
        """
        import ipywidgets as w

        bar_max, bar_value, style, status = self._figures(model, final=False)
        self._table_at = model.elapsed
        plain = w.Layout()
        self.bar = w.IntProgress(
            value=bar_value,
            min=0,
            max=bar_max,
            bar_style=style,
            description=self.label,
            style={"description_width": "initial"},
            layout=w.Layout(width="320px", flex="0 0 auto"),
        )
        self.status = w.HTML(value=status, layout=w.Layout(margin="0 0 0 8px"))
        self.workers = w.HTML(value=workers_html(model), style=self.status.style, layout=plain)
        self.accordion = w.Accordion(
            children=[self.workers],
            titles=(workers_title(model),),
            selected_index=None,
            layout=plain,
        )
        row = [self.bar, self.status]
        if model.background and model.cancel is not None:
            # Only a background run's panel gets a Cancel button: a blocking run keeps the
            # kernel's main thread, which would not read the click until the run ended
            # (interrupt the kernel instead).
            self.cancel_button = w.Button(
                description="Cancel",
                button_style="warning",
                tooltip="Stop the run; finished results are kept",
                layout=w.Layout(width="90px", margin="0 0 0 8px"),
            )
            self.cancel_button.on_click(self._cancel_clicked)
            row.append(self.cancel_button)
        self.panel = w.VBox(
            [w.HBox(row, layout=plain), self.accordion],
            layout=plain,
            _dom_classes=(PANEL_CLASS,),
        )

    def _cancel_clicked(self, _button) -> None:
        model = self.model
        if model is not None and model.cancel is not None:
            model.cancel()
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling"

    def _figures(self, model: ProgressModel, final: bool) -> tuple[int, int, str, str]:
        """The bar's max, value and style, and the status HTML."""
        if model.total is not None:
            bar_max = max(1, model.total)
            bar_value = min(model.done, bar_max)
        elif final:  # unknown length: the bar fills when the run ends
            bar_max, bar_value = 1, 1
        else:
            bar_max, bar_value = 1, 0
        parts, sep = line_parts(model, final)
        text = line_html(parts, model.failure_parts(), sep)
        return bar_max, bar_value, bar_style(model, final), text

    def _render(self, model: ProgressModel, final: bool) -> None:
        """Move the widgets to the model's state: one message per widget that changed."""
        bar_max, bar_value, style, status = self._figures(model, final)
        widgets = (self.bar, self.status, self.workers, self.accordion)
        with ExitStack() as stack:
            for widget in widgets:
                stack.enter_context(widget.hold_sync())
            self.bar.max = bar_max
            self.bar.value = bar_value
            self.bar.bar_style = style
            self.status.value = status
            # The worker rows are detail: at most twice a second (the frontend does not
            # tell a busy kernel whether they are open, so they are always kept fresh).
            now = model.elapsed
            if final and self.cancel_button is not None:
                stack.enter_context(self.cancel_button.hold_sync())
                self.cancel_button.layout.display = "none"  # nothing left to cancel
            if final or self._table_at is None or now - self._table_at >= TABLE_INTERVAL:
                self._table_at = now
                self.workers.value = workers_html(model)
                self.accordion.titles = (workers_title(model),)
