"""Container-level damage: magic, versions, frames, truncation, tails."""

from __future__ import annotations

import io
import os
import pickle
import struct
import threading
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tape_bytes import join_frames, preamble, split_frames, tiny_tape
from tapegrad import tape_format as tf
from tapegrad.tape import Tape
from tapegrad.tape_format import frames as frames_module
from tapegrad.tape_format import sources
from tapegrad.tape_format.frames import _BATCH, _BIG, MAGIC, FrameWriter, crc_shift, crc_shifter
from tapegrad.tape_format.limits import Limits


def recording() -> Tape:
    """A streamed-looking tape: several batches, names set late, values stored."""
    with tg.record(values="all") as tape:
        x = tg.Variable(np.array([0.25, 0.5, 0.75]), name="x")
        y = x
        for k in range(6):
            y = tg.sin(y) * 2.0 if k % 2 else tg.exp(-y)
        y.name = "y"
    return tape


def streamed_bytes(tmp_path, flush_every: int = 2) -> tuple[Tape, bytes]:
    path = tmp_path / "stream.tape"
    with tg.record(path=path, flush_every=flush_every) as tape:
        x = tg.Variable(np.array([0.25, 0.5, 0.75]), name="x")
        y = x
        for k in range(6):
            y = tg.sin(y) * 2.0 if k % 2 else tg.exp(-y)
        y.name = "y"
    return tape, path.read_bytes()


def loads_quietly(data: bytes, **kw: object) -> Tape:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.TapeRecoveryWarning)
        return tf.loads(data, **kw)  # type: ignore[arg-type]


def test_empty_input() -> None:
    with pytest.raises(tg.TruncatedTapeError, match="empty"):
        tf.loads(b"")
    with pytest.raises(tg.TruncatedTapeError):
        tf.loads(b"", recover=True)


@pytest.mark.parametrize("n", range(1, 8))
def test_one_to_seven_bytes(n: int) -> None:
    with pytest.raises(tg.TruncatedTapeError, match=f"ends at byte {n}"):
        tf.loads(MAGIC[:n])  # a cut-off magic is a truncated tape
    with pytest.raises(tg.TapeFormatError, match="bad magic"):
        tf.loads(b"\x00garbage"[:n])


def test_a_pickle_that_would_create_a_file_never_runs(tmp_path) -> None:
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # unpickling would call open(target, "w")
            return (open, (str(target), "w"))

    payload = pickle.dumps(Exploit(), protocol=pickle.HIGHEST_PROTOCOL)
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(Exploit(), protocol=proto)
        for recover in (False, True):
            with pytest.raises(tg.TapeFormatError):
                tf.loads(data, recover=recover)
    path = tmp_path / "evil.tape"
    path.write_bytes(payload)
    with pytest.raises(tg.TapeFormatError, match="pickle"):
        tf.load_path(path)
    # even inside a valid tape, bytes are only ever bytes
    tape = tiny_tape()
    tape.metadata["blob"] = payload
    loaded = tf.loads(tf.dumps(tape))
    assert loaded.metadata["blob"] == payload
    assert not target.exists()


def test_the_loader_never_imports_pickle_or_evaluates_code() -> None:
    import tapegrad

    root = os.path.join(os.path.dirname(tapegrad.__file__), "tape_format")
    names = sorted(name for name in os.listdir(root) if name.endswith(".py"))
    assert {"__init__.py", "frames.py", "reader.py", "writer.py", "validate.py"} <= set(names)
    for name in names:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            source = f.read()
        for banned in ("import pickle", "pickle.", "eval(", "exec(", "__import__", "importlib", "marshal"):
            assert banned not in source, f"{banned!r} in {name}"


def test_other_file_types_are_not_tapes(tmp_path) -> None:
    npy = io.BytesIO()
    np.save(npy, np.arange(3))
    with pytest.raises(tg.TapeFormatError, match=r"\.npy"):
        tf.loads(npy.getvalue())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
    with pytest.raises(tg.TapeFormatError, match="zip"):
        tf.loads(archive.getvalue())
    rng = np.random.default_rng(0)
    for _ in range(20):
        with pytest.raises(tg.TapeFormatError, match="bad magic"):
            tf.loads(b"\x00" + rng.bytes(int(rng.integers(0, 200))))


def test_future_versions() -> None:
    _, frames = split_frames(tf.dumps(tiny_tape()))
    for major in (2, 7, 65535):
        with pytest.raises(tg.TapeFormatError, match=f"version {major}\\.0 is newer"):
            tf.loads(join_frames(frames, preamble(major, 0)), recover=True)
    assert tf.loads(join_frames(frames, preamble(1, 65535))).records == tiny_tape().records


def test_every_prefix_of_a_valid_tape(tmp_path) -> None:
    """Truncating at every byte: strict mode reports it, recover mode keeps whole records."""
    tape, data = streamed_bytes(tmp_path)
    records = tape.records
    ends = []  # the byte offsets where frames end
    pos = 12
    for _, payload in split_frames(data)[1]:
        pos += 12 + len(payload)
        ends.append(pos)
    assert pos == len(data)
    kept = []
    for n in range(len(data)):
        prefix = data[:n]
        with pytest.raises(tg.TruncatedTapeError):
            tf.loads(prefix)
        try:
            got = loads_quietly(prefix, recover=True)
        except tg.TruncatedTapeError:
            assert n < ends[0], f"a prefix of {n} bytes holds a whole header but was not recovered"
            continue
        assert got.records == records[:len(got.records)]  # a whole-record prefix, ids and all
        assert got.recovery is not None and got.recovery.dropped_bytes == n - got.recovery.kept_bytes
        assert got.recovery.kept_bytes in ends
        kept.append(len(got.records))
    assert kept == sorted(kept) and kept[0] == 0 and kept[-1] == len(records)
    assert loads_quietly(data, recover=True).recovery is None


def test_recover_mode_reports_what_it_dropped(tmp_path) -> None:
    tape, data = streamed_bytes(tmp_path, flush_every=1)
    cut = data[:len(data) // 2]
    with pytest.warns(tf.TapeRecoveryWarning, match="recovered"):
        got = tf.loads(cut, recover=True)
    info = got.recovery
    assert isinstance(info, tf.Recovery)
    assert not info.complete and info.records == len(got.records) and 0 < info.records < len(tape.records)
    assert info.kept_bytes + info.dropped_bytes == len(cut)
    assert "byte" in info.reason


def test_a_frame_length_of_0xffffffff_in_a_tiny_file() -> None:
    data = tf.dumps(tiny_tape())
    bad = data[:12] + b"HEAD" + struct.pack("<I", 0xFFFFFFFF) + data[20:60]
    with pytest.raises(tg.TruncatedTapeError, match="needs 4,294,967,307 bytes"):
        tf.loads(bad)
    with pytest.raises(tg.TruncatedTapeError, match="nothing to recover"):
        tf.loads(bad, recover=True)
    # the same inside the tape (after good frames): recover keeps what came before
    _, frames = split_frames(data)
    good = join_frames(frames[:3])
    bad = good + b"RECS" + struct.pack("<I", 0xFFFFFFFF) + b"\x00" * 10
    with pytest.raises(tg.TruncatedTapeError):
        tf.loads(bad)
    assert loads_quietly(bad, recover=True).recovery.offset == len(good)


def test_a_corrupted_checksum_or_payload_in_any_frame() -> None:
    data = tf.dumps(recording())
    pos = 12
    for index, (tag, payload) in enumerate(split_frames(data)[1]):
        end = pos + 12 + len(payload)
        for where in (pos, pos + 4, pos + 8 + len(payload) // 2, end - 1):  # tag, length, payload, CRC
            bad = bytearray(data)
            bad[where] ^= 0x40
            with pytest.raises(tg.TapeFormatError):
                tf.loads(bytes(bad))
            try:
                got = loads_quietly(bytes(bad), recover=True)
            except tg.TapeFormatError:
                assert index == 0  # only a damaged header leaves nothing to recover
                continue
            if where != pos + 4:  # a damaged length may look like a longer frame
                assert got.recovery is not None and got.recovery.offset == pos
        pos = end


def test_reordered_or_spliced_frames_fail_the_checksum_chain() -> None:
    data = tf.dumps(recording())
    pre, frames = split_frames(data)
    raw = []
    pos = 12
    for _, payload in frames:
        raw.append(data[pos:pos + 12 + len(payload)])
        pos += 12 + len(payload)
    swapped = pre + raw[0] + raw[2] + raw[1] + b"".join(raw[3:])
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch"):
        tf.loads(swapped)
    other = tf.dumps(tiny_tape())
    _, other_frames = split_frames(other)
    spliced = pre + raw[0] + other[12 + 12 + len(other_frames[0][1]):]
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch"):
        tf.loads(spliced)
    dropped = pre + raw[0] + b"".join(raw[2:])
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch"):
        tf.loads(dropped)


def test_bytes_after_the_end() -> None:
    data = tf.dumps(tiny_tape())
    for extra in (b"\x00", b"junk", data):
        with pytest.raises(tg.TapeFormatError, match=f"{len(extra):,} unexpected bytes after the footer"):
            tf.loads(data + extra)
        got = loads_quietly(data + extra, recover=True)
        assert got.records == tiny_tape().records
        assert got.recovery.complete and got.recovery.dropped_bytes == len(extra)


def test_missing_footer_means_the_writer_died(tmp_path) -> None:
    tape, data = streamed_bytes(tmp_path)
    _, frames = split_frames(data)
    body = join_frames(frames[:-1])
    with pytest.raises(tg.TruncatedTapeError, match="without a footer"):
        tf.loads(body)
    got = loads_quietly(body, recover=True)
    assert got.records == tape.records and not got.recovery.complete


def test_zero_filled_tail(tmp_path) -> None:
    tape, data = streamed_bytes(tmp_path)
    _, frames = split_frames(data)
    body = join_frames(frames[:-3])
    for zeros in (1, 7, 8, 100, 5000):
        bad = body + bytes(zeros)
        with pytest.raises(tg.TruncatedTapeError, match="zero-filled tail"):
            tf.loads(bad)
        got = loads_quietly(bad, recover=True)
        assert got.records == tape.records[:len(got.records)]
        assert "zero-filled" in got.recovery.reason


def test_frames_must_start_with_a_header_and_end_with_one_footer() -> None:
    _, frames = split_frames(tf.dumps(tiny_tape()))
    with pytest.raises(tg.TapeFormatError, match="first frame must be the HEAD"):
        tf.loads(join_frames(frames[1:]))
    with pytest.raises(tg.TapeFormatError, match="second HEAD"):
        tf.loads(join_frames([frames[0], *frames]))
    with pytest.raises(tg.TapeFormatError, match="footer counts"):
        tf.loads(join_frames([frames[0], frames[-1]]))  # the footer counts frames that are not there


def test_non_regular_files_are_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(tg.TapeFormatError, match="not a regular file"):
        tf.load_path(fifo)  # opening a FIFO for reading would block without O_NONBLOCK
    if os.path.exists("/dev/zero"):
        with pytest.raises(tg.TapeFormatError, match="not a regular file"):
            tf.load_path("/dev/zero")
    with pytest.raises(IsADirectoryError):
        tf.load_path(tmp_path)
    with pytest.raises(FileNotFoundError):
        tf.load_path(tmp_path / "missing.tape")


def test_an_empty_file_on_disk(tmp_path) -> None:
    path = tmp_path / "empty.tape"
    path.write_bytes(b"")
    for use_mmap in (False, True):
        with pytest.raises(tg.TruncatedTapeError, match="empty"):
            tf.load_path(path, mmap=use_mmap)


def test_crcs_of_pieces_combine_into_the_crc_of_the_whole() -> None:
    """The arithmetic that lets a file be checksummed piece by piece on several threads."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        a = rng.bytes(int(rng.integers(0, 300)))
        b = rng.bytes(int(rng.integers(0, 300)))
        seed = int(rng.integers(0, 2**32))
        assert crc_shift(zlib.crc32(a), crc_shifter(len(b))) ^ zlib.crc32(b) == zlib.crc32(a + b)
        assert crc_shift(seed, crc_shifter(len(b))) ^ zlib.crc32(b) == zlib.crc32(b, seed)
        assert crc_shift(crc_shift(seed, crc_shifter(len(a))), crc_shifter(-len(a))) == seed  # shifts undo


def big_payload_tape() -> Tape:
    tape = Tape("all", {"k": 1})
    tape._add_leaf(0, np.arange(5000, dtype=np.float64), "big", False)  # 40,000 bytes: many small pieces
    tape._add_leaf(1, np.arange(7, dtype=np.int16), "small", False)
    return tape


@pytest.fixture
def small_pieces(monkeypatch) -> int:
    monkeypatch.setattr(sources, "PIECE", 512)
    return 512


def test_files_read_in_pieces_check_every_byte(tmp_path, small_pieces: int) -> None:
    data = tf.dumps(big_payload_tape())
    path = tmp_path / "big.tape"
    path.write_bytes(data)
    assert len(data) > 60 * small_pieces
    for use_fd in (True, False):  # positional reads from two threads, or one file object in order
        with open(path, "rb", buffering=0) as f:
            source = sources.FileSource(f, len(data), True, f.fileno() if use_fd else None)
            assert source.wait(len(data)) and not source.wait(len(data) + 1)
            rng = np.random.default_rng(int(use_fd))
            for _ in range(500):
                lo = int(rng.integers(0, len(data)))
                hi = int(rng.integers(lo, len(data) + 1))
                seed = int(rng.integers(0, 2**32))
                assert source.crc(lo, hi, seed) == zlib.crc32(data[lo:hi], seed), (lo, hi)
            source.close()
    loaded = tf.load_path(path)
    assert loaded.value("big").tolist() == list(range(5000))
    with open(path, "rb") as f:
        assert tf.load(f).value("small").tolist() == list(range(7))
    bad = bytearray(data)
    bad[20_000] ^= 1  # inside the big array, far from the ends of its DATA frame
    path.write_bytes(bytes(bad))
    with pytest.raises(tg.TapeFormatError, match=r"checksum mismatch in frame 1 \(DATA\)"):
        tf.load_path(path)
    with open(path, "rb") as f, pytest.raises(tg.TapeFormatError, match="checksum mismatch"):
        tf.load(f)
    assert tf.load_path(path, verify=False).value("big").tolist() != list(range(5000))
    path.write_bytes(data[:30_000])  # cut inside the DATA frame
    with pytest.raises(tg.TruncatedTapeError):
        tf.load_path(path)
    assert loads_quietly(path.read_bytes(), recover=True).recovery.offset < 30_000


def test_a_mapped_tape_checks_structure_but_never_reads_its_payloads(tmp_path) -> None:
    """docs/FORMAT.md "Validation" and `load_path`: mapping checks every frame's CRC but the
    DATA frames', whose pages it leaves untouched."""
    data = bytearray(tf.dumps(big_payload_tape()))
    _, frames = split_frames(bytes(data))
    data[12 + 12 + len(frames[0][1]) + 8 + 1000] ^= 1  # a byte of the DATA payload
    path = tmp_path / "mapped.tape"
    path.write_bytes(bytes(data))
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch"):
        tf.load_path(path)
    mapped = tf.load_path(path, mmap=True)  # verify=True, but the payload pages are not read
    assert mapped.value("big").tobytes() != np.arange(5000, dtype=np.float64).tobytes()
    data[-10] ^= 1  # inside the footer's payload: structure is always checked
    path.write_bytes(bytes(data))
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch in frame"):
        tf.load_path(path, mmap=True)


def test_a_mapped_file_over_the_size_limit_is_refused(tmp_path) -> None:
    path = tmp_path / "t.tape"
    path.write_bytes(tf.dumps(tiny_tape()))
    with pytest.raises(tg.LimitError, match="max_total_bytes"):
        tf.load_path(path, mmap=True, limits=Limits(max_total_bytes=100))
    assert tf.load_path(path, mmap=True).names == {"x": 0, "y": 3}
    os.chmod(path, 0)
    if os.geteuid() != 0:  # (root reads anything)
        with pytest.raises(PermissionError):
            tf.load_path(path, mmap=True)


def one_run_per_record(tape: Tape, wheres: list[Any], positions: list[int]) -> None:
    """What `Tape._add_sources` must amount to: `_source_run` for each record in turn."""
    for n, where in enumerate(wheres, len(tape._source_pos)):
        tape._source_run(where, n)
    tape._source_pos += positions


def test_sources_added_in_bulk_make_the_runs_of_one_record_at_a_time() -> None:
    rng = np.random.default_rng(7)
    names = ["a.py", "b.py", "c.py"]
    codes = [one_run_per_record.__code__, test_non_regular_files_are_refused_without_blocking.__code__,
             test_an_empty_file_on_disk.__code__]
    sizes = set()
    for trial in range(80):
        bulk, reference = Tape(), Tape()
        for _ in range(3):  # later batches continue the runs of earlier ones
            kinds = names if trial % 2 else codes
            picks = rng.integers(0, len(kinds), int(rng.integers(0, 12)))
            lengths = rng.integers(1, 30, len(picks))
            wheres = [kinds[k] for k, n in zip(picks.tolist(), lengths.tolist(), strict=True) for _ in range(n)]
            if trial % 2:  # equal file names that are different objects
                wheres = ["".join(list(w)) if rng.random() < 0.3 else w for w in wheres]
            positions = list(range(len(wheres)))
            sizes.add(len(wheres) > 32)
            column = np.fromiter(wheres, dtype=object, count=len(wheres))  # as the loader passes them
            bulk._add_sources(column if trial % 3 else wheres, positions)
            one_run_per_record(reference, wheres, positions)
            assert bulk._source_runs == reference._source_runs
            assert [id(w) for _, w in bulk._source_runs] == [id(w) for _, w in reference._source_runs]
            assert bulk._source_last is reference._source_last and bulk._source_pos == reference._source_pos
    assert sizes == {False, True}  # (batches both under and over the size where numpy finds the changes)


def test_a_big_frame_of_many_parts_is_written_in_bounded_pieces() -> None:
    """Parts smaller than a write batch are gathered into writes of about `_BATCH` bytes, never
    into one buffer as large as the frame (which grew by reallocation: saving 200 arrays of
    800 KB took 3.6x longer)."""
    written: list[bytes] = []

    class Recording(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            written.append(bytes(data))
            return len(written[-1])

    parts = [np.full(600_000, k, dtype=np.uint8) for k in range(12)]  # 7.2 MB: over _BIG
    total = sum(p.nbytes for p in parts)
    assert total >= _BIG and parts[0].nbytes < _BATCH
    writer = FrameWriter(Recording())
    writer.frame(b"DATA", parts, total)
    writer.commit()
    assert max(map(len, written)) < 2 * _BATCH
    frame = b"".join(written)
    assert frame[8:-4] == b"".join(p.tobytes() for p in parts)
    assert struct.unpack("<I", frame[-4:])[0] == zlib.crc32(frame[:-4])  # (the chain starts from 0 here)


def test_big_payloads_checksummed_in_pieces_on_two_threads_give_the_bytes_of_one_pass(monkeypatch) -> None:
    """A payload of `_BIG` bytes or more is checksummed piece by piece by two threads, each piece
    written after its checksum: the frames are byte for byte those of a single pass, whatever the
    parts and wherever pieces cut them."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        parts = [rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8) for _ in range(int(rng.integers(1, 9)))]
        total = sum(p.nbytes for p in parts)
        frames = {}
        for big, piece in ((1 << 40, 1), (1, int(rng.integers(1, 700)))):  # (one pass; pieces)
            monkeypatch.setattr(frames_module, "_BIG", big)
            monkeypatch.setattr(frames_module, "_PIECE", piece)
            out = io.BytesIO()
            writer = FrameWriter(out)
            writer.frame(b"HEAD", [b"x"], 1)
            writer.frame(b"DATA", parts, total)
            writer.commit()
            frames[big] = out.getvalue()
        assert frames[1] == frames[1 << 40], trial


def test_a_failing_write_of_a_big_payload_stops_its_checksum_thread(monkeypatch) -> None:
    monkeypatch.setattr(frames_module, "_PIECE", 1 << 16)

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    before = threading.active_count()
    writer = FrameWriter(Full())
    with pytest.raises(OSError, match="No space"):
        writer.frame(b"DATA", [np.zeros(_BIG + 5, dtype=np.uint8)], _BIG + 5)
    assert threading.active_count() == before
