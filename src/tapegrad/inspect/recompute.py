"""Recomputing a tape's values from its leaves, one record at a time (for `check` and `diff`).

Contract: `recompute(tape)` yields `(record index, value)` for every record in tape order, each
value computed by the op's registry kernel from the recomputed values of its inputs (the leaves'
stored values at the start), exactly as replay computes them, so a faithful recording gives
identical values.  Memory: a value is kept only until its last use (one pass beforehand finds
it).  When a record cannot be computed (a guard takes the other branch, a kernel fails) the
generator yields `(index, Failure)` and stops.  A tape that stores no value for a needed leaf
raises `TapegradError` before the first record, and a record whose value alone is over the replay
memory budget (`tapegrad.budget`) raises `LimitError` before it is computed.  Floating-point
warnings are silenced: the values say what happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import budget
from ..errors import GuardError, TapegradError
from ..ops import REGISTRY
from ..tape import ATTRS, INPUTS, OP, OUTPUT, Tape
from .common import Progress

_EVERY = 1 << 12


@dataclass(frozen=True)
class Failure:
    """Why a record could not be recomputed: `kind` is "guard" (the recomputed value takes the
    other branch) or "error" (the kernel raised); `message` says what happened."""

    kind: str
    message: str


def recompute(tape: Tape, progress: Progress | None = None) -> Iterator[tuple[int, Any]]:
    """The records' values recomputed from the leaves (see the module docstring)."""
    parts = tape.parts()
    records = parts.records
    values: dict[int, Any] = {}
    for vid in parts.leaves:
        value = parts.values.get(vid)
        if value is None:
            raise TapegradError(f"cannot recompute: the tape stores no value for input v{tape.dense_ids()[vid]} "
                                f"(values={tape.values_mode!r})")
        values[vid] = value
    last_use: dict[int, int] = {}
    for n, rec in enumerate(records):
        for i in rec[INPUTS:]:
            last_use[i] = n
    limit = budget.resolve(None)
    with np.errstate(all="ignore"):
        for n, rec in enumerate(records):
            if progress is not None and n % _EVERY == 0:
                progress(n, len(records))
            budget.check_record(tape, n, limit, "cannot recompute the tape's values")
            ins = [values[i] for i in rec[INPUTS:]]
            try:
                out = REGISTRY[rec[OP]].forward(*ins, **(rec[ATTRS] or {}))
            except GuardError as exc:
                yield n, Failure("guard", str(exc))
                return
            except (TapegradError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
                yield n, Failure("error", f"{type(exc).__name__}: {exc}")
                return
            for i in rec[INPUTS:]:
                if last_use[i] == n:
                    values.pop(i, None)
            if rec[OUTPUT] in last_use:
                values[rec[OUTPUT]] = out
            yield n, out
