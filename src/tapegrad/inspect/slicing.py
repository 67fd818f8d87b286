"""`slice`: the smallest tape that computes one variable (`tapegrad slice`).

Contract: `slice(tape, var)` returns a `Slice` whose `tape` holds the backward slice of `var`:
- the records `var` depends on, in tape order;
- every guard (value or shape guard) among the records before `var`'s whose checked value depends on an input the
  slice reads (a branch those inputs decided, which a replay of the slice with other inputs
  must re-check), with the records it needs.  Guards that depend on none of the slice's inputs
  are left out: in the slice they could only ever see their recorded values;
- the leaves all of these read, with their stored values.  The slice keeps the original
  leaves, so it needs no recomputation, and replaying it gives the same value and gradients as
  the full tape, bit for bit.
Names and source lines of what is kept stay; ids are renumbered densely in the same order
(`records` maps the slice's record k to the full tape's record `records[k]`).  The slice keeps
the tape's `values` mode (a structure-only tape gives a structure-only slice) and its metadata,
plus `"tapegrad.slice": {"of": <name or v<N>>, "records": <the full tape's count>}`.  The slice
is validated before it is returned.  Unknown names raise `TapegradError`.  Linear time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import engine
from ..tape import INPUTS, OP, OUTPUT, RawRecord, Tape
from ..tape_format.validate import validate
from .common import VarRef, find, ref


@dataclass(frozen=True)
class Slice:
    """A backward slice: the new `tape`, the variable `var` it computes (as on the full tape),
    and the full tape's index of each kept record."""

    tape: Tape
    var: VarRef
    records: list[int]

    def as_dict(self) -> dict[str, Any]:
        leaves = self.tape.parts().leaves
        return {"var": self.var.as_dict(), "records": len(self.records), "leaves": len(leaves),
                "guards": sum(1 for rec in self.tape.parts().records if rec[OP] in engine.GUARDS),
                "from_records": self.records}


def slice(tape: Tape, var: str | int) -> Slice:  # noqa: A001 (the command's name)
    """The backward slice of `var` (see the module docstring)."""
    target = find(tape, var)
    parts = tape.parts()
    records = parts.records
    end = tape.producer(target)
    upto = records[:0 if end is None else end + 1]  # guards after `var`'s record decided nothing about it
    needed = _cone(upto, [target])
    reads = engine.active_set(upto, [v for v in parts.leaves if v in needed and v not in parts.consts])  # what the slice's inputs decide
    guards = [rec[OUTPUT] for rec in upto if rec[OP] in engine.GUARDS and rec[OUTPUT] in reads]
    if guards:
        needed = _cone(upto, [target, *guards])
    kept = [n for n in range(0 if end is None else end + 1) if records[n][OUTPUT] in needed]
    ids = [v for v in parts.leaves if v in needed] + [records[n][OUTPUT] for n in kept]
    sources = None
    keep = set(kept)
    picked = [where for n, where in zip(range(kept[-1] + 1 if kept else 0), tape.sources(0), strict=False)
              if n in keep]
    if picked and all(where is not None for where in picked):
        sources = ([where[0] for where in picked if where], [where[1] for where in picked if where])
    full = ref(tape, target)
    metadata = dict(tape.metadata)
    metadata["tapegrad.slice"] = {"of": full.name if full.name is not None else f"v{full.id}", "records": len(records)}
    sliced = Tape.from_parts(
        tape.values_mode, metadata,
        leaves=[v for v in parts.leaves if v in needed], consts={v for v in parts.consts if v in needed},
        records=[records[n] for n in kept], values={v: parts.values[v] for v in ids if v in parts.values},
        avals={v: parts.avals[v] for v in ids if v not in parts.values}, names={v: parts.names[v] for v in ids if v in parts.names},
        sources=sources)
    validate(sliced)
    return Slice(sliced, full, kept)


def _cone(records: Sequence[RawRecord], seeds: list[int]) -> set[int]:
    """`seeds` and every id they depend on through `records` (one backward sweep)."""
    needed = set(seeds)
    for rec in reversed(records):
        if rec[OUTPUT] in needed:
            needed.update(rec[INPUTS:])
    return needed
