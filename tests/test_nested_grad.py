"""Complex values are never cast (issue 16): they raise `tg.DTypeError`, a `TapegradError` and a `TypeError`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import DTypeError, TapegradError


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
