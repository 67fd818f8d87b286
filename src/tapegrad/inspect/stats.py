"""`stats`: a tape's size, ops, cost and interface in one report (`tapegrad stats`).

Contract: `stats(tape, ...)` returns a `TapeStats` (plain data; `as_dict()` is its JSON form):
- counts of records, variables, inputs and constants; the op histogram, most frequent first;
- the stored values' count and bytes by dtype (what the file holds: `values_mode` says which);
- `flops`, the sum of `flops.flops` over the records (an estimate);
- `peak`, the peak memory `replay.plan(...).peak_bytes` predicts for replaying the tape with new
  values for every input: "forward" (the default outputs) and "backward" (the gradient of the
  last output with respect to every floating-point input).  Planning both costs time (about 60 s
  per million tiny records), so tapes of more than `max_plan_records` records (default
  `MAX_PLAN_RECORDS`; None: no limit) skip it;
  a skipped or impossible plan is None, with the reason in `peak_note`;
- the inputs (non-constant leaves) and outputs (named record results, then the last output,
  as `replay.forward` returns them by default), the source files, metadata, `recovery` and `error`;
- with `values=True`, `health`: the `ValueStats` of every stored value, worst first (most
  NaN + Inf, then floating-point values before integers and bools, then the largest finite
  magnitude, then by id), the first `top` of them (0: all);
  `health_count` says how many were summarised.
Everything except `health` and the plans takes one linear pass over the records.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .. import replay
from ..errors import TapegradError
from ..tape import ATTRS, INPUTS, OP, OUTPUT, Tape
from .common import Progress, VarRef, jsonable, ref
from .flops import flops as record_flops
from .health import ValueStats, summarize

MAX_PLAN_RECORDS = 500_000  # planning costs about 7 us per record (forward and backward): about 3 s at most
_EVERY = 1 << 14


@dataclass(frozen=True)
class Health:
    """The `ValueStats` of one stored value, and which variable it is."""

    var: VarRef
    values: ValueStats

    def as_dict(self) -> dict[str, Any]:
        return {**self.var.as_dict(), "values": self.values.as_dict()}


@dataclass(frozen=True)
class TapeStats:
    """What `stats` reports (see the module docstring)."""

    records: int
    variables: int
    constants: int
    inputs: list[VarRef]
    outputs: list[VarRef]
    ops: dict[str, int]
    values_mode: str
    stored: dict[str, dict[str, int]]  # dtype name -> {"values": count, "bytes": bytes}
    flops: int
    peak: dict[str, int | None]  # "forward", "backward" -> predicted peak bytes
    peak_note: str | None
    sources: list[str]
    metadata: dict[str, Any]
    recovery: Any  # a tape_format.Recovery, or None
    error: tuple[str, str] | None  # how the recording ended, if by an exception: (type, message)
    health: list[Health] | None
    health_count: int

    @property
    def stored_bytes(self) -> int:
        return sum(row["bytes"] for row in self.stored.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "variables": self.variables, "constants": self.constants,
            "inputs": [v.as_dict() for v in self.inputs], "outputs": [v.as_dict() for v in self.outputs],
            "ops": self.ops, "values_mode": self.values_mode, "stored": self.stored, "stored_bytes": self.stored_bytes,
            "flops": self.flops, "peak": self.peak, "peak_note": self.peak_note, "sources": self.sources,
            "metadata": jsonable(self.metadata),
            "recovery": None if self.recovery is None else dataclasses.asdict(self.recovery),
            "exception": None if self.error is None else [self.error[0], self.error[1]],
            "health": None if self.health is None else [h.as_dict() for h in self.health],
            "health_count": self.health_count,
        }


def stats(tape: Tape, *, values: bool = False, top: int = 20, max_plan_records: int | None = MAX_PLAN_RECORDS,
          progress: Progress | None = None) -> TapeStats:
    """The `TapeStats` of `tape` (see the module docstring)."""
    parts = tape.parts()
    records, stored = parts.records, parts.values
    total = len(records)

    def shape(vid: int) -> tuple[int, ...]:
        return tape.shape_dtype(vid)[0]

    ops: Counter[str] = Counter()
    flops = 0
    for n, rec in enumerate(records):
        if progress is not None and n % _EVERY == 0:
            progress(n, total)
        ops[rec[OP]] += 1
        flops += record_flops(rec[OP], [shape(i) for i in rec[INPUTS:]], shape(rec[OUTPUT]), rec[ATTRS])
    by_dtype: dict[str, dict[str, int]] = {}
    for (shape_, dtype), count in Counter(map(tape.shape_dtype, stored)).items():  # (no array made)
        row = by_dtype.setdefault(dtype.name, {"values": 0, "bytes": 0})
        row["values"] += count
        row["bytes"] += count * math.prod(shape_) * dtype.itemsize
    inputs = [v for v in parts.leaves if v not in parts.consts]
    outputs = sorted(v for v in parts.names if tape.producer(v) is not None)
    if total and tape.last_output() not in outputs:
        outputs.append(tape.last_output())
    peak, note = _peaks(tape, inputs, max_plan_records)
    health, count = _health(tape, progress, top) if values else (None, 0)
    return TapeStats(
        records=total, variables=len(tape.ids_in_order()), constants=len(parts.consts),
        inputs=[ref(tape, v) for v in inputs], outputs=[ref(tape, v) for v in outputs],
        ops=dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))), values_mode=tape.values_mode,
        stored=dict(sorted(by_dtype.items())), flops=flops, peak=peak, peak_note=note,
        sources=tape.source_files(), metadata=dict(tape.metadata), recovery=tape.recovery, error=tape.error, health=health,
        health_count=count)


def _peaks(tape: Tape, inputs: list[int], limit: int | None) -> tuple[dict[str, int | None], str | None]:
    """Predicted peak bytes of a forward and a backward replay with every input replaced."""
    peak: dict[str, int | None] = {"forward": None, "backward": None}
    if not len(tape):
        return peak, "no records"
    if limit is not None and len(tape) > limit:
        return peak, f"not planned: {len(tape):,} records, more than the limit of {limit:,}"
    dense = tape.dense_ids()
    replaced = [dense[v] for v in inputs]
    wrt = [dense[v] for v in inputs if tape.shape_dtype(v)[1].kind == "f"]
    last = tape.last_output()
    try:
        peak["forward"] = replay.plan(tape, inputs=replaced).peak_bytes
        if wrt and tape.shape_dtype(last)[1].kind == "f":
            peak["backward"] = replay.plan(tape, of=dense[last], wrt=wrt, inputs=replaced).peak_bytes
    except TapegradError as exc:
        return peak, f"cannot plan a replay: {exc}"
    return peak, None


def _badness(row: tuple[ValueStats, int]) -> tuple[int, bool, float, int]:
    """Sort key, smallest = worst: most non-finite elements, then floating-point values before
    integer and bool ones (indices and masks), then the largest finite magnitude, then by id."""
    v, vid = row
    magnitude = 0.0 if v.min is None or v.max is None else max(abs(v.min), abs(v.max))
    return -(v.nan + v.inf), not v.type.startswith("f"), -magnitude, vid


def _health(tape: Tape, progress: Progress | None, top: int) -> tuple[list[Health], int]:
    stored = tape.parts().values
    order = tape.ids_in_order()
    rows = []
    for k, vid in enumerate(order):  # internal ids rank like dense ids: ties go in id order
        if progress is not None and k % _EVERY == 0:
            progress(k, len(order))
        value = stored.get(vid)
        if value is not None:
            rows.append((summarize(value), vid))
    worst = heapq.nsmallest(top, rows, key=_badness) if top else sorted(rows, key=_badness)
    return [Health(ref(tape, vid), values) for values, vid in worst], len(rows)
