"""End to end: a small tanh MLP trained with plain SGD on y = sin(x), in float64 and float32."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import Variable

STEPS = 1000
LR = 0.1
THRESHOLD = 0.01  # mean squared error the trained net must beat (the untrained one is near 0.8)


def problem(dtype: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = np.linspace(-3, 3, 64).reshape(64, 1).astype(dtype)
    y = np.sin(x)
    params = {
        "w1": rng.standard_normal((1, 16)).astype(dtype),
        "b1": rng.uniform(-1, 1, 16).astype(dtype),
        "w2": (rng.standard_normal((16, 1)) * 0.1).astype(dtype),
        "b2": np.zeros(1, dtype),
    }
    return x, y, params


def mlp_loss(x: np.ndarray, y: np.ndarray, p: dict[str, Variable]) -> Variable:
    h = tg.tanh(x @ p["w1"] + p["b1"])
    return tg.mean((h @ p["w2"] + p["b2"] - y) ** 2)


def numpy_loss_and_grads(x: np.ndarray, y: np.ndarray, p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Hand-written forward and backward pass of the same network (the reference)."""
    z = x @ p["w1"] + p["b1"]
    h = np.tanh(z)
    r = h @ p["w2"] + p["b2"] - y
    n = r.size
    dr = 2 * r / n
    dh = dr @ p["w2"].T
    dz = dh * (1 - h**2)
    grads = {"w2": h.T @ dr, "b2": dr.sum(0), "w1": x.T @ dz, "b1": dz.sum(0)}
    return float(np.mean(r**2)), grads


def train(dtype: Any) -> tuple[float, float]:
    x, y, init = problem(dtype)
    params = {k: Variable(v) for k, v in init.items()}
    untrained = float(mlp_loss(x, y, params).data)
    for _ in range(STEPS):
        loss = mlp_loss(x, y, params)
        assert loss.dtype == dtype
        loss.backward()
        for v in params.values():
            assert v.grad.dtype == dtype and v.grad.shape == v.shape
        params = {k: Variable(v.data - LR * v.grad) for k, v in params.items()}
        assert all(v.dtype == dtype for v in params.values())
    trained = float(mlp_loss(x, y, params).data)
    return untrained, trained


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_learns_sine(dtype: Any) -> None:
    untrained, trained = train(dtype)
    assert np.isfinite(trained)
    assert untrained > THRESHOLD * 10, untrained
    assert trained < THRESHOLD, trained


def test_mlp_gradients_match_hand_written_backprop() -> None:
    x, y, init = problem(np.float64)
    params = {k: Variable(v) for k, v in init.items()}
    loss = mlp_loss(x, y, params)
    loss.backward()
    ref_loss, ref_grads = numpy_loss_and_grads(x, y, init)
    np.testing.assert_allclose(float(loss.data), ref_loss, rtol=1e-14)
    for k, v in params.items():
        np.testing.assert_allclose(v.grad, ref_grads[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_mlp_training_follows_the_reference_trajectory() -> None:
    x, y, init = problem(np.float64)
    params = {k: Variable(v) for k, v in init.items()}
    ref = dict(init)
    for _ in range(200):
        mlp_loss(x, y, params).backward()
        params = {k: Variable(v.data - LR * v.grad) for k, v in params.items()}
        _, g = numpy_loss_and_grads(x, y, ref)
        ref = {k: v - LR * g[k] for k, v in ref.items()}
    for k, v in params.items():
        np.testing.assert_allclose(v.data, ref[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_recorded_training_step_replays_to_the_eager_gradients() -> None:
    x, y, init = problem(np.float32)
    with tg.record() as tape:
        params = {k: Variable(v, name=k) for k, v in init.items()}
        loss = mlp_loss(x, y, params)
        loss.name = "loss"
    grads = tg.replay.backward(tape, of="loss", wrt=list(params))
    loss.backward()
    for k, v in params.items():
        assert grads[k].dtype == np.float32
        assert np.array_equal(grads[k], v.grad), k
