"""The reverse-mode engine: one loop over reversed records, shared by every caller.

Contract:
- `reverse()` is the one reverse-mode loop in tapegrad.  It walks `reversed(records)` once,
  applies each op's registry VJP rule through a backend `F` (numpy arrays, Variables when the
  reverse pass is being recorded, or plan symbols when it is being compiled), sums each
  cotangent back to its input's shape and dtype, and adds cotangents of reused variables out
  of place (`F.add`), never in place.
- `reverse_checked()` is its twin for anomaly mode: the same backend calls in the same order
  (every record through the general step instead of the fast paths), plus a call `noted(k, i, cotangent)` each time
  the cotangent of id `i` changes while `records[k]` is differentiated, which may raise.  Eager
  `y.backward(check_finite=True)` checks cotangents there; plans compiled for checking note
  which step makes each cotangent.  Keeping it apart keeps `reverse` free of any check.
- Records are flat `(op, attrs, output, *inputs)` tuples (see `tape.RawRecord`).
- This module imports neither the tracer nor the file format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .ops import NUMPY, REGISTRY, OpSpec, pass_on
from .ops.registry import on_change
from .tape import INPUTS, OP, OUTPUT, RawRecord


def _no_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, attrs: Any, k: int) -> None:
    return None


_VJP = {name: spec.vjp or _no_vjp for name, spec in REGISTRY.items()}
_ELEMENTWISE = frozenset(name for name, spec in REGISTRY.items() if spec.elementwise)
GUARDS = frozenset(("guard", "shape_guard"))
"""The ops that check what the recording saw (a value it branched on, a shape it read)."""


def _op_changed(name: str, spec: OpSpec | None) -> None:
    """Keep the two tables above in step with custom ops (`tapegrad.custom`)."""
    global _ELEMENTWISE
    if spec is None:
        _VJP.pop(name, None)
    else:
        _VJP[name] = spec.vjp or _no_vjp
    _ELEMENTWISE = frozenset(n for n, s in REGISTRY.items() if s.elementwise)


on_change(_op_changed)


def active_set(records: Iterable[RawRecord], sources: Iterable[int]) -> set[int]:
    """Ids that depend on any of `sources` (forward sweep over the records)."""
    active = set(sources)
    for rec in records:
        for i in rec[INPUTS:]:
            if i in active:
                active.add(rec[OUTPUT])
                break
    return active


def needed_ids(records: Sequence[RawRecord], outputs: Iterable[int]) -> set[int]:
    """`outputs`, every guard's output, and every id they depend on (backward sweep).

    Guards (value and shape guards) are always included: a replay must re-check the branches
    the recording took and the shapes it read.
    """
    needed = set(outputs)
    needed.update(rec[OUTPUT] for rec in records if rec[OP] in GUARDS)
    for rec in reversed(records):
        if rec[OUTPUT] in needed:
            needed.update(rec[INPUTS:])
    return needed


def reverse(records: Sequence[RawRecord], values: Mapping[int, Any], seeds: dict[int, Any],
            skip: set[int] | frozenset[int], want: set[int], F: Any = NUMPY, *,
            outputs_wanted: bool = True) -> dict[int, Any]:
    """Run the reverse pass; return the cotangents of the ids in `want` that received one.

    `values` maps every id the records mention to its primal value (array or Variable); `seeds`
    gives the starting cotangents; no cotangent is computed for ids in `skip` (constants, and
    whatever cannot reach a requested id).  Integer results never pass cotangents on to floating
    inputs (the only op that crosses, `astype`, blocks them), so `skip` need not list them.
    Each cotangent is dropped as soon as its record has been processed.  With `outputs_wanted`
    False the caller vouches that no id in `want` is the output of one of `records` (only
    leaves are wanted), which spares a membership test per record.
    """
    cot = dict(seeds)
    found: dict[int, Any] = {}
    vjps = _VJP
    elementwise = _ELEMENTWISE
    pop = cot.pop
    get = cot.get
    # The cotangent a one-input step (or a step whose second input is a constant) just made for
    # an id that had none is kept in `carried` instead of `cot`: in a chain the very next record
    # takes it (out_id == carried), and two dict operations per record are saved (~15% of a
    # tiny-op reverse pass).  It goes into `cot` before any other record runs.
    carried: int | None = None
    carried_g: Any = None
    for rec in reversed(records):
        out_id = rec[2]
        if out_id == carried:
            g = carried_g
            carried = None
        else:
            if carried is not None:
                cot[carried] = carried_g
                carried = None
            g = pop(out_id, None)
            if g is None:
                continue
        if outputs_wanted and out_id in want:
            found[out_id] = g
        vjp = vjps[rec[0]]
        if len(rec) == 4:  # registry contract: one-input rules return the input's shape and dtype
            i = rec[3]
            if i in skip:
                continue
            gi = vjp(F, g, (values[i],), values[out_id], rec[1], 0)
        else:
            out = values[out_id]
            attrs = rec[1]
            if len(rec) != 5 or rec[0] not in elementwise:
                _pull_inputs(rec, [values[i] for i in rec[3:]], out, g, vjp, skip, cot, F)
                continue
            # Two inputs into an elementwise op: an input of the output's shape and dtype gets a
            # cotangent of that shape and dtype (the rule only combines arrays that broadcast to
            # the output and promote to its dtype), so nothing is checked for it.  Reading ndarray
            # attributes is a large part of this loop's cost: the common cases (the second input a
            # constant, or both inputs like the output) read as few as they can and are unrolled
            # (the general step costs ~400 more machine instructions per op of the tiny chain, of ~23k).
            i, j = rec[3], rec[4]
            a = values[i]
            dtype = out.dtype
            if not (j in skip and i not in skip and a.dtype is dtype and a.shape == out.shape):
                b = values[j]
                xs = (a, b)
                if a.shape != b.shape or a.dtype is not b.dtype or b.dtype is not dtype:
                    _each_input(rec, xs, out, g, vjp, skip, cot, F)
                    continue
                if vjp is pass_on:  # (`add`: a call saved per input)
                    if i not in skip:
                        prev = get(i)
                        cot[i] = g if prev is None else F.add(prev, g)
                    if j not in skip:
                        prev = get(j)
                        cot[j] = g if prev is None else F.add(prev, g)
                    continue
                if i not in skip:
                    gi = vjp(F, g, xs, out, attrs, 0)
                    if gi is not None:
                        prev = get(i)
                        cot[i] = gi if prev is None else F.add(prev, gi)
                if j not in skip:
                    gi = vjp(F, g, xs, out, attrs, 1)
                    if gi is not None:
                        prev = get(j)
                        cot[j] = gi if prev is None else F.add(prev, gi)
                continue
            # The second input a constant (`y * 0.9`), the first like the output: as one input.
            gi = g if vjp is pass_on else vjp(F, g, (a, values[j]), out, attrs, 0)
        # One input `i` took cotangent `gi`, of its own shape and dtype: carried to the next record
        # if it is the first for `i`.
        if gi is not None:
            prev = get(i)
            if prev is None:
                carried, carried_g = i, gi
            else:
                cot[i] = F.add(prev, gi)
    if carried is not None:
        cot[carried] = carried_g
    for i in want:
        g = cot.get(i)
        if g is not None:
            found[i] = g
    return found


def _each_input(rec: RawRecord, xs: tuple[Any, Any], out: Any, g: Any, vjp: Any, skip: set[int] | frozenset[int],
                cot: dict[int, Any], F: Any) -> None:
    """`reverse`'s step for a two-input elementwise record with an input broadcast or promoted
    (often a constant, in `skip`): each input on its own, the one like the output unchecked."""
    shape, dtype = out.shape, out.dtype
    for k, n in ((0, rec[3]), (1, rec[4])):
        if n in skip:
            continue
        if xs[k].shape != shape or xs[k].dtype is not dtype:
            _pull_input(rec, xs, k, n, out, g, vjp, cot, F)
            continue
        gi = g if vjp is pass_on else vjp(F, g, xs, out, rec[1], k)
        if gi is not None:
            prev = cot.get(n)
            cot[n] = gi if prev is None else F.add(prev, gi)


def _pull_inputs(rec: RawRecord, xs: Sequence[Any], out: Any, g: Any, vjp: Any, skip: set[int] | frozenset[int],
                 cot: dict[int, Any], F: Any, noted: Callable[[int, Any], None] | None = None) -> None:
    """The general step of `reverse`: add each input's cotangent from `rec` into `cot`
    (`_pull_input` for each input not in `skip`)."""
    for k, i in enumerate(rec[3:]):
        if i not in skip:
            _pull_input(rec, xs, k, i, out, g, vjp, cot, F, noted)


def _pull_input(rec: RawRecord, xs: Sequence[Any], k: int, i: int, out: Any, g: Any, vjp: Any, cot: dict[int, Any],
                F: Any, noted: Callable[[int, Any], None] | None = None) -> None:
    """Add the cotangent of input `k` (id `i`) of `rec` into `cot`.

    Broadcasting and dtype promotion are undone here, once for all ops: a cotangent that came
    out in another shape is summed back to its input's shape, one of another dtype is cast.
    `noted(i, cotangent)`, if given, is told the new cotangent of `i` (anomaly mode).
    """
    gi = vjp(F, g, xs, out, rec[1], k)
    if gi is None:
        return
    x = xs[k]
    if gi.shape != x.shape:
        gi = F.sum_to(gi, tuple(x.shape))
    if gi.dtype != x.dtype:
        gi = F.astype(gi, x.dtype)
    prev = cot.get(i)
    cot[i] = gi if prev is None else F.add(prev, gi)
    if noted is not None:
        noted(i, cot[i])


Noted = Callable[[int, int, Any], None]
"""`noted(k, i, cotangent)`: the cotangent of id `i` is now `cotangent`, made by records[k]'s VJP."""


def reverse_checked(records: Sequence[RawRecord], values: Mapping[int, Any], seeds: dict[int, Any],
                    skip: set[int] | frozenset[int], want: set[int], F: Any, noted: Noted, *,
                    outputs_wanted: bool = True) -> dict[int, Any]:
    """`reverse`, calling `noted` after every change of a cotangent (see the module docstring).

    Every record takes the general step, `_pull_inputs`.  Its backend calls are those of
    `reverse`, in the same order: the fast paths of `reverse` skip only checks that find nothing
    to do (a one-input rule returns its input's shape and dtype; an elementwise rule returns an
    input of the output's shape and dtype a cotangent of that shape and dtype; `pass_on`
    returns its cotangent as it is).
    """
    cot = dict(seeds)
    found: dict[int, Any] = {}
    for k in range(len(records) - 1, -1, -1):
        rec = records[k]
        out_id = rec[OUTPUT]
        g = cot.pop(out_id, None)
        if g is None:
            continue
        if outputs_wanted and out_id in want:
            found[out_id] = g
        xs = [values[i] for i in rec[INPUTS:]]
        _pull_inputs(rec, xs, values[out_id], g, _VJP[rec[OP]], skip, cot, F, partial(noted, k))
    for i in want:
        g = cot.get(i)
        if g is not None:
            found[i] = g
    return found


def owned(g: Any, taken: set[int]) -> Any:
    """`g` as a writeable ndarray that owns its memory and is not already handed out."""
    if type(g) is not np.ndarray or g.base is not None or not g.flags.writeable or id(g) in taken:
        g = np.array(g, copy=True)
    taken.add(id(g))
    return g
