"""How frame pieces travel (ipyparmap/frames/transport.py): numeric columns through shared
memory, as views of the frame (no copy in the parent), rebuilt in the worker into a frame
equal to the piece; and what happens when shared memory is short (a small /dev/shm, a
full one, a file size limit): the run falls back to pickling, it never fails."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, children, run_python, wait_for

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

import ipyparmap as pm  # noqa: E402
from ipyparmap.frames import transport  # noqa: E402
from ipyparmap.frames.pieces import GroupPiece  # noqa: E402
from ipyparmap.wire.serialize import dumps_packed, loads_shared  # noqa: E402

assert_frame_equal = pd.testing.assert_frame_equal
ROWS = 20_000  # 160 kB per float column: above serialize.SHARE_BYTES


@pytest.fixture(scope="module", autouse=True)
def _pool_down_after():
    yield
    pm.shutdown()
    wait_for(lambda: not children(), timeout=10, what="child processes to exit")


def _mixed(rows: int = ROWS, index: str = "range") -> pd.DataFrame:
    n = np.arange(rows)
    frame = pd.DataFrame(
        {
            "f": n * 0.5,
            "i": n.astype("int64"),
            "i8": (n % 100).astype("int8"),
            "u": n.astype("uint64"),
            "f32": n.astype("float32"),
            "c": n * (1 + 1j),
            "b": n % 3 == 0,
            "o": np.array([f"t{i}" for i in n], dtype=object),
            "s": pd.array([f"s{i}" for i in n], dtype="string"),
            "cat": pd.Categorical(n % 5),
            "when": pd.date_range("2024-01-01", periods=rows, freq="min", tz="Europe/Paris"),
            "td": pd.to_timedelta(n, unit="s"),
            "I": pd.array(np.where(n % 7 == 0, None, n), dtype="Int64"),
        }
    )
    if index == "strings":
        frame.index = pd.Index([f"r{i}" for i in n], name="key")
    elif index == "multi":
        frame.index = pd.MultiIndex.from_arrays([n // 10, n % 10], names=["a", "b"])
    elif index == "duplicates":
        frame.index = n % 4
    return frame


def _through_shared_memory(obj):
    """``obj`` pickled as the engine sends items (large buffers apart, into a memfd)
    and loaded as a worker loads them: (the loaded object, the pickle's length, the
    bytes that went through shared memory)."""
    packed = dumps_packed([obj])
    fds, table = packed.share()
    try:
        shared = sum(length for _, _, length in table or ())
        loaded = loads_shared(packed.blob, [os.dup(fd) for fd in fds], table)[0]
    finally:
        packed.close()
    return loaded, len(packed.blob), shared


@pytest.mark.parametrize("index", ["range", "strings", "multi", "duplicates"])
def test_a_piece_arrives_equal_with_its_numeric_columns_in_shared_memory(index):
    frame = _mixed(index=index)
    piece = frame.iloc[1000:19000]
    [sent] = transport.outgoing([piece])
    assert isinstance(sent, transport.FramePiece)
    loaded, blob, shared = _through_shared_memory(sent)
    assert_frame_equal(loaded, piece, check_flags=True)
    numeric = sum(piece[c].to_numpy().nbytes for c in ["f", "i", "u", "f32", "c"])
    assert shared >= numeric  # the numeric values went out of band...
    assert blob < shared  # ...not through the pickle stream


def test_numeric_columns_are_sent_as_views_of_the_frame():
    """No copy of the values in the parent: the buffers handed to shared memory are
    the frame's own memory."""
    frame = pd.DataFrame({name: np.arange(ROWS, dtype=float) + k for k, name in enumerate("abc")})
    piece = frame.iloc[5000:15000]
    buffers: list = []
    pickle.dumps(transport.FramePiece(piece), protocol=5, buffer_callback=buffers.append)
    columns = [b.raw() for b in buffers if b.raw().nbytes == 10_000 * 8]  # (labels: small)
    assert len(columns) == 3
    block = frame._mgr.blocks[0].values  # the one float block the frame holds
    for column in columns:
        assert np.shares_memory(np.asarray(column), block)


def test_labels_flags_and_attrs_survive():
    frame = pd.DataFrame(np.arange(3 * ROWS, dtype=float).reshape(ROWS, 3))
    frame.columns = pd.MultiIndex.from_tuples([("x", 1), ("x", 1), ("y", 2)], names=["l", "n"])
    frame.attrs["source"] = "sensor"
    loaded, _, shared = _through_shared_memory(transport.FramePiece(frame.iloc[10:ROWS]))
    assert shared >= 3 * (ROWS - 10) * 8
    assert_frame_equal(loaded, frame.iloc[10:ROWS])
    assert loaded.attrs == {"source": "sensor"}
    strict = pd.DataFrame({"a": np.arange(ROWS, dtype=float)}).set_flags(
        allows_duplicate_labels=False
    )
    loaded, _, _ = _through_shared_memory(transport.FramePiece(strict))
    assert not loaded.flags.allows_duplicate_labels


def test_small_or_non_numeric_pieces_travel_as_they_are():
    small = pd.DataFrame({"a": np.arange(100.0)})
    text = pd.DataFrame({"o": np.array(["x"] * ROWS, dtype=object)})
    series = pd.Series(np.arange(ROWS, dtype=float))
    assert transport.outgoing([small, text, series]) == [small, text, series]
    group = GroupPiece(_mixed(), None)
    [sent] = transport.outgoing([group])
    assert isinstance(sent.obj, transport.FramePiece)
    assert transport.arrived(sent) is not sent and transport.arrived(sent).obj is group.obj


#: Two pieces of 10,000 rows: 80 kB per 8-byte column, above serialize.SHARE_BYTES.
PAR = {"workers": 2, "progress": False, "chunksize": ROWS // 2}


def _row_total(row):
    return row["f"] + row["i"] * 2 + len(row["o"])


def test_accessors_on_a_large_mixed_frame_equal_serial_pandas(copies):
    frame = _mixed(index="strings")
    assert_frame_equal(
        frame.parmap.apply(lambda r: r.astype(str).str.len().sum(), axis=1, **PAR).to_frame(),
        frame.apply(lambda r: r.astype(str).str.len().sum(), axis=1).to_frame(),
    )
    assert sum(copies) >= ROWS * 8 * 3  # the 8-byte columns went through shared memory
    numeric = frame[["f", "i", "u", "f32", "b"]]
    assert_frame_equal(numeric.parmap.map(lambda v: v * 2, **PAR), numeric.map(lambda v: v * 2))
    assert_frame_equal(
        numeric.parmap.apply(lambda c: c.cumsum(), axis=0, **PAR),
        numeric.apply(lambda c: c.cumsum()),
    )
    small = frame[["f", "i", "o"]]
    expected = small.apply(_row_total, axis=1)
    pd.testing.assert_series_equal(small.parmap.apply(_row_total, axis=1, **PAR), expected)
    threads = small.parmap.apply(_row_total, axis=1, backend="threads", **PAR)
    pd.testing.assert_series_equal(threads, expected)


def _group_summary(group):
    return pd.Series({"n": len(group), "f": group["f"].sum(), "first": group["o"].iloc[0]})


def test_groupby_pieces_travel_the_same_way(copies):
    frame = _mixed().drop(columns=["cat"])
    frame["key"] = np.arange(ROWS) % 97
    gb = frame.groupby("key")
    assert_frame_equal(gb.parmap.apply(_group_summary, **PAR), gb.apply(_group_summary))
    assert sum(copies) >= ROWS * 8 * 3


# ---------------------------------------------------------------- short of shared memory
BIG_CODE = """
import numpy as np, pandas as pd, ipyparmap as pm

def double(a):
    return a * 2

# a frame of {mb} MB and arrays of {mb} MB in all: more than the shared memory allowed
values = {mb} * 1024 * 1024 // 8
frame = pd.DataFrame(np.arange(values, dtype=float).reshape(-1, 32)).copy()
got = frame.parmap.apply(lambda r: r[0] + r[31], axis=1, raw=True, workers=2,
                         progress=False, chunksize=len(frame) // 3 + 1)
assert got.equals(frame[0] + frame[31]), "frame"
arrays = [np.full(values // 3, float(i)) for i in range(3)]
back = pm.parmap(double, arrays, workers=2, progress=False)
assert all((b == a * 2).all() for a, b in zip(arrays, back)), "arrays"
pm.shutdown()
print("OK")
"""


def _can_mount_a_small_dev_shm() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             "mount -t tmpfs -o size=1m tmpfs /dev/shm"]  # fmt: skip
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_a_small_dev_shm(), reason="needs unprivileged mount namespaces")
def test_a_64_mb_dev_shm_as_in_docker_is_no_limit(tmp_path):
    """Docker gives containers a 64 MB /dev/shm: ipyparmap's shared memory is anonymous
    (memfd, or an unlinked temporary file), never in /dev/shm, so a 200 MB frame and
    200 MB of arrays run there as anywhere."""
    script = tmp_path / "big.py"
    script.write_text(BIG_CODE.format(mb=200))
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    shell = f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} {script}"
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")


def test_no_room_for_shared_memory_falls_back_to_pickling():
    """When shared memory cannot be had (here: RLIMIT_FSIZE, which memfd files obey as a
    full tmpfs would refuse the writes), items and results travel inside the pickle:
    the run gives the same results. Parent and workers alike (they inherit the limit)."""
    limit = 8 * 1024 * 1024  # smaller than one piece, one array: their writes fail
    code = (
        f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        + BIG_CODE.format(mb=48)
    )
    done = run_python(code, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")


def test_a_failed_write_closes_its_memfd_and_inlines_the_buffers(monkeypatch):
    from ipyparmap.wire import sharedmem

    opened = []
    real_file = sharedmem.anonymous_file

    def recording_file(name, size):
        opened.append(real_file(name, size))
        return opened[-1]

    def failing_pwrite(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharedmem, "anonymous_file", recording_file)
    monkeypatch.setattr(sharedmem.os, "pwrite", failing_pwrite)
    array = np.arange(ROWS, dtype=float)
    packed = dumps_packed([array])
    assert packed.buffers
    fds, table = packed.share()
    assert (fds, table) == ((), None) and not packed.buffers
    assert len(opened) == 1
    with pytest.raises(OSError):
        os.fstat(opened[0])  # closed, not leaked
    [back] = loads_shared(packed.blob, [], None)
    assert np.array_equal(back, array) and back.flags.writeable


def test_importing_the_transport_before_pandas_registers_the_accessors_quietly():
    """A worker loads `run_sent_piece` (so this module) before anything imports pandas;
    the pandas import hook must then not meet a half-made module."""
    done = run_python(
        """
        import warnings
        warnings.simplefilter("error")
        import ipyparmap.frames.transport
        import pandas as pd
        assert hasattr(pd.DataFrame, "parmap")
        print("OK")
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "OK"


def test_a_large_frame_does_not_need_another_copy_of_itself():
    """Peak memory (PSS of the caller and its workers) of ``df.parmap.apply(f,
    axis=1)`` on a 160 MB frame stays within one more frame's size above what the
    caller held before (measured ~0.5: the workers' pieces and pandas' working copies
    of them; docs/benchmarks.md, "Memory of a large frame"). A caller copying the frame
    (or every piece at once) would exceed it."""
    done = run_python(
        """
        import numpy as np, pandas as pd, ipyparmap as pm
        from benchmarks.frames import PssSampler  # PSS of this process and its children

        columns = 20
        rows = 160 * 10**6 // (8 * columns)
        warm = pd.DataFrame(np.ones((64, columns)))
        warm.parmap.apply(np.sum, axis=1, raw=True, workers=2, progress=False, chunksize=16)
        df = pd.DataFrame({f"c{i}": np.full(rows, float(i)) for i in range(columns)})
        frame = df.memory_usage().sum()
        before = PssSampler().stop()
        sampler = PssSampler(interval=0.01)
        got = df.parmap.apply(np.sum, axis=1, raw=True, workers=2, progress=False)
        peak = sampler.stop()
        assert (got == sum(range(columns))).all()
        pm.shutdown()
        print("EXTRA", (peak - before) / frame)
        """,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    extra = float(done.stdout.split("EXTRA")[1])
    assert extra < 1.0, f"peak {extra:.2f} frame sizes above the caller's memory before the call"


def test_piece_sizes_follow_the_measured_time_and_the_frame_bytes():
    # 10,000 rows of 1 ms on 2 workers: 10 s of work, ~0.25 s a piece, at most 32 pieces
    assert transport.timed_rows(1250, 10_000, 2, 0.001) == 313
    assert transport.timed_rows(1250, 10_000, 2, 0.00001) == 1250  # cheap: 8 pieces stay
    assert transport.timed_rows(1250, 10_000, 2, None) == 1250  # nothing measured
    wide = pd.DataFrame(np.zeros((1000, 1000)))  # 8 kB a row: 32 MB is 4,096 rows
    assert transport.piece_rows(wide, 100_000) == transport.PIECE_BYTES // 8000
    assert transport.piece_rows(wide, 10) == 10


def test_slow_rows_and_groups_are_cut_into_more_pieces(monkeypatch):
    """A slow function's rows (groups) go out in pieces of ~PIECE_SECONDS of work, by
    the time the first rows took in the kernel: more pieces than the 4 per worker of a
    cheap one, so a slowed-down worker holds up the end of the call by little."""
    import time

    from ipyparmap.frames import accessors, groupby

    sent = []

    def counting(pieces):
        sent.append(len(pieces))
        return transport.outgoing(pieces)

    monkeypatch.setattr(accessors, "outgoing", counting)
    monkeypatch.setattr(groupby, "outgoing", counting)
    monkeypatch.setattr(transport, "PIECE_SECONDS", 0.02)

    def slow(value):
        time.sleep(0.002)
        return value

    s = pd.Series(np.arange(400.0))
    pd.testing.assert_series_equal(s.parmap.map(slow, workers=2, progress=False), s)
    frame = pd.DataFrame({"k": np.arange(400) % 100, "x": np.arange(400.0)})
    gb = frame.groupby("k")["x"]
    pd.testing.assert_series_equal(gb.parmap.apply(lambda g: slow(g.sum()), workers=2,
                                                   progress=False), gb.apply(lambda g: g.sum()))  # fmt: skip
    assert len(sent) == 2 and all(n > 2 * accessors.PIECES_PER_WORKER for n in sent), sent


def test_a_frame_that_cannot_be_taken_apart_travels_whole(monkeypatch):
    def broken(frame):
        raise AttributeError("no such internals in this pandas")

    monkeypatch.setattr(transport, "_column_arrays", broken)
    frame = _mixed(rows=ROWS)
    loaded, _, _ = _through_shared_memory(transport.FramePiece(frame))
    assert_frame_equal(loaded, frame)
