"""The tape format's API: exact round trips, determinism, pinned bytes, modes, files and streams."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tapegrad as tg
from op_cases import op_tape
from tape_bytes import edit_frame, join_frames, pack, payload_of, preamble, split_frames, tiny_tape
from tapegrad import tape_format as tf
from tapegrad.dtypes import DTYPES
from tapegrad.ops import REGISTRY
from tapegrad.tape import Tape
from tapegrad.tape_format import columns, writer
from tapegrad.tape_format.limits import DEFAULT_LIMITS
from tapegrad.tape_format.stream import StreamWriter


def same_tape(a: Tape, b: Tape, values: bool = True) -> None:
    """Everything observable about two tapes is equal, stored arrays bit for bit."""
    assert a.records == b.records
    assert [dict(r.attrs) for r in a.records] == [dict(r.attrs) for r in b.records]
    for ra, rb in zip(a.records, b.records, strict=True):  # bools stay bools, ints stay ints
        assert [type(v) for v in ra.attrs.values()] == [type(v) for v in rb.attrs.values()]
    assert dict(a.names) == dict(b.names)
    assert a.inputs == b.inputs
    assert a.values_mode == b.values_mode
    assert a.metadata == b.metadata
    da, db = a.dense_ids(), b.dense_ids()
    assert {da[v] for v in a._consts} == {db[v] for v in b._consts}
    for vid in a.ids_in_order():
        assert a.shape_dtype(vid) == b.shape_dtype(b.ids_in_order()[da[vid]])
    if values:
        for vid, value in a._values.items():
            other = b._values[b.ids_in_order()[da[vid]]]
            assert other.dtype == value.dtype and other.shape == value.shape
            assert other.tobytes() == value.tobytes()


def test_exact_bytes_of_a_tiny_tape() -> None:
    """The format cannot drift by accident: docs/FORMAT.md section 17 dissects these bytes."""
    data = tf.dumps(tiny_tape())
    assert len(data) == 773
    assert data[:16].hex() == "8954415045" "0d0a1a" "01000000" "48454144"
    assert hashlib.sha256(data).hexdigest() == "7617046fd0f0bc24ed5e67f546ec88ebe51f82e65f3698b8f35ab6e1c62ad69a"


def test_round_trip_of_the_tiny_tape_and_its_listing() -> None:
    tape = tiny_tape()
    loaded = tf.loads(tf.dumps(tape))
    same_tape(tape, loaded)
    assert str(loaded) == str(tape)
    assert loaded.recovery is None


@pytest.mark.parametrize("mode", ["all", "inputs", "none"])
def test_round_trip_in_every_values_mode(mode: str) -> None:
    with tg.record(values=mode, metadata={"run": 7, "tags": ["a", "b"], "lr": 0.5, "ok": True}) as tape:
        w = tg.Variable(np.linspace(-1.0, 1.0, 6).reshape(3, 2), name="w")
        x = tg.Variable(np.arange(6.0).reshape(2, 3) / 6.0, name="x")
        k = tg.Variable(np.array([1, 2], dtype=np.int32), name="k")
        loss = tg.sum(tg.tanh(x @ w) * 2.0 * k, axis=(0, 1), keepdims=False)
        loss.name = "loss"
    loaded = tf.loads(tf.dumps(tape))
    assert loaded.values_mode == mode
    same_tape(tape, loaded, values=False)
    leaves = set(loaded._leaves)
    stored = set(loaded._values)
    assert stored == {"all": set(loaded.ids_in_order()), "inputs": leaves, "none": set()}[mode]
    for vid in stored:  # what is stored is stored exactly
        assert loaded._values[vid].tobytes() == tape._values[tape.ids_in_order()[vid]].tobytes()
    assert loaded.metadata == {"run": 7, "tags": ["a", "b"], "lr": 0.5, "ok": True}
    if mode == "inputs":  # replay recomputes what was not stored
        got = tg.replay.backward(loaded, of="loss", wrt=["w", "x"], inputs={})
        want = tg.replay.backward(tape, of="loss", wrt=["w", "x"])
        assert all(got[n].tobytes() == want[n].tobytes() for n in want)


def test_dump_is_deterministic_and_redumps_identically(record_readme) -> None:
    first, second = record_readme().tape, record_readme().tape
    data = tf.dumps(first)
    assert tf.dumps(second) == data  # same recording, same bytes
    assert tf.dumps(first) == data
    assert tf.dumps(tf.loads(data)) == data  # a loaded tape writes back byte for byte


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_registry_op_round_trips_and_replays_bit_for_bit(op: str) -> None:
    tape = op_tape(op)
    assert op in {r.op for r in tape.records}
    loaded = tf.loads(tf.dumps(tape))
    same_tape(tape, loaded)
    assert str(loaded) == str(tape)
    wrt = [name for name in tape.names if name != "out" and tape.var(name).dtype.kind == "f"]
    assert wrt
    want = tg.replay.backward(tape, of="out", wrt=wrt)
    got = tg.replay.backward(loaded, of="out", wrt=wrt)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes()


def test_mlp_eager_gradients_equal_file_replay_bit_for_bit(tmp_path) -> None:
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((4, 8)), "b1": rng.standard_normal(8),
              "w2": rng.standard_normal((8, 3)), "b2": rng.standard_normal(3)}
    xs, labels = rng.standard_normal((5, 4)), np.array([0, 2, 1, 1, 0])

    def loss_of(vs: dict[str, tg.Variable]) -> tg.Variable:
        h = tg.tanh(tg.Variable(xs, name="xs") @ vs["w1"] + vs["b1"])
        logits = h @ vs["w2"] + vs["b2"]
        picked = tg.log_softmax(logits, axis=1)[np.arange(5), labels]
        return -tg.mean(picked)

    eager = {n: tg.Variable(p.copy(), name=n) for n, p in params.items()}
    loss_of(eager).backward()
    with tg.record() as tape:
        vs = {n: tg.Variable(p.copy(), name=n) for n, p in params.items()}
        loss = loss_of(vs)
        loss.name = "loss"
    path = tmp_path / "mlp.tape"
    tf.save(tape, path)
    for loaded in (tf.load_path(path), tf.load_path(path, mmap=True)):
        got = tg.replay.backward(loaded, of="loss", wrt=list(params))
        for name, v in eager.items():
            assert got[name].tobytes() == v.grad.tobytes()


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_exactly(name: str) -> None:
    dt = DTYPES[name]
    if dt.kind == "f":
        values = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, np.finfo(dt).max, np.finfo(dt).tiny], dtype=dt)
    elif dt.kind == "b":
        values = np.array([True, False, True])
    else:
        info = np.iinfo(dt)
        values = np.array([info.min, info.max, 0, 1], dtype=dt)
    tape = Tape("all")
    tape._add_leaf(0, values, "v", False)
    loaded = tf.loads(tf.dumps(tape))
    assert loaded.value("v").dtype == dt and loaded.value("v").tobytes() == values.tobytes()


def test_big_endian_and_non_contiguous_values_are_stored_as_little_endian_c_order() -> None:
    tape = Tape("all")
    tape._add_leaf(0, np.arange(6, dtype=">f8").reshape(2, 3), "be", False)
    tape._add_leaf(1, np.arange(12.0).reshape(3, 4)[:, ::2], "strided", False)
    loaded = tf.loads(tf.dumps(tape))
    assert loaded.value("be").dtype == np.dtype("<f8")
    assert (loaded.value("be") == np.arange(6.0).reshape(2, 3)).all()
    assert (loaded.value("strided") == np.arange(12.0).reshape(3, 4)[:, ::2]).all()


@pytest.mark.parametrize("arrays", [
    [np.arange(12.0).reshape(3, 4)[:, ::2], np.arange(3.0)],  # small values: packed, one not contiguous
    [np.arange(5, dtype=np.int8), np.zeros(0), np.arange(7.0), np.array(2.5)],  # packed, of mixed sizes
    [np.arange(3.0), np.arange(2000.0), np.arange(5.0)[::-1], np.ones((2, 3), np.float32)],  # one too big to pack
    [np.zeros((0,)), np.zeros((3, 0, 2), np.float32), np.array(5.0), np.array(True),  # zero-size, 0-d, special
     np.array([np.nan, np.inf, -np.inf]), np.zeros((0,), np.int8)],
])
def test_values_of_any_size_and_layout_round_trip_at_aligned_offsets(arrays: list[np.ndarray]) -> None:
    tape = Tape("all")
    for k, a in enumerate(arrays):
        tape._add_leaf(k, a, f"a{k}", False)
    loaded = tf.loads(tf.dumps(tape))
    got = [loaded.value(f"a{k}") for k in range(len(arrays))]
    for a, b in zip(arrays, got, strict=True):
        assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == a.tobytes()
    assert len({b.ctypes.data % 64 for b in got if b.size}) == 1  # all at one alignment (64 in a file)


def test_loaded_arrays_are_read_only_zero_copy_and_aligned(tmp_path) -> None:
    tape = tiny_tape()
    tape._add_leaf(4, np.arange(1000, dtype=np.float32), "big", False)
    path = tmp_path / "t.tape"
    tf.save(tape, path)
    for loaded in (tf.load_path(path), tf.load_path(path, mmap=True), tf.loads(path.read_bytes())):
        arrays = list(loaded._values.values())
        for a in arrays:
            assert not a.flags.writeable
            with pytest.raises(ValueError):
                a.flags.writeable = True  # the buffer itself is read-only
            with pytest.raises(ValueError):
                a[...] = 0
        big = loaded._values[loaded.resolve("big")]
        assert big.base is not None  # a view of the tape's bytes, not a copy
        if not isinstance(loaded, bytes):
            assert big.ctypes.data % 16 == 0
    loaded = tf.load_path(path)
    assert all(a.ctypes.data % 64 == 0 for a in loaded._values.values() if a.size)


def test_a_loaded_array_copied_and_mutated_by_the_caller_changes_nothing_else() -> None:
    data = tf.dumps(tiny_tape())
    loaded = tf.loads(data)
    x = loaded.value("x").copy()
    x[...] = 100.0
    assert (loaded.value("x") == [1.0, 2.0]).all()
    assert tf.dumps(loaded) == data
    grads = tg.replay.backward(loaded, of="y", wrt=["x"])
    grads["x"][...] = -1.0  # gradients are the caller's own arrays
    assert tg.replay.backward(loaded, of="y", wrt=["x"])["x"].tolist() == [3.0, 3.0]


def owner(arr: np.ndarray) -> Any:
    """The object owning `arr`'s memory: the buffer a tape was read into, or its mmap."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr if arr.base is None else arr.base


def big_tapes() -> list[Tape]:
    """Tapes whose arrays are larger than 256 bytes (a lowered frame size), built and recorded."""
    tape = Tape("all")
    big = np.arange(300, dtype=np.float64)  # 2400 bytes
    tape._add_leaf(0, big, "big", False)
    tape._add_leaf(1, np.arange(7, dtype=np.int16), "small", False)
    tape._add_leaf(2, np.arange(25, dtype=np.float64), "fits", False)  # 200 bytes: the next one does not fit
    tape._add_leaf(3, np.arange(25, dtype=np.float64) + 1, "fits2", False)
    tape._add_leaf(4, np.zeros((0, 3)), "empty", False)
    with tg.record() as rec:
        v = tg.Variable(big.copy(), name="v")
        s = tg.sum(v * v)
        s.name = "s"
    return [tape, rec]


def test_arrays_larger_than_a_frame_may_be_are_split_and_reassembled(monkeypatch) -> None:
    """What tapegrad writes for arrays over 4 GiB (and wrote for arrays crossing a 1 GiB frame before):
    "chunks" pieces in several DATA frames, copied together when loaded."""
    monkeypatch.setattr(writer, "CHUNK_BYTES", 256)
    monkeypatch.setattr(writer, "DATA_FRAME_LIMIT", 256)
    for t in big_tapes():
        data = tf.dumps(t)
        frames = split_frames(data)[1]
        assert sum(tag == b"DATA" for tag, _ in frames) >= 10
        assert all(len(p) <= 256 for tag, p in frames if tag == b"DATA")
        assert any(b"chunks" in p for tag, p in frames if tag in (b"VARS", b"RECS"))
        loaded = tf.loads(data)
        same_tape(t, loaded)
        for a in loaded._values.values():
            assert not a.flags.writeable
    rec = big_tapes()[1]
    assert tg.replay.backward(tf.loads(tf.dumps(rec)), of="s")["v"].tobytes() == (2 * rec.value("v")).tobytes()


def test_arrays_are_never_split_while_a_frame_can_hold_them(monkeypatch, tmp_path) -> None:
    """An array larger than CHUNK_BYTES gets a DATA frame of its own, one that does not fit in
    what remains of a frame starts a new one: every array is one range of the file, so a mapped
    load maps every one of them (nothing is read or copied when opening) and a read load makes
    views of the one buffer it read."""
    monkeypatch.setattr(writer, "CHUNK_BYTES", 256)
    for t in big_tapes():
        path = tmp_path / "t.tape"
        tf.save(t, path, fsync=False)
        data = path.read_bytes()
        frames = split_frames(data)[1]
        assert not any(b"chunks" in p for tag, p in frames if tag in (b"VARS", b"RECS"))
        sizes = [len(p) for tag, p in frames if tag == b"DATA"]
        assert max(sizes) > 2400 and len(sizes) >= 2  # the big array's own frame, and the others'
        for mapped in (True, False):
            loaded = tf.load_path(path, mmap=mapped)
            same_tape(t, loaded)
            owners = {id(owner(a)): owner(a) for a in loaded._values.values() if a.size}
            assert len(owners) == 1  # every stored array is a view of the tape's bytes
            (buf,) = owners.values()
            assert isinstance(buf, mmap.mmap) if mapped else isinstance(buf, np.ndarray) and buf.nbytes >= len(data)
    assert tg.replay.backward(tf.load_path(path, mmap=True), of="s")["v"].tobytes() == \
        (2 * t.value("v")).tobytes()
    streamed = tmp_path / "s.tape"  # (the streaming writer lays out its batches the same way)
    with tg.record(path=streamed, flush_every=2):
        v = tg.Variable(np.arange(300, dtype=np.float64), name="v")
        for _ in range(5):
            v = tg.sin(v) * 2.0
    frames = split_frames(streamed.read_bytes())[1]
    assert not any(b"chunks" in p for tag, p in frames if tag in (b"VARS", b"RECS"))
    loaded = tf.load_path(streamed, mmap=True)
    assert all(isinstance(owner(a), mmap.mmap) for a in loaded._values.values())


def test_old_files_with_split_arrays_still_load_and_map(monkeypatch, tmp_path) -> None:
    """Files whose arrays were split at 1 GiB (as tapegrad wrote them before arrays got frames of
    their own) load, mapped or not: their split arrays are copied, the others mapped."""
    monkeypatch.setattr(writer, "CHUNK_BYTES", 256)
    monkeypatch.setattr(writer, "DATA_FRAME_LIMIT", 256)
    tape = big_tapes()[0]
    path = tmp_path / "old.tape"
    tf.save(tape, path, fsync=False)
    loaded = tf.load_path(path, mmap=True)
    same_tape(tape, loaded)
    assert not isinstance(owner(loaded.value("big")), mmap.mmap)  # (copied together)
    assert isinstance(owner(loaded.value("small")), mmap.mmap)


def test_save_load_path_and_file_objects(tmp_path) -> None:
    tape = tiny_tape()
    path = tmp_path / "sub" / "t.tape"
    path.parent.mkdir()
    tf.save(tape, path)
    tf.save(tape, str(path))  # overwrite, str path
    assert path.read_bytes() == tf.dumps(tape)
    same_tape(tape, tf.load_path(path))
    with open(path, "rb") as f:
        same_tape(tape, tf.load(f))
    same_tape(tape, tf.load(io.BytesIO(tf.dumps(tape))))
    same_tape(tape, tf.loads(bytearray(tf.dumps(tape))))
    same_tape(tape, tf.loads(memoryview(tf.dumps(tape))))
    assert os.listdir(path.parent) == ["t.tape"]  # no temporary files left
    buf = io.BytesIO(b"prefix")
    buf.seek(0, io.SEEK_END)
    tf.dump(tape, buf)  # offsets are relative to the tape's own start
    buf.seek(6)
    same_tape(tape, tf.load(buf))


def test_load_from_a_pipe_reads_everything(tmp_path) -> None:
    data = tf.dumps(tiny_tape())
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        same_tape(tiny_tape(), tf.load(f))


def test_streamed_recording_loads_as_the_recorded_tape(tmp_path) -> None:
    path = tmp_path / "stream.tape"
    with tg.record(path=path, flush_every=3) as tape:
        x = tg.Variable(np.array([0.5, 1.5]), name="x")
        y = x
        for k in range(10):
            y = tg.sin(y) * 1.5 if k % 2 else tg.exp(y) - x
        y.name = "late"  # a name given after the record was flushed
        x.name = "renamed"  # a leaf renamed after it was flushed
    loaded = tf.load_path(path)
    assert loaded.recovery is None
    same_tape(tape, loaded)
    assert str(loaded) == str(tape)
    assert tf.dumps(loaded) == tf.dumps(tape)  # the same tape as a one-shot dump


def test_streams_with_gaps_in_ids_and_late_leaves_load_as_recorded(tmp_path) -> None:
    w = tg.Variable(np.array([2.0, 3.0]), name="w")  # made before the block: it enters the tape late
    path = tmp_path / "gaps.tape"
    with tg.record(path=path, flush_every=4) as tape:
        x = tg.Variable(np.array([0.5, 1.5]), name="x")
        y = x
        for k in range(30):
            y = tg.sin(y) if k % 3 else y * 2.0
            if k % 7 == 0:
                tg.Variable(np.zeros(2))  # an id that no record uses: a gap
                with tg.no_record():
                    tg.exp(y)  # ids made outside the tape: more gaps
            if k == 20:
                y = y * w
        y.name = "y"
    loaded = tf.load_path(path)
    assert len(loaded) == len(tape)
    assert [r.op for r in loaded.records] == [r.op for r in tape.records]
    assert np.array_equal(loaded.value("y"), y.data) and np.array_equal(loaded.value("w"), w.data)
    assert np.array_equal(tg.replay.forward(loaded)["y"], y.data)
    same_tape(loaded, tf.loads(tf.dumps(loaded)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.TapeRecoveryWarning)
        cut = tf.loads(path.read_bytes()[:-200], recover=True)  # a prefix of whole batches
    assert [r.op for r in cut.records] == [r.op for r in tape.records][:len(cut)]


def test_batches_of_mixed_types_and_sources_stream_exactly(tmp_path) -> None:
    path = tmp_path / "mixed.tape"
    with tg.record(path=path, flush_every=5) as tape:
        a = tg.Variable(np.arange(6.0).reshape(2, 3), name="a")
        b = tg.Variable(np.float32(1.5) * np.ones(3, np.float32), name="b")
        for _ in range(4):
            s = tg.sum(a, axis=0)  # (3,) float64, with attributes
            t = tg.sum(s)  # () float64
            u = b * 2.0  # (3,) float32
            a = a + t * s  # (2, 3)
            b = tg.sin(u) - b
    loaded = tf.load_path(path)
    same_tape(tape, loaded)
    assert [loaded.source_of(n) for n in range(len(loaded))] == [tape.source_of(n) for n in range(len(tape))]


_STEP = st.one_of(
    st.tuples(st.just("leaf"), st.sampled_from([(), (3,), (2, 3)]), st.sampled_from(["float64", "float32"]),
              st.booleans()),
    st.tuples(st.just("unary"), st.sampled_from([tg.sin, tg.exp, tg.tanh, tg.neg]), st.integers(0, 99)),
    st.tuples(st.just("binary"), st.sampled_from(["+", "*", "-"]), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("sum"), st.integers(0, 99), st.booleans()),
    st.tuples(st.just("concatenate"), st.integers(0, 99), st.integers(1, 12)),
    st.tuples(st.just("name"), st.integers(0, 99), st.booleans()),
    st.tuples(st.just("gap"), st.integers(0, 99)),
)


def _run_program(steps: list[tuple[Any, ...]]) -> None:
    """Interpret `steps` on a pool of Variables (indices wrap around the pool)."""
    pool = [tg.Variable(np.linspace(0.1, 0.6, 6).reshape(2, 3), name="start")]
    for k, (kind, *args) in enumerate(steps):
        if kind == "leaf":
            shape, dtype, const = args
            value = np.full(shape, 0.5 + k / 10, dtype=dtype)
            pool.append(pool[k % len(pool)] * value if const else tg.Variable(value))  # a constant, or an input
        elif kind == "unary":
            pool.append(args[0](pool[args[1] % len(pool)]))
        elif kind == "binary":
            a, b = pool[args[1] % len(pool)], pool[args[2] % len(pool)]
            pool.append(a + b if args[0] == "+" else a * b if args[0] == "*" else a - b)
        elif kind == "sum":
            v = pool[args[0] % len(pool)]
            pool.append(tg.sum(v, axis=0) if args[1] and v.ndim else tg.sum(v))
        elif kind == "concatenate":  # a record with up to 12 inputs, wider than the writer's columns
            v = tg.reshape(pool[args[0] % len(pool)], (-1,))
            pool.append(tg.sum(tg.concatenate([v] * args[1], axis=0)))
        elif kind == "name":
            pool[args[0] % len(pool)].name = f"n{k}" if args[1] else None
        else:  # a leaf that no record uses, and ids made outside the tape: gaps in the internal ids
            tg.Variable(np.zeros(2))
            with tg.no_record():
                tg.exp(pool[args[0] % len(pool)])


@given(steps=st.lists(_STEP, max_size=30), flush_every=st.sampled_from([1, 2, 3, 7, 256]),
       mode=st.sampled_from(["all", "inputs", "none"]), cut=st.floats(0.0, 1.0))
def test_random_programs_stream_as_they_dump(steps: list[tuple[Any, ...]], flush_every: int, mode: str,
                                               cut: float) -> None:
    """Streaming in batches of any size writes the tape that a one-shot dump writes, and a
    stream cut anywhere after its header recovers a prefix of its records."""
    with tempfile.TemporaryDirectory() as folder, np.errstate(all="ignore"):
        path = os.path.join(folder, "run.tape")
        with tg.record(path=path, flush_every=flush_every, values=mode) as tape:
            _run_program(steps)
        loaded = tf.load_path(path)
        same_tape(tf.loads(tf.dumps(tape)), loaded)
        assert tf.dumps(loaded) == tf.dumps(tape)
        data = Path(path).read_bytes()
    head_end = 24 + int.from_bytes(data[16:20], "little")  # preamble, then the HEAD frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.TapeRecoveryWarning)
        prefix = tf.loads(data[:head_end + int(cut * (len(data) - head_end))], recover=True)
    assert prefix.records == loaded.records[:len(prefix)]


@pytest.mark.parametrize("mode", ["all", "inputs", "none"])
def test_streaming_in_every_values_mode(tmp_path, mode: str) -> None:
    path = tmp_path / f"{mode}.tape"
    with tg.record(values=mode, path=path, flush_every=2, metadata={"m": mode}) as tape:
        a = tg.Variable(np.ones((2, 2)), name="a")
        b = tg.sum(a @ a + 1.0, axis=0)
        b.name = "b"
    same_tape(tf.loads(tf.dumps(tape)), tf.load_path(path), values=True)


def test_a_stream_is_closed_with_a_footer_when_the_block_raises(tmp_path) -> None:
    path = tmp_path / "raised.tape"
    with pytest.raises(ZeroDivisionError), tg.record(path=path) as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        tg.exp(x)
        raise ZeroDivisionError
    same_tape(tape, tf.load_path(path))


def test_stream_writer_used_directly(tmp_path) -> None:
    tape = tiny_tape()  # a sink attached to a tape that already has content writes it first
    sink = StreamWriter(tmp_path / "w.tape", tape, flush_every=1)
    sink.close()
    sink.close()  # idempotent
    same_tape(tape, tf.load_path(tmp_path / "w.tape"))
    with pytest.raises(tg.TapegradError):
        StreamWriter(tmp_path / "bad.tape", tape, flush_every=0)


@given(st.lists(st.lists(st.integers(0, 60), max_size=12), max_size=8))
def test_dense_ids_given_out_in_batches_match_a_plain_mapping(batches: list[list[int]]) -> None:
    """`DenseIds` (runs of consecutive ids) against a dict filled batch by batch, as a stream
    numbers its variables: each batch's new ids get the next dense ids in increasing order."""
    dense = columns.DenseIds()
    reference: dict[int, int] = {}
    for batch in batches:
        new = sorted(set(batch) - reference.keys())
        reference.update(zip(new, range(len(reference), len(reference) + len(new)), strict=True))
        dense.add(np.array(new, dtype=np.int64))
        known = np.array(sorted(reference), dtype=np.int64)
        assert dense(known).tolist() == [reference[v] for v in known.tolist()]
        probe = np.arange(-2, 64, dtype=np.int64)
        found, ok = dense.find(probe)
        assert ok.tolist() == [v in reference for v in probe.tolist()]
        assert found[ok].tolist() == [reference[v] for v in probe[ok].tolist()]


def test_names_of_variables_not_on_the_tape_are_not_written() -> None:
    for tape in (tiny_tape(), Tape("all")):  # (the empty tape has no ids at all)
        kept = dict(tape._names)
        tape._names[10**6] = "ghost"
        loaded = tf.loads(tf.dumps(tape))
        assert dict(loaded.names) == {name: tape.dense_ids()[vid] for vid, name in kept.items()}


def test_unstorable_tapes_are_refused_when_writing() -> None:
    tape = tiny_tape()
    tape.metadata["when"] = object()
    with pytest.raises(tg.TapegradError, match="metadata"):
        tf.dumps(tape)
    tape = tiny_tape()
    tape._records[1] = ("sum", {"axis": None, "keepdims": np.bool_(False)}, 3, 2)
    with pytest.raises(tg.TapegradError, match="plain data"):
        tf.dumps(tape)
    tape = tiny_tape()
    tape._records[1] = ("sum", None)
    with pytest.raises(tg.TapegradError, match="cannot store record 1"):
        tf.dumps(tape)
    tape = tiny_tape()
    tape._records[1] = ("sum", {"axis": {0: 1}, "keepdims": False}, 3, 2)  # unhashable: no table key
    with pytest.raises(tg.TapegradError, match=r"attributes of record 1: .*plain data"):
        tf.dumps(tape)
    for bad, message in [("2", "not 64-bit integers"), (2**70, "not 64-bit integers"), (99, "variable 99")]:
        tape = tiny_tape()
        tape._records[1] = ("sum", {"axis": None, "keepdims": False}, 3, bad)
        with pytest.raises(tg.TapegradError, match=message):
            tf.dumps(tape)
    tape = Tape("all")
    tape._add_leaf(0, np.array(["a"]), None, False)
    with pytest.raises(tg.TapegradError, match="dtype"):
        tf.dumps(tape)
    tape = Tape("all")
    tape._add_leaf(0, np.zeros(2, np.complex128), None, False)
    with pytest.raises(tg.TapegradError, match="dtype"):
        tf.dumps(tape)


@pytest.mark.parametrize("chunk", [2, 1 << 16])
def test_records_of_many_inputs_keep_their_inputs_in_order(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer reads records as columns of their first few items (`_NARROW`), `_CHUNK`
    records at a time; inputs past those items are spliced back after each long record's first
    ones, among short records."""
    monkeypatch.setattr(columns, "_CHUNK", chunk)
    with tg.record() as tape:
        xs = [tg.Variable(np.full(2, float(i))) for i in range(12)]
        a = xs[0] + xs[1]
        tg.sin(tg.concatenate([*xs[:11], a], axis=0))
        tg.stack(xs[3:12], axis=0)
        tg.concatenate([a] * 8 + [xs[2]], axis=0) * tg.concatenate([a] * 9, axis=0)
    arities = [len(r.inputs) for r in tape.records]
    assert max(arities) + 3 > columns._NARROW and min(arities) + 3 <= columns._NARROW
    loaded = tf.loads(tf.dumps(tape))
    assert [(r.op, r.inputs) for r in loaded.records] == [(r.op, r.inputs) for r in tape.records]
    tape._records[1] = (*tape._records[1][:-1], "12")  # a string among the inputs past the columns
    with pytest.raises(tg.TapegradError, match="not 64-bit integers"):
        tf.dumps(tape)


def test_strict_and_verify_options() -> None:
    data = bytearray(tf.dumps(tiny_tape()))
    data[64] ^= 1  # one bit of x's payload
    with pytest.raises(tg.TapeFormatError, match="checksum mismatch in frame 1 \\(DATA\\)"):
        tf.loads(bytes(data))
    loaded = tf.loads(bytes(data), verify=False)  # structure still verified, payload not
    assert loaded.value("x")[0] != 1.0


def test_limits_name_the_limit_and_how_to_raise_it() -> None:
    data = tf.dumps(tiny_tape())
    with pytest.raises(tg.LimitError, match=r"max_records=1\b.*Limits\(max_records=\.\.\.\)"):
        tf.loads(data, limits=tf.Limits(max_records=1))
    for name, value in [("max_total_bytes", 100), ("max_frame_bytes", 50), ("max_elements", 1),
                        ("max_variables", 3), ("max_total_elements", 4), ("max_ndim", 0),
                        ("max_array_bytes", 8)]:
        with pytest.raises(tg.LimitError, match=name):
            tf.loads(data, limits=tf.Limits(**{name: value}))
    assert tf.loads(data, limits=DEFAULT_LIMITS.replace(max_records=2)).records
    with pytest.raises(TypeError):
        tf.Limits(max_records=True)


def test_a_newer_minor_version_is_read_and_its_unknown_keys_and_frames_ignored() -> None:
    tape = tiny_tape()
    tape.values_mode = "none"  # no data offsets, so frames can be inserted without moving arrays
    data = tf.dumps(tape)
    pre, frames = split_frames(data)
    head = pack({"values": "none", "metadata": {"note": "tiny"}, "future": [1, 2]})
    foot = pack({"frames": len(frames), "records": 2, "variables": 4, "checksum": "sha3"})
    recs = edit_frame(data, b"RECS", lambda cols: {**cols, "colour": b"red"})
    rec_payload = payload_of(recs, b"RECS")
    frames = [(b"HEAD", head), (b"zzzz", b"an optional frame from the future"),
              *[(t, rec_payload if t == b"RECS" else p) for t, p in frames[1:-1]], (b"FOOT", foot)]
    newer = join_frames(frames, preamble(1, 9))
    same_tape(tape, tf.loads(newer), values=False)
    with pytest.raises(tg.TapeFormatError, match="unknown header key 'future'"):
        tf.loads(join_frames(frames, pre))
    plain_head = split_frames(data)[1][0]
    with pytest.raises(tg.TapeFormatError, match="unknown tag b'zzzz'"):
        tf.loads(join_frames([plain_head, *frames[1:]], pre))
    with pytest.raises(tg.TapeFormatError, match="unknown tag b'ZZZZ'"):  # uppercase: never optional
        tf.loads(join_frames([(t if t != b"zzzz" else b"ZZZZ", p) for t, p in frames], preamble(1, 9)))


def test_a_newer_major_version_is_refused_clearly() -> None:
    data = tf.dumps(tiny_tape())
    _, frames = split_frames(data)
    with pytest.raises(tg.TapeFormatError, match=r"version 2\.0 is newer than this tapegrad.*upgrade"):
        tf.loads(join_frames(frames, preamble(2, 0)))
    with pytest.raises(tg.TapeFormatError, match=r"version 0\.3"):
        tf.loads(join_frames(frames, preamble(0, 3)))


def test_unknown_columns_in_a_current_version_file_are_errors() -> None:
    data = tf.dumps(tiny_tape())
    bad = edit_frame(data, b"RECS", lambda cols: {**cols, "extra": 1})
    with pytest.raises(tg.TapeFormatError, match="unknown RECS column 'extra'"):
        tf.loads(bad)


def test_recovery_of_a_complete_tape_is_none_and_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tf.loads(tf.dumps(tiny_tape()), recover=True).recovery is None


def test_structure_frames_are_split_to_stay_small(monkeypatch) -> None:
    monkeypatch.setattr(writer, "FRAME_TARGET", 2000)
    tape = tiny_tape()
    for k in range(200):
        tape._add_leaf(10 + k, np.array(float(k)), f"leaf-{k:03d}-" + "n" * 40, k % 2 == 0)
    data = tf.dumps(tape)
    frames = split_frames(data)[1]
    assert sum(tag == b"VARS" for tag, _ in frames) > 4
    assert all(len(p) <= 2000 for tag, p in frames if tag != b"DATA")
    same_tape(tape, tf.loads(data))
    huge = tiny_tape()
    huge._names[3] = "y" * (DEFAULT_LIMITS.max_frame_bytes + 1)
    with pytest.raises(tg.TapegradError, match="exceeds the frame limit"):
        tf.dumps(huge)


def test_memory_while_loading_is_bounded(tmp_path) -> None:
    """About the file size for a read (nothing for a map), plus a little per record."""
    tracemalloc = pytest.importorskip("tracemalloc")
    with tg.record() as tape:
        x = tg.Variable(np.zeros(2_500_000), name="x")  # 20 MB
        y = tg.sum(x)
        for _ in range(1000):
            y = tg.sin(y)
    path = tmp_path / "big.tape"
    tf.save(tape, path, fsync=False)
    size = path.stat().st_size
    for use_mmap, bound in ((False, size + 4_000_000), (True, 4_000_000)):
        tracemalloc.start()
        try:
            loaded = tf.load_path(path, mmap=use_mmap)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(loaded) == 1001
        assert peak < bound, (use_mmap, peak, size)
    # a hostile frame of tiny nested arrays: the transient stays within 64 x max_frame_bytes
    limit = 1 << 16
    payload = b"\xdc" + (limit // 3).to_bytes(2, "big") + b"\x91\x91\x90" * (limit // 3)
    hostile = join_frames([(b"HEAD", pack({"values": "none", "metadata": {}})), (b"RECS", payload)])
    tracemalloc.start()
    try:
        with pytest.raises(tg.TapeFormatError):
            tf.loads(hostile, limits=tf.Limits(max_frame_bytes=len(payload)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(payload), peak
