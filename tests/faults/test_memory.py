"""Memory: max_memory recycles a swollen worker; an OOM-style kill says how big it was."""

from __future__ import annotations

import helpers
import pytest

import ipyparmap as pm

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_max_memory_recycles_a_worker_after_its_item():
    items = [(i, 200 if i == 2 else 0) for i in range(8)]  # item 2 keeps 200 MB alive
    res = pm.parmap(helpers.hoard, items, workers=1, chunksize=1, max_memory="150MB")
    assert [value for value, _ in res] == list(range(8))
    pids = [pid for _, pid in res]
    assert pids[2] == pids[0]  # the swollen item finished in its worker...
    assert pids[3] != pids[2]  # ...which was then replaced by a fresh one
    assert res.stats.recycled == 1 and res.stats.restarts == 0


def test_max_memory_validation():
    with pytest.raises(ValueError, match="max_memory must be a size like"):
        pm.parmap(helpers.square, [1], max_memory="lots")
    with pytest.raises(ValueError, match="max_memory must be a positive size"):
        pm.parmap(helpers.square, [1], max_memory=0)


def test_oom_style_kill_reports_likely_out_of_memory_and_size():
    res = pm.parmap(helpers.swell_and_die, [150], workers=1, errors="collect")
    failure = res[0]
    assert failure.kind == "crashed"
    text = str(failure.exception)
    assert "SIGKILL" in text and "likely out of memory" in text
    assert "MB of memory at the last sample" in text
    size = float(text.split(" MB of memory")[0].split()[-1])
    assert size >= 100  # it was sampled after it grew


def test_max_memory_config_default_in_the_magic():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import TraitError

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "ipyparmap")
    ip.user_ns["helpers"] = helpers
    magics = ip.magics_manager.registry["Parmap"]
    with pytest.raises(TraitError, match=r"Parmap\.max_memory"):
        magics.max_memory = "lots"
    ip.run_line_magic("config", "Parmap.max_memory = '150MB'")
    try:
        res = ip.run_cell_magic(
            "parmap", "i in range(4) -w 1 --chunksize 1", "helpers.hoard((i, 200 if i == 1 else 0))"
        )
    finally:
        ip.run_line_magic("config", "Parmap.max_memory = None")
    assert res.stats.recycled == 1
