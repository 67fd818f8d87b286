"""Anomaly mode: the finiteness checks behind `check_finite=True` and the errors they raise.

Contract:
- `finite(value)` is False exactly when a floating-point array (or a Variable's data, or a
  Python float) holds a NaN or an infinity; integer and bool values are always finite.
- `forward_error`, `reverse_error`, `input_error` and `seed_error` build the `NonFiniteError`
  for the first non-finite value of a pass: a forward value a record computed, a cotangent a
  record's VJP made, a replaced input, or a reverse pass's seed.  The message names the pass,
  the record index, op, variable id and name, the user's source line when the tape has one, and
  how many NaN and infinite elements the value has; the same facts are the error's attributes.
  Every string that may come from a file (names, source paths) is escaped and capped.
- Nothing here runs unless a caller asked for checks: the fast paths of replay (`Plan.run`),
  the engine (`engine.reverse`) and the tracer never call into this module.
- This module imports neither the tracer nor the file format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import NonFiniteError, escape
from .tape import Tape, aval

_NDARRAY = np.ndarray
_TEXT = 200  # characters of a name or a source path that a message shows


def finite(value: Any) -> bool:
    """Whether `value` (ndarray, Variable or scalar) has no NaN and no infinity."""
    if type(value) is not _NDARRAY:
        value = value.data if hasattr(value, "_tapegrad_serial") else np.asarray(value)
    return value.dtype.kind != "f" or bool(np.isfinite(value).all())


def data_of(value: Any) -> Any:
    """The ndarray of `value` (a Variable's data, or the array itself)."""
    return value.data if hasattr(value, "_tapegrad_serial") else np.asarray(value)


def describe(value: Any) -> str:
    """`f64[3] (1 NaN, 2 infinite of 3 elements)` for a non-finite value."""
    arr = data_of(value)
    counts = []
    if arr.dtype.kind == "f":
        nan, inf = int(np.count_nonzero(np.isnan(arr))), int(np.count_nonzero(np.isinf(arr)))
        counts = [f"{nan:,} NaN"] * bool(nan) + [f"{inf:,} infinite"] * bool(inf)
    return f"{aval(arr.shape, arr.dtype)} ({', '.join(counts) or 'none'} of {arr.size:,} elements)"


def variable(tape: Tape, vid: int) -> str:
    """`v3 ('x')`: a variable of `tape` by internal id, its name escaped and capped."""
    name = tape.name_of(vid)
    label = f"v{tape.dense_ids()[vid]}"
    return label if name is None else f"{label} ({escape(name, _TEXT)!r})"


def record(tape: Tape, n: int) -> str:
    """`record 5 (sqrt) at model.py:12`, the source path escaped and capped."""
    src = tape.source_of(n)
    at = f" at {escape(src[0], _TEXT)}:{src[1]}" if src else ""
    return f"record {n} ({escape(tape.parts().records[n][0], _TEXT)}){at}"


def forward_error(tape: Tape, n: int, value: Any, inputs: Sequence[Any]) -> NonFiniteError:
    """Record `n` of `tape` computed the non-finite `value` from `inputs` (its input values)."""
    rec = tape.parts().records[n]
    out = rec[2]
    bad = [variable(tape, i) for i, x in zip(rec[3:], inputs, strict=True) if not finite(x)]
    cause = f"its input {', '.join(bad)} already was non-finite" if bad else "from finite inputs"
    return NonFiniteError(f"non-finite value in the forward pass: {record(tape, n)} made {variable(tape, out)} "
                          f"non-finite, {describe(value)}, {cause}", pass_="forward", record=n, op=rec[0],
                          source=tape.source_of(n), variable=tape.dense_ids()[out], value=data_of(value))


def reverse_error(tape: Tape | None, n: int | None, rec: Sequence[Any], vid: int, value: Any) -> NonFiniteError:
    """The VJP of record `rec` (record `n` of `tape`, or an eager op when `tape` is None) made the
    cotangent of its input `vid` non-finite (`value`), from a finite cotangent of its output."""
    dense: int | None = None
    source: tuple[str, int] | None = None
    if tape is None or n is None:
        where = (f"eager op {escape(str(rec[0]), _TEXT)} (not recorded, so no record index or source line: "
                 "run the computation inside tg.record() to get them)")
        what = "a cotangent"
    else:
        where, what = record(tape, n), f"the cotangent of {variable(tape, vid)}"
        dense, source = tape.dense_ids()[vid], tape.source_of(n)
    return NonFiniteError(f"non-finite value in the reverse pass: the VJP of {where} made {what} non-finite, "
                          f"{describe(value)}, from a finite cotangent of its output", pass_="reverse", record=n,
                          op=str(rec[0]), source=source, variable=dense, value=data_of(value))


def input_error(tape: Tape, vid: int, value: Any) -> NonFiniteError:
    """A replaced input's value is not finite."""
    return NonFiniteError(f"non-finite value in the forward pass: the replayed input {variable(tape, vid)} is "
                          f"non-finite, {describe(value)}", pass_="forward", variable=tape.dense_ids()[vid], value=data_of(value))


def seed_error(tape: Tape | None, vid: int | None, value: Any) -> NonFiniteError:
    """The seed of a reverse pass (the cotangent of its output `vid`) is not finite."""
    of = "" if tape is None or vid is None else f" (the cotangent of {variable(tape, vid)})"
    dense = None if tape is None or vid is None else tape.dense_ids()[vid]
    return NonFiniteError(f"non-finite value in the reverse pass: the seed{of} is non-finite, {describe(value)}",
                          pass_="reverse", variable=dense, value=data_of(value))
