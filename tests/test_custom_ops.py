"""Custom ops (`tg.defop`, `tg.Function`): registered into the one registry, recorded, saved,
replayed and differentiated (also twice) like built-in ops; a tape naming one that is not
registered fails to load with a clear error, and nothing named by a file is run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.ops import BUILTIN, REGISTRY
from tapegrad.ops.registry import unregister
from tapegrad.testing import check_grads


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """Every test leaves the registry as it found it (other tests walk the whole registry)."""
    yield
    for name in set(REGISTRY) - BUILTIN:
        unregister(name)


def _softplus_vjp(F: Any, g: Any, ins: Any, out: Any) -> Any:
    return F.mul(g, F.sigmoid(ins[0]))


def define_softplus() -> Any:
    @tg.defop("mylib.softplus", vjp=_softplus_vjp)
    def softplus(x: np.ndarray) -> np.ndarray:
        """log(1 + e ** x)"""
        return np.asarray(np.logaddexp(0.0, x))
    return softplus


def define_hinge() -> Any:
    """A two-input op defined by a call, with a shape rule."""
    def forward(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(x - y, 0.0) ** 2)

    def vjp(F: Any, g: Any, ins: Any, out: Any) -> Any:
        x, y = ins
        d = F.mul(2, F.relu(F.sub(x, y)))
        return F.mul(g, d), F.neg(F.mul(g, d))

    return tg.defop("hinge2", forward, vjp, shape=lambda shapes, dtypes: (np.broadcast_shapes(*shapes),
                                                                          np.result_type(*dtypes)))


def define_cube() -> Any:
    """Defining the class registers the op (inside a function: importing this module must not)."""
    class Cube(tg.Function):
        """x ** 3, DeZero style."""

        name = "mylib.cube"

        def forward(self, x: np.ndarray) -> np.ndarray:
            return x**3

        def backward(self, F: Any, g: Any, ins: Any, out: Any) -> Any:
            return F.mul(g, F.mul(3, F.square(ins[0])))

    return Cube


def test_defop_registers_an_op_that_differentiates_like_a_builtin() -> None:
    softplus = define_softplus()
    assert "mylib.softplus" in REGISTRY and REGISTRY["mylib.softplus"].doc == "log(1 + e ** x)"
    x = np.array([0.5, -1.5, 2.0])
    check_grads(lambda v: softplus(v), x, order=2)
    v = tg.Variable(x)
    tg.sum(softplus(v) * 2.0).backward()
    np.testing.assert_allclose(v.grad, 2 / (1 + np.exp(-x)), rtol=1e-12)
    assert isinstance(softplus(x), tg.Variable) and isinstance(softplus(1.0), tg.Variable)


def test_two_input_op_with_a_shape_rule_broadcasts_and_differentiates() -> None:
    hinge = define_hinge()
    x, y = np.array([[0.5, -1.0, 2.0]]), np.array([[0.1], [1.0]])
    check_grads(lambda a, b: hinge(a, b), x, y, order=2)
    assert hinge(x, y).shape == (2, 3)


def test_function_subclass_is_registered_when_defined() -> None:
    Cube = define_cube()
    assert REGISTRY["mylib.cube"].doc == "x ** 3, DeZero style."
    x = tg.Variable(np.array([2.0, -1.0]))
    y = Cube.apply(x)
    np.testing.assert_array_equal(y.data, [8.0, -1.0])
    np.testing.assert_array_equal(Cube()(x).data, y.data)
    tg.sum(y).backward()
    np.testing.assert_array_equal(x.grad, [12.0, 3.0])
    np.testing.assert_allclose(tg.grad(tg.grad(lambda a: tg.sum(Cube.apply(a))))(np.array([2.0])), [12.0])


def test_a_function_base_without_forward_registers_nothing() -> None:
    before = set(REGISTRY)

    class Base(tg.Function):
        def backward(self, F: Any, g: Any, ins: Any, out: Any) -> Any:
            return g

    class Twice(Base):
        name = "mylib.twice"

        def forward(self, x: np.ndarray) -> np.ndarray:
            return 2 * x

    assert set(REGISTRY) - before == {"mylib.twice"}
    np.testing.assert_array_equal(Twice.apply(np.ones(2)).data, [2.0, 2.0])


def test_a_custom_op_tape_saves_loads_and_replays_in_both_modes() -> None:
    softplus = define_softplus()
    with tg.record() as tape:
        x = tg.Variable(np.array([0.5, -1.0]), name="x")
        y = tg.sum(np.tanh(softplus(x)))
        y.name = "y"
    y.backward()
    loaded = tg.loads(tg.dumps(tape))
    assert [r.op for r in loaded.records] == ["mylib.softplus", "tanh", "sum"]
    g = tg.replay.backward(loaded, of="y", wrt=["x"])
    np.testing.assert_array_equal(g["x"], x.grad)
    t = np.array([1.0, -2.0])
    jv = tg.replay.jvp(loaded, {"x": t})["y"]
    np.testing.assert_allclose(jv, np.vdot(x.grad, t), rtol=1e-12)
    out = tg.replay.forward(loaded, inputs={"x": np.array([0.0, 0.0])})
    np.testing.assert_allclose(out["y"], 2 * np.tanh(np.log(2.0)), rtol=1e-12)


def test_loading_a_tape_whose_custom_op_is_not_registered_names_it_and_runs_nothing() -> None:
    softplus = define_softplus()
    with tg.record() as tape:
        softplus(tg.Variable(np.ones(2), name="x")).name = "y"
    data = tg.dumps(tape)
    unregister("mylib.softplus")
    with pytest.raises(tg.TapeFormatError, match=r"mylib\.softplus.*import the module that defines it"):
        tg.loads(data)
    define_softplus()
    assert tg.replay.forward(tg.loads(data))["y"].shape == (2,)


def test_names_are_checked_and_builtins_cannot_be_replaced() -> None:
    with pytest.raises(tg.TapegradError, match="built-in"):
        tg.defop("sin", np.sin, None)
    for bad in ("Softplus", "my op", "", "1op", "a..b"):
        with pytest.raises(tg.ArgumentError):
            tg.defop(bad, np.sin, None)
    with pytest.raises(tg.TapegradError, match="built-in"):
        type("Exp", (tg.Function,), {"forward": lambda self, x: np.exp(x)})
    assert REGISTRY["sin"].forward is np.sin


def test_defining_again_replaces_the_custom_op() -> None:
    define_softplus()
    double = tg.defop("mylib.softplus", lambda x: 2 * x, lambda F, g, ins, out: F.mul(g, 2))
    np.testing.assert_array_equal(double(np.array([1.0])).data, [2.0])


def test_a_wrong_rule_or_forward_is_caught_where_it_is_used() -> None:
    shrink = tg.defop("shrink", lambda x: x[:1], None, shape=lambda shapes, dtypes: (shapes[0], dtypes[0]))
    with pytest.raises(tg.TapegradError, match="shape rule says"):
        shrink(np.ones(3))
    rowsum = tg.defop("rowsum", lambda x: x.sum(axis=1), None)  # not elementwise, and no shape rule
    with pytest.raises(tg.TapegradError, match="needs shape="):
        rowsum(np.ones((2, 3)))
    wrong = tg.defop("wrong", lambda x, y: x * y, lambda F, g, ins, out: F.mul(g, ins[1]))  # one cotangent for two
    with pytest.raises(tg.TapegradError, match="2 cotangent"):
        tg.grad(lambda a: tg.sum(wrong(a, a)))(np.ones(2))
    strings = tg.defop("strings", lambda x: np.array(["a"] * x.size), None, shape=lambda s, d: (s[0], np.dtype("U1")))
    with pytest.raises(tg.TapegradError, match="dtype"):
        strings(np.ones(1))


def test_a_forward_that_returns_a_view_of_its_input_is_stored_as_a_copy() -> None:
    ident = tg.defop("ident", lambda x: x, lambda F, g, ins, out: g)
    with tg.record() as tape:
        x = tg.Variable(np.arange(3.0), name="x")
        y = ident(x)
        y.name = "y"
    assert not np.shares_memory(y.data, x.data)
    np.testing.assert_array_equal(tg.loads(tg.dumps(tape)).value("y"), [0.0, 1.0, 2.0])


def test_no_vjp_means_no_gradient() -> None:
    flag = tg.defop("positive_flag", lambda x: (x > 0).astype(np.float64), None)
    x = tg.Variable(np.array([1.0, -1.0]))
    tg.sum(flag(x) * x).backward()
    np.testing.assert_array_equal(x.grad, [1.0, 0.0])
