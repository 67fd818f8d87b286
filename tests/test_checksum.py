"""The CRC-32 of the tape format and of shared inputs' fingerprints (`tapegrad.checksum`): the fast implementation is the one in use when it
is installed, it computes zlib's CRC-32 exactly, and tapes written with one load with the other."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import checksum

HAVE_ISAL = importlib.util.find_spec("isal") is not None


def test_the_fastest_installed_implementation_is_used() -> None:
    # the test extra installs python-isal, so CI runs the fast path; without it the fallback is zlib
    if HAVE_ISAL:
        from isal import isal_zlib

        assert (checksum.IMPLEMENTATION, checksum.crc32) == ("isal", isal_zlib.crc32)
    else:
        assert (checksum.IMPLEMENTATION, checksum.crc32) == ("zlib", zlib.crc32)


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 16))
def test_crc32_is_zlibs_crc32_from_any_seed_and_offset(data: bytes, seed: int, skip: int) -> None:
    view = memoryview(data)[min(skip, len(data)):]
    assert checksum.crc32(view, seed) == zlib.crc32(view, seed)
    assert checksum.crc32(data) == zlib.crc32(data)


def test_crc32_of_large_and_typed_buffers() -> None:
    values = np.random.default_rng(0).standard_normal((1024, 1000))  # 8 MB, past the fast kernels' blocks
    assert checksum.crc32(memoryview(values)) == zlib.crc32(values.tobytes())
    assert checksum.crc32(memoryview(values)[3:517], 12345) == zlib.crc32(values[3:517].tobytes(), 12345)


@pytest.mark.skipif(not HAVE_ISAL, reason="needs python-isal beside zlib (the test extra installs it)")
def test_a_tape_saved_with_one_implementation_loads_verified_with_the_other(tmp_path: Path) -> None:
    x = tg.Variable(np.linspace(-1.0, 1.0, 3 << 20), name="x")  # 24 MB: checksummed piece-wise on two threads
    with tg.record() as tape:
        y = tg.sin(x) * 2.0
        y.name = "y"
    tape.save(tmp_path / "here.tape")
    expected = tg.replay.backward(tape, of="y", wrt=["x"])["x"]
    np.save(tmp_path / "expected.npy", expected)
    block = "sys.modules['isal'] = None  # as if python-isal were not installed"
    script = textwrap.dedent(f"""
        import sys
        {block}
        import numpy as np
        import tapegrad as tg
        from tapegrad import checksum
        assert checksum.IMPLEMENTATION == 'zlib', checksum.IMPLEMENTATION
        folder = {str(tmp_path)!r}
        got = tg.replay.backward(tg.load(folder + "/here.tape"), of="y", wrt=["x"])["x"]
        assert np.array_equal(got, np.load(folder + "/expected.npy"))
        y = tg.Variable(np.arange(5.0), name="y")
        with tg.record() as tape:
            z = tg.exp(y)
            z.name = "z"
        tape.save(folder + "/there.tape")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    there = tg.load(tmp_path / "there.tape")  # written by the other implementation, verified by this one
    assert np.array_equal(tg.replay.forward(there)["z"], np.exp(np.arange(5.0)))


@pytest.mark.parametrize("megabytes", [1, 3, 9])
def test_a_verified_load_checksums_each_byte_of_the_file_about_once(tmp_path: Path, megabytes: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tapegrad.tape_format import frames, sources

    x = tg.Variable(np.ones(megabytes << 18, np.float32), name="x")
    with tg.record() as tape:
        (x * 2.0).name = "y"
    path = tmp_path / "t.tape"
    tape.save(path)
    checksummed = []

    def counting(data: object, seed: int = 0) -> int:
        checksummed.append(memoryview(data).nbytes)  # type: ignore[arg-type]
        return checksum.crc32(data, seed)

    for module in (frames, sources):
        monkeypatch.setattr(module, "crc32", counting)
    tg.load(path)
    size = path.stat().st_size
    # each piece of a large file is checksummed as it is read, and the ends of a frame that holds a
    # whole piece are checksummed again (at most half a piece each); a small file, once (its frames
    # are checksummed from the buffer).  Frame tails (their own CRCs) are not checksummed.
    frames_of_values = 2
    assert 0.99 * size <= sum(checksummed) <= size + frames_of_values * sources.PIECE
