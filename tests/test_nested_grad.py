"""Issue 16: complex values are never cast (they raise `tg.DTypeError`, a `TapegradError` and a
`TypeError`), and a result that does not depend on the input has zero gradient."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import DTypeError, TapegradError, Variable


@pytest.mark.parametrize(
    "call",
    [
        lambda f: tg.grad(f)(np.array([1 + 2j, 3.0])),
        lambda f: tg.grad(f)(1j),
        lambda f: tg.value_and_grad(f)(np.complex64(1.0)),
        lambda f: tg.hessian(f)(np.array([1j])),
    ],
    ids=["complex array", "Python complex", "numpy complex scalar", "hessian"],
)
def test_issue16_complex_inputs_to_grad_raise(call: Callable[[Any], Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no ComplexWarning: nothing is cast
        with pytest.raises(DTypeError, match="complex") as info:
            call(lambda x: tg.sum(x * x))
    assert isinstance(info.value, TapegradError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "f",
    [lambda x: 3.0, lambda x: 3, lambda x: np.float64(3.0), lambda x: np.array([3.0]),
     lambda x: tg.Variable(np.array(3.0)), lambda x: tg.sum(tg.Variable(np.ones(2))),
     lambda x: np.sum(np.asarray(x.data))],
    ids=["float", "int", "np.float64", "one-element array", "Variable", "constant Variable op", "numpy on x.data"],
)
@pytest.mark.parametrize(
    "x", [1.0, np.ones(3, np.float32), np.arange(3), np.ones((2, 0))], ids=["float", "float32", "int", "empty"]
)
def test_issue16_a_result_that_does_not_depend_on_the_input_has_zero_gradient(f: Callable[[Any], Any], x: Any) -> None:
    expected_dtype = np.float32 if np.asarray(x).dtype == np.float32 else np.float64
    g = tg.grad(f)(x)
    assert type(g) is np.ndarray and g.shape == np.shape(x) and g.dtype == expected_dtype
    assert not g.any()
    value, (g0, g1) = tg.value_and_grad(lambda a, b: f(a), argnums=(0, 1))(x, 2.0)
    assert type(value) is np.ndarray and value.dtype.kind == "f" and value.size == 1
    assert g0.shape == np.shape(x) and g0.dtype == expected_dtype and not g0.any()
    assert g1.shape == () and g1 == 0.0


def test_issue16_constant_results_inside_a_recording_are_variables() -> None:
    # Inside an outer grad the zero is a Variable, and the outer derivative is right.
    assert tg.grad(lambda x: x * tg.grad(lambda y: 3.0)(x) + x)(2.0) == 1.0
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        value, g = tg.value_and_grad(lambda v: 3.0)(x)
        g.name = "g"
    assert isinstance(value, Variable) and isinstance(g, Variable)
    assert value.data == 3.0 and g.shape == (2,) and not g.data.any()
    loaded = tg.loads(tg.dumps(tape))
    np.testing.assert_array_equal(tg.replay.forward(loaded, outputs=["g"])["g"], [0.0, 0.0])


def test_issue16_replay_backward_of_an_output_that_does_not_depend_on_wrt_is_zeros() -> None:
    with tg.record() as tape:
        a = tg.Variable(np.array([2.0, 3.0]), name="a")
        tg.Variable(np.array(3.0, np.float32), name="b")
        c = tg.sum(a * 2.0)
        c.name = "c"
    for t in (tape, tg.loads(tg.dumps(tape))):
        g = tg.replay.backward(t, of="c", wrt=["a", "b"])
        np.testing.assert_array_equal(g["a"], [2.0, 2.0])
        assert type(g["b"]) is np.ndarray and g["b"].shape == () and g["b"].dtype == np.float32 and g["b"] == 0
        with tg.record():
            gr = tg.replay.backward(t, of="c", wrt=["b"])
        assert isinstance(gr["b"], Variable) and gr["b"].dtype == np.float32 and gr["b"].data == 0


@pytest.mark.parametrize(
    ("f", "why"),
    [(lambda x: np.ones(3), "scalar"), (lambda x: x * 1.0, "scalar"), (lambda x: "3.0", "scalar"),
     (lambda x: None, "scalar"), (lambda x: np.int64(3), "floating-point"), (lambda x: tg.sum(x > 0), "floating-point")],
    ids=["float vector", "Variable vector", "str", "None", "numpy int", "bool Variable"],
)
def test_a_result_that_is_not_a_scalar_float_still_raises(f: Callable[[Any], Any], why: str) -> None:
    with pytest.raises(TapegradError, match=why):
        tg.grad(f)(np.array([1.0, 2.0]))


# ---- complex values anywhere they can enter ---------------------------------------------------


def _replay_tape() -> tg.Tape:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        y = tg.sum(tg.sin(x) * x)
        y.name = "y"
    return tg.loads(tg.dumps(tape))


COMPLEX_CALLS: dict[str, Callable[[], Any]] = {
    "Variable": lambda: tg.Variable(np.array([1j])),
    "Variable in record": lambda: _in_record(lambda: tg.Variable(np.array([1.0 + 0j]))),
    "Python complex constant": lambda: tg.Variable(np.array([1.0])) * 1j,
    "reflected constant": lambda: 1j + tg.Variable(np.array([1.0])),
    "complex array constant": lambda: tg.mul(tg.Variable(np.array([1.0])), np.array([1j])),
    "numpy complex scalar": lambda: tg.add(np.complex128(1), tg.Variable(np.array([1.0]))),
    "op on plain arrays": lambda: tg.sin(np.array([1j])),
    "recorded constant": lambda: _in_record(lambda: tg.Variable(np.array(1.0)) * 2j),
    "replay.forward": lambda: tg.replay.forward(_replay_tape(), inputs={"x": np.array([1.0, 2j])}),
    "replay.forward Python complex": lambda: tg.replay.forward(_replay_tape(), inputs={"x": [1j, 2.0]}),
    "replay.backward": lambda: tg.replay.backward(_replay_tape(), of="y", wrt="x", inputs={"x": np.array([1.0, 2j])}),
    "replay.backward seed": lambda: tg.replay.backward(_replay_tape(), of="y", wrt="x", seed=1j),
    "replay in record": lambda: _in_record(lambda: tg.replay.backward(_replay_tape(), inputs={"x": np.array([1j, 2.0])})),
    "replay.jvp tangent": lambda: tg.replay.jvp(_replay_tape(), {"x": np.array([1j, 0.0])}),
}


def _in_record(call: Callable[[], Any]) -> Any:
    with tg.record():
        return call()


@pytest.mark.parametrize("name", sorted(COMPLEX_CALLS))
def test_complex_values_raise_a_dtype_error_and_are_never_cast(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DTypeError, match="complex") as info:
            COMPLEX_CALLS[name]()
    assert isinstance(info.value, TapegradError) and isinstance(info.value, TypeError)


def test_variable_of_a_non_array_is_a_dtype_error() -> None:
    with pytest.raises(DTypeError):  # DESIGN: both a TapegradError and a TypeError
        tg.Variable(3.0)  # type: ignore[arg-type]
