"""Terminal IPython: the magics work and draw a text progress bar on a real terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytest.importorskip("IPython")

CODE = (
    "import sys; sys.path.insert(0, {tests!r}); import helpers\n"
    "%load_ext ipyparmap\n"
    "res = %parmap helpers.sleepy [(i, 0.1) for i in range(16)] -w 2\n"
    "print('SUMMARY', res.summary())\n"
    "out = get_ipython().run_cell_magic('parmap', 'x in range(3) -w 2', 'x * 7')\n"
    "print('CELL', list(out))\n"
)


def test_terminal_ipython_draws_a_text_bar_on_a_tty():
    primary, secondary = os.openpty()  # a real terminal for the child: isatty() is True
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb")
    code = CODE.format(tests=str(ROOT / "tests"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", code],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(30) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "\rparmap [" in text  # redrawn in place while it ran
    assert "16/16 done, 0 failed" in text
    assert "SUMMARY 16/16 done, 0 failed" in text
    assert "CELL [0, 7, 14]" in text
