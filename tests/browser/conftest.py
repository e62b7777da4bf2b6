"""Fixtures for real-browser tests (see /work/shared/TESTING_NOTES.md for the recipe).

* ``lab`` (module): a JupyterLab server on 127.0.0.1, a free port, a random token, every
  Jupyter/IPython directory isolated under a temporary root, and ``PYTEST_CURRENT_TEST``
  dropped from its environment (ipykernel would otherwise not forward worker output).
* ``browser`` (module): Debian's chromium driven by Playwright through
  ``executable_path`` (never ``playwright install``), headless. Skipped with a reason
  when no chromium binary exists.
* ``page`` (function): a fresh context and page; on failure a screenshot and the
  notebook's HTML are saved under ``test-artifacts/browser/``.

Server and browser are module-scoped, not session-scoped: they are child processes of
pytest, and the rest of the suite checks that no child process outlives a test
(``no_leaks``); a module fixture is gone (with every process it started) before the next
test module runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


NO_CHROMIUM = (
    "no chromium binary: install it (apt-get install chromium) or set CHROMIUM=/path; "
    "`playwright install` is not used"
)


def chromium_path() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, alive=None):
    """Poll ``predicate`` until truthy; fail after ``timeout`` s, or when ``alive`` died."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {alive.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Lab:
    port: int
    token: str
    root: Path  # the server's temporary root
    notebooks: Path  # the server's root_dir
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}&reset"

    @contextlib.contextmanager
    def widgets_disabled(self):
        """Pages opened inside this block load without the ipywidgets lab extension.

        JupyterLab reads ``labconfig/page_config.json`` for every page it serves, so this
        needs no restart (the negative control of TESTING_NOTES section 6).
        """
        config = self.root / "config" / "labconfig" / "page_config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(
            json.dumps({"disabledExtensions": {"@jupyter-widgets/jupyterlab-manager": True}})
        )
        try:
            yield
        finally:
            config.unlink()


def isolated_env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    dirs = {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "IPYTHONDIR": "ipython",
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
    }
    for name, sub in dirs.items():
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    settings = root / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    # kernels run this interpreter (the venv with ipyparmap installed)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "nb"
    notebooks.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    log = root / "jupyterlab.log"
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={notebooks}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env=isolated_env(root), stdout=out, stderr=subprocess.STDOUT, cwd=notebooks
        )
    server = Lab(port, token, root, notebooks, log)

    def answers():
        try:
            return server.api("/api/status") is not None
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    try:
        wait_until(answers, timeout=120, what="jupyter lab to answer /api/status", alive=proc)
    except AssertionError:
        proc.kill()
        proc.wait(15)
        raise AssertionError(f"jupyter lab did not start; its log:\n{log.read_text()[-3000:]}")
    yield server
    _stop(server, proc)


def _stop(server: Lab, proc: subprocess.Popen) -> None:
    """Stop only what this fixture started: its sessions, the server, then the Popen.

    Kernels, and the ipyparmap workers they started, are descendants of the server:
    each of them must be gone too (workers exit by themselves when their kernel dies;
    any that does not within the bound is killed by its PID).
    """
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    try:
        for session in server.api("/api/sessions") or []:
            server.api(f"/api/sessions/{session['id']}", method="DELETE")
        server.api("/api/shutdown", method="POST")
    except (urllib.error.URLError, ConnectionError, OSError):
        pass
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _gone, alive = psutil.wait_procs(started, timeout=20)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}-failure.png"
        dump = ARTIFACTS / f"{request.node.name}-failure.html"
        try:
            page.screenshot(path=str(shot), full_page=True)
            dump.write_text(
                page.evaluate(
                    "() => document.querySelector('.jp-Notebook')?.outerHTML ?? document.body.outerHTML"
                )
            )
            print(f"failure artifacts: {shot} {dump}")
        except Exception as exc:  # the page may be gone; the test's own error matters more
            print(f"could not save failure artifacts: {exc}")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
