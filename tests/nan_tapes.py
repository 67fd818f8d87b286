"""Tapes whose values go non-finite, shared by the anomaly and nan tests (this module holds no tests).

- `underflow()`: log(softmax(z)) where the softmax underflows to 0: record 1 (log) makes -inf.
- `root()`: sum(2 sqrt(x)) at x = [4, 0, 1]: a finite forward pass, an infinite gradient at 0.
- `CRASH`: a script that streams a recording like `underflow()` forever, for SIGKILL tests.
Each builder returns the tape and the source line of the record where things go wrong, and
`HERE` is the file those lines are in.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np

import tapegrad as tg
from tapegrad.tape import Tape

HERE = __file__  # the file of the source lines the builders record
LOGITS = np.array([[1000.0, 0.0, -5.0]])  # softmax underflows to exactly 0 at two places


def line_after() -> int:
    return sys._getframe(1).f_lineno + 1


def underflow(values: str = "all", logits: np.ndarray = LOGITS) -> tuple[Tape, int]:
    """loss = -sum(log(softmax(z))): record 1 (log) makes -inf from the finite softmax."""
    with tg.record(values=values) as tape, np.errstate(all="ignore"):
        z = tg.Variable(logits, name="logits")
        p = tg.softmax(z, axis=-1)
        line = line_after()
        lp = tg.log(p)
        loss = -tg.sum(lp)
        loss.name = "loss"
    return tape, line


def root(values: str = "all") -> tuple[Tape, int]:
    """y = sum(2 sqrt(x)) at x = [4, 0, 1]: a finite forward pass, an infinite gradient at 0."""
    with tg.record(values=values) as tape:
        x = tg.Variable(np.array([4.0, 0.0, 1.0]), name="x")
        line = line_after()
        s = tg.sqrt(x)
        y = tg.sum(s * 2.0)
        y.name = "y"
    return tape, line


CRASH = textwrap.dedent("""
    import sys
    import numpy as np
    import tapegrad as tg

    np.seterr(all="ignore")
    with tg.record(path=sys.argv[1], flush_every=4) as tape:
        z = tg.Variable(np.array([[1000.0, 0.0, -5.0]]), name="logits")
        y = -tg.sum(tg.log(tg.softmax(z, axis=-1)))   # records 0-3: record 1 (log) makes -inf
        while True:
            y = tg.sin(y) * 0.5
            if len(tape) % 4 == 0:
                print(len(tape), flush=True)   # a batch of records has been handed to the OS
""")
