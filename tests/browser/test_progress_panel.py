"""The progress panel in a real JupyterLab, seen by a real browser.

A notebook runs ``pm.parmap`` over 20 items of 0.3 s on 2 workers (about 3 s). From the
DOM we check that the panel is a rendered widget (not the ``text/plain`` fallback), that
the bar advances while the cell is busy, that the per-worker rows open and show busy
workers, that it ends at 20/20 with the success style, and that worker output reaches
the cell. Then the notebook is saved and the file must carry the readable summary for
viewers without widgets, and show it when reopened in a JupyterLab whose widget manager
is disabled. Screenshots go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
import urllib.error

import nbformat
import pytest

from .conftest import ARTIFACTS, NO_CHROMIUM, chromium_path, wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(420),
    pytest.mark.skipif(chromium_path() is None, reason=NO_CHROMIUM),
]

N = 20
CELLS = [
    """\
import time
import ipyparmap as pm

def slow(x):
    time.sleep(0.3)
    print(f"child-out {x}", flush=True)
    return x * x""",
    f"res = pm.parmap(slow, range({N}), workers=2, chunksize=1)",
    "print(res.summary())",
]

KERNEL_IDLE = """() => {
  const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const ind = p && p.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = p && p.querySelector('.jp-KernelName');
  return !!(ind && ind.dataset.status === 'idle' && name && name.textContent.includes('ipykernel'));
}"""

ALL_CELLS_RUN = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')];
  return prompts.length === CELLS && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}""".replace("CELLS", str(len(CELLS)))

# Every width the bar takes, recorded by the page itself (no polling gaps).
RECORD_WIDTHS = """() => {
  window.__parmapWidths = [];
  const record = () => {
    const bar = document.querySelector('.ipyparmap-panel .widget-hprogress .progress-bar');
    if (!bar) return;
    const width = parseFloat(bar.style.width);
    const seen = window.__parmapWidths;
    if (!Number.isNaN(width) && (seen.length === 0 || seen[seen.length - 1] !== width)) {
      seen.push(width);
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['style', 'class'],
  });
}"""

FINAL_STATE = """() => {
  const panel = document.querySelector('.ipyparmap-panel');
  const bar = panel && panel.querySelector('.widget-hprogress .progress-bar');
  return !!(bar && bar.classList.contains('progress-bar-success')
    && bar.style.width === '100%' && panel.textContent.includes('N/N done, 0 failed'));
}""".replace("N/N", f"{N}/{N}")


def write_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbformat.write(nb, path)


def run_all(page):
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-item[data-command='runmenu:run-all']")


def save(page):
    page.click(".lm-MenuBar-itemLabel:text-is('File')")
    page.click(".lm-Menu-item[data-command='docmanager:save']")


def test_panel_renders_advances_and_ends_in_success(lab, page):
    name = "progress.ipynb"
    write_notebook(lab.notebooks / name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(lab.url(name))
    page.wait_for_function(KERNEL_IDLE, timeout=90_000)
    page.evaluate(RECORD_WIDTHS)
    run_all(page)

    # 1. a rendered widget appears while the map runs
    panel = page.locator(".ipyparmap-panel")
    panel.locator(".widget-hprogress .progress-bar").wait_for(state="attached", timeout=90_000)
    assert panel.locator(".widget-hprogress label.widget-label").inner_text() == "parmap"

    # 2. per-worker rows: collapsed at first, open on click, busy workers while running
    rows = panel.locator(".jupyter-widget-Collapse-open tr.ipyparmap-worker")
    assert rows.count() == 0
    panel.locator(".jupyter-widget-Collapse-header").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll(
              '.ipyparmap-panel .jupyter-widget-Collapse-open tr.ipyparmap-worker')]
            .filter(r => /pid \\d+\\s*busy/.test(r.textContent)).length >= 1""",
        timeout=30_000,
    )
    assert rows.count() == 2
    assert re.search(r"Workers: \d of 2 busy", panel.inner_text())
    page.screenshot(path=str(ARTIFACTS / "progress-panel-running.png"))

    # 3. it ends at N/N with the success style, and every cell ran
    page.wait_for_function(FINAL_STATE, timeout=120_000)
    page.wait_for_function(ALL_CELLS_RUN, timeout=60_000)
    page.wait_for_function(KERNEL_IDLE, timeout=60_000)

    widths = page.evaluate("() => window.__parmapWidths")
    assert widths[-1] == 100, widths
    assert widths == sorted(widths), widths  # never goes back
    assert any(0 < w < 100 for w in widths), widths  # it moved while the cell was busy

    status = panel.inner_text()
    assert re.search(rf"{N}/{N} done, 0 failed, \d+\.\d+ s, workers busy \d\.\d\d of 2", status)

    # 4. a widget, not its text fallback
    outputs = page.locator(".jp-OutputArea-output")
    assert outputs.filter(has_text="VBox(").count() == 0
    assert (
        page.locator(".jp-OutputArea-output[data-mime-type='text/plain']")
        .filter(has_text="parmap:")
        .count()
        == 0
    )
    assert page.locator(".ipyparmap-panel").count() == 1

    # 5. worker output reached the cell
    stdout = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
    text = "\n".join(stdout.all_inner_texts())
    assert "child-out 7" in text and f"child-out {N - 1}" in text
    assert f"{N}/{N} done, 0 failed" in text  # the last cell printed res.summary()

    panel.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "progress-panel.png"))
    panel.screenshot(path=str(ARTIFACTS / "progress-panel-element.png"))

    # 6. the saved file carries a readable summary next to the widget view
    save(page)

    def saved_panel_output():
        try:
            content = lab.api(f"/api/contents/{name}?content=1")["content"]
        except urllib.error.HTTPError as error:  # 400 while the save is half written
            error.close()
            return None
        for output in content["cells"][1]["outputs"]:
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                return data
        return None

    data = wait_until(saved_panel_output, timeout=30, what="the saved notebook's panel output")
    plain = "".join(data["text/plain"])
    assert re.fullmatch(
        rf"parmap: {N}/{N} done, 0 failed, \d+\.\d+ s, workers busy \d\.\d\d of 2", plain
    ), plain
    assert f"{N}/{N} done, 0 failed" in "".join(data["text/html"])

    # 7. the saved notebook opened where widgets cannot render (the widget manager
    # extension disabled): the readable summary shows, not "VBox(children=...)"
    with lab.widgets_disabled():
        static = page.context.new_page()
        static.goto(lab.url(name))
        summary = static.locator(
            ".jp-OutputArea-output[data-mime-type='text/html'] .ipyparmap-summary"
        )
        summary.wait_for(timeout=60_000)
        assert re.search(rf"parmap\s*{N}/{N} done, 0 failed, ", summary.inner_text())
        assert static.locator(".ipyparmap-panel").count() == 0
        assert static.locator(".jp-OutputArea-output").filter(has_text="VBox(").count() == 0
        static.screenshot(path=str(ARTIFACTS / "progress-panel-without-widgets.png"))
        static.close()


BACKGROUND_CELLS = [
    CELLS[0],
    "run = pm.parmap_async(slow, range(16), workers=2)",
    "time.sleep(4)\nprint('other cell done')",
    "print(run.result().summary())",
]

# The background run's bar is part way while the next cell is still running.
MOVES_WHILE_ANOTHER_CELL_RUNS = """() => {
  const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
  if (cells.length < 3) return false;
  const busy = cells[2].querySelector('.jp-InputPrompt').textContent.includes('*');
  const bar = cells[1].querySelector('.ipyparmap-panel .widget-hprogress .progress-bar');
  const width = bar ? parseFloat(bar.style.width) : NaN;
  return busy && width > 0 && width < 100;
}"""


def test_a_background_run_updates_its_panel_while_other_cells_run(lab, page):
    name = "background.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in BACKGROUND_CELLS]
    nbformat.write(nb, lab.notebooks / name)

    page.goto(lab.url(name))
    page.wait_for_function(KERNEL_IDLE, timeout=90_000)
    run_all(page)
    page.wait_for_function(MOVES_WHILE_ANOTHER_CELL_RUNS, timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "progress-panel-background.png"))

    cells = page.locator(".jp-Notebook .jp-Cell")
    panel = cells.nth(1).locator(".ipyparmap-panel")  # in the cell that started the run
    page.wait_for_function(
        """() => {
          const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[1];
          const bar = cell.querySelector('.ipyparmap-panel .widget-hprogress .progress-bar');
          return !!(bar && bar.classList.contains('progress-bar-success')
            && bar.style.width === '100%');
        }""",
        timeout=60_000,
    )
    assert re.search(r"16/16 done, 0 failed, \d+\.\d+ s, workers busy", panel.inner_text())
    page.wait_for_function(
        ALL_CELLS_RUN.replace(f"=== {len(CELLS)}", f"=== {len(BACKGROUND_CELLS)}"),
        timeout=60_000,
    )
    assert "[15] child-out 15" in cells.nth(1).inner_text()  # worker output: its own cell
    assert "other cell done" in cells.nth(2).inner_text()
    assert cells.nth(2).locator(".ipyparmap-panel").count() == 0
    assert "16/16 done, 0 failed" in cells.nth(3).inner_text()
