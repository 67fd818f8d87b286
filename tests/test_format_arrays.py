"""Array-level damage: dtypes, shapes, payload references."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tape_bytes import edit_frame, tiny_tape
from tapegrad import tape_format as tf

DATA = tf.dumps(tiny_tape())


def rejects(data: bytes, match: str | None = None, kind: type[Exception] = tg.TapeFormatError) -> None:
    for recover in (False, True):
        with pytest.raises(kind, match=match):
            tf.loads(data, recover=recover)


def with_types(frame: str, first: tuple[object, object]) -> bytes:
    """The tiny tape with the first type of a frame's type table replaced."""
    return edit_frame(DATA, frame.encode(), lambda c: {**c, "types": (first, *c["types"][1:])})


BAD_DTYPES = ["object", "O", "|O", "V8", "void", "<U4", "U4", "S3", "|S3", "str", "datetime64[s]", "M8[s]",
              "timedelta64", ">f8", "<f8", "f8", "float", "int", "float128", "longdouble", "complex128",
              "complex64", "c16", "float64 ", " float64", "Float64", "[('a', 'O')]", "(float64, 2)",
              "float64,float64", "", "bool_", "np.float64", "int64\x00"]


@pytest.mark.parametrize("name", BAD_DTYPES)
def test_disallowed_dtypes(name: str) -> None:
    for frame in ("VARS", "RECS"):
        rejects(with_types(frame, (name, (2,))), "not one of the allowed dtypes")


def test_dtype_must_be_a_string() -> None:
    for value in (12, None, True, b"float64", ("float64",)):
        rejects(with_types("VARS", (value, (2,))), "not one of the allowed dtypes")


@pytest.mark.parametrize("shape, match", [
    ((-1,), "non-negative integers, got -1"),
    ((2, -3), "non-negative integers, got -3"),
    ((2.0,), "got 2.0"),
    ((True,), "got True"),
    (("2",), "got '2'"),
    ((None,), "got None"),
    (((2,),), "got a tuple"),
])
def test_negative_or_non_integer_dims(shape: tuple[object, ...], match: str) -> None:
    rejects(with_types("VARS", ("float64", shape)), match)


def test_too_many_dims() -> None:
    rejects(with_types("VARS", ("float64", (1,) * 33)), "max_ndim=32", tg.LimitError)
    rejects(with_types("VARS", ("float64", (1,) * 65)), "max_ndim", tg.LimitError)
    rejects(with_types("VARS", ("float64", (1,) * 3)), "recorded as float64\\[2\\], but the op produces")


def test_enormous_shapes_hit_a_limit_with_exact_arithmetic() -> None:
    for shape in [(2**40, 2**40), (2**32 + 1,), (2**63, 2**63, 2**63), (65536,) * 3]:
        rejects(with_types("VARS", ("float64", shape)), "max_elements", tg.LimitError)


def test_payload_length_must_equal_size_times_itemsize() -> None:
    # the declared type says 3 elements but the data range holds x's 2 (and what follows)
    rejects(with_types("VARS", ("float64", (3,))), None)
    rejects(with_types("VARS", ("float64", (20,))), "data reference")
    chunked = edit_frame(DATA, b"VARS", lambda c: {**c, "data": np.array([-2, 128], "<i8").tobytes(),
                                                   "chunks": ((0, (64, 8)),)})
    rejects(chunked, "needs 16 bytes, but its chunks cover 8")
    chunked = edit_frame(DATA, b"VARS", lambda c: {**c, "data": np.array([-2, 128], "<i8").tobytes(),
                                                   "chunks": ((0, (64, 8, 72, 8)),)})
    rejects(chunked, "not aligned")
    ok = edit_frame(DATA, b"VARS", lambda c: {**c, "data": np.array([-2, 128], "<i8").tobytes(),
                                              "chunks": ((0, (64, 8, 128, 8)),)})
    assert tf.loads(ok).value("x").tolist() == [1.0, 3.0]  # a legal (if odd) chunking


@pytest.mark.parametrize("offsets, match", [
    ([-1, 128], "data reference -1"),
    ([-3, 128], "data reference -3"),
    ([0, 128], "data reference 0 for 16 bytes"),
    ([32, 128], "data reference 32"),
    ([64 * 1000, 128], "data reference 64000"),
    ([2**62, 128], "data reference"),
    ([128, 64 * 12], "data reference"),  # not inside an earlier DATA frame (the next one comes later)
    ([-2, 128], "chunked"),
])
def test_bad_data_references(offsets: list[int], match: str) -> None:
    rejects(edit_frame(DATA, b"VARS", lambda c: {**c, "data": np.array(offsets, "<i8").tobytes()}), match)


def test_data_must_point_into_an_earlier_data_frame() -> None:
    # RECS data of the tiny tape are 384 and 448; pointing at x (64) is legal, at the footer is not
    legal = edit_frame(DATA, b"RECS", lambda c: {**c, "data": np.array([64, 128], "<i8").tobytes(),
                                                 "types": (("float64", (2,)), ("float64", ()))})
    aliased = tf.loads(legal)  # two read-only views of the same bytes: odd, harmless
    assert aliased.value(2).tolist() == [1.0, 2.0]
    beyond = edit_frame(DATA, b"RECS", lambda c: {**c, "data": np.array([384, 704], "<i8").tobytes()})
    rejects(beyond, "data reference 704")


def test_values_must_match_the_mode() -> None:
    rejects(edit_frame(DATA, b"RECS", lambda c: {k: v for k, v in c.items() if k != "data"}),
            "records lack stored data but the tape stores values='all'")
    rejects(edit_frame(DATA, b"VARS", lambda c: {k: v for k, v in c.items() if k != "data"}), "leaves lack")
    none = tiny_tape()
    none.values_mode = "none"
    nd = tf.dumps(none)
    rejects(edit_frame(nd, b"VARS", lambda c: {**c, "data": np.array([0, 0], "<i8").tobytes()}), "leaves have")


def test_zero_size_arrays_must_reference_nothing() -> None:
    tape = tiny_tape()
    tape._add_leaf(4, np.zeros((0, 3)), "empty", False)
    data = tf.dumps(tape)
    assert tf.loads(data).value("empty").shape == (0, 3)
    bad = edit_frame(data, b"VARS", lambda c: {**c, "data": c["data"][:16] + np.array([64], "<i8").tobytes()})
    rejects(bad, "nor 0 for an empty array")


def test_nan_and_inf_payloads_load_and_replay() -> None:
    tape = tiny_tape()
    tape._values[0] = np.array([np.nan, np.inf])
    tape._values[2] = np.array([np.nan, np.inf])
    tape._values[3] = np.array(np.nan)
    loaded = tf.loads(tf.dumps(tape))
    assert np.isnan(loaded.value("x")[0]) and np.isinf(loaded.value("x")[1])
    grads = tg.replay.backward(loaded, of="y", wrt=["x"])
    assert grads["x"].tolist() == [3.0, 3.0]


@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_values_of_one_type_load_as_independent_read_only_arrays(shape: tuple[int, ...]) -> None:
    """A batch of one type is read as the rows of one strided view (0-d values row by row):
    each value is its own C-contiguous, read-only array with its recorded bytes."""
    with tg.record() as tape:
        y = tg.Variable(np.full(shape, 0.5), name="x")
        for _ in range(5):
            y = tg.sin(y) * 2.0
    loaded = tf.loads(tf.dumps(tape))
    for vid, value in tape._values.items():
        got = loaded.value(tape.dense_ids()[vid])
        assert got.shape == value.shape and got.tobytes() == value.tobytes()
        assert got.flags.c_contiguous and not got.flags.writeable
