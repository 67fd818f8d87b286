"""The README demo: record one training step of a small MLP, list the tape, replay its gradients.

Contract: `run(out)` writes the tape listing and the gradient norms to `out` and returns 0; the
gradients it prints come from replaying the recorded tape and are checked against the eager
`loss.backward()` of the same step.
"""

from __future__ import annotations

from typing import TextIO

import numpy as np

from . import replay
from . import tracer as tg


def mlp_loss(x: tg.Variable, y: tg.Variable, params: dict[str, tg.Variable]) -> tg.Variable:
    """Mean squared error of a one-hidden-layer tanh network."""
    h = tg.tanh(x @ params["w1"] + params["b1"])
    pred = h @ params["w2"] + params["b2"]
    return tg.mean((pred - y) ** 2)


def make_problem(seed: int = 0, n: int = 16) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2))
    y = np.sin(np.pi * x[:, :1]) * x[:, 1:]
    params = {"w1": rng.standard_normal((2, 8)) * 0.5, "b1": np.zeros(8),
              "w2": rng.standard_normal((8, 1)) * 0.5, "b2": np.zeros(1)}
    return x, y, params


def run(out: TextIO) -> int:
    x_data, y_data, init = make_problem()
    with tg.record() as tape:
        params = {k: tg.Variable(v, name=k) for k, v in init.items()}
        x, y = tg.Variable(x_data, name="x"), tg.Variable(y_data, name="y")
        loss = mlp_loss(x, y, params)
        loss.name = "loss"
    print(f"Recorded one MLP training step: {len(tape)} records\n", file=out)
    print(tape, file=out)
    grads = replay.backward(tape, of="loss", wrt=list(params))
    loss.backward()
    for name, v in params.items():
        if not np.array_equal(grads[name], v.grad):
            print(f"replayed gradient of {name} differs from eager backward()", file=out)
            return 1
    print(f"\nloss = {float(loss.data):.6f}; gradient norms (replayed == eager, bit for bit):", file=out)
    for name, g in grads.items():
        print(f"  |d loss / d {name}| = {np.linalg.norm(g):.6f}", file=out)
    return 0
