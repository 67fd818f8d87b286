"""Nested differentiation, complex inputs and constant results (issue 16).

A gradient taken inside a function that is itself being differentiated must keep its dependence
on the outer function's inputs, whether it reaches them through its argument or through a
closure: `grad(lambda x: x * grad(lambda y: x * y)(2.0))(1.0)` is 2.0.

Programs are small expression trees (`Expr` below) that can be run two ways: with tapegrad
(`run`: every nested differentiation is a real `tg.grad`, `tg.value_and_grad`, `tg.hessian` or
`y.backward()` call on a Python closure) and as a reference (`lower`: every nested
differentiation is replaced by its symbolic derivative, which leaves a plain expression in the
outermost variable, evaluated in float64).  The outermost gradient is checked against both the
symbolic derivative and five-point central differences of the reference, so the reference itself
is checked too.

`test_random_nested_programs` draws random programs (random op chains, 1 to 4 levels of
differentiation, closures over variables 1 to 3 levels out, inner calls on plain numbers, on
expressions of Variables and on enclosing variables themselves) with the suite's small budget.
For a long run set `TAPEGRAD_NESTED_EXAMPLES`, as `TAPEGRAD_FUZZ_EXAMPLES` does for the fuzzer:
`TAPEGRAD_NESTED_EXAMPLES=5000 python -m pytest tests/test_nested_grad.py`.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import DTypeError, TapegradError, Variable, nesting

EXAMPLES = int(os.environ.get("TAPEGRAD_NESTED_EXAMPLES", "60"))

# ---- the issue's examples -------------------------------------------------------------------


def test_issue16_inner_grad_keeps_its_dependence_on_the_outer_variable() -> None:
    # d/dx [x * d/dy (x y)] = d/dx x^2 = 2x
    g = tg.grad(lambda x: x * tg.grad(lambda y: x * y)(2.0))(1.0)
    assert type(g) is np.ndarray and g.dtype == np.float64 and g.shape == ()
    assert g == 2.0


def test_issue16_perturbation_confusion_does_not_happen() -> None:
    # d/dx [x * (d/dy (x + y))|_{y=1}] = d/dx x = 1
    assert tg.grad(lambda x: x * tg.grad(lambda y: x + y)(1.0))(1.0) == 1.0
    # ... also when the inner function is called on the outer variable itself: d/dy (x y) = x
    # (the inner grad differentiates its own argument, not the closure over the same x)
    assert tg.grad(lambda x: tg.grad(lambda y: x * y)(x))(1.0) == 1.0
    assert tg.grad(lambda x: x * tg.grad(lambda y: x * y)(x))(3.0) == 6.0


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


def test_issue16_constant_results_inside_differentiation_and_recording_are_variables() -> None:
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


# ---- programs: tapegrad and a symbolic reference ---------------------------------------------

# ("const", c) | ("var", level) | (unary, a) | (binary, a, b)
# | ("nest", level, body, arg, how): d/dv_level of `body` at v_level = `arg`, taken with `how`
Expr = tuple[Any, ...]
UNARY = ("sin", "cos", "tanh", "expsin", "neg")  # expsin(a) = exp(sin(a)): exp of small values
BINARY = ("add", "sub", "mul")
HOWS = ("grad", "value_and_grad", "hessian", "backward")
ZERO: Expr = ("const", 0.0)
ONE: Expr = ("const", 1.0)
_NUMERIC: dict[str, Callable[..., float]] = {
    "sin": math.sin, "cos": math.cos, "tanh": math.tanh, "expsin": lambda a: math.exp(math.sin(a)),
    "neg": lambda a: -a, "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
}


_memo = lru_cache(maxsize=1 << 16)  # derivatives and substitutions share subtrees: keeps lowering fast


def make(op: str, *args: Expr) -> Expr:
    """A node, with constants folded and zeros and ones simplified away (keeps derivatives small)."""
    if all(a[0] == "const" for a in args):
        return ("const", _NUMERIC[op](*(a[1] for a in args)))
    if op == "add":
        return args[1] if args[0] == ZERO else args[0] if args[1] == ZERO else ("add", *args)
    if op == "sub":
        return make("neg", args[1]) if args[0] == ZERO else args[0] if args[1] == ZERO else ("sub", *args)
    if op == "mul":
        if ZERO in args:
            return ZERO
        return args[1] if args[0] == ONE else args[0] if args[1] == ONE else ("mul", *args)
    if op == "neg" and args[0][0] == "neg":
        return args[0][1]  # type: ignore[no-any-return]
    return (op, *args)


@_memo
def diff(e: Expr, level: int) -> Expr:
    """d e / d v_level (e has no "nest" nodes)."""
    op = e[0]
    if op == "const":
        return ZERO
    if op == "var":
        return ONE if e[1] == level else ZERO
    if op in BINARY:
        a, b = e[1], e[2]
        if op == "mul":
            return make("add", make("mul", diff(a, level), b), make("mul", a, diff(b, level)))
        return make(op, diff(a, level), diff(b, level))
    a = e[1]
    da = diff(a, level)
    if da == ZERO:
        return ZERO
    outer = {
        "sin": lambda: make("cos", a),
        "cos": lambda: make("neg", make("sin", a)),
        "tanh": lambda: make("sub", ONE, make("mul", e, e)),
        "expsin": lambda: make("mul", e, make("cos", a)),
        "neg": lambda: ("const", -1.0),
    }[op]()
    return make("mul", outer, da)


@_memo
def subst(e: Expr, level: int, value: Expr) -> Expr:
    """`e` with v_level replaced by `value`."""
    if e[0] == "var":
        return value if e[1] == level else e
    if e[0] == "const":
        return e
    return make(e[0], *(subst(a, level, value) for a in e[1:]))


@_memo
def lower(e: Expr) -> Expr:
    """`e` with every nested differentiation replaced by its symbolic result."""
    op = e[0]
    if op in ("const", "var"):
        return e
    if op != "nest":
        return make(op, *(lower(a) for a in e[1:]))
    _, level, body, arg, how = e
    b, a = lower(body), lower(arg)
    d = diff(b, level)
    if how == "hessian":
        return subst(diff(d, level), level, a)
    if how == "value_and_grad":
        return make("add", subst(b, level, a), subst(d, level, a))
    return subst(d, level, a)


def evaluate(e: Expr, x: float) -> float:
    """A lowered program (a function of v1 only) at v1 = x, in float64."""
    op = e[0]
    if op == "const":
        return float(e[1])
    if op == "var":
        assert e[1] == 1, "a lowered program depends on the outermost variable only"
        return x
    return _NUMERIC[op](*(evaluate(a, x) for a in e[1:]))


def run(e: Expr, env: dict[int, Any]) -> Any:
    """The program with tapegrad: each "nest" node is a real differentiation of a closure."""
    op = e[0]
    if op == "const":
        return e[1]  # a Python float: exercises scalar promotion and constant results
    if op == "var":
        return env[e[1]]
    if op == "nest":
        return _run_nested(e, env)
    args = [run(a, env) for a in e[1:]]
    if op == "expsin":
        return tg.exp(tg.sin(args[0]))
    if op in ("sin", "cos", "tanh"):
        return getattr(tg, op)(args[0])
    if op == "neg":
        return -args[0]
    a, b = args
    return a + b if op == "add" else a - b if op == "sub" else a * b


def _run_nested(e: Expr, env: dict[int, Any]) -> Any:
    _, level, body, arg, how = e

    def inner(y: Any) -> Any:  # closes over every enclosing level's variable through `env`
        return run(body, {**env, level: y})

    a = run(arg, env)
    if how == "grad":
        return tg.grad(inner)(a)
    if how == "value_and_grad":
        value, g = tg.value_and_grad(inner)(a)
        return value + g
    if how == "hessian":
        return tg.hessian(inner)(a)
    y = tg.Variable(np.array(a, dtype=np.float64))  # "backward": `arg` is a plain number
    out = inner(y)
    if not isinstance(out, Variable):
        out = y * 0.0 + out
    y.cleargrad()  # a backward() nested in `inner` accumulates into y too: every leaf it depends on
    out.backward()
    return 0.0 if y.grad is None else y.grad


def central_difference(f: Callable[[float], float], x: float) -> tuple[float, float]:
    """A five-point central difference of `f` at `x` in float64, and a bound on its error.

    The error (~h^4 f^(5) / 30, plus rounding ~1e-16 |f| / h) is estimated from the same
    difference at twice the step, so programs with large high derivatives do not need a looser
    tolerance for all, and a wrong derivative (off by far more than that) still fails.
    """
    def five_point(h: float) -> float:
        return (-f(x + 2 * h) + 8 * f(x + h) - 8 * f(x - h) + f(x - 2 * h)) / (12 * h)

    fine, coarse = five_point(5e-4), five_point(1e-3)
    return fine, 1e-7 * (1.0 + abs(fine)) + abs(fine - coarse)


def _close(got: Any, want: float, rtol: float, atol: float = 0.0) -> None:
    assert abs(float(got) - want) <= atol + rtol * (1.0 + abs(want)), f"got {float(got)!r}, want {want!r}"


def check(program: Expr, x0: float, where: str, x1: float = 0.3) -> None:
    """Value and gradient of `program` at `x0` against the reference, run `where`:
    "eager" (numpy in, numpy out), "record" (inside `record()`), or "replay" (recorded, saved,
    loaded, then replayed forward at `x1` and backward)."""
    reference = lower(program)
    derivative = diff(reference, 1)
    value_ref, grad_ref = evaluate(reference, x0), evaluate(derivative, x0)
    numeric, error = central_difference(lambda x: evaluate(reference, x), x0)
    _close(grad_ref, numeric, 0.0, error)  # the symbolic reference agrees with central differences

    def f(x: Any) -> Any:
        return run(program, {1: x})

    if where == "eager":
        value, g = tg.value_and_grad(f)(x0)
        assert type(value) is np.ndarray and type(g) is np.ndarray and g.dtype == np.float64 and g.shape == ()
    else:
        with tg.record() as tape:
            value, g = tg.value_and_grad(f)(tg.Variable(np.array(x0), name="x"))
            value.name, g.name = "f", "g"
        assert isinstance(value, Variable) and isinstance(g, Variable)
        value, g = value.data, g.data
        if where == "replay":
            t = tg.loads(tg.dumps(tape))
            out = tg.replay.forward(t, inputs={"x": np.array(x1)}, outputs=["f", "g"])
            _close(out["f"], evaluate(reference, x1), 1e-9)
            _close(out["g"], evaluate(derivative, x1), 1e-9)
            _close(tg.replay.backward(t, of="f", wrt="x")["x"], grad_ref, 1e-9)
    assert nesting.active() is False
    _close(value, value_ref, 1e-9)
    _close(g, grad_ref, 1e-9)
    _close(g, numeric, 0.0, error)


# ---- every combination the issue lists ----------------------------------------------------------


def v(level: int) -> Expr:
    return ("var", level)


def chain_program(levels_out: int, how: str, arg_kind: str) -> Expr:
    """v1 * d/dv2 (... d/dv_n (v1 * v1 * sin(v_n) + v_n * v_n) ...), n = levels_out + 1.

    The innermost body closes over v1, `levels_out` levels out; the innermost differentiation is
    `how`, called on a plain number, on an expression of the enclosing Variable, or on the
    outermost variable itself; the levels in between are `grad`s called on their own variable.
    """
    n = levels_out + 1
    body: Expr = ("add", ("mul", ("mul", v(1), v(1)), ("sin", v(n))), ("mul", v(n), v(n)))
    arg = {"plain": ("const", 0.7), "expression": ("sin", v(n - 1)), "outer": v(1)}[arg_kind]
    node: Expr = ("nest", n, body, arg, how)
    for level in range(n - 1, 1, -1):
        node = ("nest", level, ("mul", node, ("cos", v(level))), ("mul", v(level - 1), ("const", 0.5)), "grad")
    return ("mul", v(1), node)


COMBINATIONS = [(levels_out, how, arg_kind, where)
                for levels_out in (1, 2, 3) for how in HOWS for arg_kind in ("plain", "expression", "outer")
                for where in ("eager", "record", "replay") if how != "backward" or arg_kind == "plain"]


@pytest.mark.parametrize(("levels_out", "how", "arg_kind", "where"), COMBINATIONS,
                         ids=["-".join(map(str, c)) for c in COMBINATIONS])
def test_inner_differentiation_keeps_the_outer_dependence(levels_out: int, how: str, arg_kind: str, where: str) -> None:
    check(chain_program(levels_out, how, arg_kind), 0.8, where)


def test_backward_inside_a_differentiated_function_gives_variables_that_keep_the_dependence() -> None:
    seen: list[Any] = []

    def f(x: Any) -> Any:
        y = tg.Variable(np.array(2.0))
        z = x * y * y
        z.backward()  # y.grad = 4x, a Variable on x's graph
        z.backward()  # accumulates: 8x
        seen.append(y.grad)
        return x * y.grad  # 8 x^2

    assert tg.grad(f)(1.5) == 24.0
    assert isinstance(seen[0], Variable) and seen[0].data == 12.0
    x = tg.Variable(np.array(1.5))
    (x * x).backward()  # at top level: numpy, as before
    assert type(x.grad) is np.ndarray and x.grad == 3.0


def test_hessian_inside_grad_and_at_top_level() -> None:
    # hessian of x * y^3 in y at y = x is 6 x^2; its derivative in x is 12 x
    assert tg.grad(lambda x: tg.sum(tg.hessian(lambda y: x * y * y * y)(x)))(1.0) == 12.0
    h = tg.hessian(lambda a, b: tg.sum(a * b * b), argnums=-1)(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert type(h) is np.ndarray
    np.testing.assert_array_equal(h, np.diag([2.0, 4.0]))


def test_replay_inside_a_differentiated_function_stays_on_its_graph() -> None:
    with tg.record() as tape:
        a = tg.Variable(np.array(2.0), name="a")
        c = tg.sin(a) * a
        c.name = "c"
    t = tg.loads(tg.dumps(tape))
    p = 0.5
    d1 = tg.grad(lambda x: tg.replay.forward(t, inputs={"a": x}, outputs=["c"])["c"])(p)
    d2 = tg.grad(lambda x: tg.replay.backward(t, of="c", wrt="a", inputs={"a": x})["a"])(p)
    np.testing.assert_allclose(d1, np.sin(p) + p * np.cos(p), rtol=1e-15)
    np.testing.assert_allclose(d2, 2 * np.cos(p) - p * np.sin(p), rtol=1e-15)


def test_the_differentiation_level_is_per_thread_and_reset_after_errors() -> None:
    results: list[Any] = []

    def f(x: Any) -> Any:
        assert nesting.active()
        thread = threading.Thread(target=lambda: results.append((nesting.active(), tg.grad(lambda y: y * y)(3.0))))
        thread.start()
        thread.join()
        return x * x

    tg.grad(f)(1.0)
    assert results[0][0] is False and type(results[0][1]) is np.ndarray
    with pytest.raises(ZeroDivisionError):
        tg.grad(lambda x: 1 / 0)(1.0)
    assert nesting.active() is False
    assert type(tg.grad(lambda x: x * x)(1.0)) is np.ndarray


def test_check_grads_sees_nested_programs_right() -> None:
    from tapegrad.testing import check_grads

    check_grads(lambda x: x * tg.grad(lambda y: tg.sum(x * tg.sin(y)))(np.array([0.3, 0.5])), np.array([1.0, 2.0]), order=2)


# ---- random programs ---------------------------------------------------------------------------

CONSTANTS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


def leaves(level: int) -> st.SearchStrategy[Expr]:
    return st.one_of(st.integers(1, level).map(v), CONSTANTS.map(lambda c: ("const", c)))


@st.composite
def bodies(draw: Any, level: int, depth: int) -> Expr:
    """A random op chain over v1..v_level, with one differentiation nested in it when level < depth."""
    nested = draw(nests(level + 1, depth)) if level < depth else None
    steps = draw(st.integers(1, 3))
    enter = draw(st.integers(0, steps)) if nested is not None else -1  # where the nested result joins
    e: Expr = nested if enter == 0 and nested is not None else draw(leaves(level))
    for step in range(1, steps + 1):
        if step == enter and nested is not None:
            op = draw(st.sampled_from(BINARY))
            e = (op, e, nested) if draw(st.booleans()) else (op, nested, e)
            continue
        op = draw(st.sampled_from(UNARY + BINARY))
        e = (op, e) if op in UNARY else (op, e, draw(leaves(level)))
    return e


@st.composite
def nests(draw: Any, level: int, depth: int) -> Expr:
    """A differentiation with respect to v_level of a random body, called on a plain number, an
    enclosing Variable, or an expression of one."""
    how = draw(st.sampled_from(HOWS))
    body = draw(bodies(level, depth))
    constant = CONSTANTS.map(lambda c: ("const", c))
    enclosing = st.integers(1, level - 1).map(v)
    if how == "backward":
        arg = draw(constant)
    else:
        arg = draw(st.one_of(constant, enclosing, enclosing.map(lambda e: ("sin", e))))
    return ("nest", level, body, arg, how)


@st.composite
def programs(draw: Any) -> Expr:
    return draw(bodies(1, draw(st.integers(1, 4))))  # 1 to 4 levels of differentiation in all


@settings(max_examples=EXAMPLES)
@given(program=programs(), x0=st.floats(-1.2, 1.2), x1=st.floats(-1.2, 1.2),
       where=st.sampled_from(["eager", "record", "replay"]))
def test_random_nested_programs(program: Expr, x0: float, x1: float, where: str) -> None:
    check(program, x0, where, x1)
