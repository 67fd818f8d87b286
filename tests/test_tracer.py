"""The tracer: aliasing, operators, argument kinds, dtypes, errors, recording and replay."""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapegrad as tg
from tapegrad import TapegradError, Variable
from tapegrad.ops import REGISTRY

# ---- aliasing: reused variables get summed gradients in fresh arrays --------------------------


def test_x_plus_x_gradient_is_not_the_seed() -> None:
    x = Variable(np.array([1.0, 2.0, 3.0]))
    y = x + x
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(y.grad, [1.0, 1.0, 1.0])
    assert x.grad is not y.grad
    assert not np.shares_memory(x.grad, y.grad)
    x.grad[0] = 100.0  # mutating one gradient leaves the other alone
    np.testing.assert_array_equal(y.grad, [1.0, 1.0, 1.0])


def test_triple_reuse_sums_to_three() -> None:
    x = Variable(np.array([3.0, -1.0]))
    tg.add(tg.add(x, x), x).backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_square_by_self_multiplication() -> None:
    x = Variable(np.array([3.0, -1.5, 0.25]))
    tg.sum(x * x).backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data)


def test_reuse_through_two_paths() -> None:
    x = Variable(np.array([0.5, 2.0]))
    y = x * 3.0
    tg.sum(y * y + y).backward()
    np.testing.assert_allclose(x.grad, 3.0 * (2 * 3.0 * x.data + 1.0), rtol=1e-15)


def test_reuse_in_matmul() -> None:
    a = np.array([[1.0, 2.0], [-0.5, 3.0]])
    x = Variable(a)
    tg.sum(x @ x).backward()
    ones = np.ones((2, 2))
    np.testing.assert_allclose(x.grad, ones @ a.T + a.T @ ones, rtol=1e-15)

    b = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    x = Variable(b)
    tg.sum(x @ x.T).backward()  # d/dx sum(x x^T) = (G + G^T) x with G = ones
    np.testing.assert_allclose(x.grad, 2 * np.ones((2, 2)) @ b, rtol=1e-15)


IDENTITY_LIKE: list[tuple[str, Callable[[Variable], Variable]]] = [
    ("reshape", lambda x: x.reshape(3)),
    ("astype same", lambda x: tg.astype(x, np.float64)),
    ("broadcast_to same", lambda x: tg.broadcast_to(x, (3,))),
    ("sum_to same", lambda x: tg.sum_to(x, (3,))),
    ("transpose 1-D", lambda x: x.T),
    ("getitem all", lambda x: x[...]),
    ("add", lambda x: x + 0.0),
    ("mul by one", lambda x: x * 1.0),
    ("concatenate one", lambda x: tg.concatenate([x])),
]


@pytest.mark.parametrize("f", [f for _, f in IDENTITY_LIKE], ids=[n for n, _ in IDENTITY_LIKE])
def test_pass_through_gradients_do_not_alias_the_seed(f: Callable[[Variable], Variable]) -> None:
    x = Variable(np.array([1.0, 2.0, 3.0]))
    y = f(x)
    y.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])
    assert not np.shares_memory(x.grad, y.grad)
    assert x.grad.flags.writeable


def test_two_leaves_sharing_a_cotangent_get_separate_arrays() -> None:
    a, b = Variable(np.array([1.0, 2.0])), Variable(np.array([3.0, 4.0]))
    y = a + b
    y.backward()
    assert not np.shares_memory(a.grad, b.grad)
    assert not np.shares_memory(a.grad, y.grad)
    a.grad += 1.0
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


# ---- operators ---------------------------------------------------------------------------------

A = np.array([[0.5, 1.5, 2.0], [3.0, 0.25, 1.0]])
B = np.array([1.0, 1.5, 0.5])

BINARY_OPERATORS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("+", operator.add), ("-", operator.sub), ("*", operator.mul), ("/", operator.truediv),
    ("**", operator.pow), ("==", operator.eq), ("!=", operator.ne), ("<", operator.lt),
    ("<=", operator.le), (">", operator.gt), (">=", operator.ge),
]


def _operand(kind: str, array: np.ndarray) -> tuple[Any, Any]:
    """(argument, numpy equivalent) for a Variable, an ndarray, a Python float or a Python int."""
    return {"V": (Variable(array), array), "A": (array, array), "S": (1.5, 1.5), "I": (2, 2)}[kind]


@pytest.mark.parametrize("op", [f for _, f in BINARY_OPERATORS], ids=[n for n, _ in BINARY_OPERATORS])
@pytest.mark.parametrize("kinds", ["VV", "VA", "AV", "VS", "SV", "VI", "IV"])
def test_binary_operators_match_numpy(op: Callable[[Any, Any], Any], kinds: str) -> None:
    left, lraw = _operand(kinds[0], A)
    right, rraw = _operand(kinds[1], B)
    out = op(left, right)
    assert isinstance(out, Variable)
    expected = np.asarray(op(lraw, rraw))
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out.data, expected)


def test_matmul_operator_both_sides() -> None:
    w = np.arange(6.0).reshape(3, 2)
    for left, right in [(Variable(A), Variable(w)), (Variable(A), w), (A, Variable(w))]:
        out = left @ right
        assert isinstance(out, Variable)
        np.testing.assert_array_equal(out.data, A @ w)


def test_reflected_operators_with_numpy_on_the_left() -> None:
    x = Variable(B)
    for out, expected in [(np.ones(3) + x, np.ones(3) + B), (np.ones(3) - x, np.ones(3) - B),
                          (np.full(3, 2.0) * x, 2.0 * B), (np.ones(3) / x, 1 / B),
                          (np.full(3, 2.0) ** x, 2.0**B), (np.ones((2, 3)) @ x, np.ones((2, 3)) @ B),
                          (np.ones(3) < x, np.ones(3) < B), (np.ones(3) == x, np.ones(3) == B)]:
        assert isinstance(out, Variable), type(out)
        np.testing.assert_array_equal(out.data, expected)


def test_reflected_operator_gradients() -> None:
    x = Variable(np.array([1.0, 2.0, 4.0]))
    tg.sum(2.0 - x).backward()
    np.testing.assert_array_equal(x.grad, [-1.0, -1.0, -1.0])
    x.cleargrad()
    tg.sum(np.ones(3) / x).backward()
    np.testing.assert_allclose(x.grad, -1 / x.data**2, rtol=1e-15)
    x.cleargrad()
    tg.sum(3**x).backward()
    np.testing.assert_allclose(x.grad, 3.0**x.data * np.log(3.0), rtol=1e-14)


def test_unary_operators_and_methods() -> None:
    x = Variable(A)
    cases = [
        (-x, -A), (abs(-x), A), (x.T, A.T), (x.reshape(3, 2), A.reshape(3, 2)),
        (x.reshape((3, 2)), A.reshape(3, 2)), (x.reshape(-1), A.reshape(-1)), (x.transpose(), A.T),
        (x.transpose(1, 0), A.T), (x.transpose((1, 0)), A.T), (x.sum(), A.sum()),
        (x.sum(axis=0), A.sum(axis=0)), (x.sum(1, keepdims=True), A.sum(1, keepdims=True)),
        (x[1], A[1]), (x[:, 1:], A[:, 1:]), (x[..., None], A[..., None]), (x[[1, 1, 0]], A[[1, 1, 0]]),
        (x[A > 1], A[A > 1]),
    ]
    for out, expected in cases:
        assert isinstance(out, Variable)
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out.data, expected)


def test_comparisons_are_elementwise_and_variables_hash_by_identity() -> None:
    x, y = Variable(np.array([1.0, 2.0])), Variable(np.array([1.0, 2.0]))
    eq = x == y
    assert isinstance(eq, Variable)
    assert eq.dtype == np.bool_
    np.testing.assert_array_equal(eq.data, [True, True])
    table = {x: "x", y: "y"}
    assert table[x] == "x" and table[y] == "y"
    assert len({x, y, x}) == 2


def test_comparisons_carry_no_gradient() -> None:
    x = Variable(np.array([1.0, -2.0, 3.0]))
    y = tg.where(x > 0, x, 0.0) + tg.astype(x > 0, np.float64)
    tg.sum(y).backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 1.0])


# ---- every op accepts Variables, arrays and Python scalars in any position --------------------

SIMPLE_OPS = sorted(name for name, spec in REGISTRY.items() if spec.simple)

# numpy's function of the op's own name is the reference, except for these.
NUMPY_REFERENCE: dict[str, Callable[..., Any]] = {
    "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "neg": np.negative,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0),
}


def numpy_reference(name: str) -> Callable[..., Any]:
    reference = NUMPY_REFERENCE.get(name, getattr(np, name, None))
    assert callable(reference), f"add a numpy reference for {name} to NUMPY_REFERENCE"
    return reference


def _argument_sets(name: str) -> list[tuple[Any, ...]]:
    if name == "matmul":
        return [(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -1.0]))]
    if name == "where":
        return [(np.array([True, False, True]), np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0, -3.0])),
                (True, 2.0, 3.0)]
    arity = REGISTRY[name].arity
    if name in ("arcsin", "arccos", "arctanh"):  # (their domain is (-1, 1))
        return [(np.array([-0.5, 0.25, 0.75]),), (0.5,)]
    if name == "arccosh":
        return [(np.array([1.5, 2.25, 3.0]),), (1.75,)]
    return [tuple(np.array([0.5, 1.25, 2.0]) + k for k in range(arity)), tuple(0.75 + k for k in range(arity))]


@pytest.mark.parametrize("name", SIMPLE_OPS)
def test_simple_op_accepts_every_argument_kind_in_every_position(name: str) -> None:
    reference = numpy_reference(name)
    fn = getattr(tg, name)
    arity = REGISTRY[name].arity
    for values in _argument_sets(name):
        arrays = [np.asarray(v) for v in values]
        expected = reference(*arrays)
        scalar_ok = all(a.ndim == 0 for a in arrays)
        for mask in range(3**arity):
            kinds = [(mask // 3**k) % 3 for k in range(arity)]  # 0 Variable, 1 ndarray, 2 scalar
            if not scalar_ok and 2 in kinds:
                continue
            args = [Variable(a) if kind == 0 else a if kind == 1 else a.item() for a, kind in zip(arrays, kinds)]
            out = fn(*args)
            assert isinstance(out, Variable), (name, kinds)
            np.testing.assert_allclose(out.data, expected, rtol=1e-15, err_msg=f"{name} {kinds}")


def test_scalars_mix_with_array_operands() -> None:
    x = np.array([1.0, 2.0])
    for out, expected in [(tg.add(x, 1), x + 1), (tg.mul(2.5, x), 2.5 * x), (tg.pow(x, 2), x**2),
                          (tg.maximum(1.5, Variable(x)), np.maximum(1.5, x)), (tg.where(x > 1.5, 0.0, x), [1.0, 0.0]),
                          (tg.clip(Variable(x), 1.25, 1.75), [1.25, 1.75])]:
        assert isinstance(out, Variable)
        np.testing.assert_array_equal(out.data, expected)


def test_attribute_ops_accept_plain_arrays() -> None:
    a = np.arange(6.0).reshape(2, 3)
    w = np.ones((3, 2))
    cases = [
        (tg.sum(a, axis=1), a.sum(axis=1)), (tg.mean(a), a.mean()), (tg.max(a, 0), a.max(0)),
        (tg.reshape(a, (3, 2)), a.reshape(3, 2)), (tg.transpose(a), a.T), (tg.matmul(a, w), a @ w),
        (tg.broadcast_to(np.ones(3), (2, 3)), np.ones((2, 3))), (tg.sum_to(a, (3,)), a.sum(0)),
        (tg.getitem(a, (1, slice(None, 2))), a[1, :2]), (tg.concatenate([a, Variable(a)]), np.concatenate([a, a])),
        (tg.stack([Variable(np.array(1.0)), np.array(2.0)]), np.array([1.0, 2.0])),
        (tg.astype(np.arange(3), np.float32), np.arange(3, dtype=np.float32)),
        (tg.logsumexp(np.zeros(4)), np.log(4.0)), (tg.softmax(np.zeros(4)), np.full(4, 0.25)),
    ]
    for out, expected in cases:
        assert isinstance(out, Variable)
        np.testing.assert_allclose(out.data, expected, rtol=1e-15)


# ---- dtypes -------------------------------------------------------------------------------------

FLOAT_UNARY = ["neg", "exp", "sin", "cos", "tan", "tanh", "sigmoid", "relu", "abs", "sqrt", "log"]


@pytest.mark.parametrize("name", FLOAT_UNARY)
def test_float32_unary_stays_float32(name: str) -> None:
    x = Variable(np.array([0.5, 1.0, 1.25], dtype=np.float32))
    y = getattr(tg, name)(x)
    assert y.dtype == np.float32
    tg.sum(y).backward()
    assert x.grad.dtype == np.float32
    assert x.grad.shape == x.shape


def test_float32_with_python_scalars_stays_float32() -> None:
    x32 = Variable(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    outs = [x32 * 2.0, 2.0 * x32, x32 + 1, 1 - x32, x32 / 3.0, x32**2, 2**x32, x32**0.5,
            tg.maximum(x32, 1.5), tg.clip(x32, 0.0, 2.5), tg.where(x32 > 1.5, x32, 0.0)]
    for y in outs:
        assert y.dtype == np.float32
    loss = tg.sum(tg.stack(outs))
    assert loss.dtype == np.float32
    loss.backward()
    assert x32.grad.dtype == np.float32


def test_float32_reductions_and_matmul_stay_float32() -> None:
    x = Variable(np.arange(6, dtype=np.float32).reshape(2, 3) / 6)
    w = Variable(np.ones((3, 2), dtype=np.float32))
    outs = [tg.mean(x), tg.sum(x, 0), tg.max(x, 1), tg.logsumexp(x, 1), tg.softmax(x), tg.log_softmax(x, 0), x @ w,
            tg.sum_to(x, (3,)), tg.broadcast_to(x[0], (4, 3)), x[[0, 0]]]
    for y in outs:
        assert y.dtype == np.float32
    tg.sum(tg.concatenate([tg.reshape(y, (-1,)) for y in outs])).backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_float32_replayed_gradients_are_float32() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0], dtype=np.float32), name="x")
        loss = tg.sum(x * 2.0 + 1)
    g = tg.replay.backward(tape, of=loss, wrt=["x"])
    assert g["x"].dtype == np.float32
    np.testing.assert_array_equal(g["x"], np.array([2.0, 2.0], dtype=np.float32))


def test_float64_array_promotes_float32() -> None:
    x32 = Variable(np.ones(2, dtype=np.float32))
    y = x32 + np.ones(2)  # arrays are not weak: numpy promotes to float64
    assert y.dtype == np.float64
    tg.sum(y).backward()
    assert x32.grad.dtype == np.float32


def test_integer_data_gets_no_gradient() -> None:
    k = Variable(np.array([1, 2, 3]))
    a = Variable(np.array([0.5, -1.0, 2.0]))
    tg.sum(a * k).backward()
    assert k.grad is None
    np.testing.assert_array_equal(a.grad, [1.0, 2.0, 3.0])

    k2 = Variable(np.array([1, 2, 3]))
    y = tg.sum(k2 * k2)
    assert y.dtype.kind == "i"
    y.backward()
    assert k2.grad is None


def test_bool_data_gets_no_gradient() -> None:
    m = Variable(np.array([True, False]))
    a = Variable(np.array([2.0, 3.0]))
    tg.sum(tg.where(m, a, -a) * m).backward()
    assert m.grad is None
    np.testing.assert_array_equal(a.grad, [1.0, 0.0])


def test_integer_arrays_combine_with_floats() -> None:
    a = Variable(np.array([0.5, 1.5]))
    y = tg.sum(np.array([2, 3]) * a + np.arange(2))
    assert y.dtype == np.float64
    y.backward()
    np.testing.assert_array_equal(a.grad, [2.0, 3.0])


# ---- errors name the op and the shapes ----------------------------------------------------------

ERROR_CASES: list[tuple[str, Callable[[], Any], str, tuple[str, ...]]] = [
    ("sum_to", lambda: tg.sum_to(Variable(np.ones((2, 3))), (4,)), "sum_to", ("(4,)", "(2, 3)")),
    ("sum_to longer", lambda: tg.sum_to(np.ones(3), (2, 3)), "sum_to", ("(3,)", "(2, 3)")),
    ("add arrays", lambda: tg.add(np.ones((2, 3)), np.ones(4)), "add", ("(2, 3)", "(4,)")),
    ("add Variables", lambda: Variable(np.ones((2, 3))) + Variable(np.ones(4)), "add", ("(2, 3)", "(4,)")),
    ("mul Variable", lambda: Variable(np.ones((2, 3))) * np.ones((3, 2)), "mul", ("(2, 3)", "(3, 2)")),
    ("matmul", lambda: tg.matmul(Variable(np.ones((2, 3))), Variable(np.ones((4, 2)))), "matmul", ("(2, 3)", "(4, 2)")),
    ("matmul operator", lambda: Variable(np.ones(3)) @ np.ones(4), "matmul", ("(3,)", "(4,)")),
    ("reshape", lambda: tg.reshape(Variable(np.ones(6)), (4, 2)), "reshape", ("(6,)", "(4, 2)")),
    ("reshape -1", lambda: Variable(np.ones(7)).reshape(2, -1), "reshape", ("(7,)",)),
    ("sum axis", lambda: tg.sum(Variable(np.ones(3)), axis=2), "sum", ("(3,)", "2")),
    ("mean negative axis", lambda: tg.mean(Variable(np.ones((2, 3))), axis=-3), "mean", ("(2, 3)", "-3")),
    ("softmax axis", lambda: tg.softmax(Variable(np.ones((2, 3))), axis=2), "softmax", ("(2, 3)",)),
    ("transpose axes", lambda: tg.transpose(Variable(np.ones((2, 3))), (0, 0)), "transpose", ("(2, 3)",)),
    ("broadcast_to", lambda: tg.broadcast_to(Variable(np.ones((2, 3))), (3, 3)), "broadcast_to", ("(2, 3)", "(3, 3)")),
    ("concatenate", lambda: tg.concatenate([np.ones((2, 3)), Variable(np.ones((2, 4)))]), "concatenate",
     ("(2, 3)", "(2, 4)")),
    ("stack", lambda: tg.stack([np.ones(2), Variable(np.ones(3))]), "stack", ("(2,)", "(3,)")),
    ("getitem", lambda: Variable(np.ones((2, 3)))[5], "getitem", ("(2, 3)",)),
    ("where", lambda: tg.where(np.ones(2, bool), Variable(np.ones(3)), 0.0), "where", ("(2,)", "(3,)")),
]


@pytest.mark.parametrize(("call", "op", "shapes"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_shapes_raise_tapegrad_error(call: Callable[[], Any], op: str, shapes: tuple[str, ...]) -> None:
    with pytest.raises(TapegradError) as info:
        call()
    message = str(info.value)
    assert op in message
    for shape in shapes:
        assert shape in message, f"{shape} missing from {message!r}"


def test_unsupported_arguments_raise_tapegrad_error() -> None:
    with pytest.raises(TapegradError):
        tg.add(Variable(np.ones(2)), "a string")
    with pytest.raises(TapegradError):
        tg.add(Variable(np.ones(2)), np.array(["a", "b"]))
    with pytest.raises(TapegradError):
        tg.exp(Variable(None))


# ---- recording ----------------------------------------------------------------------------------


def test_record_appends_one_record_per_op() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0, 3.0]), name="x")
        assert len(tape) == 0
        y = x * 2.0
        assert len(tape) == 1
        z = tg.sin(y) + x
        assert len(tape) == 3
        loss = z.sum()
    assert len(tape) == 4
    assert [r.op for r in tape.records] == ["mul", "sin", "add", "sum"]
    np.testing.assert_array_equal(loss.data, np.sum(np.sin(x.data * 2.0) + x.data))


def test_records_are_plain_data_in_topological_order(readme_tape: Any) -> None:
    tape = readme_tape.tape
    records = tape.records
    defined = {i for i in _all_ids(tape) if tape.var(i).kind in ("input", "const")}
    assert defined
    for rec in records:
        assert isinstance(rec.op, str) and rec.op in REGISTRY
        assert all(type(i) is int for i in rec.inputs + rec.outputs)
        assert set(rec.inputs) <= defined, "record uses a variable before its definition"
        assert not set(rec.outputs) & defined, "variable assigned twice"
        defined |= set(rec.outputs)
        with pytest.raises(TypeError):
            rec.attrs["axis"] = 0  # type: ignore[index]
    assert dict(records[2].attrs) == {"axis": None, "keepdims": False}


def _all_ids(tape: tg.Tape) -> list[int]:
    """Dense ids v0, v1, ... up to the first one the tape does not have."""
    ids: list[int] = []
    while True:
        try:
            tape.var(len(ids))
        except TapegradError:
            return ids
        ids.append(len(ids))


def test_variables_found_by_name_id_and_object(readme_tape: Any) -> None:
    tape, w, x, loss = readme_tape.tape, readme_tape.w, readme_tape.x, readme_tape.loss
    for name, v in (("w", w), ("x", x), ("loss", loss)):
        by_name = tape.var(name)
        assert tape.var(v) == by_name
        assert tape.var(by_name.id) == by_name
        assert tape.resolve(name) == tape.resolve(v) == tape.resolve(by_name.id)
        assert by_name.name == name
        assert by_name.shape == v.shape and by_name.dtype == v.dtype
        np.testing.assert_array_equal(tape.value(name), v.data)
    assert tape.var("w").kind == "input" and tape.var("loss").kind == "op"
    assert tape.var("loss").producer == 2
    matmul = tape.records[0]
    assert matmul.op == "matmul"
    assert matmul.inputs == (tape.var("x").id, tape.var("w").id)
    assert tape.records[2].outputs == (tape.var("loss").id,)
    assert dict(tape.names) == {"w": tape.var("w").id, "x": tape.var("x").id, "loss": tape.var("loss").id}


def test_unknown_name_error_lists_the_names(readme_tape: Any) -> None:
    with pytest.raises(TapegradError) as info:
        readme_tape.tape.resolve("nope")
    message = str(info.value)
    assert "nope" in message
    for name in ("'w'", "'x'", "'loss'"):
        assert name in message
    with pytest.raises(TapegradError):
        tg.replay.backward(readme_tape.tape, of="nope", wrt=["w"])


def test_unknown_id_and_foreign_variable_errors(readme_tape: Any) -> None:
    tape = readme_tape.tape
    with pytest.raises(TapegradError):
        tape.var(10_000)
    with pytest.raises(TapegradError):
        tape.var(-1)
    with pytest.raises(TapegradError):
        tape.var(Variable(np.ones(2)))
    with pytest.raises(TapegradError):
        tape.var(1.5)


def test_ambiguous_name_error_lists_the_ids() -> None:
    with tg.record() as tape:
        a = Variable(np.ones(2), name="a")
        b = Variable(np.zeros(2), name="a")
        tg.add(a, b)
    with pytest.raises(TapegradError) as info:
        tape.resolve("a")
    message = str(info.value)
    assert "ambiguous" in message
    assert f"v{tape.var(a).id}" in message and f"v{tape.var(b).id}" in message
    assert "a" not in tape.names


def test_variable_from_outside_enters_the_tape_as_an_input() -> None:
    w = Variable(np.array([1.0, -2.0]), name="w")
    with tg.record() as tape:
        loss = tg.sum(w * w)
    info = tape.var("w")
    assert info.kind == "input"
    assert info.id in tape.inputs
    assert tape.var(w) == info
    np.testing.assert_array_equal(tape.value("w"), w.data)
    g = tg.replay.backward(tape, of=loss, wrt=["w"])
    np.testing.assert_array_equal(g["w"], 2 * w.data)


def test_recorded_leaf_is_a_copy_of_user_data() -> None:
    data = np.array([1.0, 2.0])
    with tg.record() as tape:
        x = Variable(data, name="x")
        loss = tg.sum(x * x)
    data[0] = 100.0
    np.testing.assert_array_equal(tape.value("x"), [1.0, 2.0])
    g = tg.replay.backward(tape, of=loss, wrt="x")
    np.testing.assert_array_equal(g["x"], [2.0, 4.0])


def test_listing_format() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0, 3.0]), name="x")
        y = Variable(np.ones((2, 3), dtype=np.float32), name="y")
        z = x * x
        s = tg.sum(y)
    text = str(tape)
    ix, iy, iz, i_s = (tape.var(v).id for v in (x, y, z, s))
    lines = text.splitlines()
    assert any(re.fullmatch(rf"\s*v{ix}:f64\[3\] = input\s+# x", line) for line in lines), text
    assert any(re.fullmatch(rf"\s*v{iy}:f32\[2,3\] = input\s+# y", line) for line in lines), text
    here = inspect.currentframe().f_lineno  # type: ignore[union-attr]
    assert any(re.fullmatch(rf"\s*0\s+v{iz}:f64\[3\] = mul v{ix} v{ix}\s+# test_tracer.py:{here - 7}", line) for line in lines), text
    assert any(re.fullmatch(rf"\s*1\s+v{i_s}:f32\[\] = sum v{iy} axis=None keepdims=False\s+# test_tracer.py:{here - 6}", line)
               for line in lines), text
    assert text == "\n".join(tape.listing())


def test_listing_names_and_sources_share_the_comment_and_untracked_tapes_have_none() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0]), name="x")
        y = tg.exp(x)
        y.name = "y"
    here = inspect.currentframe().f_lineno  # type: ignore[union-attr]
    assert tape.listing()[1].endswith(f"  # y @ test_tracer.py:{here - 2}")
    with tg.record(source=False) as bare:
        tg.exp(Variable(np.array([1.0, 2.0])))
    assert bare.listing()[1] == "    0 v1:f64[2] = exp v0"
    assert [(ln.record, ln.id) for ln in tape.listing_lines()] == [(None, 0), (0, 1)]


def test_listing_escapes_control_characters_in_names() -> None:
    with tg.record() as tape:
        x = Variable(np.ones(1), name="evil\nname\x1b[2J")
        tg.exp(x)
    text = str(tape)
    assert "\x1b" not in text
    assert len(text.splitlines()) == 2


def test_no_record_records_nothing_and_links_nothing() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0]), name="x")
        y = x * 3.0
        n = len(tape)
        with tg.no_record():
            z = tg.sin(y) * x
            np.testing.assert_array_equal(z.data, np.sin(x.data * 3.0) * x.data)
            assert len(tape) == n
        assert len(tape) == n
        w = z + 1.0  # recording resumes after the block
        assert len(tape) == n + 1
    tg.sum(w).backward()
    assert x.grad is None  # z is an unlinked leaf: no path back to x

    a = Variable(np.array([1.0, 2.0]))
    with tg.no_record():
        b = tg.sum(a * a)
    b.backward()
    assert a.grad is None


def test_replay_backward_equals_eager_backward_bit_for_bit(readme_tape: Any) -> None:
    tape, w, x, loss = readme_tape.tape, readme_tape.w, readme_tape.x, readme_tape.loss
    g = tg.replay.backward(tape, of="loss", wrt=["w", "x"])
    assert set(g) == {"w", "x"}
    loss.backward()
    for name, v in (("w", w), ("x", x)):
        assert g[name].dtype == v.grad.dtype and g[name].shape == v.shape
        assert np.array_equal(g[name], v.grad)
    expected_w = x.data.T @ (1 - np.tanh(x.data @ w.data) ** 2)
    np.testing.assert_allclose(g["w"], expected_w, rtol=1e-14)


def test_replay_backward_of_defaults_to_the_last_output(readme_tape: Any) -> None:
    tape = readme_tape.tape
    by_default = tg.replay.backward(tape, wrt=["w", "x"])
    by_name = tg.replay.backward(tape, of="loss", wrt=["w", "x"])
    by_object = tg.replay.backward(tape, of=readme_tape.loss, wrt=["w", "x"])
    by_id = tg.replay.backward(tape, of=tape.var("loss").id, wrt=["w", "x"])
    for g in (by_default, by_object, by_id):
        for name in ("w", "x"):
            assert np.array_equal(g[name], by_name[name])


def test_replay_backward_of_an_intermediate(readme_tape: Any) -> None:
    tape, w, x = readme_tape.tape, readme_tape.w, readme_tape.x
    hidden = tape.records[0].outputs[0]  # x @ w
    g = tg.replay.backward(tape, of=hidden, wrt=["w"])
    np.testing.assert_allclose(g["w"], x.data.T @ np.ones((2, 2)), rtol=1e-15)
    assert not np.any(np.isnan(g["w"]))
    assert w.grad is None  # replay does not touch Variables


def test_replay_backward_wrt_by_object_and_default(readme_tape: Any) -> None:
    tape, w, x = readme_tape.tape, readme_tape.w, readme_tape.x
    by_name = tg.replay.backward(tape, of="loss", wrt=["w", "x"])
    by_object = tg.replay.backward(tape, of="loss", wrt=[w, x])
    assert np.array_equal(by_object[w], by_name["w"]) and np.array_equal(by_object[x], by_name["x"])
    every_input = tg.replay.backward(tape, of="loss")
    assert set(every_input) == {"w", "x"}
    assert np.array_equal(every_input["x"], by_name["x"])


def test_replayed_gradients_are_fresh_writeable_arrays() -> None:
    with tg.record() as tape:
        x = Variable(np.array([1.0, 2.0]), name="x")
        y = x + x
        y.name = "y"
    g = tg.replay.backward(tape, of="y", wrt=["x", "y"])
    assert g["x"].flags.writeable and g["y"].flags.writeable
    assert not np.shares_memory(g["x"], g["y"])
    assert not np.shares_memory(g["x"], tape.value("x"))
    np.testing.assert_array_equal(g["x"], [2.0, 2.0])
    np.testing.assert_array_equal(g["y"], [1.0, 1.0])
    g["x"][:] = 0
    again = tg.replay.backward(tape, of="y", wrt=["x"])
    np.testing.assert_array_equal(again["x"], [2.0, 2.0])


def test_replay_wrt_integer_variable_raises(mixed_tape: Any) -> None:
    tape = mixed_tape.tape
    with pytest.raises(TapegradError) as info:
        tg.replay.backward(tape, of="out", wrt=["k"])
    assert "k" in str(info.value)
    g = tg.replay.backward(tape, of="out", wrt=["a"])
    np.testing.assert_array_equal(g["a"], [1.0, 2.0, 3.0])


def test_replay_unused_input_gets_zeros() -> None:
    with tg.record() as tape:
        a = Variable(np.array([1.0, 2.0]), name="a")
        b = Variable(np.array([3.0]), name="b")
        tg.sum(a * 2.0)
    g = tg.replay.backward(tape, wrt=["a", "b"])
    np.testing.assert_array_equal(g["b"], [0.0])
    np.testing.assert_array_equal(g["a"], [2.0, 2.0])
    assert b.grad is None


def test_same_computation_records_identically(record_readme: Callable[[], Any]) -> None:
    first, second = record_readme(), record_readme()
    assert first.tape.records == second.tape.records
    assert str(first.tape) == str(second.tape)
    assert len(first.tape) == len(second.tape) == 3


def test_recording_with_constants_and_indexing_replays_like_eager() -> None:
    with tg.record() as tape:
        x = Variable(np.linspace(-1, 1, 12).reshape(3, 4), name="x")
        b = Variable(np.array([0.5, -0.5, 1.0, 2.0]), name="b")
        h = tg.relu(x * 2.0 + b) - 0.1
        picked = h[[0, 2, 2]][:, 1:]
        loss = tg.logsumexp(tg.concatenate([picked, tg.broadcast_to(b[None, :3], (2, 3))]), axis=0).sum() / 3
        loss.name = "loss"
    g = tg.replay.backward(tape, of="loss", wrt=["x", "b"])
    loss.backward()
    assert np.array_equal(g["x"], x.grad)
    assert np.array_equal(g["b"], b.grad)


def test_nested_record_blocks_record_to_the_inner_tape() -> None:
    with tg.record() as outer:
        x = Variable(np.ones(2), name="x")
        y = x * 2.0
        with tg.record() as inner:
            z = tg.exp(y)
        w = z + x
    assert [r.op for r in inner.records] == ["exp"]
    assert [r.op for r in outer.records] == ["mul", "add"]
    assert inner.var(y).kind == "input"
    tg.sum(w).backward()
    np.testing.assert_allclose(x.grad, 2.0 * np.exp(2.0) + 1.0, rtol=1e-15)


@given(
    hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    st.sampled_from(["add", "sub", "mul", "maximum"]),
    st.integers(0, 2**32 - 1),
)
def test_replay_matches_eager_for_random_broadcasts(shapes: Any, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sx, sy = shapes.input_shapes
    with tg.record() as tape:
        x = Variable(np.asarray(rng.standard_normal(sx)), name="x")
        y = Variable(np.asarray(rng.standard_normal(sy) + 5.0), name="y")  # no ties with x for maximum
        loss = tg.sum(tg.tanh(getattr(tg, name)(x, y)) * y)
    g = tg.replay.backward(tape, of=loss, wrt=["x", "y"])
    loss.backward()
    for ref, v in (("x", x), ("y", y)):
        assert g[ref].shape == v.shape
        assert np.array_equal(g[ref], v.grad)
