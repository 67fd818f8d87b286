"""The reverse pass from a Variable: over eager segments and recorded tapes alike.

Contract:
- `pull(y, seed, targets, backend, node)` returns the cotangents `{serial: (Variable,
  cotangent)}` of `targets` (None: every floating leaf `y` depends on) from seeding `y` with
  `seed`.  It goes through what `y`'s history is made of: eager segments (`segment.history`:
  the records of the segments a result depends on, in order) and recorded tapes (a result
  produced on a tape is continued from its records).  A Variable reached at the edge of one (a
  tape input with eager history, or a recorded result used eagerly) is continued from with its
  cotangent, which is exact because the reverse pass is linear in its seed.
- With `node` None the cotangents are numpy arrays (the NUMPY backend).  With the traced
  backend the reverse pass computes on Variables, so it is itself recorded and differentiable;
  `node(tape_or_segment, serial)` then gives the Variable standing for a value of either.
- Each stretch of history is differentiated by the one engine loop, `engine.reverse`; with
  `check` (anomaly mode) by `engine.reverse_checked` instead, raising `NonFiniteError` at the
  first cotangent that becomes non-finite, naming its tape record and source line (eager ops
  have neither: the error says so).
- This module reads Variables only through their slots (`_tapegrad_serial`, `_link`, `_tape`,
  `data`) and does not import the tracer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from . import anomaly, engine, segment
from .tape import OUTPUT, RawRecord, Tape

Node = Callable[[Any, int], Any]


class _TapeNodes(dict[int, Any]):
    """Variables standing for a tape's values, made on demand (for a traced reverse pass)."""

    def __init__(self, tape: Tape, node: Node) -> None:
        super().__init__()
        self.tape, self.node = tape, node

    def __missing__(self, s: int) -> Any:
        v = self[s] = self.node(self.tape, s)
        return v


def _produced_on_tape(v: Any) -> int | None:
    tape = v._tape
    return None if tape is None else tape.producer(v._tapegrad_serial)


def pull(y: Any, seed: Any, targets: dict[int, Any] | None, backend: Any, node: Node | None = None, *,
         check: bool = False) -> dict[int, tuple[Any, Any]]:
    """Cotangents of `targets` (None: every floating leaf) from seeding `y` with `seed` (see
    the module docstring); traced when `node` is given, on numpy arrays otherwise; with `check`,
    every cotangent made must be finite (the caller checks `seed`)."""
    stop = set(targets or ())
    result: dict[int, tuple[Any, Any]] = {}
    work: list[tuple[Any, Any]] = [(y, seed)]
    while work:
        v, g = work.pop()
        me = v._tapegrad_serial
        n = None if v._link is not None or me in stop else _produced_on_tape(v)
        if me in stop or (v._link is None and n is None):  # a target, or a true leaf
            if targets is not None or v.data.dtype.kind == "f":
                prev = result.get(me)
                result[me] = (v, g if prev is None else backend.add(prev[1], g))
            continue
        on_tape: Tape | None = None
        stretches: list[tuple[Sequence[RawRecord], Any]]  # (records, values), newest first
        crossing: AbstractSet[int] = frozenset()
        if v._link is not None:
            found = segment.history(v, stop)
            edge, consts, crossing = found.edge, found.consts, found.crossing
            nodes = segment.Nodes(found, node) if node is not None else None
            stretches = [(records, nodes if nodes is not None else values) for records, values in found.stretches]
            holds = found.holds
        else:
            tape = on_tape = v._tape
            assert tape is not None and n is not None
            parts = tape.parts()
            stretches = [(parts.records[: n + 1], _TapeNodes(tape, node) if node is not None else parts.values)]
            edge = tape.input_variables()
            consts = parts.consts
            holds = parts.values.__contains__
        edge.update((s, t) for s, t in (targets or {}).items() if holds(s))
        edge.pop(me, None)
        sources = {s for s, u in edge.items() if u.data.dtype.kind == "f"}
        if targets is None:  # every leaf wanted: skip only what cannot carry a gradient
            skip = {s for s in edge if s not in sources} | consts
        else:
            active = engine.active_set([rec for records, _ in reversed(stretches) for rec in records], sources)
            skip = {s for records, _ in stretches for rec in records for s in rec[OUTPUT:] if s not in active}
        want = sources | crossing if crossing else sources
        cots = {me: g}
        for records, values in stretches:  # cotangents of crossing ids carried to the older stretches
            if check:
                cots = engine.reverse_checked(records, values, cots, skip, want, backend, _checker(on_tape, records),
                                              outputs_wanted=targets is not None)
            else:
                cots = engine.reverse(records, values, cots, skip, want, backend,
                                      outputs_wanted=targets is not None)  # else only leaves are wanted
        work.extend((edge[s], gs) for s, gs in cots.items() if s in edge)
    return result


def _checker(tape: Tape | None, records: Sequence[RawRecord]) -> engine.Noted:
    """The anomaly check of a stretch of `records`: a tape's prefix (`tape` given: the index of a
    record is its tape index) or eager segments (no record indices)."""
    def noted(k: int, i: int, cot: Any) -> None:
        if not anomaly.finite(cot):
            raise anomaly.reverse_error(tape, k if tape is not None else None, records[k], i, cot)

    return noted
