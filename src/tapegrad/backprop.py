"""The reverse pass from a Variable: over eager links and recorded tapes alike.

Contract:
- `pull(y, seed, targets, backend, node)` returns the cotangents `{serial: (Variable,
  cotangent)}` of `targets` (None: every floating leaf `y` depends on) from seeding `y` with
  `seed`.  It walks what `y`'s history is made of: eager links (each result's `_link`, a record
  followed by its input Variables or constant arrays) and recorded tapes (a result produced on a tape is
  continued from its records).  A Variable reached at the edge of one (a tape input with eager
  history, or a recorded result used eagerly) is continued from with its cotangent, which is
  exact because the reverse pass is linear in its seed.
- With `node` None the cotangents are numpy arrays (the NUMPY backend).  With the traced
  backend the reverse pass computes on Variables, so it is itself recorded and differentiable;
  `node(tape, serial)` then gives the Variable standing for a recorded value.
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
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from . import anomaly, engine
from .tape import INPUTS, OUTPUT, RawRecord, Tape

Node = Callable[[Tape, int], Any]
_NDARRAY = np.ndarray
_by_output = itemgetter(OUTPUT)


class _EagerGraph(NamedTuple):
    """The linked history of a Variable (see `_eager_graph`), by serial."""

    records: list[RawRecord]  # in tape order
    values: dict[int, Any]  # every id the records mention -> its array (Variable when traced)
    edge: dict[int, Any]  # where the walk stopped: leaves, serials in `stop`, recorded results
    consts: set[int]  # constants (held in the links as arrays)


def _eager_graph(y: Any, stop: AbstractSet[int], traced: bool) -> _EagerGraph:
    """The linked records `y` depends on, in tape order, with every value they mention, in one
    walk that does not go past serials in `stop`.  With `traced`, values are the Variables (and
    constant arrays) themselves, else arrays."""
    records: list[RawRecord] = []
    values: dict[int, Any] = {}
    edge: dict[int, Any] = {}
    consts: set[int] = set()
    stack = [y]
    pop, push, add = stack.pop, stack.append, records.append
    values[y._tapegrad_serial] = y if traced else y.data
    while stack:
        v = pop()
        link = v._link
        if link is None or (stop and v._tapegrad_serial in stop):
            edge[v._tapegrad_serial] = v
            continue
        rec = link[0]
        add(rec)
        if len(link) == 2:  # (most ops: saves the zip, ~0.1 us of ~0.4 per record)
            s, u = rec[3], link[1]
            if s not in values:
                if type(u) is _NDARRAY:
                    values[s] = u
                    consts.add(s)
                else:
                    values[s] = u if traced else u.data
                    push(u)
            continue
        for s, u in zip(rec[INPUTS:], link[1:], strict=True):
            if s in values:
                continue
            if type(u) is _NDARRAY:
                values[s] = u
                consts.add(s)
            else:
                values[s] = u if traced else u.data
                push(u)
    records.sort(key=_by_output)
    return _EagerGraph(records, values, edge, consts)


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
    traced = node is not None
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
        records: Sequence[RawRecord]
        on_tape: Tape | None = None
        if v._link is not None:
            records, values, edge, consts = _eager_graph(v, stop, traced)
            data: Any = values if not traced else {s: (u if type(u) is _NDARRAY else u.data) for s, u in values.items()}
        else:
            tape = on_tape = v._tape
            assert tape is not None and n is not None
            parts = tape.parts()
            records = parts.records[: n + 1]
            data = parts.values
            values = _TapeNodes(tape, node) if node is not None else data
            edge = tape.input_variables()
            edge.update((s, t) for s, t in (targets or {}).items() if s in data)
            consts = parts.consts
        edge.pop(me, None)
        sources = {s for s, u in edge.items() if data[s].dtype.kind == "f"}
        if targets is None:  # every leaf wanted: skip only what cannot carry a gradient
            skip = {s for s in edge if s not in sources} | consts
        else:
            active = engine.active_set(records, sources)
            skip = {s for s in data if s not in active}
        if check:
            found = engine.reverse_checked(records, values, {me: g}, skip, sources, backend,
                                           _checker(on_tape, records), outputs_wanted=targets is not None)
        else:
            found = engine.reverse(records, values, {me: g}, skip, sources, backend,
                                   outputs_wanted=targets is not None)  # else only leaves are wanted
        work.extend((edge[s], gs) for s, gs in found.items())
    return result


def _checker(tape: Tape | None, records: Sequence[RawRecord]) -> engine.Noted:
    """The anomaly check of a stretch of `records`: a tape's prefix (`tape` given: the index of a
    record is its tape index) or eager links (no record indices)."""
    def noted(k: int, i: int, cot: Any) -> None:
        if not anomaly.finite(cot):
            raise anomaly.reverse_error(tape, k if tape is not None else None, records[k], i, cot)

    return noted
