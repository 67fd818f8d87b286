"""Replay: run a tape forward with new inputs, backward, and in forward mode, from the tape alone.

Contract:
- Works on any `Tape`, recorded in this process or loaded from a file, without the code that
  recorded it.  Variables are named by name, dense id or Variable object.
- `forward(tape, inputs=...)` re-executes the recorded program; inputs not given keep their
  recorded values.  A replaced input must have the recorded dtype and number of dimensions,
  else `TapegradError` naming it.  Its sizes may differ: the plan for that input-shape
  signature re-infers the records they reach (`plan.reshaped`), and a program that does not
  apply raises `GuardError` naming the record, its source line and the dimension.  Guards
  recorded where the program branched on a value (or read a shape) are re-checked; a different
  branch raises `GuardError` naming the record and source line and which Python call made it.
  Only inputs can be replaced: constants (plain arrays and numbers the recording used) are
  baked into the tape.
- `backward(tape, of, wrt, inputs=, seed=)` returns `{ref: gradient}` keyed as asked.  Only
  cotangents leading to `wrt` are computed.  Results are bit for bit those of eager
  `y.backward()` on the same values, and share memory with nothing else.
- `jvp(tape, tangents=...)` returns output tangents (forward mode, by transposing the compiled
  reverse pass, so it agrees exactly with `backward`).
- Plans (what to recompute, the compiled reverse pass, which register holds each value and
  when it is dropped) are compiled once per request and input-shape signature and cached on
  the tape (a replay at the recorded shapes uses the key it always had) (`plan()` returns
  them, with `.peak_bytes`).  A plan holds its tape weakly, so dropping a replayed tape frees
  its values, its plans and a mapped tape's file at once, without the garbage collector.
- Inside `record()`, replay computes with Variables through the tracer's hooks and returns
  Variables: the replayed tape's inputs enter the new tape under their own names, so the
  reverse pass itself is recorded and can be saved and differentiated again.  Inside a function
  being differentiated (`tg.grad`) it does the same, so inputs passed as Variables stay on the
  graph of that differentiation.
- Input, seed and tangent values of an unsupported dtype (complex numbers, objects, strings)
  raise `DTypeError` (a `TypeError`); they are never cast.
- Anomaly mode: `forward(..., check_finite=True)` and `backward(..., check_finite=True)` raise
  `NonFiniteError` at the first NaN or infinity the replay meets: a replaced input, a value it
  computes (forward pass), the seed or a cotangent (reverse pass; `check_finite="forward"` or
  `"reverse"` checks one pass only).  The error names the pass, the record, its op and source
  line.  Stored values the replay does not recompute are not checked (`tapegrad.inspect.nan`
  scans those).  Checked replays run separately compiled plans with a checking loop; without
  `check_finite` nothing is checked and nothing costs more.
- Memory budget: `forward`, `backward` and `jvp` compare the plan's predicted peak
  (`Plan.peak_bytes`) with `budget=` (default `tapegrad.budget.default_budget()`: half the
  machine's memory, or `$TAPEGRAD_REPLAY_BUDGET`) before computing, and raise `LimitError` naming
  the peak, the record making the largest value and how to raise the budget (`tapegrad.budget`).
  Replays on Variables (inside `record()` or `grad`) are checked against the same prediction,
  a lower bound for them (they keep every value they compute).
- This module never imports the tracer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

import numpy as np

from . import anomaly, context, engine
from . import budget as memory_budget
from .dtypes import as_computable
from .errors import GuardError, TapegradError, escape
from .plan import Plan, compile_jvp, compile_plan, reshaped
from .tape import ATTRS, INPUTS, OP, OUTPUT, Tape


class Recorder(Protocol):
    """What the tracer provides so that replay can compute on Variables (see `computing_through`)."""

    def input(self, value: Any, name: str | None) -> Any: ...
    def apply(self, op: str, inputs: Sequence[Any], attrs: Mapping[str, Any] | None) -> Any: ...
    @property
    def backend(self) -> Any: ...


@contextmanager
def computing_through(recorder: Recorder | None) -> Iterator[None]:
    """Inside the block, replays in this thread or task compute through `recorder` (on
    Variables, recorded and differentiable) or, with None, on numpy arrays.  `record()` and
    `no_record()` set the same (`context.State.through`), and `grad` enters this while the
    function it differentiates runs."""
    outer = context.current()
    with context.inside(outer.tape, outer.linking, recorder):
        yield


def _recording() -> Recorder | None:
    through: Recorder | None = context.current().through
    return through


def _as_refs(refs: Any) -> list[Any]:
    if refs is None:
        return []
    if isinstance(refs, (str, int, np.integer)) or hasattr(refs, "_tapegrad_serial"):
        return [refs]
    return list(refs)


def _ref_key(tape: Tape, vid: int) -> Any:
    """How results are keyed when the caller named nothing: the name, else the dense id."""
    name = tape.name_of(vid)
    return tape.dense_ids()[vid] if name is None else name


Shapes = tuple[tuple[int, tuple[int, ...]], ...]
"""The input-shape signature of a replay: (internal id, shape) of each replaced input whose shape
differs from the recorded one, sorted; empty when every shape is as recorded."""


def _shapes(tape: Tape, replaced: Mapping[int, Any]) -> Shapes:
    return tuple(sorted((vid, tuple(v.shape)) for vid, v in replaced.items()
                        if tuple(v.shape) != tape.shape_dtype(vid)[0]))


def _label(tape: Tape, ref: Any, vid: int) -> str:
    """How errors name a replaced input: `input 'x' (v3)`.  Made only for an error: a loaded
    tape's first dense-id lookup sorts all its ids."""
    return f"input {ref!r} (v{tape.dense_ids()[vid]})"


def _resolve_inputs(tape: Tape, inputs: Mapping[Any, Any] | None, recording: bool) -> dict[int, Any]:
    """Replaced inputs by internal id, checked against the recorded dtype (and number of
    dimensions: a shape may differ, and the plan for it checks the records it reaches)."""
    out: dict[int, Any] = {}
    for ref, value in (inputs or {}).items():
        vid = tape.resolve(ref)
        if tape.producer(vid) is not None:
            raise TapegradError(f"{_label(tape, ref, vid)} is not an input of the tape; only inputs can be replaced")
        if vid in tape.parts().consts:
            raise TapegradError(f"{_label(tape, ref, vid)} is not an input of the tape but a constant (a plain array "
                                "or number the recording used), baked into the tape; only inputs can be replaced: to "
                                "replace it, record it as a named tg.Variable")
        shape, dtype = tape.shape_dtype(vid)
        if recording and hasattr(value, "_tapegrad_serial"):
            got_shape, got_dtype = tuple(value.shape), value.dtype
        else:
            value = as_computable(value, partial(_label, tape, ref, vid))
            got_shape, got_dtype = value.shape, value.dtype
        if got_dtype != dtype:
            raise TapegradError(f"{_label(tape, ref, vid)} was recorded with shape {shape} and dtype {dtype}, "
                                f"got shape {got_shape} and dtype {got_dtype}")
        if len(got_shape) != len(shape):
            raise GuardError(f"{_label(tape, ref, vid)} was recorded with shape {shape} and dtype {dtype}, got shape "
                             f"{got_shape}: a replay can change the sizes of an input's dimensions, not their "
                             f"number; record the step again with inputs of this shape")
        out[vid] = value
    return out


def _default_outputs(tape: Tape) -> list[int]:
    """Named results of records, plus the last record's output (found without a pass over the tape)."""
    outs = sorted(vid for vid in tape.parts().names if tape.producer(vid) is not None)
    if len(tape) and tape.last_output() not in outs:
        outs.append(tape.last_output())
    return outs


def plan(tape: Tape, of: Any = None, wrt: Any = None, *, inputs: Sequence[Any] | Mapping[Any, Any] = (),
         outputs: Sequence[Any] | None = None) -> Plan:
    """The (cached) compiled replay computing `outputs` and d `of` / d `wrt`.

    With `of` and `wrt` both None this is the plan `forward()` runs (default outputs);
    otherwise it is the plan `backward(tape, of, wrt, inputs=...)` runs, with `of` defaulting to
    the last recorded output.  `inputs` names the inputs the caller will replace; a mapping
    of them to arrays gives the plan for those arrays' shapes (one plan per shape signature).
    `.peak_bytes` predicts the replay's peak memory (returned gradients included).
    """
    of_id = None
    wrt_ids: list[int] = []
    gradient = of is not None or wrt is not None
    if gradient:
        of_id = tape.last_output() if of is None else tape.resolve(of)
        wrt_ids = _wrt_ids(tape, wrt)[1]
    if outputs is not None:
        out_ids = [tape.resolve(r) for r in outputs]
    else:
        out_ids = [] if gradient else _default_outputs(tape)
    if isinstance(inputs, Mapping):
        replaced = _resolve_inputs(tape, inputs, False)
        return _plan(tape, out_ids, of_id, wrt_ids, list(replaced), shapes=_shapes(tape, replaced))
    return _plan(tape, out_ids, of_id, wrt_ids, [tape.resolve(r) for r in inputs])


SHAPE_PLANS_KEPT = 16
"""Plans kept per request for input shapes other than the recorded ones (the most recently used;
an older one is compiled again when its shapes come back).  Like PyTorch's recompile limit, this
bounds the memory of a replay fed many distinct shapes (say, sequences of every length)."""


class _ShapePlans(OrderedDict[Shapes, Plan]):
    """The plans of one request by input-shape signature, least recently used first."""

    def plan(self, shapes: Shapes, build: Callable[[], Plan]) -> Plan:
        found = self.get(shapes)
        if found is None:
            found = self[shapes] = build()
            if len(self) > SHAPE_PLANS_KEPT:
                self.popitem(last=False)
        else:
            self.move_to_end(shapes)
        return found


def _plan(tape: Tape, out_ids: Sequence[int], of_id: int | None, wrt_ids: Sequence[int], replaced: Sequence[int],
          checked: bool = False, shapes: Shapes = ()) -> Plan:
    """The cached plan for this request and input-shape signature `shapes` (a replay at the
    recorded shapes uses the key it had before shapes could vary; see `SHAPE_PLANS_KEPT`)."""
    key: tuple[Any, ...] = ("checked plan" if checked else "plan", tuple(out_ids), of_id, tuple(wrt_ids),
                            tuple(sorted(replaced)))

    def build() -> Plan:
        return compile_plan(tape, out_ids, wrt_ids, of_id, sorted(replaced), checked=checked, shapes=dict(shapes))

    if not shapes:
        return tape.cached(key, build)
    return tape.cached(("shapes", *key), _ShapePlans).plan(shapes, build)


_PASSES: dict[Any, frozenset[str]] = {False: frozenset(), True: frozenset(("forward", "reverse")),
                                      "forward": frozenset(("forward",)), "reverse": frozenset(("reverse",))}


def _passes(check_finite: Any) -> frozenset[str]:
    """The passes `check_finite` asks to check."""
    if type(check_finite) not in (bool, str) or check_finite not in _PASSES:
        raise TapegradError(f"check_finite must be True, False, 'forward' or 'reverse', got {check_finite!r}")
    return _PASSES[check_finite]


def _wrt_ids(tape: Tape, wrt: Any) -> tuple[list[Any], list[int]]:
    if wrt is None:
        parts = tape.parts()
        ids = [v for v in parts.leaves if v not in parts.consts and tape.shape_dtype(v)[1].kind == "f"]
        return [_ref_key(tape, v) for v in ids], ids
    refs = _as_refs(wrt)
    ids = [tape.resolve(r) for r in refs]
    for ref, vid in zip(refs, ids, strict=True):
        dtype = tape.shape_dtype(vid)[1]
        if dtype.kind != "f":
            raise TapegradError(f"cannot differentiate with respect to {ref!r}: its dtype {dtype} is not floating point")
    return refs, ids


def _seed(tape: Tape, of_id: int, seed: Any, p: Plan | None = None) -> Any:
    shape, dtype = tape.shape_dtype(of_id) if p is None else p.shape_dtype(of_id)
    if seed is None:
        return np.ones(shape, dtype)
    seed = as_computable(seed, "seed")
    if seed.shape != shape or seed.dtype != dtype:
        raise TapegradError(f"seed has shape {seed.shape} and dtype {seed.dtype}, but the output "
                            f"v{tape.dense_ids()[of_id]} has shape {shape} and dtype {dtype}")
    return seed


def forward(tape: Tape, inputs: Mapping[Any, Any] | None = None, outputs: Sequence[Any] | None = None, *,
            check_finite: bool = False, budget: int | None = None) -> dict[Any, Any]:
    """Re-execute the tape; returns `{name or id: value}` for `outputs` (default: named results
    and the last output).  Inside `record()` the values are Variables.  With `check_finite`,
    the first non-finite replaced input or recomputed value raises `NonFiniteError`.  A replay
    predicted to need more than `budget` bytes (None: `tapegrad.budget.default_budget()`) raises
    `LimitError` before it computes anything."""
    if type(check_finite) is not bool:
        raise TapegradError(f"check_finite must be True or False, got {check_finite!r}")
    check = _passes(check_finite)
    rec = _recording()
    replaced = _resolve_inputs(tape, inputs, rec is not None)
    out_ids = _default_outputs(tape) if outputs is None else [tape.resolve(r) for r in outputs]
    keys = [_ref_key(tape, v) for v in out_ids] if outputs is None else list(outputs)
    p = _plan(tape, out_ids, None, [], list(replaced), checked=bool(check), shapes=_shapes(tape, replaced))
    memory_budget.check(tape, p, budget, "replay.forward")
    if rec is not None:
        values = _record_forward(rec, tape, replaced, out_ids, check)
        return {k: values[v] for k, v in zip(keys, out_ids, strict=True)}
    vals = p.run(replaced, check=check)
    taken: set[int] = set()
    return {k: engine.owned(vals[p.outputs[v]], taken) for k, v in zip(keys, out_ids, strict=True)}


def backward(tape: Tape, of: Any = None, wrt: Any = None, *, inputs: Mapping[Any, Any] | None = None,
             seed: Any = None, check_finite: bool | str = False, budget: int | None = None) -> dict[Any, Any]:
    """Gradients of `of` (default: the last recorded output) with respect to `wrt`.

    `wrt` is a name, id, Variable or a list of them; None means every floating-point input.
    Returns `{ref: gradient}` keyed as asked (by name, or dense id for unnamed inputs when `wrt`
    is None).  `inputs` replaces recorded input values; `seed` is the cotangent of `of`
    (default: ones).  Inside `record()` the gradients are Variables on the active tape.
    With `check_finite` (True, or "forward" / "reverse" for one pass), the first non-finite
    value of the checked passes raises `NonFiniteError` (see the module docstring).  A replay
    predicted to need more than `budget` bytes raises `LimitError` first (see `forward`).
    """
    check = _passes(check_finite)
    rec = _recording()
    of_id = tape.last_output() if of is None else tape.resolve(of)
    refs, wrt_ids = _wrt_ids(tape, wrt)
    replaced = _resolve_inputs(tape, inputs, rec is not None)
    p = _plan(tape, [], of_id, wrt_ids, list(replaced), checked=bool(check), shapes=_shapes(tape, replaced))
    memory_budget.check(tape, p, budget, "replay.backward")  # (before the seed is made: it is as big as the output)
    seed_value = _seed(tape, of_id, seed, p)
    if rec is not None:  # (checks the seed itself)
        grads = _record_backward(rec, tape, replaced, of_id, wrt_ids, seed_value, check)
        return dict(zip(refs, grads, strict=True))
    if "reverse" in check and not anomaly.finite(seed_value):
        raise anomaly.seed_error(tape, of_id, seed_value)
    vals = p.run(replaced, seed_value, check=check)
    taken = {id(seed_value)}
    result: dict[Any, Any] = {}
    for ref, vid in zip(refs, wrt_ids, strict=True):
        slot = p.grads[vid]
        if slot is None:
            result[ref] = np.zeros(*p.shape_dtype(vid))
        else:
            result[ref] = engine.owned(vals[slot], taken)
    return result


def jvp(tape: Tape, tangents: Mapping[Any, Any], *, inputs: Mapping[Any, Any] | None = None,
        outputs: Sequence[Any] | None = None, budget: int | None = None) -> dict[Any, Any]:
    """Forward mode: `{output: J @ tangent}` for tangents given by input name/id/Variable.

    Computed by transposing the compiled reverse pass, so `<J v, u> == <v, J^T u>` holds to
    rounding for every op.  `outputs` defaults to the named results and the last output.  A
    replay predicted to need more than `budget` bytes raises `LimitError` first (see `forward`).
    """
    replaced = _resolve_inputs(tape, inputs, False)
    shapes = _shapes(tape, replaced)
    t_ids = [tape.resolve(r) for r in tangents]
    t_vals = {}
    for ref, vid in zip(tangents, t_ids, strict=True):
        shape, dtype = tape.shape_dtype(vid)
        shape = tuple(replaced[vid].shape) if vid in replaced else shape
        if dtype.kind != "f":
            raise TapegradError(f"tangent for {ref!r}: its dtype {dtype} is not floating point")
        value = as_computable(tangents[ref], f"tangent for {ref!r}")
        if value.shape != shape or value.dtype != dtype:
            raise TapegradError(f"tangent for {ref!r} must have shape {shape} and dtype {dtype}, "
                                f"got {value.shape} and {value.dtype}")
        t_vals[vid] = value
    out_ids = _default_outputs(tape) if outputs is None else [tape.resolve(r) for r in outputs]
    keys = [_ref_key(tape, v) for v in out_ids] if outputs is None else list(outputs)
    result: dict[Any, Any] = {}
    taken: set[int] = set()
    sizes = _plan(tape, out_ids, None, [], list(replaced), shapes=shapes) if shapes else None
    for key, out_id in zip(keys, out_ids, strict=True):
        shape, dtype = tape.shape_dtype(out_id) if sizes is None else sizes.shape_dtype(out_id)
        if dtype.kind != "f":
            result[key] = np.zeros(shape, dtype)
            continue
        cache_key = ("jvp", out_id, tuple(t_ids), tuple(sorted(replaced)), shapes)
        p = tape.cached(cache_key, partial(compile_jvp, tape, out_id, t_ids, sorted(replaced), dict(shapes)))
        memory_budget.check(tape, p, budget, "replay.jvp")
        vals = p.run(replaced, None, tangents=[t_vals[v] for v in t_ids])
        slot = p.outputs[out_id]
        result[key] = np.zeros(shape, dtype) if slot < 0 else engine.owned(vals[slot], taken)
    return result


# ---- replay on Variables (inside a recording) ----------------------------------------------

def _record_forward(rec: Recorder, tape: Tape, replaced: Mapping[int, Any], out_ids: Sequence[int],
                    check: Collection[str] = ()) -> dict[int, Any]:
    """Run the needed records through the tracer; every tape input enters under its name (and
    with "forward" in `check`, stop at the first non-finite replaced input or computed value)."""
    parts = tape.parts()
    needed = engine.needed_ids(parts.records, out_ids)
    shapes = _shapes(tape, replaced)
    new = reshaped(tape, dict(shapes), [n for n, r in enumerate(parts.records) if r[OUTPUT] in needed]) if shapes else None
    values: dict[int, Any] = {}
    checking = "forward" in check
    for vid in parts.leaves:
        if vid not in needed:
            continue
        if checking and vid in replaced and not anomaly.finite(replaced[vid]):
            raise anomaly.input_error(tape, vid, replaced[vid])
        if vid in replaced and hasattr(replaced[vid], "_tapegrad_serial"):
            values[vid] = replaced[vid]
        elif vid in parts.consts:
            values[vid] = new.consts[vid] if new is not None and vid in new.consts else parts.values[vid]
        else:
            value = replaced[vid] if vid in replaced else parts.values.get(vid)
            if value is None:
                raise TapegradError(f"cannot replay: the tape stores no value for input v{tape.dense_ids()[vid]}; "
                                    "pass it in `inputs`")
            values[vid] = rec.input(np.array(value), tape.name_of(vid))
    for n, r in enumerate(parts.records):
        op = r[OP]
        if r[OUTPUT] in needed:
            try:
                attrs = new.attrs.get(n, r[ATTRS]) if new is not None else r[ATTRS]
                values[r[OUTPUT]] = rec.apply(op, [values[i] for i in r[INPUTS:]], attrs)
            except TapegradError as exc:
                raise type(exc)(f"record {n} ({escape(op)}): {exc}") from None
            if checking and not anomaly.finite(values[r[OUTPUT]]):
                raise anomaly.forward_error(tape, n, values[r[OUTPUT]], [values[i] for i in r[INPUTS:]])
    return values


def _record_backward(rec: Recorder, tape: Tape, replaced: Mapping[int, Any], of_id: int, wrt_ids: Sequence[int],
                     seed: Any, check: Collection[str] = ()) -> list[Any]:
    values = _record_forward(rec, tape, replaced, [of_id], check)
    records = tape.parts().records
    numbers = [n for n, r in enumerate(records) if r[OUTPUT] in values]  # tape indices of the records walked
    needed = [records[n] for n in numbers]
    active = engine.active_set(needed, wrt_ids)
    skip = {v for v in values if v not in active}
    if "reverse" in check:
        if not anomaly.finite(seed):
            raise anomaly.seed_error(tape, of_id, seed)

        def noted(k: int, i: int, cot: Any) -> None:
            if not anomaly.finite(cot):
                raise anomaly.reverse_error(tape, numbers[k], needed[k], i, cot)

        found = engine.reverse_checked(needed, values, {of_id: seed}, skip, set(wrt_ids), rec.backend, noted)
    else:
        found = engine.reverse(needed, values, {of_id: seed}, skip, set(wrt_ids), rec.backend)
    zeros = [np.zeros(*tape.shape_dtype(w)) for w in wrt_ids]
    return [found[w] if w in found else rec.input(z, None) for w, z in zip(wrt_ids, zeros, strict=True)]


__all__ = ["Plan", "backward", "computing_through", "forward", "jvp", "plan"]
