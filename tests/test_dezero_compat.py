"""DeZero compatibility: the step 14 program and DeZero's test functions with hand-derived gradients."""

from __future__ import annotations

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import Variable

# ---- DeZero step 14 ---------------------------------------------------------------------------


def test_step14_program() -> None:
    x = Variable(np.array(3.0))
    y = tg.add(x, x)
    y.backward()
    assert y.grad == 1.0
    assert x.grad == 2.0

    x.cleargrad()
    assert x.grad is None
    x = Variable(np.array(3.0))
    y = tg.add(tg.add(x, x), x)
    y.backward()
    assert x.grad == 3.0


def test_step14_values_and_types() -> None:
    x = Variable(np.array(3.0))
    y = tg.add(x, x)
    assert isinstance(y, Variable)
    assert y.data == 6.0
    y.backward()
    for g in (x.grad, y.grad):
        assert isinstance(g, np.ndarray)
        assert g.shape == ()
        assert g.dtype == np.float64
    assert not np.shares_memory(x.grad, y.grad)
    assert x.grad is not y.grad


def test_cleargrad_resets_between_independent_backward_calls() -> None:
    x = Variable(np.array(3.0))
    y = tg.add(x, x)
    y.backward()
    x.cleargrad()
    z = tg.mul(x, x)
    z.backward()
    assert x.grad == 6.0  # 2 * 3, not 2 + 6


@pytest.mark.parametrize("bad", [1.0, 1, [1.0, 2.0], (1.0,), "1.0", np.float64(1.0), True])
def test_variable_rejects_non_ndarray_data(bad: object) -> None:
    with pytest.raises(TypeError):
        Variable(bad)  # type: ignore[arg-type]


def test_variable_accepts_none_and_arrays() -> None:
    assert Variable(None).data is None
    a = np.array([1.0, 2.0])
    assert Variable(a).data is a
    assert Variable(np.array(1.0)).data.shape == ()


def test_backward_twice_accumulates_until_cleargrad() -> None:
    x = Variable(np.array([1.0, 2.0]))
    y = tg.mul(x, x)
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])
    x.cleargrad()
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])


def test_backward_uses_an_existing_output_grad_as_seed() -> None:
    x = Variable(np.array([1.0, 2.0]))
    y = tg.mul(x, 3.0)
    y.grad = np.array([10.0, -1.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [30.0, -3.0])


def test_accumulated_gradient_is_a_fresh_array() -> None:
    x = Variable(np.array([1.0, 2.0]))
    y = tg.add(x, x)
    y.backward()
    first = x.grad
    y.backward()
    np.testing.assert_array_equal(first, [2.0, 2.0])  # not updated in place
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])


# ---- DeZero's optimisation test functions, against hand-written derivatives -------------------


def sphere(x: Variable, y: Variable) -> Variable:
    return x**2 + y**2


def sphere_grad(x: float, y: float) -> tuple[float, float]:
    return 2 * x, 2 * y


def matyas(x: Variable, y: Variable) -> Variable:
    return 0.26 * (x**2 + y**2) - 0.48 * x * y


def matyas_grad(x: float, y: float) -> tuple[float, float]:
    return 0.52 * x - 0.48 * y, 0.52 * y - 0.48 * x


def goldstein(x: Variable, y: Variable) -> Variable:
    return (1 + (x + y + 1) ** 2 * (19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2)) * (
        30 + (2 * x - 3 * y) ** 2 * (18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2)
    )


def goldstein_grad(x: float, y: float) -> tuple[float, float]:
    # f = A * B, A = 1 + a^2 P, B = 30 + b^2 Q with a = x + y + 1, b = 2x - 3y.
    a, b = x + y + 1, 2 * x - 3 * y
    p = 19 - 14 * x + 3 * x**2 - 14 * y + 6 * x * y + 3 * y**2
    q = 18 - 32 * x + 12 * x**2 + 48 * y - 36 * x * y + 27 * y**2
    big_a, big_b = 1 + a**2 * p, 30 + b**2 * q
    da = 2 * a * p + a**2 * (-14 + 6 * x + 6 * y)  # same for x and y: a and P are symmetric
    db_dx = 4 * b * q + b**2 * (-32 + 24 * x - 36 * y)
    db_dy = -6 * b * q + b**2 * (48 - 36 * x + 54 * y)
    return da * big_b + big_a * db_dx, da * big_b + big_a * db_dy


def rosenbrock(x: Variable, y: Variable) -> Variable:
    return 100 * (y - x**2) ** 2 + (1 - x) ** 2


def rosenbrock_grad(x: float, y: float) -> tuple[float, float]:
    return -400 * x * (y - x**2) - 2 * (1 - x), 200 * (y - x**2)


POINTS = [(1.0, 1.0), (0.0, 2.0), (-1.5, 0.5), (0.3, -0.7), (2.0, -1.25)]


@pytest.mark.parametrize("point", POINTS, ids=str)
@pytest.mark.parametrize(
    ("f", "df"),
    [(sphere, sphere_grad), (matyas, matyas_grad), (goldstein, goldstein_grad), (rosenbrock, rosenbrock_grad)],
    ids=["sphere", "matyas", "goldstein", "rosenbrock"],
)
def test_test_function_gradients(f, df, point) -> None:
    x, y = Variable(np.array(point[0])), Variable(np.array(point[1]))
    z = f(x, y)
    z.backward()
    gx, gy = df(*point)
    np.testing.assert_allclose(x.grad, gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.grad, gy, rtol=1e-12, atol=1e-12)


def test_known_dezero_values() -> None:
    # Published in the DeZero book (steps 24 and 28): an independent check of the formulas too.
    x, y = Variable(np.array(1.0)), Variable(np.array(1.0))
    goldstein(x, y).backward()
    assert (float(x.grad), float(y.grad)) == (-5376.0, 8064.0)
    x, y = Variable(np.array(0.0)), Variable(np.array(2.0))
    rosenbrock(x, y).backward()
    assert (float(x.grad), float(y.grad)) == (-2.0, 400.0)


def test_vectorised_test_functions_match_pointwise() -> None:
    pts = np.array(POINTS)
    x, y = Variable(pts[:, 0].copy()), Variable(pts[:, 1].copy())
    tg.sum(rosenbrock(x, y)).backward()
    expected = np.array([rosenbrock_grad(*p) for p in POINTS])
    np.testing.assert_allclose(x.grad, expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(y.grad, expected[:, 1], rtol=1e-12)


def test_gradient_descent_on_rosenbrock_follows_the_analytic_trajectory() -> None:
    x, y = Variable(np.array(0.0)), Variable(np.array(2.0))
    rx, ry = 0.0, 2.0
    lr = 0.001
    for _ in range(1000):
        rosenbrock(x, y).backward()
        x = Variable(np.asarray(x.data - lr * x.grad))
        y = Variable(np.asarray(y.data - lr * y.grad))
        gx, gy = rosenbrock_grad(rx, ry)
        rx, ry = rx - lr * gx, ry - lr * gy
    np.testing.assert_allclose([float(x.data), float(y.data)], [rx, ry], rtol=1e-9)
    # DeZero step 28 reports about (0.684, 0.467) after 1000 steps.
    assert abs(float(x.data) - 0.684) < 0.01 and abs(float(y.data) - 0.467) < 0.01
