"""A loaded tape's values (`tape_format.stored.StoredValues`): arrays made when read, read-only,
and loading a tape of many tiny values within 3x its file size."""

from __future__ import annotations

import sys
import tracemalloc
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import tape_format as tf
from tapegrad.tape_format.stored import StoredValues


def chain(records: int, *, source: bool = True) -> tg.Tape:
    """The tape of benchmarks/inspect_cli.py: mul/tanh/add on shape-(2,) float64 values."""
    with tg.record(source=source) as tape:
        x = tg.Variable(np.ones(2), name="x")
        c = tg.Variable(np.full(2, 0.5), name="c")
        for k in range(records):
            x = x * c if k % 3 == 0 else tg.tanh(x) if k % 3 == 1 else x + c
        x.name = "out"
    return tape


def test_loading_many_tiny_values_peaks_under_3x_the_file_size() -> None:
    data = tf.dumps(chain(100_000))
    tracemalloc.start()
    try:
        tape = tf.loads(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(tape) == 100_000
    assert peak < 3 * len(data), f"loading peaked at {peak / len(data):.2f}x the file size"


def test_no_array_is_made_before_a_value_is_read() -> None:
    tape = tf.loads(tf.dumps(chain(300)))
    values = tape.parts().values
    assert isinstance(values, StoredValues)
    (view,) = values._views  # one type, (2,) float64: every value read is a row of this view
    made = sys.getrefcount(view)  # (the list's reference, `view` and the call's own)
    assert made == 3  # loading made no array of a value (and keeps none)
    assert len(values) == 302 and 5 in values and 10_000 not in values and -1 not in values
    assert made == sys.getrefcount(view)  # (nor do `in` and `len`)
    held = [values[vid] for vid in range(0, 302, 3)] + [tape.value(7)]
    assert sys.getrefcount(view) == made + len(held)  # one array per read, none kept by the mapping
    del held
    assert sys.getrefcount(view) == made


@pytest.mark.parametrize("how", ["bytes", "path", "mmap"])
def test_values_made_on_read_are_read_only_views_equal_to_the_recording(how: str, tmp_path: Any) -> None:
    recorded = chain(30)
    path = tmp_path / "t.tape"
    recorded.save(path)
    loaded = tf.loads(path.read_bytes()) if how == "bytes" else tf.load_path(path, mmap=how == "mmap")
    values = loaded.parts().values
    for vid in loaded.ids_in_order():
        a, b = values[vid], values[vid]
        assert a is not b and not a.flags.writeable and not b.flags.writeable
        with pytest.raises(ValueError):
            a[...] = 0
        with pytest.raises(ValueError):
            a.flags.writeable = True
        np.testing.assert_array_equal(a, recorded.value(vid))
        assert loaded.shape_dtype(vid) == (a.shape, a.dtype)
    assert dict(values.typed_items()) == {vid: loaded.shape_dtype(vid) for vid in loaded.ids_in_order()}
    with pytest.raises(tg.TapegradError, match="read-only"):
        values[0] = np.zeros(2)
    with pytest.raises(tg.TapegradError, match="read-only"):
        del values[0]


@pytest.mark.parametrize("ids", [[0, 1, 2, 5], [3, 7, 5_000_000, 4_000_000_000]])  # compact, then wide gaps
def test_lookups_by_any_id(ids: list[int]) -> None:
    buf = memoryview(bytearray(64 * (len(ids) + 1)))
    buf[64:72] = np.float64(1.5).tobytes()
    table = [((), np.dtype(np.float64)), ((0,), np.dtype(np.int32))]
    copies = {len(ids) - 1: np.array([7, 8], dtype=np.int64)}
    stored = StoredValues(np.array(ids), np.array([64, 128, 0, -1][:len(ids)]), np.array([0, 0, 1, 0]), table,
                          buf, copies)
    assert list(stored) == ids and len(stored) == 4
    assert list(stored.typed_items()) == [(vid, stored.shape_dtype(vid)) for vid in ids]  # (the bulk form)
    assert stored[ids[0]] == 1.5 and stored[np.int64(ids[0])] == 1.5 and not stored[ids[0]].flags.writeable
    assert stored[ids[2]].shape == (0,) and stored.shape_dtype(ids[2]) == ((0,), np.dtype(np.int32))
    assert np.shares_memory(stored[ids[3]], copies[len(ids) - 1]) and stored[ids[3]] is not copies[len(ids) - 1]
    for missing in (-1, 4, 10**12, "x", None):
        assert missing not in stored and stored.get(missing) is None and stored.shape_dtype(4) is None
        with pytest.raises(KeyError):
            stored[missing]


def test_a_loaded_tape_saves_replays_and_inspects_as_before() -> None:
    recorded = chain(60)
    loaded = tf.loads(tf.dumps(recorded))
    assert tf.dumps(loaded) == tf.dumps(recorded)
    assert str(loaded) == str(recorded)
    grads = tg.replay.backward(loaded, of="out", wrt=["x", "c"])
    want = tg.replay.backward(recorded, of="out", wrt=["x", "c"])
    for name in ("x", "c"):
        np.testing.assert_array_equal(grads[name], want[name])
