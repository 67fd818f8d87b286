"""`tg.replay.forward`: re-execute a recorded tape with new inputs, in memory and from a file."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import roundtrip

W0 = np.linspace(-1.0, 1.0, 6).reshape(3, 2)
X0 = np.arange(6.0).reshape(2, 3) / 6.0
B0 = np.array([0.1, -0.2])


def model(w: Any, x: Any, b: Any) -> tuple[Any, Any]:
    h = tg.tanh(x @ w + b)
    return h, tg.sum(h * h)


def numpy_model(w: np.ndarray, x: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.tanh(x @ w + b)
    return h, np.sum(h * h)


def record_model(values: str = "all") -> SimpleNamespace:
    with tg.record(values=values) as tape:
        w = tg.Variable(W0, name="w")
        x = tg.Variable(X0, name="x")
        b = tg.Variable(B0, name="b")
        h, loss = model(w, x, b)
        h.name = "h"
        loss.name = "loss"
    return SimpleNamespace(tape=tape, w=w, x=x, b=b, h=h, loss=loss)


SOURCES = ["memory:all", "memory:inputs", "file:all", "file:inputs"]


def tape_from(source: str) -> tg.Tape:
    where, values = source.split(":")
    tape = record_model(values).tape
    return roundtrip(tape) if where == "file" else tape


@pytest.mark.parametrize("source", SOURCES)
def test_forward_with_new_inputs_recomputes_named_outputs(source: str) -> None:
    tape = tape_from(source)
    rng = np.random.default_rng(0)
    for _ in range(3):
        w, x, b = rng.standard_normal(W0.shape), rng.standard_normal(X0.shape), rng.standard_normal(B0.shape)
        out = tg.replay.forward(tape, inputs={"w": w, "x": x, "b": b})
        assert sorted(out) == ["h", "loss"]
        want_h, want_loss = numpy_model(w, x, b)
        np.testing.assert_array_equal(out["h"], want_h)
        np.testing.assert_array_equal(out["loss"], want_loss)
        assert out["loss"].shape == () and out["loss"].dtype == np.float64


@pytest.mark.parametrize("source", SOURCES)
def test_forward_without_inputs_reproduces_the_recording(source: str) -> None:
    tape = tape_from(source)
    want_h, want_loss = numpy_model(W0, X0, B0)
    out = tg.replay.forward(tape)
    np.testing.assert_array_equal(out["h"], want_h)
    np.testing.assert_array_equal(out["loss"], want_loss)


@pytest.mark.parametrize("source", SOURCES)
def test_inputs_not_given_keep_their_recorded_values(source: str) -> None:
    tape = tape_from(source)
    x = np.full((2, 3), 0.5)
    out = tg.replay.forward(tape, inputs={"x": x})
    want_h, want_loss = numpy_model(W0, x, B0)
    np.testing.assert_array_equal(out["h"], want_h)
    np.testing.assert_array_equal(out["loss"], want_loss)
    b = np.array([2.0, -3.0])
    out = tg.replay.forward(tape, inputs={"b": b})
    np.testing.assert_array_equal(out["loss"], numpy_model(W0, X0, b)[1])


def test_forward_matches_eager_tracing_bit_for_bit() -> None:
    t = record_model()
    rng = np.random.default_rng(1)
    w, x, b = rng.standard_normal(W0.shape), rng.standard_normal(X0.shape), rng.standard_normal(B0.shape)
    h, loss = model(tg.Variable(w), tg.Variable(x), tg.Variable(b))
    out = tg.replay.forward(t.tape, inputs={"w": w, "x": x, "b": b})
    np.testing.assert_array_equal(out["h"], h.data)
    np.testing.assert_array_equal(out["loss"], loss.data)


def test_outputs_and_input_references_by_id_and_variable() -> None:
    t = record_model()
    x = np.ones((2, 3))
    want_h, want_loss = numpy_model(W0, x, B0)
    by_var = tg.replay.forward(t.tape, inputs={t.x: x}, outputs=["loss"])
    assert list(by_var) == ["loss"]
    np.testing.assert_array_equal(by_var["loss"], want_loss)
    x_id = t.tape.names["x"]
    h_id = t.tape.names["h"]
    by_id = tg.replay.forward(t.tape, inputs={x_id: x}, outputs=[h_id, "loss"])
    assert list(by_id) == [h_id, "loss"]
    np.testing.assert_array_equal(by_id[h_id], want_h)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("bad", [np.ones((3, 2)), np.ones(6), np.ones((2, 3), np.float32), np.ones((2, 3), np.int64)])
def test_wrong_shape_or_dtype_names_the_input(source: str, bad: np.ndarray) -> None:
    tape = tape_from(source)
    with pytest.raises(tg.TapegradError, match=r"'x'") as info:
        tg.replay.forward(tape, inputs={"x": bad})
    message = str(info.value)
    assert "(2, 3)" in message and "float64" in message  # what was recorded
    assert str(bad.shape) in message and str(bad.dtype) in message  # what was given


def test_wrong_shape_in_backward_names_the_input() -> None:
    t = record_model()
    with pytest.raises(tg.TapegradError, match=r"'b'"):
        tg.replay.backward(t.tape, of="loss", wrt=["w"], inputs={"b": np.zeros(3)})


def test_unknown_input_name_lists_the_tape_names() -> None:
    t = record_model()
    with pytest.raises(tg.TapegradError, match="'nope'") as info:
        tg.replay.forward(t.tape, inputs={"nope": np.ones(2)})
    assert "'w'" in str(info.value) and "'loss'" in str(info.value)


def test_only_inputs_can_be_replaced() -> None:
    t = record_model()
    with pytest.raises(tg.TapegradError, match="not an input"):
        tg.replay.forward(t.tape, inputs={"h": np.zeros((2, 2))})


def test_replay_does_not_change_the_tape_or_alias_it() -> None:
    t = record_model()
    recorded_h = np.array(t.tape.value("h"))
    out = tg.replay.forward(t.tape, inputs={"x": np.zeros((2, 3))})
    np.testing.assert_array_equal(t.tape.value("h"), recorded_h)
    out["h"][...] = 42.0
    again = tg.replay.forward(t.tape)
    np.testing.assert_array_equal(again["h"], recorded_h)
    assert out["h"].flags.writeable
    mine = np.full((2, 3), 0.3)
    given = mine.copy()
    tg.replay.forward(t.tape, inputs={"x": mine})
    np.testing.assert_array_equal(mine, given)


def test_values_none_tape_replays_when_every_input_is_given() -> None:
    tape = roundtrip(record_model("none").tape)
    w, x, b = W0 * 2, X0 - 1, B0 + 1
    out = tg.replay.forward(tape, inputs={"w": w, "x": x, "b": b})
    np.testing.assert_array_equal(out["loss"], numpy_model(w, x, b)[1])
    with pytest.raises(tg.TapegradError, match="no value"):
        tg.replay.forward(tape, inputs={"w": w, "x": x})


def test_values_inputs_file_stores_no_intermediates_yet_replays() -> None:
    full = roundtrip(record_model("all").tape)
    lean = roundtrip(record_model("inputs").tape)
    with pytest.raises(tg.TapegradError):
        lean.value("h")
    np.testing.assert_array_equal(full.value("h"), numpy_model(W0, X0, B0)[0])
    np.testing.assert_array_equal(tg.replay.forward(lean)["h"], tg.replay.forward(full)["h"])


def test_forward_of_integer_and_bool_programs() -> None:
    with tg.record() as tape:
        k = tg.Variable(np.array([1, 2, 3]), name="k")
        a = tg.Variable(np.array([0.5, -1.0, 2.0]), name="a")
        big = tg.greater(a, 0.0)
        big.name = "big"
        s = tg.sum(a * k)
        s.name = "s"
    out = tg.replay.forward(tape, inputs={"k": np.array([3, 0, 1]), "a": np.array([1.0, 1.0, -1.0])})
    np.testing.assert_array_equal(out["big"], [True, True, False])
    assert out["big"].dtype == np.bool_
    assert float(out["s"]) == 2.0
    with pytest.raises(tg.TapegradError, match="'k'"):
        tg.replay.forward(tape, inputs={"k": np.array([3.0, 0.0, 1.0])})
