"""The one table of op cases: every registry op's test inputs, shared by every per-op test.

`op_cases(seed)` maps each op name in `tapegrad.ops.REGISTRY` to a list of `Case`s: a function
of Variables that records the op, and its arguments drawn from `seed`.  The gradient sweep
(`test_op_gradients.py`) checks each case against finite differences; the replay sweeps
(`test_replay_backward.py`, `test_replay_jvp.py`) record each case on `op_cases(SEED)` and
replay it on the same case of `op_cases(SEED + 1)`: same shapes and dtypes, other values; the
format tests round-trip `record_case` of each op's first case.  Inputs are domain-safe and kept
away from kinks and ties by construction (values on offset grids).  Whatever a case bakes into
its function (index arrays, masks) is the same for every seed.

A new op needs one entry here; `test_registry.py` fails while an op has none.
This module holds no tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad.ops.spec import encode_index

SEED = 20240601
RNG = np.random.default_rng(SEED)  # the source of case inputs; op_cases(seed) reseeds it


@dataclass(frozen=True)
class Case:
    """`f(*args)` records the op; gradients check as `check_grads(f, *args, **options)`."""

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


def _branchy(a: Any) -> Any:
    """Python control flow on a value: records a `greater` and a `guard`."""
    if tg.sum(a) > 0:
        return a * a
    return -a


def op_cases(seed: int) -> dict[str, list[Case]]:
    """Every op's cases, with arguments drawn from `seed` (same structure for every seed)."""
    global RNG
    RNG = np.random.default_rng(seed)
    samples: dict[str, list[Case]] = {
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
        "logaddexp": [*_binary("logaddexp", normal, normal),
                      Case("logaddexp[np.logaddexp(x, 0.5)]", lambda x: np.logaddexp(x, 0.5), (normal(2, 3),))],
        "logaddexp2": _binary("logaddexp2", normal, normal),
        "arctan2": [*_binary("arctan2", away_from_zero, away_from_zero),
                    Case("arctan2[np.arctan2(1.0, x)]", lambda x: np.arctan2(1.0, x), (away_from_zero(4),))],
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
        "log1p": _unary("log1p", positive),
        "sin": _unary("sin", normal),
        "cos": _unary("cos", normal),
        "tan": _unary("tan", lambda *s: np.asarray(RNG.uniform(-1.2, 1.2, s))),
        "tanh": _unary("tanh", normal),
        "sqrt": _unary("sqrt", positive),
        "abs": [*_unary("abs", away_from_zero), Case("abs[abs()]", lambda x: abs(x), (away_from_zero(4),))],
        "sign": [*_unary("sign", away_from_zero), Case("sign[sign(x) * x]", lambda x: tg.sign(x) * x, (away_from_zero(5),))],
        "square": [*_unary("square", normal), Case("square[np.square]", lambda x: np.square(x), (normal(3),))],
        "expm1": [*_unary("expm1", normal), Case("expm1[np.expm1]", lambda x: np.expm1(x), (normal(3),))],
        "exp2": _unary("exp2", normal),
        "log2": _unary("log2", positive),
        "log10": _unary("log10", positive),
        "sinh": _unary("sinh", normal),
        "cosh": _unary("cosh", normal),
        "arcsin": _unary("arcsin", lambda *s: np.asarray(RNG.uniform(-0.8, 0.8, s))),
        "arccos": _unary("arccos", lambda *s: np.asarray(RNG.uniform(-0.8, 0.8, s))),
        "arctan": _unary("arctan", normal),
        "arcsinh": _unary("arcsinh", normal),
        "arccosh": _unary("arccosh", lambda *s: np.asarray(RNG.uniform(1.2, 3.0, s))),
        "arctanh": _unary("arctanh", lambda *s: np.asarray(RNG.uniform(-0.8, 0.8, s))),
        **{name: [*_unary(name, lambda *s: on_grid(s, 0.25)),
                  Case(f"{name}[{name}(x) * x]", lambda x, fn=getattr(tg, name): fn(x) * x, (on_grid((5,), 0.25),))]
           for name in ("floor", "ceil", "trunc", "rint")},
        "sigmoid": _unary("sigmoid", normal),
        "relu": _unary("relu", away_from_zero),
        "astype": [
            Case("astype[float64 -> float64]", lambda x: tg.astype(x, np.float64), (normal(2, 3),)),
            Case("astype[float64 -> float32 -> float64]", lambda x: tg.astype(tg.astype(x, np.float32), "float64"),
                 (normal(2, 3),), order2=False, options={"eps": 1e-2, "rtol": 1e-3}),
            Case("astype[float32 output, method]", lambda x: x.astype("float32") * 2, (normal(4),),
                 order2=False, options={"eps": 1e-2, "rtol": 1e-3}),
        ],
        "cumsum": [
            *(Case(_label("cumsum", "(2, 3, 4)", f"axis={axis}"), lambda x, axis=axis: tg.cumsum(x, axis),
                   (normal(2, 3, 4),)) for axis in (0, 1, -1)),
            Case("cumsum[(5,)]", lambda x: tg.cumsum(x, axis=0), (normal(5),)),
            Case("cumsum[np.cumsum flattens]", lambda x: np.cumsum(x), (normal(2, 3),)),
        ],
        # reductions
        "sum": [*_reduction("sum", normal), Case("sum[.sum(axis=1)]", lambda x: x.sum(axis=1), (normal(2, 3),))],
        "mean": _reduction("mean", normal),
        "prod": [*_reduction("prod", away_from_zero),
                 Case("prod[one zero]", lambda x: tg.prod(x, axis=1), (np.array([[0.0, 1.5, -2.0], [0.7, 1.1, 0.9]]),)),
                 # (two exact zeros in a slice: first derivatives only, see the rule's docstring)
                 Case("prod[two zeros]", lambda x: tg.prod(x), (np.array([0.0, 1.5, 0.0]),), order2=False),
                 Case("prod[np.prod]", lambda x: np.prod(x, axis=0), (away_from_zero(3, 2),))],
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

    for name in COMPARISONS:
        samples[name] = _grid_binary(name)
    samples["guard"] = [
        # The guarded value must not change under the finite-difference step: int() of a sum that is
        # 0.2 away from an integer, and the sign of elements at least 0.3 away from zero.
        Case("guard[int of sum, times x]", lambda x: tg.guard(tg.sum(x), 1, "int") * x, (np.array([0.5, 1.0]),)),
        Case("guard[bool of comparison]", lambda x: tg.guard(x[0] > 0, True, "bool") * x * x, (np.array([0.5, -1.0]),)),
    ]
    samples["astype"].append(Case("astype[float32 input]", lambda x: tg.astype(x, np.float64) * 3.0,
                                  (normal(4).astype(np.float32),), order2=False))
    samples["guard"].append(Case("guard[if sum(x) > 0]", _branchy, (positive(2, 3),)))
    samples["shape_guard"] = [
        Case("shape_guard[x * len(x)]", lambda x: x * float(len(x)), (normal(3, 2),)),
        Case("shape_guard[x.shape read, reshape]", lambda x: tg.reshape(x, (x.shape[0] * x.shape[1],)), (normal(2, 3),)),
        Case("shape_guard[tg.shape_guard]", lambda x: tg.where(tg.shape_guard(x, (4,)), x, 0.0), (normal(4),)),
    ]
    return samples


CASES = op_cases(SEED)


def arg_names(args: tuple[Any, ...]) -> list[str]:
    return [f"a{k}" for k in range(len(args))]


def record_case(case: Case, args: tuple[Any, ...] | None = None, values: str = "all") -> tuple[tg.Tape, Any]:
    """Record `case.f` (on `args`, default the case's own) with the arguments as input Variables
    named `a0, a1, ...`; the result is named `out`."""
    args = case.args if args is None else args
    with tg.record(values=values) as tape:
        out = case.f(*[tg.Variable(np.asarray(a), name=n) for a, n in zip(args, arg_names(args), strict=True)])
        out.name = "out"
    return tape, out


def roundtrip(tape: tg.Tape) -> tg.Tape:
    """The tape as another process would see it: written to bytes and read back."""
    return tg.loads(tg.dumps(tape))


def op_tape(op: str) -> tg.Tape:
    """One small tape per op for the format tests: the op's first case recorded on inputs
    `a0, a1, ...`, summed (after a cast, for a non-float result) to a float64 scalar `out`."""
    case = CASES[op][0]
    with tg.record() as tape:
        out = case.f(*[tg.Variable(np.asarray(a), name=n) for a, n in zip(case.args, arg_names(case.args), strict=True)])
        out = tg.sum(out if out.dtype.kind == "f" else out.astype(np.float64))
        out.name = "out"
    return tape
