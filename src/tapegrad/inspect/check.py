"""`check`: is a tape what its program computes? (`tapegrad check`)

Contract: `check(tape, rtol=None, atol=None, grad=None, of=None, grad_rtol=None, grad_atol=None)`
returns a `CheckReport`:
1. The tape is validated (`tape_format.validate.validate`; a loaded tape already was): an
   inconsistent tape raises `TapeFormatError`.
2. Every record is recomputed from the leaves (`recompute`) and each stored value is compared
   with the recomputed one: same shape and dtype, and elementwise
   `|stored - recomputed| <= atol + rtol * |recomputed|` (NaN equal to NaN; integers and bools
   exactly).  The first record that differs is the report's `mismatch` (a `Mismatch`: the
   record, both values' `ValueStats`, the largest difference and the first differing element);
   a record that cannot be recomputed (a guard takes the other branch, a kernel fails) is one
   too.  Defaults: rtol=1e-5, atol=1e-8 (numpy's); rtol=atol=0 asks for bit-for-bit equality,
   which a recording replayed on the machine that made it satisfies.  A tape that stores only
   inputs has nothing to compare (`compared == 0`); one that stores no values cannot be
   recomputed (`recomputed == 0`, with the reason in `note`).
3. With `grad` (an input), a finite-difference check of d `of` / d `grad` (`of` defaults to the
   last output), a `GradCheck`: along `DIRECTIONS` seeded random directions d, the replayed
   gradient's `<g, x+ - x->` against `sum(of(x+)) - sum(of(x-))`, with x+- = x +- eps*d rounded
   to the input's dtype (so rounding of the step does not count as error), both divided by
   2*eps (directional derivatives); eps = cbrt(machine epsilon) * max(1, max |x|).  It passes when
   every direction agrees within `grad_atol + grad_rtol * max(|numeric|, |analytic|)`, which
   default by dtype (float64: 1e-5 and 1e-8, float32: 1e-2 and 1e-4, float16: 1e-1 and 1e-2).
`ok` is True when nothing differs.  Unknown names raise `TapegradError` (nearest names first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import replay
from ..errors import TapegradError
from ..tape import OUTPUT, Tape
from ..tape_format.validate import validate
from .common import Progress, VarRef, find, ref
from .health import ValueStats, summarize
from .recompute import Failure, recompute

RTOL, ATOL = 1e-5, 1e-8
GRAD_TOLERANCES = {"float64": (1e-5, 1e-8), "float32": (1e-2, 1e-4), "float16": (1e-1, 1e-2)}
DIRECTIONS = 3


@dataclass(frozen=True)
class Difference:
    """How two arrays of the same shape differ: how many elements are beyond tolerance, the
    first of them (an index tuple), and the largest absolute difference and relative difference
    (|a - b| / max(|a|, |b|)) over the elements finite on both sides."""

    count: int
    first: tuple[int, ...] | None
    max_abs: float
    max_rel: float

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": None if self.first is None else list(self.first),
                "max_abs": self.max_abs, "max_rel": self.max_rel}


def difference(a: Any, b: Any, rtol: float, atol: float) -> Difference | None:
    """None if `a` and `b` agree (same shape and dtype; `|a - b| <= atol + rtol * |b|`, NaN == NaN;
    non-float dtypes exactly), else how they differ.  Different shapes or dtypes count every
    element (`first` None)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return Difference(max(a.size, b.size), None, float("nan"), float("nan"))
    with np.errstate(all="ignore"):
        if a.dtype.kind == "f":
            bad = ~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        else:
            bad = a != b
        if not bad.any():
            return None
        both = np.isfinite(a) & np.isfinite(b) if a.dtype.kind == "f" else np.ones(a.shape, bool)
        x, y = a[both].astype(np.float64), b[both].astype(np.float64)
        gap = np.abs(x - y)
        max_abs = float(gap.max()) if gap.size else 0.0
        scale = np.maximum(np.abs(x), np.abs(y))
        rel = np.divide(gap, scale, out=np.zeros_like(gap), where=scale > 0)
        max_rel = float(rel.max()) if rel.size else 0.0
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape)) if a.ndim else ()
    return Difference(int(np.count_nonzero(bad)), first, max_abs, max_rel)


@dataclass(frozen=True)
class Mismatch:
    """The first record whose stored value is not what recomputing gives.

    `kind`: "value" (beyond tolerance), "guard" (the recomputed value takes another branch) or
    "error" (the op failed on the recomputed inputs; `message` says how)."""

    var: VarRef
    kind: str
    stored: ValueStats | None
    recomputed: ValueStats | None
    difference: Difference | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"record": self.var.record, "var": self.var.as_dict(), "kind": self.kind,
                "stored": None if self.stored is None else self.stored.as_dict(),
                "recomputed": None if self.recomputed is None else self.recomputed.as_dict(),
                "difference": None if self.difference is None else self.difference.as_dict(), "message": self.message}


@dataclass(frozen=True)
class Direction:
    """One direction of a gradient check: the replayed and the finite-difference change of
    `sum(of)` over the step from x- to x+, and whether they agree."""

    analytic: float
    numeric: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return {"analytic": self.analytic, "numeric": self.numeric, "ok": self.ok}


@dataclass(frozen=True)
class GradCheck:
    """A finite-difference check of d `of` / d `wrt` (see the module docstring)."""

    of: VarRef
    wrt: VarRef
    eps: float
    rtol: float
    atol: float
    directions: list[Direction]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.directions)

    def as_dict(self) -> dict[str, Any]:
        return {"of": self.of.as_dict(), "wrt": self.wrt.as_dict(), "eps": self.eps, "rtol": self.rtol,
                "atol": self.atol, "ok": self.ok, "directions": [d.as_dict() for d in self.directions]}


@dataclass(frozen=True)
class CheckReport:
    """What `check` found (see the module docstring)."""

    records: int
    recomputed: int
    compared: int
    values_mode: str
    rtol: float
    atol: float
    mismatch: Mismatch | None
    grad: GradCheck | None
    note: str | None

    @property
    def ok(self) -> bool:
        return self.mismatch is None and (self.grad is None or self.grad.ok)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "recomputed": self.recomputed, "compared": self.compared,
                "values_mode": self.values_mode, "rtol": self.rtol, "atol": self.atol,
                "mismatch": None if self.mismatch is None else self.mismatch.as_dict(),
                "grad": None if self.grad is None else self.grad.as_dict(), "note": self.note}


def check(tape: Tape, *, rtol: float | None = None, atol: float | None = None, grad: str | int | None = None,
          of: str | int | None = None, grad_rtol: float | None = None, grad_atol: float | None = None,
          progress: Progress | None = None) -> CheckReport:
    """Validate `tape`, recompute it and compare (see the module docstring)."""
    validate(tape)
    value_rtol = RTOL if rtol is None else rtol
    value_atol = ATOL if atol is None else atol
    grad_check = None
    if grad is not None:  # names are checked before the long part
        grad_check = _grad_check(tape, find(tape, of) if of is not None else None, find(tape, grad), grad_rtol, grad_atol)
    parts = tape.parts()
    records, stored = parts.records, parts.values
    recomputed = compared = 0
    mismatch = None
    note = None
    try:
        steps = recompute(tape, progress)
        for n, value in steps:
            out = records[n][OUTPUT]
            want = stored.get(out)
            if isinstance(value, Failure):
                mismatch = Mismatch(ref(tape, out, n), value.kind, None if want is None else summarize(want), None, None,
                                    value.message)
                break
            recomputed += 1
            if want is None:
                continue
            compared += 1
            diff = difference(want, value, value_rtol, value_atol)
            if diff is not None:
                mismatch = Mismatch(ref(tape, out, n), "value", summarize(want), summarize(value), diff,
                                    "the stored value differs from the recomputed one")
                break
    except TapegradError as exc:
        note = str(exc)
    return CheckReport(len(records), recomputed, compared, tape.values_mode, value_rtol, value_atol, mismatch,
                       grad_check, note)


def _grad_check(tape: Tape, of_id: int | None, wrt_id: int, rtol: float | None, atol: float | None) -> GradCheck:
    of_id = tape.last_output() if of_id is None else of_id
    dense = tape.dense_ids()
    wrt, of = ref(tape, wrt_id), ref(tape, of_id)
    parts = tape.parts()
    if tape.producer(wrt_id) is not None or wrt_id in parts.consts:
        what = "a constant" if wrt.op == "const" else f"computed by record {wrt.record}"
        raise TapegradError(f"a gradient check needs an input of the tape; {wrt.label} is {what}")
    x = np.asarray(tape.value(wrt_id))
    if x.dtype.kind != "f":
        raise TapegradError(f"cannot check the gradient with respect to {wrt.label}: its dtype {x.dtype} is not floating point")
    default = GRAD_TOLERANCES.get(x.dtype.name, GRAD_TOLERANCES["float64"])
    grad_rtol, grad_atol = default[0] if rtol is None else rtol, default[1] if atol is None else atol
    finfo = np.finfo(x.dtype)
    eps = float(np.cbrt(finfo.eps)) * max(1.0, float(np.max(np.abs(x), initial=0.0)) if np.isfinite(x).all() else 1.0)
    with np.errstate(all="ignore"):
        g = np.asarray(replay.backward(tape, of=dense[of_id], wrt=[dense[wrt_id]])[dense[wrt_id]], dtype=np.float64)

    def total(at: Any) -> float:
        out = replay.forward(tape, inputs={dense[wrt_id]: at}, outputs=[dense[of_id]])[dense[of_id]]
        return float(np.sum(np.asarray(out, dtype=np.float64)))

    rng = np.random.default_rng(0)
    directions = []
    with np.errstate(all="ignore"):
        for _ in range(DIRECTIONS):
            d = rng.standard_normal(x.shape)
            plus, minus = (x + eps * d).astype(x.dtype), (x - eps * d).astype(x.dtype)
            step = plus.astype(np.float64) - minus.astype(np.float64)  # 2 eps d, as rounded to x's dtype
            analytic = float(np.sum(g * step)) / (2 * eps)
            numeric = (total(plus) - total(minus)) / (2 * eps)
            ok = bool(np.isfinite(numeric) and np.isfinite(analytic)
                      and abs(numeric - analytic) <= grad_atol + grad_rtol * max(abs(numeric), abs(analytic)))
            directions.append(Direction(analytic, numeric, ok))
    return GradCheck(of, wrt, eps, grad_rtol, grad_atol, directions)
