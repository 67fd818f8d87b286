"""The replay engine: the reverse pass over a tape's records, without the code that recorded it.

Contract:
- `reverse()` is the one reverse-mode loop in tapegrad.  It walks `reversed(records)` once,
  applies each op's registry VJP rule through a backend `F` (numpy arrays by default, Variables
  when a caller records the reverse pass), sums each cotangent back to its input's shape and
  dtype, and adds cotangents of reused variables out of place (`F.add`), never in place.
- Only inputs in the `active` set (depending on a requested variable, floating dtype) get
  cotangents computed; records whose outputs carry no cotangent are skipped.
- `backward()` differentiates a recorded `Tape`; results are fresh, writeable arrays that share
  memory with nothing else (not with each other, the seed, or the tape).
- This module never imports the tracer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import TapegradError
from .ops import NUMPY, REGISTRY
from .tape import RawRecord, Tape


def _no_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, attrs: Any, k: int) -> None:
    return None


_VJP = {name: spec.vjp or _no_vjp for name, spec in REGISTRY.items()}


def active_set(records: Iterable[RawRecord], sources: Iterable[int]) -> set[int]:
    """Ids that depend on any of `sources` (forward sweep over the records)."""
    active = set(sources)
    for _, ins, outs, _ in records:
        for i in ins:
            if i in active:
                active.update(outs)
                break
    return active


def reverse(records: Sequence[RawRecord], values: Mapping[int, Any], seeds: dict[int, Any],
            skip: set[int] | frozenset[int], want: set[int], F: Any = NUMPY) -> dict[int, Any]:
    """Run the reverse pass; return the cotangents of the ids in `want` that received one.

    `values` maps every id the records mention to its primal value (array or Variable); `seeds`
    gives the starting cotangents; no cotangent is computed for ids in `skip` (constants, and
    whatever cannot reach a requested id).  Integer results never pass cotangents on to floating
    inputs (the only op that crosses, `astype`, blocks them), so `skip` need not list them.
    Each cotangent is dropped as soon as its record has been processed.
    """
    cot = dict(seeds)
    found: dict[int, Any] = {}
    vjps = _VJP
    pop = cot.pop
    get = cot.get
    for op, ins, outs, attrs in reversed(records):
        out_id = outs[0]
        g = pop(out_id, None)
        if g is None:
            continue
        if out_id in want:
            found[out_id] = g
        vjp = vjps[op]
        if len(ins) == 1:  # registry contract: one-input rules return the input's shape and dtype
            i = ins[0]
            if i in skip:
                continue
            gi = vjp(F, g, (values[i],), values[out_id], attrs, 0)
            if gi is not None:
                prev = get(i)
                cot[i] = gi if prev is None else F.add(prev, gi)
            continue
        xs = [values[i] for i in ins]
        out = values[out_id]
        for k, i in enumerate(ins):
            if i in skip:
                continue
            gi = vjp(F, g, xs, out, attrs, k)
            if gi is None:
                continue
            x = xs[k]  # broadcasting and dtype promotion are undone here, once for all ops
            if gi.shape != x.shape:
                gi = F.sum_to(gi, tuple(x.shape))
            if gi.dtype != x.dtype:
                gi = F.astype(gi, x.dtype)
            prev = get(i)
            cot[i] = gi if prev is None else F.add(prev, gi)
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


def _as_refs(wrt: Any) -> list[Any]:
    if wrt is None:
        return []
    if isinstance(wrt, (str, int)) or hasattr(wrt, "_tapegrad_serial"):
        return [wrt]
    return list(wrt)


def backward(tape: Tape, of: Any = None, wrt: Any = None, *, seed: Any = None) -> dict[Any, Any]:
    """Gradients of `of` (default: the last recorded output) with respect to `wrt`.

    `wrt` is a name, id, Variable or a list of them; None means every floating-point input.
    Returns `{ref: ndarray}` keyed as asked (by name, or by dense id when `wrt` is None and the
    input has no name).  `seed` is the cotangent of `of` (default: ones).
    """
    of_id = tape._last_output() if of is None else tape.resolve(of)
    values = tape._values
    if wrt is None:
        dense = tape._dense()
        ids = [v for v in tape._leaves if v not in tape._consts and values[v].dtype.kind == "f"]
        refs: list[Any] = [tape._names.get(v, dense[v]) for v in ids]
    else:
        refs = _as_refs(wrt)
        ids = [tape.resolve(r) for r in refs]
    for ref, vid in zip(refs, ids, strict=True):
        if values[vid].dtype.kind != "f":
            raise TapegradError(f"cannot differentiate with respect to {ref!r}: its dtype "
                                f"{values[vid].dtype} is not floating point")
    out_value = values[of_id]
    if seed is None:
        seed = np.ones_like(out_value)
    else:
        seed = np.asarray(seed)
        if seed.shape != out_value.shape or seed.dtype != out_value.dtype:
            raise TapegradError(f"seed has shape {seed.shape} and dtype {seed.dtype}, but {of!r} "
                                f"has shape {out_value.shape} and dtype {out_value.dtype}")
    records = tape._records
    active = active_set(records, ids)
    skip = {i for i in tape._internal() if i not in active}
    found = reverse(records, values, {of_id: seed}, skip, set(ids))
    taken: set[int] = {id(seed)}
    result: dict[Any, Any] = {}
    for ref, vid in zip(refs, ids, strict=True):
        g = found.get(vid)
        result[ref] = np.zeros_like(values[vid]) if g is None else owned(g, taken)
    return result
