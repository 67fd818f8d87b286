"""Record one training step of a small MLP classifier to a tape file.

    python examples/mlp_step.py OUT.tape [--seed N] [--clip] [--stream | --crash]

The tape docs/inspect.md inspects: inputs `x` (a batch) and `w1, b1, w2, b2` (the weights),
hidden layer `h`, `logits`, and the cross-entropy `loss`; every record keeps its source line in
this file.  `--seed` draws another batch (same weights), `--clip` clips the hidden layer's
pre-activation (one more op: a structural change for `tapegrad diff`), and `--stream` streams the
records to the file as they are made (`record(path=...)`), as a long run would, and `--crash`
streams them four at a time and kills the process (`os._exit`) right after the loss is made,
before the recording ends: the file is then cut off after its last whole batch.  The weights
are rescaled when the logits get large, a branch on a recorded value, so the tape has a guard.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import tapegrad as tg


def record_step(path: str, seed: int = 0, clip: bool = False, stream: bool = False, crash: bool = False) -> tg.Tape:
    weights = np.random.default_rng(1234)
    batch = np.random.default_rng(seed)
    x_data = batch.standard_normal((32, 4))
    labels = (x_data[:, 0] > 0).astype(np.int64) + (x_data[:, 1] > 0).astype(np.int64)
    streamed = path if stream or crash else None
    with tg.record(path=streamed, flush_every=4 if crash else 256, metadata={"example": "mlp_step", "seed": seed}) as tape:
        x = tg.Variable(x_data, name="x")
        w1 = tg.Variable(weights.standard_normal((4, 16)) * 0.5, name="w1")
        b1 = tg.Variable(np.zeros(16), name="b1")
        w2 = tg.Variable(weights.standard_normal((16, 3)) * 0.5, name="w2")
        b2 = tg.Variable(np.zeros(3), name="b2")
        pre = x @ w1 + b1
        if clip:
            pre = tg.clip(pre, -2.0, 2.0)
        h = tg.tanh(pre)
        h.name = "h"
        logits = h @ w2 + b2
        if tg.max(tg.abs(logits)) > 10.0:  # a branch on a recorded value: the tape keeps a guard
            logits = logits * 0.1
        logits.name = "logits"
        logp = tg.log_softmax(logits, axis=-1)
        loss = -tg.mean(logp[np.arange(32), labels])
        loss.name = "loss"
        if crash:
            print(f"killed while recording {path}: {len(tape)} records made")
            sys.stdout.flush()
            os._exit(1)  # as a killed process would: no cleanup, the last partial batch is lost
    if not streamed:
        tape.save(path)
    return tape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the tape file to write")
    parser.add_argument("--seed", type=int, default=0, help="the batch's random seed (default 0)")
    parser.add_argument("--clip", action="store_true", help="clip the hidden pre-activation to [-2, 2]")
    parser.add_argument("--stream", action="store_true", help="stream the records to the file as they are made")
    parser.add_argument("--crash", action="store_true", help="stream, then die before the recording ends")
    args = parser.parse_args()
    tape = record_step(args.out, args.seed, args.clip, args.stream, args.crash)
    print(f"wrote {args.out}: {len(tape)} records")


if __name__ == "__main__":
    main()
