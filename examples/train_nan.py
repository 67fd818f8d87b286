"""A small training run that blows up with NaN, for docs/debugging.md.

A softmax classifier on synthetic data, trained with a learning rate that is far too large.  Its
loss takes `log(softmax(logits))`: once the logits grow, the softmax of a wrong class underflows
to 0 and its log is -inf, the loss becomes inf and the gradient NaN.  Each step is streamed to
`OUT/step-NNN.tape` as it is recorded; the script stops at the first non-finite loss by raising
inside the recording, so that step's file also says how the run ended.

    python examples/train_nan.py OUT            # the broken run (stops with NaN)
    python examples/train_nan.py OUT --stable   # the same run with log_softmax: stays finite

The data, the initial weights and the learning rate are the same in both runs.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import tapegrad as tg

CLASSES, FEATURES, BATCH = 4, 8, 16


def loss_fn(w: tg.Variable, x: tg.Variable, onehot: np.ndarray, stable: bool) -> tg.Variable:
    logits = x @ w
    logp = tg.log_softmax(logits, axis=-1) if stable else tg.log(tg.softmax(logits, axis=-1))
    return -tg.sum(logp * onehot) / BATCH


def train(out: pathlib.Path, stable: bool, steps: int = 40, lr: float = 30.0) -> int:
    """Train; returns the number of the step whose loss was not finite (-1: none was)."""
    rng = np.random.default_rng(0)
    x_all = rng.standard_normal((BATCH, FEATURES)) * 3.0
    labels = rng.integers(0, CLASSES, BATCH)
    onehot = np.eye(CLASSES)[labels]
    w = rng.standard_normal((FEATURES, CLASSES)) * 0.1
    out.mkdir(parents=True, exist_ok=True)
    for step in range(steps):
        with tg.record(path=str(out / f"step-{step:03d}.tape")):
            wv = tg.Variable(w, name="w")
            xv = tg.Variable(x_all, name="x")
            loss = loss_fn(wv, xv, onehot, stable)
            loss.name = "loss"
            loss.backward()
            if not np.isfinite(loss.data) or not np.all(np.isfinite(wv.grad)):
                raise FloatingPointError(f"step {step}: loss is {loss.data}")  # ends the recording, kept in its file
        w = w - lr * wv.grad
    return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=pathlib.Path, help="folder for the step tapes")
    parser.add_argument("--stable", action="store_true", help="use log_softmax (the fix)")
    args = parser.parse_args()
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # the tapes say where, better than a warning
            train(args.out, args.stable)
    except FloatingPointError as exc:
        print(f"stopped: {exc}")
        return 1
    print("finished: every loss was finite")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
