"""Every registry op's VJP against central finite differences (float64, random directions).

The cases are the one table of op cases (`op_cases.CASES`); an op without cases fails
`test_registry.py`, so nothing ships unchecked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapegrad as tg
from op_cases import BROADCAST_PAIRS, CASES, COMPARISONS, Case, away_from_zero, normal, on_grid, positive
from tapegrad import segment
from tapegrad.ops import REGISTRY
from tapegrad.ops.spec import encode_index
from tapegrad.testing import check_grads


def _run(cases: list[Case], order: int) -> None:
    failures = []
    for case in cases:
        try:
            check_grads(case.f, *case.args, order=order, **case.options)
        except Exception as exc:  # collect every failing case of the op, then report them all
            failures.append(f"{case.label}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.fixture(params=["shared segments", "a segment per op"])
def segments(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager ops on one segment, or each on its own (every input then crosses a segment's edge)."""
    if request.param == "a segment per op":
        monkeypatch.setattr(segment, "ROOM", 0)


@pytest.mark.usefixtures("segments")
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_gradient(name: str) -> None:
    if not CASES.get(name):
        pytest.fail(f"no gradient samples for registry op {name!r}")
    _run(CASES[name], order=1)


# Every differentiable op; cases marked order2=False (float32 round trips, which need a large
# finite-difference step) are left to the first-order test.
SECOND_ORDER = sorted(name for name in REGISTRY if REGISTRY[name].vjp is not None)


@pytest.mark.usefixtures("segments")
@pytest.mark.parametrize("name", SECOND_ORDER)
def test_op_second_derivative(name: str) -> None:
    cases = [c for c in CASES.get(name, []) if c.order2]
    assert cases, f"no second-order gradient samples for registry op {name!r}"
    _run(cases, order=2)


def test_check_grads_detects_a_wrong_gradient() -> None:
    """The whole registry test rests on check_grads: it must reject a wrong derivative."""

    def detached(x: Any) -> Any:  # d/dx is 3, but the no_record() branch hides 2 of it
        with tg.no_record():
            hidden = x * 2.0
        return hidden + x

    with pytest.raises(AssertionError):
        check_grads(detached, normal(3))
    with pytest.raises(AssertionError):
        check_grads(detached, normal())
    check_grads(lambda x: x * 2.0 + x, normal(3))  # the honest version passes


def test_check_grads_detects_a_wrong_second_derivative() -> None:
    def f(x: Any) -> Any:  # x**2 as a first-order Taylor expansion around a detached x
        with tg.no_record():
            square, slope, frozen = x * x, x * 2.0, x * 1.0
        return square + slope * (x - frozen)  # value x**2, gradient 2x, but no second derivative

    check_grads(f, normal(3), order=1)
    with pytest.raises(AssertionError):
        check_grads(f, normal(3), order=2)


# ---- explicit checks the random-direction test could blur ------------------------------------


def test_repeated_integer_index_accumulates() -> None:
    x = tg.Variable(np.array([10.0, 20.0, 30.0]))
    tg.sum(x[[0, 0, 1]]).backward()
    np.testing.assert_array_equal(x.grad, [2.0, 1.0, 0.0])


def test_repeated_index_pairs_accumulate_in_2d() -> None:
    x = tg.Variable(np.zeros((2, 3)))
    y = x[np.array([1, 1, 0, 1]), np.array([2, 2, 0, 0])]
    tg.sum(y * np.array([1.0, 2.0, 3.0, 4.0])).backward()
    np.testing.assert_array_equal(x.grad, [[3.0, 0.0, 0.0], [4.0, 0.0, 3.0]])


def test_boolean_mask_gradient_is_the_mask() -> None:
    m = np.array([[True, False, True], [False, False, True]])
    x = tg.Variable(np.arange(6.0).reshape(2, 3))
    y = x[m]
    np.testing.assert_array_equal(y.data, [0.0, 2.0, 5.0])
    tg.sum(y).backward()
    np.testing.assert_array_equal(x.grad, m.astype(np.float64))


def test_scatter_add_forward_accumulates_repeats() -> None:
    stored, arrays = encode_index("getitem", np.array([0, 0, 3]), lambda a: isinstance(a, np.ndarray))
    out = tg.scatter_add(np.array([1.0, 2.0, 4.0]), *arrays, shape=(5,), index=stored)
    np.testing.assert_array_equal(out.data, [3.0, 0.0, 0.0, 4.0, 0.0])


def test_max_ties_share_the_gradient_evenly() -> None:
    x = tg.Variable(np.array([1.0, 3.0, 3.0, -2.0]))
    tg.max(x).backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5, 0.0])


def test_maximum_ties_send_the_gradient_to_the_first_input() -> None:
    x, y = tg.Variable(np.array([1.0, 2.0])), tg.Variable(np.array([1.0, 3.0]))
    tg.sum(tg.maximum(x, y)).backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0])
    np.testing.assert_array_equal(y.grad, [0.0, 1.0])


def test_astype_gradient_is_cast_back() -> None:
    x = tg.Variable(np.array([1.0, 2.0, 3.0]))
    y = tg.astype(x, np.float32)
    assert y.dtype == np.float32
    tg.sum(y * np.array([1.0, 2.0, 3.0], dtype=np.float32)).backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad, [1.0, 2.0, 3.0])
    x32 = tg.Variable(np.array([1.0, 2.0], dtype=np.float32))
    tg.sum(tg.astype(x32, np.float64) * 3.0).backward()
    assert x32.grad.dtype == np.float32
    np.testing.assert_array_equal(x32.grad, [3.0, 3.0])


def test_astype_to_integer_cuts_the_gradient() -> None:
    x = tg.Variable(np.array([1.5, 2.5]))
    y = tg.astype(x, np.int64) * x
    tg.sum(y).backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])  # d(int(x) * x)/dx = int(x) almost everywhere


# ---- non-differentiable ops -----------------------------------------------------------------

NON_DIFFERENTIABLE = sorted(name for name, spec in REGISTRY.items() if spec.vjp is None)
ROUNDING = ("floor", "ceil", "trunc", "rint")
GRID_Y = on_grid((3,), 0.75)


def _nondiff_apply(name: str, x: Any) -> Any:
    """Apply non-differentiable op `name` to the (2, 3) float Variable or array `x`."""
    if name in COMPARISONS:
        return getattr(tg, name)(x, GRID_Y)
    if name in ROUNDING:
        return getattr(np, name)(x)  # through numpy's dispatch, as user code calls it
    if name == "sign":
        return tg.sign(x)
    if name == "guard":  # re-checks a value the recording observed: here int(sum(x))
        return tg.guard(tg.sum(x), GUARD_VALUE, "int")
    if name == "shape_guard":  # re-checks a shape the recording read
        return tg.shape_guard(x, (2, 3))
    raise AssertionError(f"no non-differentiable sample for {name!r}: add one")


def _nondiff_expected(name: str, xd: np.ndarray) -> np.ndarray:
    """Independent numpy reference for `_nondiff_apply`."""
    if name in COMPARISONS:
        return np.asarray(getattr(np, name)(xd, GRID_Y))
    if name in ROUNDING or name == "sign":
        return np.asarray(getattr(np, name)(xd))
    return np.array(True)


NONDIFF_X = on_grid((2, 3), 0.25)
GUARD_VALUE = int(float(NONDIFF_X.sum()))  # what int() of the recorded sum observes


def test_non_differentiable_ops_are_the_expected_ones() -> None:
    # An op silently losing its VJP rule would show up here.
    assert set(NON_DIFFERENTIABLE) == {*COMPARISONS, *ROUNDING, "sign", "guard", "shape_guard"}


@pytest.mark.parametrize("name", NON_DIFFERENTIABLE)
def test_non_differentiable_op_gives_no_gradient(name: str) -> None:
    x = tg.Variable(NONDIFF_X.copy())
    out = _nondiff_apply(name, x)
    expected = _nondiff_expected(name, x.data)
    assert out.dtype == expected.dtype
    if name in COMPARISONS or name in ("guard", "shape_guard"):
        assert out.dtype == np.bool_
    np.testing.assert_array_equal(out.data, expected)
    tg.sum(out * 2.0).backward()
    assert x.grad is None or not np.any(x.grad), f"{name} passed a gradient to its input"
    # Through the functional API the gradient is explicitly zero, with the input's shape.
    g = tg.grad(lambda a: tg.sum(tg.mul(_nondiff_apply(name, a), 1.0)))(NONDIFF_X)
    assert g.shape == (2, 3)
    np.testing.assert_array_equal(g, np.zeros((2, 3)))


@pytest.mark.parametrize("name", NON_DIFFERENTIABLE)
def test_non_differentiable_op_does_not_block_other_paths(name: str) -> None:
    x = tg.Variable(NONDIFF_X.copy())
    factor = _nondiff_apply(name, x)
    tg.sum(x * factor).backward()
    np.testing.assert_array_equal(x.grad, np.broadcast_to(_nondiff_expected(name, NONDIFF_X), (2, 3)))


def test_guard_rejects_a_changed_value() -> None:
    x = tg.Variable(np.array([0.5, 1.0]))
    assert tg.guard(tg.sum(x), 1.5, "float").data
    with pytest.raises(tg.GuardError):
        tg.guard(tg.sum(x), 2.0, "float")


# ---- gradient shape and dtype under broadcasting ----------------------------------------------

BINARY_DIFFERENTIABLE = sorted(name for name, spec in REGISTRY.items()
                               if spec.arity == 2 and spec.vjp is not None and name != "matmul")


def _operands(name: str, sx: tuple[int, ...], sy: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    if name in ("maximum", "minimum"):
        x, y = on_grid(sx, 0.25), on_grid(sy, 0.75)
    elif name == "pow":
        x, y = positive(*sx), normal(*sy)
    elif name == "div":
        x, y = normal(*sx), away_from_zero(*sy)
    elif name == "arctan2":
        x, y = away_from_zero(*sx), away_from_zero(*sy)
    else:
        x, y = normal(*sx), normal(*sy)
    return x.astype(dtype), y.astype(dtype)


def _np_sum_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Independent reference: sum a broadcast array back down to `shape`."""
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True).reshape(shape) if axes else a.reshape(shape)


def _reference_grads(name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d sum(op(x, y)) by hand, summed back to each input's shape."""
    out = np.broadcast_shapes(x.shape, y.shape)
    bx, by = np.broadcast_to(x, out), np.broadcast_to(y, out)
    one = np.ones(out)
    rules: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "add": lambda: (one, one),
        "sub": lambda: (one, -one),
        "mul": lambda: (by, bx),
        "div": lambda: (1 / by, -bx / by**2),
        "pow": lambda: (by * bx ** (by - 1), bx**by * np.log(bx)),
        "maximum": lambda: ((bx > by) * 1.0, (bx < by) * 1.0),
        "minimum": lambda: ((bx < by) * 1.0, (bx > by) * 1.0),
        "logaddexp": lambda: (1 / (1 + np.exp(by - bx)), 1 / (1 + np.exp(bx - by))),
        "logaddexp2": lambda: (1 / (1 + 2 ** (by - bx)), 1 / (1 + 2 ** (bx - by))),
        "arctan2": lambda: (by / (bx**2 + by**2), -bx / (bx**2 + by**2)),  # arctan2(y=bx, x=by)
    }
    gx, gy = rules[name]()
    return _np_sum_to(gx, x.shape), _np_sum_to(gy, y.shape)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("name", BINARY_DIFFERENTIABLE)
def test_binary_gradient_shape_dtype_and_value(name: str, shapes: tuple[Any, Any], dtype: Any) -> None:
    xd, yd = _operands(name, *shapes, dtype)
    x, y = tg.Variable(xd), tg.Variable(yd)
    out = getattr(tg, name)(x, y)
    assert out.dtype == dtype
    tg.sum(out).backward()
    rx, ry = _reference_grads(name, xd.astype(np.float64), yd.astype(np.float64))
    for v, ref in ((x, rx), (y, ry)):
        assert isinstance(v.grad, np.ndarray)
        assert v.grad.shape == v.shape
        assert v.grad.dtype == dtype
        np.testing.assert_allclose(v.grad, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("name", BINARY_DIFFERENTIABLE + ["matmul"])
def test_binary_gradient_shape_under_random_broadcasting(name: str) -> None:
    @given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
           if name != "matmul" else hnp.mutually_broadcastable_shapes(
               signature="(m?,n),(n,p?)->(m?,p?)", max_dims=3, max_side=3),
           st.sampled_from([np.float64, np.float32]))
    def check(shapes: Any, dtype: Any) -> None:
        sx, sy = shapes.input_shapes
        xd, yd = _operands(name, sx, sy, dtype)
        x, y = tg.Variable(xd), tg.Variable(yd)
        out = getattr(tg, name)(x, y)
        assert out.shape == shapes.result_shape
        tg.sum(out).backward()
        for v in (x, y):
            assert v.grad.shape == v.shape
            assert v.grad.dtype == v.dtype
        if name != "matmul":
            rx, ry = _reference_grads(name, xd.astype(np.float64), yd.astype(np.float64))
            np.testing.assert_allclose(x.grad, rx, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(y.grad, ry, rtol=1e-4, atol=1e-5)

    check()
