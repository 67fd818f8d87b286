"""Every registry op's VJP against central finite differences (float64, random directions).

`SAMPLES` maps each op name in `tapegrad.ops.REGISTRY` to a list of cases.  A new op without
samples fails `test_every_registry_op_has_samples`, so nothing ships unchecked.  Inputs are
domain-safe and kept away from kinks and ties by construction (values on offset grids).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapegrad as tg
from tapegrad.ops import REGISTRY
from tapegrad.ops.spec import encode_index
from tapegrad.testing import check_grads

RNG = np.random.default_rng(20240601)


@dataclass(frozen=True)
class Case:
    """One gradient check: `check_grads(f, *args, **options)`."""

    label: str
    f: Callable[..., Any]
    args: tuple[Any, ...]
    order2: bool = True  # also check second derivatives
    options: Mapping[str, Any] = field(default_factory=dict)


# ---- domain-safe inputs ---------------------------------------------------------------------


def normal(*shape: int) -> np.ndarray:
    return np.asarray(RNG.standard_normal(shape))


def positive(*shape: int) -> np.ndarray:
    return np.asarray(RNG.uniform(0.5, 2.0, shape))


def away_from_zero(*shape: int) -> np.ndarray:
    """|x| >= 0.3: no kink of abs/relu/sign within finite-difference reach."""
    return np.asarray(RNG.choice([-1.0, 1.0], shape) * RNG.uniform(0.3, 2.0, shape))


def on_grid(shape: tuple[int, ...], offset: float) -> np.ndarray:
    """Integers plus `offset` plus jitter in [-0.1, 0.1]: grids with offsets 0.25 and 0.75 never tie."""
    return np.asarray(RNG.integers(-3, 4, shape) + offset + RNG.uniform(-0.1, 0.1, shape))


def distinct(*shape: int) -> np.ndarray:
    """All elements at least 0.3 apart (no ties for max/min along any axis)."""
    n = math.prod(shape)
    values = RNG.permutation(n) * 0.5 - n * 0.25 + RNG.uniform(-0.1, 0.1, n)
    return np.asarray(values.reshape(shape))


def mask(*shape: int) -> np.ndarray:
    m = RNG.random(shape) > 0.5
    m.flat[0], m.flat[-1] = True, False  # neither all-true nor all-false
    return m


# ---- the samples ----------------------------------------------------------------------------

BROADCAST_PAIRS: list[tuple[tuple[int, ...], tuple[int, ...]]] = [
    ((3,), (3,)),
    ((2, 3), (2, 3)),
    ((2, 3), (3,)),
    ((3,), (2, 3)),
    ((2, 1), (1, 3)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((), ()),
    ((4, 1, 3), (2, 1)),
]

COMPARISONS = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")


def _label(name: str, *parts: Any) -> str:
    return f"{name}[{', '.join(str(p) for p in parts)}]"


def _binary(name: str, make_x: Callable[..., np.ndarray], make_y: Callable[..., np.ndarray]) -> list[Case]:
    fn = getattr(tg, name)
    return [Case(_label(name, sx, sy), lambda x, y, fn=fn: fn(x, y), (make_x(*sx), make_y(*sy)))
            for sx, sy in BROADCAST_PAIRS]


def _grid_binary(name: str) -> list[Case]:
    fn = getattr(tg, name)
    cases = [Case(_label(name, sx, sy), lambda x, y, fn=fn: fn(x, y), (on_grid(sx, 0.25), on_grid(sy, 0.75)))
             for sx, sy in BROADCAST_PAIRS]
    cases.append(Case(_label(name, "x, 0.5"), lambda x, fn=fn: fn(x, 0.5), (on_grid((2, 3), 0.25),)))
    cases.append(Case(_label(name, "0.5, x"), lambda x, fn=fn: fn(0.5, x), (on_grid((2, 3), 0.25),)))
    return cases


def _unary(name: str, make: Callable[..., np.ndarray]) -> list[Case]:
    fn = getattr(tg, name)
    return [Case(_label(name, shape), lambda x, fn=fn: fn(x), (make(*shape),)) for shape in [(), (3,), (2, 3), (2, 1, 3)]]


REDUCTION_AXES: list[Any] = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


def _reduction(name: str, make: Callable[..., np.ndarray]) -> list[Case]:
    fn = getattr(tg, name)
    cases = [Case(_label(name, "(2, 3, 4)", f"axis={axis}", f"keepdims={keep}"),
                  lambda x, fn=fn, axis=axis, keep=keep: fn(x, axis=axis, keepdims=keep), (make(2, 3, 4),))
             for axis in REDUCTION_AXES for keep in (False, True)]
    cases.append(Case(_label(name, "()"), lambda x, fn=fn: fn(x), (make(1).reshape(()),)))
    cases.append(Case(_label(name, "(5,)", "positional axis 0"), lambda x, fn=fn: fn(x, 0), (make(5),)))
    cases.append(Case(_label(name, "(4, 3)", "method-free keepdims"), lambda x, fn=fn: fn(x, -2, True), (make(4, 3),)))
    return cases


def _softmax_like(name: str) -> list[Case]:
    fn = getattr(tg, name)
    cases = [Case(_label(name, "(5,)", "default axis"), lambda x, fn=fn: fn(x), (normal(5),))]
    for shape, axis in [((2, 3), -1), ((2, 3), 0), ((2, 3, 4), 1), ((2, 3, 4), (0, 2)), ((2, 3), (0, 1))]:
        cases.append(Case(_label(name, shape, f"axis={axis}"), lambda x, fn=fn, axis=axis: fn(x, axis=axis),
                          (normal(*shape),)))
    return cases


def _scatter(label: str, shape: tuple[int, ...], index: Any, gshape: tuple[int, ...]) -> Case:
    """scatter_add with a stored index built by the same encoder getitem's binder uses."""
    stored, arrays = encode_index("getitem", index, lambda a: isinstance(a, np.ndarray))
    return Case(_label("scatter_add", label),
                lambda g: tg.scatter_add(g, *arrays, shape=shape, index=stored), (normal(*gshape),))


def _getitem(label: str, index: Any, shape: tuple[int, ...] = (4, 5)) -> Case:
    return Case(_label("getitem", label), lambda x: x[index], (normal(*shape),))


ROW_MASK = mask(4)
FULL_MASK = mask(4, 5)

SAMPLES: dict[str, list[Case]] = {
    # elementwise, broadcasting
    "add": [*_binary("add", normal, normal),
            Case("add[x + 2.5]", lambda x: x + 2.5, (normal(2, 3),)),
            Case("add[1 + x]", lambda x: 1 + x, (normal(3),))],
    "sub": [*_binary("sub", normal, normal),
            Case("sub[x - 2]", lambda x: x - 2, (normal(2, 3),)),
            Case("sub[1.5 - x]", lambda x: 1.5 - x, (normal(3),)),
            Case("sub[ones - x]", lambda x: np.ones((2, 3)) - x, (normal(3),))],
    "mul": [*_binary("mul", normal, normal),
            Case("mul[x * x]", lambda x: x * x, (normal(2, 3),)),
            Case("mul[3 * x]", lambda x: 3 * x, (normal(3),))],
    "div": [*_binary("div", normal, away_from_zero),
            Case("div[x / x]", lambda x: x / x, (away_from_zero(3),)),
            Case("div[1 / x]", lambda x: 1 / x, (away_from_zero(2, 3),))],
    "pow": [*_binary("pow", positive, normal),
            Case("pow[x ** 3, negative base]", lambda x: x**3, (normal(2, 3),)),
            Case("pow[x ** 0.5]", lambda x: x**0.5, (positive(4),)),
            Case("pow[2.0 ** x]", lambda x: 2.0**x, (normal(3),)),
            Case("pow[x ** x]", lambda x: x**x, (positive(3),))],
    "maximum": _grid_binary("maximum"),
    "minimum": _grid_binary("minimum"),
    "where": [
        Case("where[(2, 3) all]", lambda c, x, y: tg.where(c, x, y), (mask(2, 3), normal(2, 3), normal(2, 3))),
        Case("where[cond (2, 3), x (3,), y ()]", lambda c, x, y: tg.where(c, x, y), (mask(2, 3), normal(3), normal())),
        Case("where[cond (2, 1), x (1, 3), y (2, 3)]", lambda c, x, y: tg.where(c, x, y),
             (mask(2, 1), normal(1, 3), normal(2, 3))),
        Case("where[scalar branch]", lambda c, x: tg.where(c, x, 0.0), (mask(4),  normal(4))),
        Case("where[cond from comparison]", lambda x: tg.where(x > 0, x * x, -x), (away_from_zero(5),)),
    ],
    "clip": [
        Case("clip[-0.5, 0.5]", lambda x: tg.clip(x, -0.5, 0.5), (on_grid((3, 4), 0.25) / 2,)),
        Case("clip[None, 0.5]", lambda x: tg.clip(x, None, 0.5), (on_grid((3, 4), 0.25) / 2,)),
        Case("clip[-0.5, None]", lambda x: tg.clip(x, -0.5, None), (on_grid((3, 4), 0.25) / 2,)),
        Case("clip[array bounds]", lambda x, lo, hi: tg.clip(x, lo, hi),
             (on_grid((2, 3), 0.25), on_grid((3,), 0.75) - 1.0, on_grid((2, 1), 0.75) + 1.0)),
    ],
    # elementwise, unary
    "neg": [*_unary("neg", normal), Case("neg[-x]", lambda x: -x, (normal(3),))],
    "exp": _unary("exp", normal),
    "log": _unary("log", positive),
    "sin": _unary("sin", normal),
    "cos": _unary("cos", normal),
    "tan": _unary("tan", lambda *s: np.asarray(RNG.uniform(-1.2, 1.2, s))),
    "tanh": _unary("tanh", normal),
    "sqrt": _unary("sqrt", positive),
    "abs": [*_unary("abs", away_from_zero), Case("abs[abs()]", lambda x: abs(x), (away_from_zero(4),))],
    "sign": [*_unary("sign", away_from_zero), Case("sign[sign(x) * x]", lambda x: tg.sign(x) * x, (away_from_zero(5),))],
    "sigmoid": _unary("sigmoid", normal),
    "relu": _unary("relu", away_from_zero),
    "astype": [
        Case("astype[float64 -> float64]", lambda x: tg.astype(x, np.float64), (normal(2, 3),)),
        Case("astype[float64 -> float32 -> float64]", lambda x: tg.astype(tg.astype(x, np.float32), "float64"),
             (normal(2, 3),), order2=False, options={"eps": 1e-2, "rtol": 1e-3}),
        Case("astype[float32 output, method]", lambda x: x.astype("float32") * 2, (normal(4),),
             order2=False, options={"eps": 1e-2, "rtol": 1e-3}),
    ],
    # reductions
    "sum": [*_reduction("sum", normal), Case("sum[.sum(axis=1)]", lambda x: x.sum(axis=1), (normal(2, 3),))],
    "mean": _reduction("mean", normal),
    "max": _reduction("max", distinct),
    "min": _reduction("min", distinct),
    "logsumexp": [*_reduction("logsumexp", normal),
                  Case("logsumexp[large values]", lambda x: tg.logsumexp(x, axis=1), (normal(2, 3) + 500.0,))],
    "softmax": _softmax_like("softmax"),
    "log_softmax": _softmax_like("log_softmax"),
    # shapes
    "reshape": [
        Case("reshape[(2, 3) -> (3, 2)]", lambda x: tg.reshape(x, (3, 2)), (normal(2, 3),)),
        Case("reshape[(6,) -> (2, -1)]", lambda x: tg.reshape(x, (2, -1)), (normal(6),)),
        Case("reshape[(2, 3, 4) -> (-1, 4)]", lambda x: tg.reshape(x, (-1, 4)), (normal(2, 3, 4),)),
        Case("reshape[() -> (1, 1)]", lambda x: tg.reshape(x, (1, 1)), (normal(),)),
        Case("reshape[(1, 1) -> ()]", lambda x: tg.reshape(x, ()), (normal(1, 1),)),
        Case("reshape[method (3, 2)]", lambda x: x.reshape(3, 2), (normal(6),)),
        Case("reshape[method -1]", lambda x: x.reshape(-1), (normal(2, 3),)),
    ],
    "transpose": [
        Case("transpose[None 2-D]", lambda x: tg.transpose(x), (normal(2, 3),)),
        Case("transpose[None 3-D]", lambda x: tg.transpose(x), (normal(2, 3, 4),)),
        Case("transpose[(1, 0, 2)]", lambda x: tg.transpose(x, (1, 0, 2)), (normal(2, 3, 4),)),
        Case("transpose[(2, 0, 1)]", lambda x: tg.transpose(x, (2, 0, 1)), (normal(2, 3, 4),)),
        Case("transpose[(-1, 0, 1)]", lambda x: tg.transpose(x, (-1, 0, 1)), (normal(2, 3, 4),)),
        Case("transpose[.T]", lambda x: x.T, (normal(3, 2),)),
        Case("transpose[method axes]", lambda x: x.transpose(1, 2, 0), (normal(2, 3, 4),)),
    ],
    "broadcast_to": [
        Case(_label("broadcast_to", src, dst), lambda x, dst=dst: tg.broadcast_to(x, dst), (normal(*src),))
        for src, dst in [((3,), (2, 3)), ((2, 1), (2, 4)), ((), (2, 2)), ((1, 3), (4, 2, 3)), ((2, 3), (2, 3))]
    ],
    "sum_to": [
        Case(_label("sum_to", src, dst), lambda x, dst=dst: tg.sum_to(x, dst), (normal(*src),))
        for src, dst in [((2, 3), (3,)), ((2, 3), (2, 1)), ((4, 2, 3), (1, 3)), ((2, 3), ()), ((2, 3), (2, 3)),
                         ((4, 2, 3), (2, 1))]
    ],
    "matmul": [
        Case(_label("matmul", sa, sb), lambda a, b: tg.matmul(a, b), (normal(*sa), normal(*sb)))
        for sa, sb in [((2, 3), (3, 4)), ((3,), (3, 4)), ((2, 3), (3,)), ((3,), (3,)), ((5, 2, 3), (3, 4)),
                       ((2, 3), (5, 3, 4)), ((2, 1, 2, 3), (3, 3, 2)), ((3,), (5, 3, 4)), ((5, 2, 3), (3,)),
                       ((1, 2), (2, 1))]
    ] + [Case("matmul[a @ a.T]", lambda a: a @ a.T, (normal(2, 3),)),
         Case("matmul[ndarray @ x]", lambda b: np.ones((2, 3)) @ b, (normal(3, 2),))],
    "getitem": [
        _getitem("int", 1),
        _getitem("negative int", -1),
        _getitem("two ints -> 0-d", (1, 2)),
        _getitem("slice", slice(1, 3)),
        _getitem("column", (slice(None), 1)),
        _getitem("stepped slices", (slice(None, None, 2), slice(1, 4, 2))),
        _getitem("reversed", slice(None, None, -1)),
        _getitem("newaxis", None),
        _getitem("newaxis in middle", (slice(None), None, 2)),
        _getitem("Ellipsis", (Ellipsis, 0)),
        _getitem("int, Ellipsis, newaxis", (1, Ellipsis, None)),
        _getitem("Ellipsis 3-D", (0, Ellipsis, 1), (2, 3, 4)),
        _getitem("int array repeated", np.array([0, 0, 1, 3, 0])),
        _getitem("list repeated", [3, 1, 3]),
        _getitem("2-D int array", np.array([[0, 1], [1, 1]])),
        _getitem("two int arrays", (np.array([0, 2, 0]), np.array([1, 1, 1]))),
        _getitem("slice and int array", (slice(None), np.array([0, 0, 4]))),
        _getitem("negative int array", np.array([-1, -1, 0])),
        _getitem("bool mask full", FULL_MASK),
        _getitem("bool mask rows", ROW_MASK),
        _getitem("bool mask rows, column slice", (ROW_MASK, slice(1, 3))),
        Case("getitem[tg.getitem]", lambda x: tg.getitem(x, (slice(None), 0)), (normal(3, 2),)),
        Case("getitem[traced int index]", lambda x, i: x[i], (normal(5), np.array([4, 4, 0]))),
    ],
    "scatter_add": [
        _scatter("int array repeated", (5,), np.array([0, 0, 3]), (3,)),
        _scatter("column", (3, 4), (slice(None), 1), (3,)),
        _scatter("two int arrays", (3, 4), (np.array([0, 2, 0]), np.array([1, 1, 1])), (3,)),
        _scatter("int", (2, 3), 1, (3,)),
        _scatter("slice", (3, 4), slice(0, 2), (2, 4)),
        _scatter("Ellipsis and newaxis", (2, 3), (Ellipsis, None), (2, 3, 1)),
        Case("scatter_add[index array argument]",
             lambda g, i: tg.scatter_add(g, i, shape=(5,), index=(("array",),)), (normal(4), np.array([1, 1, 4, 1]))),
    ],
    "concatenate": [
        Case("concatenate[axis 0]", lambda a, b: tg.concatenate([a, b]), (normal(2, 3), normal(4, 3))),
        Case("concatenate[three, axis 1]", lambda a, b, c: tg.concatenate([a, b, c], axis=1),
             (normal(2, 3), normal(2, 1), normal(2, 2))),
        Case("concatenate[axis -1]", lambda a, b: tg.concatenate((a, b), -1), (normal(2, 2, 3), normal(2, 2, 1))),
        Case("concatenate[1-D with itself]", lambda a: tg.concatenate([a, a, a]), (normal(3),)),
        Case("concatenate[with ndarray]", lambda a: tg.concatenate([a, np.ones((1, 3))]), (normal(2, 3),)),
    ],
    "stack": [
        *(Case(f"stack[three (2, 3), axis {axis}]", lambda a, b, c, axis=axis: tg.stack([a, b, c], axis=axis),
               (normal(2, 3), normal(2, 3), normal(2, 3))) for axis in (0, 1, 2, -1)),
        Case("stack[0-d]", lambda a, b: tg.stack([a, b]), (normal(), normal())),
        Case("stack[with itself]", lambda a: tg.stack([a, a], 1), (normal(3),)),
    ],
}

for _name in COMPARISONS:
    SAMPLES[_name] = _grid_binary(_name)
SAMPLES["guard"] = [
    # The guarded value must not change under the finite-difference step: int() of a sum that is
    # 0.2 away from an integer, and the sign of elements at least 0.3 away from zero.
    Case("guard[int of sum, times x]", lambda x: tg.guard(tg.sum(x), 1, "int") * x, (np.array([0.5, 1.0]),)),
    Case("guard[bool of comparison]", lambda x: tg.guard(x[0] > 0, True, "bool") * x * x, (np.array([0.5, -1.0]),)),
]

def _run(cases: list[Case], order: int) -> None:
    failures = []
    for case in cases:
        try:
            check_grads(case.f, *case.args, order=order, **case.options)
        except Exception as exc:  # collect every failing case of the op, then report them all
            failures.append(f"{case.label}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_every_registry_op_has_samples() -> None:
    missing = sorted(set(REGISTRY) - set(SAMPLES))
    assert not missing, f"registry ops without gradient samples: {missing}"
    assert all(SAMPLES[name] for name in REGISTRY)


def test_samples_name_only_registry_ops() -> None:
    assert sorted(set(SAMPLES) - set(REGISTRY)) == []


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_gradient(name: str) -> None:
    if not SAMPLES.get(name):
        pytest.fail(f"no gradient samples for registry op {name!r}")
    _run(SAMPLES[name], order=1)


# Every differentiable op; cases marked order2=False (float32 round trips, which need a large
# finite-difference step) are left to the first-order test.
SECOND_ORDER = sorted(name for name in REGISTRY if REGISTRY[name].vjp is not None)


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_op_second_derivative(name: str) -> None:
    cases = [c for c in SAMPLES.get(name, []) if c.order2]
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
GRID_Y = on_grid((3,), 0.75)


def _nondiff_apply(name: str, x: Any) -> Any:
    """Apply non-differentiable op `name` to the (2, 3) float Variable or array `x`."""
    if name in COMPARISONS:
        return getattr(tg, name)(x, GRID_Y)
    if name == "sign":
        return tg.sign(x)
    if name == "guard":  # re-checks a value the recording observed: here int(sum(x))
        return tg.guard(tg.sum(x), GUARD_VALUE, "int")
    raise AssertionError(f"no non-differentiable sample for {name!r}: add one")


def _nondiff_expected(name: str, xd: np.ndarray) -> np.ndarray:
    """Independent numpy reference for `_nondiff_apply`."""
    if name in COMPARISONS:
        return np.asarray(getattr(np, name)(xd, GRID_Y))
    if name == "sign":
        return np.sign(xd)
    return np.array(True)


NONDIFF_X = on_grid((2, 3), 0.25)
GUARD_VALUE = int(float(NONDIFF_X.sum()))  # what int() of the recorded sum observes


def test_non_differentiable_ops_are_the_expected_ones() -> None:
    # An op silently losing its VJP rule would show up here.
    assert set(NON_DIFFERENTIABLE) == {*COMPARISONS, "sign", "guard"}


@pytest.mark.parametrize("name", NON_DIFFERENTIABLE)
def test_non_differentiable_op_gives_no_gradient(name: str) -> None:
    x = tg.Variable(NONDIFF_X.copy())
    out = _nondiff_apply(name, x)
    expected = _nondiff_expected(name, x.data)
    assert out.dtype == expected.dtype
    if name in COMPARISONS or name == "guard":
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
