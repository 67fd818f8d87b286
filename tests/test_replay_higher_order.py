"""Higher derivatives from files: a replayed reverse pass, recorded, saved, loaded and replayed again.

`with tg.record() as t2: g = tg.replay.backward(t, ...)` records the reverse pass of `t` onto
`t2`, where `t`'s inputs enter under their own names.  Naming the gradient and replaying `t2`
backward gives second derivatives, Hessian-vector products and whole Hessians, checked against
analytic derivatives and central differences, in memory and after a file round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import roundtrip

X = np.array([-1.3, -0.4, 0.2, 0.9, 1.7])
X_NEW = np.array([0.6, -2.0, 1.1, 0.05, -0.8])

# f, f', f'', f'''
FUNCTIONS: dict[str, tuple[Callable[[Any], Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
    "sin(x)*x": (lambda x: tg.sin(x) * x,
                 lambda x: np.sin(x) + x * np.cos(x),
                 lambda x: 2 * np.cos(x) - x * np.sin(x),
                 lambda x: -3 * np.sin(x) - x * np.cos(x)),
    "x**3": (lambda x: x**3, lambda x: 3 * x**2, lambda x: 6 * x, lambda x: np.full_like(x, 6.0)),
    "tanh": (tg.tanh,
             lambda x: 1 - np.tanh(x) ** 2,
             lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2),
             lambda x: (1 - np.tanh(x) ** 2) * (6 * np.tanh(x) ** 2 - 2)),
}


def record_f(name: str, values: str = "all") -> tg.Tape:
    f = FUNCTIONS[name][0]
    with tg.record(values=values) as t:
        y = f(tg.Variable(X, name="x"))
        y.name = "y"
    return t


def record_derivative(t: tg.Tape, of: str, wrt: str, name: str) -> tg.Tape:
    """A tape of the reverse pass of `t` (d of / d wrt, seed ones), its result named `name`."""
    with tg.record() as t2:
        g = tg.replay.backward(t, of=of, wrt=[wrt])
        assert isinstance(g[wrt], tg.Variable)
        g[wrt].name = name
    return t2


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_recorded_backward_gives_variables_and_keeps_input_names(name: str) -> None:
    t = record_f(name)
    with tg.record() as t2:
        g = tg.replay.backward(t, of="y", wrt=["x"])
    assert list(g) == ["x"] and isinstance(g["x"], tg.Variable)
    np.testing.assert_allclose(g["x"].data, FUNCTIONS[name][1](X), rtol=1e-12, atol=1e-14)
    assert "x" in t2.names
    assert t2.var("x").kind == "input"
    np.testing.assert_array_equal(t2.value("x"), X)
    assert t2.resolve(g["x"]) is not None and t2.var(g["x"]).kind == "op"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_second_derivative_from_a_saved_backward_tape(name: str) -> None:
    _, d1, d2, _ = FUNCTIONS[name]
    t = roundtrip(record_f(name))  # the first tape comes from a file too
    loaded = roundtrip(record_derivative(t, "y", "x", "dydx"))
    assert "dydx" in loaded.names and "x" in loaded.names
    np.testing.assert_allclose(tg.replay.forward(loaded)["dydx"], d1(X), rtol=1e-12, atol=1e-14)
    second = tg.replay.backward(loaded, of="dydx", wrt=["x"])["x"]
    np.testing.assert_allclose(second, d2(X), rtol=1e-12, atol=1e-14)
    # ... and with a new x, replayed from the file alone
    np.testing.assert_allclose(tg.replay.forward(loaded, inputs={"x": X_NEW})["dydx"], d1(X_NEW), rtol=1e-12, atol=1e-14)
    second = tg.replay.backward(loaded, of="dydx", wrt=["x"], inputs={"x": X_NEW})["x"]
    np.testing.assert_allclose(second, d2(X_NEW), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_third_derivative_by_recording_twice(name: str) -> None:
    *_, d3 = FUNCTIONS[name]
    t2 = roundtrip(record_derivative(record_f(name), "y", "x", "dydx"))
    t3 = roundtrip(record_derivative(t2, "dydx", "x", "d2ydx2"))
    third = tg.replay.backward(t3, of="d2ydx2", wrt=["x"], inputs={"x": X_NEW})["x"]
    np.testing.assert_allclose(third, d3(X_NEW), rtol=1e-11, atol=1e-13)


def test_second_derivative_from_a_values_inputs_tape() -> None:
    t = roundtrip(record_f("sin(x)*x", values="inputs"))
    with tg.record(values="inputs") as t2:
        tg.replay.backward(t, of="y", wrt="x")["x"].name = "dydx"
    loaded = roundtrip(t2)
    second = tg.replay.backward(loaded, of="dydx", wrt="x", inputs={"x": X_NEW})["x"]
    np.testing.assert_allclose(second, FUNCTIONS["sin(x)*x"][2](X_NEW), rtol=1e-12, atol=1e-14)


def test_recorded_forward_replay_returns_variables_on_the_active_tape() -> None:
    t = record_f("x**3")
    with tg.record() as t2:
        out = tg.replay.forward(t, inputs={"x": X_NEW})
        assert isinstance(out["y"], tg.Variable)
        z = tg.sum(out["y"])
        z.name = "z"
    np.testing.assert_allclose(tg.replay.backward(t2, of="z", wrt="x")["x"], 3 * X_NEW**2, rtol=1e-14)


# ---- Hessian-vector products and Hessians ---------------------------------------------------

W = np.array([[0.5, -1.0], [2.0, 0.1], [-0.3, 0.4]])
XS = np.array([[0.3, -0.7, 1.1], [0.2, 0.5, -0.4], [-1.0, 0.0, 0.6], [0.8, 0.8, -0.2]])


def loss_fn(w: Any) -> Any:
    h = tg.tanh(tg.matmul(XS, w))
    return tg.sum(h * h) + tg.sum(tg.sin(w) * w)


def record_loss() -> tg.Tape:
    with tg.record() as t:
        loss = loss_fn(tg.Variable(W, name="w"))
        loss.name = "loss"
    return t


def record_hvp(t: tg.Tape, v: np.ndarray) -> tg.Tape:
    """Record backward of `t`, then `gv = sum(g * v)`: its gradient is H v."""
    with tg.record() as t2:
        g = tg.replay.backward(t, of="loss", wrt=["w"])["w"]
        gv = tg.sum(g * tg.Variable(v, name="v"))
        gv.name = "gv"
    return t2


def grad_at(t: tg.Tape, w: np.ndarray) -> np.ndarray:
    out: np.ndarray = tg.replay.backward(t, of="loss", wrt=["w"], inputs={"w": w})["w"]
    return out


def fd_hvp(t: tg.Tape, w: np.ndarray, v: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return (grad_at(t, w + eps * v) - grad_at(t, w - eps * v)) / (2 * eps)


def test_hvp_in_memory_matches_finite_differences_of_the_gradient() -> None:
    t = record_loss()
    v = np.random.default_rng(0).standard_normal(W.shape)
    t2 = record_hvp(t, v)
    hv = tg.replay.backward(t2, of="gv", wrt=["w"])["w"]
    np.testing.assert_allclose(hv, fd_hvp(t, W, v), rtol=1e-7, atol=1e-9)


def test_hvp_from_a_file_with_new_point_and_direction() -> None:
    t = roundtrip(record_loss())
    rng = np.random.default_rng(1)
    loaded = roundtrip(record_hvp(t, rng.standard_normal(W.shape)))
    for _ in range(3):
        w, v = rng.standard_normal(W.shape), rng.standard_normal(W.shape)
        hv = tg.replay.backward(loaded, of="gv", wrt=["w"], inputs={"w": w, "v": v})["w"]
        np.testing.assert_allclose(hv, fd_hvp(t, w, v), rtol=1e-7, atol=1e-9)


def hessian_from_tape(hvp_tape: tg.Tape, w: np.ndarray) -> np.ndarray:
    cols = []
    for i in range(w.size):
        e = np.zeros(w.size)
        e[i] = 1.0
        cols.append(tg.replay.backward(hvp_tape, of="gv", wrt=["w"], inputs={"w": w, "v": e.reshape(w.shape)})["w"].ravel())
    return np.stack(cols, axis=1).reshape(w.shape + w.shape)


def fd_hessian(grad: Callable[[np.ndarray], np.ndarray], w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    cols = []
    for i in range(w.size):
        e = np.zeros(w.size)
        e[i] = eps
        cols.append(((grad(w + e.reshape(w.shape)) - grad(w - e.reshape(w.shape))) / (2 * eps)).ravel())
    return np.stack(cols, axis=1).reshape(w.shape + w.shape)


def test_hessian_from_a_loaded_tape_and_tg_hessian_match_finite_differences() -> None:
    t = record_loss()
    loaded = roundtrip(record_hvp(t, np.ones(W.shape)))
    w = W + 0.3
    from_file = hessian_from_tape(loaded, w)
    numeric = fd_hessian(lambda z: grad_at(t, z), w)
    np.testing.assert_allclose(from_file, numeric, rtol=1e-6, atol=1e-8)
    functional = tg.hessian(loss_fn)(w)
    assert functional.shape == W.shape + W.shape
    np.testing.assert_allclose(functional, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(from_file, functional, rtol=1e-12, atol=1e-12)
    flat = from_file.reshape(W.size, W.size)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-12, atol=1e-12)


def test_tg_hessian_small_inputs_match_finite_differences_of_tg_grad() -> None:
    def f(x: Any) -> Any:
        return tg.sum(tg.exp(x[0] * x) * tg.sin(x)) + tg.logsumexp(x * x)

    x = np.array([0.4, -0.3, 0.9])
    g = tg.grad(f)
    numeric = fd_hessian(g, x)
    np.testing.assert_allclose(tg.hessian(f)(x), numeric, rtol=1e-6, atol=1e-8)
    scalar = np.array(0.7)
    h0 = tg.hessian(lambda z: tg.sin(z) * z**3)(scalar)
    assert h0.shape == ()
    np.testing.assert_allclose(h0, -np.sin(0.7) * 0.7**3 + 6 * np.cos(0.7) * 0.7**2 + 6 * np.sin(0.7) * 0.7, rtol=1e-12)
