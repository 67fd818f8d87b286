"""Faults: kill -9, failing fsync, a full disk (and what its errors say), concurrent readers.

Real child processes are killed with SIGKILL at random moments; the parent then checks what the
file system holds.  `TAPEGRAD_CRASH_ROUNDS` (default 3) sets how many kills each test makes.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import tape_format as tf
from tapegrad.tape import Tape

ROUNDS = int(os.environ.get("TAPEGRAD_CRASH_ROUNDS", "3"))
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and resource limits")

CHAIN = textwrap.dedent("""
    import sys
    import numpy as np
    import tapegrad as tg

    def chain(tape, limit):
        x = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        y = x
        k = 0
        while limit is None or k < limit:
            y = tg.sin(y) + 0.5 if k % 3 == 0 else tg.cos(y) if k % 3 == 1 else tg.exp(-y)
            k += 1
            yield len(tape)
""")

STREAMER = CHAIN + textwrap.dedent("""
    path, every = sys.argv[1], int(sys.argv[2])
    with tg.record(path=path, flush_every=every) as tape:
        for n in chain(tape, None):
            if n % every == 0:
                print(n, flush=True)  # this many records have been handed to the OS
""")


def run_child(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)  # type: ignore[call-overload]


def expected_chain(n: int) -> Tape:
    namespace: dict[str, object] = {}
    exec(CHAIN, namespace)  # the same program the children run (test code, not file content)
    with tg.record() as tape:
        for count in namespace["chain"](tape, None):  # type: ignore[operator]
            if count >= n:
                break
    return tape


def quiet_recover(path: os.PathLike[str] | str) -> Tape:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.TapeRecoveryWarning)
        return tf.load_path(path, recover=True)


def test_kill_9_while_streaming_recovers_every_flushed_record(tmp_path) -> None:
    rng = np.random.default_rng(0)
    reference = expected_chain(6000)
    for round_ in range(ROUNDS):
        path = tmp_path / f"stream{round_}.tape"
        every = int(rng.integers(1, 40))
        child = run_child(STREAMER, str(path), str(every))
        flushed = []
        assert child.stdout is not None
        while len(flushed) < int(rng.integers(3, 30)):
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child died"
            flushed.append(int(line))
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere: between flushes or in one
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        flushed += [int(n) for n in rest.split()]
        with pytest.raises(tg.TruncatedTapeError):
            tf.load_path(path)
        got = quiet_recover(path)
        if len(got) > len(reference):  # the child ran further ahead of our reading than usual (a busy machine)
            reference = expected_chain(len(got))
        assert len(got) >= flushed[-1], (len(got), flushed[-1])
        assert got.recovery is not None and not got.recovery.complete
        assert got.records == reference.records[:len(got)]
        ref_ids = reference.ids_in_order()
        for vid in got.ids_in_order():
            assert got._values[vid].tobytes() == reference._values[ref_ids[vid]].tobytes()


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import tapegrad as tg
    from tapegrad import tape_format as tf

    def tape(tag, n):
        with tg.record(metadata={"tag": tag}) as t:
            x = tg.Variable(np.full(n, 0.5), name="x")
            tg.sum(tg.sin(x) * x)
        return t

    path, seconds = sys.argv[1], float(sys.argv[2])
    tapes = [tape("A", 1000), tape("B", 400_000)]
    import time
    start = time.monotonic()
    k = 0
    while seconds <= 0 or time.monotonic() - start < seconds:
        tf.save(tapes[k % 2], path)
        if k == 0:
            print("first", flush=True)
        k += 1
    print("done", k, flush=True)
""")


def tag_of(tape: Tape) -> str:
    tag = tape.metadata["tag"]
    assert tag in ("A", "B")
    assert len(tape) == 3 and tape.value("x").shape == ((1000,) if tag == "A" else (400_000,))
    return str(tag)


def test_kill_9_during_repeated_atomic_saves(tmp_path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "saved.tape"
    seen = set()
    for _ in range(ROUNDS + 2):
        child = run_child(SAVER, str(path), "0")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "first"
        time.sleep(float(rng.uniform(0, 0.3)))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        seen.add(tag_of(tf.load_path(path)))  # strict: always a complete old or new tape
    assert seen  # (usually both A and B)
    litter = [n for n in os.listdir(tmp_path) if n != "saved.tape"]
    with tg.record(metadata={"tag": "A"}) as tape:
        x = tg.Variable(np.full(1000, 0.5), name="x")
        tg.sum(tg.sin(x) * x)
    tf.save(tape, path)
    assert os.listdir(tmp_path) == ["saved.tape"], f"temporary files left: {litter}"
    assert tag_of(tf.load_path(path)) == "A"


def test_fsync_failure_means_no_rename_and_the_error_surfaces(tmp_path, monkeypatch) -> None:
    path = tmp_path / "t.tape"
    old = Tape("all", {"v": "old"})
    old._add_leaf(0, np.arange(3.0), "x", False)
    tf.save(old, path)
    before = path.read_bytes()
    new = Tape("all", {"v": "new"})
    new._add_leaf(0, np.arange(5.0), "x", False)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        tf.save(new, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.tape"]
    monkeypatch.undo()
    tf.save(new, path)
    assert tf.load_path(path).metadata == {"v": "new"}


def test_a_failing_write_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    from tapegrad.tape_format import frames

    path = tmp_path / "t.tape"
    tf.save(Tape("all", {"v": "old"}), path)
    before = path.read_bytes()

    def no_space(self: object, data: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(frames.FrameWriter, "_write", no_space)
    with pytest.raises(OSError, match="No space") as info:
        tf.save(Tape("all", {"v": "new"}), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["t.tape"]
    exc = info.value
    assert exc.errno == errno.ENOSPC and exc.filename == str(path)
    assert f"saving a tape to {path}: writing failed: No space left on device (injected); the file is unchanged" in str(exc)


def test_a_failing_fsync_names_the_path_and_the_step(tmp_path, monkeypatch) -> None:
    path = tmp_path / "t.tape"

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error (injected)")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as info:
        tf.save(Tape("all", {}), path)
    assert info.value.errno == errno.EIO and info.value.filename == str(path)
    assert str(path) in str(info.value) and "fsync" in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing"):  # the errno keeps its OSError subclass
        tf.save(Tape("all", {}), tmp_path / "missing" / "t.tape")


def fail_writes(monkeypatch: pytest.MonkeyPatch, when: Callable[[int], bool]) -> None:
    """Make the file writer's writes fail with ENOSPC (a full disk) when `when(n)` accepts their
    number (from 1)."""
    from tapegrad.tape_format import frames

    original = frames.FrameWriter._write
    count = [0]

    def write(self: frames.FrameWriter, data: object) -> None:
        count[0] += 1
        if when(count[0]):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        original(self, data)

    monkeypatch.setattr(frames.FrameWriter, "_write", write)


def test_a_full_disk_while_streaming_names_the_records_and_the_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run.tape"
    fail_writes(monkeypatch, lambda n: n == 3)  # header, the first batch, the second batch
    with pytest.raises(OSError) as info, tg.record(path=path, flush_every=4) as tape:
        y = tg.Variable(np.linspace(0.0, 1.0, 3), name="x")
        for _ in range(20):
            y = tg.sin(y)
    exc = info.value
    assert exc.errno == errno.ENOSPC and exc.filename == str(path) and len(tape) == 8
    assert str(exc) == (f"[Errno 28] writing records 4 to 7 to {path}: No space left on device (injected); the file "
                        f"holds a recoverable prefix of the recording (tg.load(path, recover=True)): '{path}'")
    assert isinstance(exc.__cause__, OSError)
    got = quiet_recover(path)
    assert got.records == tape.records[:4]


def test_a_full_disk_when_the_stream_closes(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run.tape"
    closing: list[bool] = []
    fail_writes(monkeypatch, lambda n: bool(closing))
    with pytest.raises(OSError, match=r"writing record 4 to .*recoverable prefix"), tg.record(path=path, flush_every=4) as tape:
        y = tg.Variable(np.linspace(0.0, 1.0, 3), name="x")
        for _ in range(5):
            y = tg.sin(y)
        closing.append(True)
    assert quiet_recover(path).records == tape.records[:4]


def test_a_full_disk_at_the_start_of_a_stream_leaves_no_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "run.tape"
    fail_writes(monkeypatch, lambda n: True)
    with pytest.raises(OSError, match=f"starting a recording in {path}: No space") as info, tg.record(path=path):
        pass
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert not path.exists()


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    import tapegrad as tg
    from tapegrad import tape_format as tf

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    mode, path = sys.argv[1], sys.argv[2]
    try:
        if mode == "save":
            with tg.record() as tape:
                tg.exp(tg.Variable(np.zeros(100_000), name="big"))
            tf.save(tape, path)
        else:
            with tg.record(path=path, flush_every=10) as tape:
                y = tg.Variable(np.zeros(1000), name="x")
                for k in range(10_000):
                    y = tg.sin(y)
                    if k % 10 == 9:
                        print(k + 1, flush=True)
    except OSError as exc:
        print("OSError", exc.errno, flush=True)
""")


def test_a_full_disk_leaves_the_old_file_intact(tmp_path) -> None:
    path = tmp_path / "t.tape"
    old = Tape("all", {"v": "old"})
    old._add_leaf(0, np.arange(3.0), "x", False)
    tf.save(old, path)
    before = path.read_bytes()
    out, err = run_child(FULL_DISK, "save", str(path)).communicate()
    assert out.split()[0] == "OSError", err
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.tape"]


def test_a_full_disk_while_streaming_surfaces_and_keeps_the_written_prefix(tmp_path) -> None:
    path = tmp_path / "s.tape"
    out, err = run_child(FULL_DISK, "stream", str(path)).communicate()
    lines = out.split("\n")
    assert "OSError" in out, err
    flushed = [int(line) for line in lines if line.strip().isdigit()]
    got = quiet_recover(path)
    assert flushed and len(got) >= flushed[-1]
    assert {r.op for r in got.records} == {"sin"}
    with pytest.raises(OSError, match="starting a recording in /dev/full"), tg.record(path="/dev/full"):
        pass
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # a file that never got its header is removed, a device never


READERS_WRITER_SECONDS = 1.5


def test_readers_loading_while_a_writer_replaces_the_file(tmp_path) -> None:
    path = tmp_path / "shared.tape"
    child = run_child(SAVER, str(path), str(READERS_WRITER_SECONDS))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "first"
    loads = 0
    tags = set()
    while child.poll() is None:
        for use_mmap in (False, True):
            tags.add(tag_of(tf.load_path(path, mmap=use_mmap)))
            loads += 1
    out, _ = child.communicate()
    assert child.returncode == 0 and out.startswith("done")
    assert loads > 5 and tags
    assert os.listdir(tmp_path) == ["shared.tape"]
