"""A real ipykernel driven through jupyter_client, for kernel and notebook tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import ROOT, wait_for


def kernel_env() -> dict[str, str]:
    """Our environment minus PYTEST_CURRENT_TEST (with it, ipykernel drops child output)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def kernel_spec_dir(tmp: Path) -> Path:
    """A kernelspec that runs this very interpreter (not whatever 'python3' is installed)."""
    spec = tmp / "kernels" / "ipyparmap-test"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ipyparmap test", "language": "python"})
    )
    return tmp / "kernels"


@dataclass
class Reply:
    status: str
    stdout: str = ""
    stderr: str = ""
    result: dict = field(default_factory=dict)  # execute_result data
    error: dict = field(default_factory=dict)  # ename, evalue, traceback
    displays: list = field(default_factory=list)  # display_data data

    @property
    def traceback(self) -> str:
        return "\n".join(self.error.get("traceback", []))


class Kernel:
    def __init__(self, tmp: Path):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        ksm = KernelSpecManager(kernel_dirs=[str(kernel_spec_dir(tmp))])
        self.manager = KernelManager(kernel_name="ipyparmap-test", kernel_spec_manager=ksm)
        self.manager.start_kernel(env=kernel_env(), cwd=str(tmp))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.backlog: dict[str, list] = {}  # iopub messages of cells nobody collected yet

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def submit(self, code: str) -> str:
        return self.client.execute(code)

    def collect(self, msg_id: str, timeout: float = 60, until=None) -> Reply:
        """Gather iopub messages of ``msg_id`` until idle (or until ``until(reply)``)."""
        reply = Reply(status="ok")
        deadline = time.monotonic() + timeout
        while True:
            backlog = self.backlog.setdefault(msg_id, [])
            if backlog:
                msg = backlog.pop(0)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"kernel did not finish within {timeout} s: {reply}")
                try:
                    msg = self.client.get_iopub_msg(timeout=min(remaining, 1.0))
                except queue.Empty:
                    continue
                parent = msg["parent_header"].get("msg_id")
                if parent != msg_id:  # another cell's: keep it for whoever asks
                    self.backlog.setdefault(parent, []).append(msg)
                    continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    reply.stdout += content["text"]
                else:
                    reply.stderr += content["text"]
            elif kind == "execute_result":
                reply.result = content["data"]
            elif kind == "display_data":
                reply.displays.append(content["data"])
            elif kind == "error":
                reply.status = "error"
                reply.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                return reply
            if until is not None and until(reply):
                return reply

    def run(self, code: str, timeout: float = 60) -> Reply:
        return self.collect(self.submit(code), timeout)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


@contextlib.contextmanager
def running_kernel(tmp: Path, setup: str = "%load_ext ipyparmap\n%config Parmap.workers = 2"):
    """A started kernel with ipyparmap loaded; stopped, with its workers, afterwards."""
    import psutil

    kernel = Kernel(tmp)
    try:
        reply = kernel.run(setup)
        assert reply.status == "ok", reply
        yield kernel
    finally:
        kernel.run("%parmap_pool shutdown")
        pid = kernel.pid
        kernel.close()
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 30)
