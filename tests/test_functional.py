"""The functional API: `tg.grad` and `tg.value_and_grad`, including higher derivatives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import TapegradError, Variable


def loss3(x: Any, y: Any, z: Any) -> Variable:
    return tg.sum(x * y + tg.sin(z) * 2.0)


X = np.array([1.0, -2.0, 0.5])
Y = np.array([0.25, 3.0, -1.0])
Z = np.array([0.0, 1.0, 2.0])


def test_grad_argnums_int() -> None:
    for argnum, expected in ((0, Y), (1, X), (2, 2.0 * np.cos(Z)), (-1, 2.0 * np.cos(Z))):
        g = tg.grad(loss3, argnums=argnum)(X, Y, Z)
        assert type(g) is np.ndarray
        assert g.shape == (3,) and g.dtype == np.float64
        np.testing.assert_allclose(g, expected, rtol=1e-15)


def test_grad_argnums_tuple() -> None:
    gs = tg.grad(loss3, argnums=(0, 2))(X, Y, Z)
    assert isinstance(gs, tuple) and len(gs) == 2
    assert all(type(g) is np.ndarray for g in gs)
    np.testing.assert_allclose(gs[0], Y, rtol=1e-15)
    np.testing.assert_allclose(gs[1], 2.0 * np.cos(Z), rtol=1e-15)
    (only,) = tg.grad(loss3, argnums=(1,))(X, Y, Z)
    np.testing.assert_allclose(only, X, rtol=1e-15)


def test_value_and_grad() -> None:
    value, g = tg.value_and_grad(loss3)(X, Y, Z)
    assert type(value) is np.ndarray and value.shape == ()
    np.testing.assert_allclose(value, np.sum(X * Y + np.sin(Z) * 2.0), rtol=1e-15)
    np.testing.assert_allclose(g, Y, rtol=1e-15)
    value, (gx, gy) = tg.value_and_grad(loss3, argnums=(0, 1))(X, Y, Z)
    np.testing.assert_allclose(gx, Y, rtol=1e-15)
    np.testing.assert_allclose(gy, X, rtol=1e-15)


def test_grad_of_python_scalars_and_integer_arrays() -> None:
    g = tg.grad(lambda x: x * x * x)(2.0)
    assert type(g) is np.ndarray and g.shape == ()
    assert float(g) == 12.0
    gi = tg.grad(lambda x: tg.sum(x * x))(np.array([1, 2, 3]))  # integers are differentiated as floats
    assert gi.dtype.kind == "f"
    np.testing.assert_array_equal(gi, [2.0, 4.0, 6.0])


def test_grad_keeps_float32() -> None:
    g = tg.grad(lambda x: tg.sum(tg.tanh(x) * 2.0))(np.array([0.5, 1.0], dtype=np.float32))
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, 2.0 * (1 - np.tanh(np.array([0.5, 1.0])) ** 2), rtol=1e-6)


def test_grad_does_not_touch_user_arrays_and_leaves_no_grad() -> None:
    x = np.array([1.0, 2.0])
    g = tg.grad(lambda v: tg.sum(v * v))(x)
    np.testing.assert_array_equal(x, [1.0, 2.0])
    assert not np.shares_memory(g, x)
    g[:] = 0  # the caller owns the result
    np.testing.assert_array_equal(tg.grad(lambda v: tg.sum(v * v))(x), [2.0, 4.0])


def test_grad_passes_non_differentiated_arguments_through() -> None:
    seen: list[Any] = []

    def f(x: Any, k: Any) -> Variable:
        seen.append(k)
        return tg.sum(x * k)

    g = tg.grad(f)(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    np.testing.assert_array_equal(g, [3.0, 4.0])
    assert type(seen[0]) is np.ndarray


def test_grad_with_respect_to_an_unused_argument_is_zero() -> None:
    g = tg.grad(lambda x, y: tg.sum(x * 2.0), argnums=1)(np.ones(2), np.ones(3))
    np.testing.assert_array_equal(g, np.zeros(3))


# ---- higher derivatives -----------------------------------------------------------------------

POINTS = [-1.3, -0.4, 0.0, 0.7, 1.9]

SECOND: list[tuple[str, Callable[[Any], Any], Callable[[float], float]]] = [
    ("tanh", tg.tanh, lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    ("cube", lambda x: x**3, lambda x: 6 * x),
    ("x sin x", lambda x: tg.sin(x) * x, lambda x: 2 * np.cos(x) - x * np.sin(x)),
    ("gaussian", lambda x: tg.exp(-(x**2)), lambda x: (4 * x**2 - 2) * np.exp(-(x**2))),
]


@pytest.mark.parametrize(("f", "d2"), [c[1:] for c in SECOND], ids=[c[0] for c in SECOND])
def test_second_derivative(f: Callable[[Any], Any], d2: Callable[[float], float]) -> None:
    ddf = tg.grad(tg.grad(f))
    for p in POINTS:
        value = ddf(p)
        assert type(value) is np.ndarray
        np.testing.assert_allclose(value, d2(p), rtol=1e-12, atol=1e-12, err_msg=f"at x = {p}")


@pytest.mark.parametrize(("f", "d2"), [c[1:] for c in SECOND], ids=[c[0] for c in SECOND])
def test_second_derivative_elementwise_on_arrays(f: Callable[[Any], Any], d2: Callable[[float], float]) -> None:
    points = np.array(POINTS)
    ddf = tg.grad(lambda x: tg.sum(tg.grad(lambda y: tg.sum(f(y)))(x)))
    np.testing.assert_allclose(ddf(points), [d2(p) for p in POINTS], rtol=1e-12, atol=1e-12)


def test_third_derivatives() -> None:
    d3 = tg.grad(tg.grad(tg.grad(lambda x: tg.sin(x) * x)))
    cube3 = tg.grad(tg.grad(tg.grad(lambda x: x**3)))
    tanh3 = tg.grad(tg.grad(tg.grad(tg.tanh)))
    for p in POINTS:
        np.testing.assert_allclose(d3(p), -3 * np.sin(p) - p * np.cos(p), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cube3(p), 6.0, rtol=1e-12)
        t = np.tanh(p)
        np.testing.assert_allclose(tanh3(p), (1 - t**2) * (6 * t**2 - 2), rtol=1e-12, atol=1e-12)


def test_mixed_second_derivative() -> None:
    # f = x^2 y^3: d/dy (df/dx) = 6 x y^2
    def df_dx(x: Any, y: Any) -> Any:
        return tg.grad(lambda a, b: a * a * b * b * b)(x, y)

    d2 = tg.grad(df_dx, argnums=1)(1.5, -2.0)
    np.testing.assert_allclose(d2, 6 * 1.5 * 4.0, rtol=1e-14)


def test_hessian_vector_product() -> None:
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    v = np.array([1.0, -1.0])

    def f(x: Any) -> Variable:  # 0.5 x^T A x + sum(x^3)/3: Hessian A + diag(2x)
        return 0.5 * tg.sum(x * (a @ x)) + tg.sum(x**3) / 3

    x0 = np.array([0.5, -0.25])
    hvp = tg.grad(lambda x: tg.sum(tg.grad(f)(x) * v))(x0)
    np.testing.assert_allclose(hvp, (a + np.diag(2 * x0)) @ v, rtol=1e-14)


# ---- inside a recording ----------------------------------------------------------------------


def test_grad_inside_record_returns_variables_and_records_the_reverse_pass() -> None:
    def f(x: Any) -> Variable:
        return tg.sum(tg.tanh(x) * x)

    with tg.record() as forward_only:
        f(Variable(np.array([0.5, -1.0]), name="x"))

    with tg.record() as tape:
        x = Variable(np.array([0.5, -1.0]), name="x")
        g = tg.grad(f)(x)
        value, g2 = tg.value_and_grad(f)(x)
        g.name = "g"
    assert isinstance(g, Variable) and isinstance(value, Variable) and isinstance(g2, Variable)
    t = np.tanh(x.data)
    np.testing.assert_allclose(g.data, t + x.data * (1 - t**2), rtol=1e-15)
    np.testing.assert_allclose(g2.data, g.data, rtol=0)
    assert len(tape) > 2 * len(forward_only)
    assert tape.var("g").kind == "op"

    # The recorded reverse pass is a program of its own: differentiate it once more.
    second = tg.replay.backward(tape, of="g", wrt=["x"])
    expected = 2 * (1 - t**2) - 2 * x.data * t * (1 - t**2)
    np.testing.assert_allclose(second["x"], expected, rtol=1e-14)


def test_grad_of_variables_outside_record_returns_variables() -> None:
    x = Variable(np.array([0.3, 1.2]))
    g = tg.grad(lambda v: tg.sum(v**3))(x)
    assert isinstance(g, Variable)
    np.testing.assert_allclose(g.data, 3 * x.data**2, rtol=1e-15)
    tg.sum(g).backward()  # the returned gradient is linked to x
    np.testing.assert_allclose(x.grad, 6 * x.data, rtol=1e-15)


def test_grad_under_no_record_still_works() -> None:
    with tg.no_record():
        g = tg.grad(lambda v: tg.sum(v * v))(np.array([1.0, 3.0]))
    np.testing.assert_array_equal(g, [2.0, 6.0])


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "f",
    [lambda x: x * 2.0, lambda x: tg.stack([x, x]), lambda x: x.reshape(1, 2)],
    ids=["vector", "stacked", "matrix"],
)
def test_grad_of_non_scalar_output_raises(f: Callable[[Any], Any]) -> None:
    with pytest.raises(TapegradError) as info:
        tg.grad(f)(np.array([1.0, 2.0]))
    assert "scalar" in str(info.value)


@pytest.mark.parametrize(
    ("f", "why"),
    [(lambda x: None, "scalar"), (lambda x: (tg.sum(x), tg.sum(x)), "scalar"), (lambda x: "3.0", "scalar"),
     (lambda x: True, "scalar"), (lambda x: tg.sum(x > 0), "floating-point"), (lambda x: np.array([3]), "floating-point")],
    ids=["None", "tuple", "str", "bool", "bool Variable", "int array"],
)
def test_grad_of_a_result_that_is_not_a_scalar_float_raises(f: Callable[[Any], Any], why: str) -> None:
    # A result that does not depend on the input gets zero gradients (tests/test_nested_grad.py).
    with pytest.raises(TapegradError, match=why):
        tg.grad(f)(np.array([1.0, 2.0]))


def test_grad_argnums_out_of_range_raises() -> None:
    with pytest.raises(TapegradError):
        tg.grad(loss3, argnums=3)(X, Y, Z)
    with pytest.raises(TapegradError):
        tg.value_and_grad(loss3, argnums=(0, 5))(X, Y, Z)


def test_single_element_output_is_accepted() -> None:
    g = tg.grad(lambda x: x.reshape(1, 1) * 4.0)(np.array([2.0]))
    np.testing.assert_array_equal(g, [4.0])
