"""Replay plans: a tape's forward and reverse passes compiled to flat lists of numpy calls.

Contract:
- `compile_plan(tape, ...)` is pure analysis: it allocates no arrays the size of the tape's
  values.  The reverse pass is compiled by running the one engine (`engine.reverse`) with a
  symbolic backend: ops on `Sym` values infer their output shape and dtype through the registry
  and append a step instead of computing.  So compiled gradients perform exactly the numpy
  calls, in the same order on the same values, as `y.backward()` does: results are bit for bit
  those of eager differentiation.
- A `Plan` runs its steps on a list of slots (one per tape variable, seed, constant and
  temporary) and drops each slot right after its last use (liveness is computed once per plan),
  so replay memory follows `Plan.peak_bytes`, which models every buffer a step allocates,
  kernel scratch space, and results kept to the end.
- Forward steps recompute only what is needed and not already stored (or what depends on a
  replaced input); guard records are re-checked whenever they are recomputed.
- Errors while running a step raise `TapegradError` (`GuardError` for a failed guard) naming
  the record index and op, with the user's source line when the tape has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import engine
from .errors import GuardError, TapegradError
from .ops import REGISTRY, OpSpec
from .ops.infer import expand_index
from .ops.kernels import VIEW_OPS
from .tape import RawRecord, Tape

Aval = tuple[tuple[int, ...], np.dtype[Any]]


class Sym:
    """A symbolic value in a plan being compiled: a slot with a static shape and dtype."""

    __slots__ = ("dtype", "shape", "slot")

    def __init__(self, slot: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.slot, self.shape, self.dtype = slot, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Sym(s{self.slot}, {self.shape}, {self.dtype})"


class Compiler:
    """A backend whose ops append steps `(op, input slots, output slot, attrs)` to `steps`."""

    def __init__(self, avals: list[Aval]) -> None:
        self.avals = avals  # slot -> (shape, dtype); grows as temporaries are created
        self.steps: list[RawRecord] = []
        self.consts: dict[int, Any] = {}
        self.ops: Any = SimpleNamespace(**{name: self._op(spec) for name, spec in REGISTRY.items()})

    def sym(self, slot: int) -> Sym:
        shape, dtype = self.avals[slot]
        return Sym(slot, shape, dtype)

    def new(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Sym:
        self.avals.append((shape, dtype))
        return Sym(len(self.avals) - 1, shape, dtype)

    def const(self, value: Any) -> Sym:
        arr = np.asarray(value)
        sym = self.new(tuple(arr.shape), arr.dtype)
        self.consts[sym.slot] = arr
        return sym

    def apply(self, spec: OpSpec, args: Sequence[Any], attrs: Mapping[str, Any] | None) -> Sym:
        weak = [a for a in args if isinstance(a, (bool, int, float))]
        dt = np.result_type(*[a.dtype for a in args if not isinstance(a, (bool, int, float))], *weak) if weak else None
        ins = [a if isinstance(a, Sym) else self.const(np.asarray(a, dtype=dt) if isinstance(a, (bool, int, float)) else a)
               for a in args]
        shape, dtype = spec.infer([s.shape for s in ins], [s.dtype for s in ins], attrs or {})
        out = self.new(shape, dtype)
        self.steps.append((spec.name, attrs or None, out.slot, *(s.slot for s in ins)))
        return out

    def _op(self, spec: OpSpec) -> Any:
        def op(*args: Any, **kwargs: Any) -> Sym:
            ins, attrs = spec.bind(args, kwargs)
            return self.apply(spec, ins, attrs)

        op.__name__ = spec.name
        return op


# Ops whose kernel may return a view of input 0 (no new buffer), and kernel scratch space in
# units of the larger of input-0 and output bytes (temporaries alive while the kernel runs).
_SCRATCH = {"logsumexp": 2, "softmax": 1, "log_softmax": 2, "sigmoid": 2, "clip": 1}


def _may_alias(op: str, in_aval: Aval, out_aval: Aval, attrs: Mapping[str, Any] | None) -> bool:
    """True when the kernel returns (a view of) its C-contiguous input 0 instead of a new buffer."""
    if op == "reshape":
        return True
    if op == "sum_to":
        return in_aval[0] == out_aval[0]
    if op == "transpose":  # always a view (kernels.VIEW_OPS)
        return True
    if op == "getitem" and attrs is not None and not any(i == ("array",) for i in attrs["index"]):
        return _basic_index_is_contiguous(in_aval[0], attrs["index"])
    return False


def _basic_index_is_contiguous(shape: tuple[int, ...], index: Sequence[Any]) -> bool:
    """Whether `x[index]` (ints, slices, None, Ellipsis) of a C-contiguous x is C-contiguous."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    items = expand_index("getitem", shape, index)
    dims: list[tuple[int, int]] = []
    axis = 0
    for item in items:
        if item is None:
            dims.append((1, 0))
        elif isinstance(item, int):
            axis += 1
        else:
            rng = range(*slice(*item[1:]).indices(shape[axis]))
            dims.append((len(rng), strides[axis] * rng.step))
            axis += 1
    if any(n == 0 for n, _ in dims):
        return True
    expected = 1
    for n, stride in reversed(dims):
        if n != 1:
            if stride != expected:
                return False
            expected *= n
    return True


def _nbytes(aval: Aval) -> int:
    return math.prod(aval[0]) * aval[1].itemsize


Step = tuple[int, Any, Any, Any, int, tuple[int, ...]]  # (code, fn, a, b, out, free)


@dataclass
class Plan:
    """A compiled replay of one tape: which steps run, which slots hold what, and when to free.

    `inputs` maps dense ids of replaceable inputs to slots; `outputs` and `grads` map the
    requested ids to the slots holding their values and gradients after `run()`.
    """

    tape: Tape
    n_slots: int
    initial: dict[int, Any]  # slot -> stored value or constant, loaded before running
    steps: list[Step]
    step_records: list[int]  # record index of each step (-1 for compiled backward steps)
    step_ops: list[str]
    inputs: dict[int, int]  # internal id -> slot, for the inputs a caller may replace
    outputs: dict[int, int]  # internal id -> slot
    grads: dict[int, int | None]  # internal id -> slot (None: the gradient is zero)
    seed_slot: int | None
    avals: list[Aval]
    program: list[RawRecord] = field(default_factory=list, repr=False)  # the compiled reverse pass, slot form
    tangent_slots: list[int] = field(default_factory=list)
    peak_bytes: int = 0
    _records: list[RawRecord] = field(default_factory=list, repr=False)

    @property
    def n_forward(self) -> int:
        return sum(1 for r in self.step_records if r >= 0)

    @property
    def n_backward(self) -> int:
        return sum(1 for r in self.step_records if r < 0)

    def run(self, replaced: Mapping[int, Any], seed: Any = None, tangents: Sequence[Any] = ()) -> list[Any]:
        """Execute with `replaced` input values (internal id -> array); returns the slot list."""
        vals: list[Any] = [None] * self.n_slots
        for slot, value in self.initial.items():
            vals[slot] = value
        for vid, value in replaced.items():
            vals[self.inputs[vid]] = value
        if self.seed_slot is not None:
            vals[self.seed_slot] = seed
        for slot, value in zip(self.tangent_slots, tangents, strict=True):
            vals[slot] = value
        out = -1
        try:
            for code, fn, a, b, out, free in self.steps:
                if code == 2:
                    vals[out] = fn(vals[a], vals[b])
                elif code == 1:
                    vals[out] = fn(vals[a])
                else:
                    vals[out] = fn(*[vals[i] for i in a], **b)
                if free:
                    for s in free:
                        vals[s] = None
        except GuardError as exc:
            raise GuardError(f"{self._where(out)}: {exc}; the replayed inputs take a different branch than the "
                             "recording did") from None
        except TapegradError as exc:
            raise type(exc)(f"{self._where(out)}: {exc}") from None
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:
            raise TapegradError(f"{self._where(out)}: {type(exc).__name__}: {exc}") from None
        return vals

    def _where(self, out_slot: int) -> str:
        for (_, _, _, _, out, _), rec in zip(self.steps, self.step_records, strict=True):
            if out == out_slot:
                if rec < 0:
                    return "in the reverse pass"
                op = self._records[rec][0]
                src = self.tape.source_of(rec)
                at = f" at {src[0]}:{src[1]}" if src else ""
                return f"record {rec} ({op}){at}"
        return "replay"


def _step(rec: RawRecord) -> Step:
    """The executable step of a record whose ids are slots."""
    op, attrs, out = rec[0], rec[1], rec[2]
    in_slots = rec[3:]
    fn = REGISTRY[op].forward
    if attrs:
        return (3, fn, in_slots, dict(attrs), out, ())
    if len(in_slots) == 1:
        return (1, fn, in_slots[0], None, out, ())
    if len(in_slots) == 2:
        return (2, fn, in_slots[0], in_slots[1], out, ())
    return (3, fn, in_slots, {}, out, ())


def compile_plan(tape: Tape, outputs: Sequence[int], wrt: Sequence[int] = (), of: int | None = None,
                 replaced: Sequence[int] = ()) -> Plan:
    """Compile a replay of `tape` computing `outputs` and, when `of` is given, d of / d `wrt`.

    `replaced` are the internal ids of inputs the caller will supply (everything downstream of
    them is recomputed); other values come from the tape when stored, else are recomputed.
    """
    ids = tape._internal()
    slot_of = {vid: n for n, vid in enumerate(ids)}
    avals: list[Aval] = [tape.shape_dtype(vid) for vid in ids]
    records = tape._records
    producer = {rec[2]: n for n, rec in enumerate(records)}

    # Which records the backward pass walks: those `of` depends on.
    needed = engine.needed_ids(records, [*outputs, *([] if of is None else [of])])
    live_records = [n for n, rec in enumerate(records) if rec[2] in needed]

    # Forward: recompute what is missing or depends on a replaced input (guards included).
    stored = tape._values
    dirty = set(replaced)
    forward: list[int] = []
    for n in live_records:
        rec = records[n]
        if rec[2] not in stored or rec[0] in VIEW_OPS or any(i in dirty for i in rec[3:]):
            dirty.add(rec[2])
            forward.append(n)
    missing = [vid for vid in needed if vid not in stored and vid not in dirty and vid not in producer]
    if missing:
        names = ", ".join(f"v{slot_of[v]}" for v in sorted(missing))
        raise TapegradError(f"cannot replay: the tape stores no value for input(s) {names} "
                            f"(values={tape.values_mode!r}); pass them in `inputs`")
    if of is not None and avals[slot_of[of]][1].kind != "f":
        raise TapegradError(f"cannot differentiate v{slot_of[of]}: its dtype {avals[slot_of[of]][1]} is not floating point")

    # Backward: the engine's reverse pass, run on symbols, appends the gradient steps.
    comp = Compiler(avals)
    seed_slot = None
    grads: dict[int, int | None] = {}
    if of is not None:
        seed = comp.new(*avals[slot_of[of]])
        seed_slot = seed.slot
        symbols = {vid: comp.sym(slot_of[vid]) for vid in needed}
        sub = [_slotted(records[n], slot_of) for n in live_records]
        active = engine.active_set(sub, [slot_of[w] for w in wrt])
        skip = {slot_of[v] for v in needed if slot_of[v] not in active}
        sym_values = {slot_of[v]: s for v, s in symbols.items()}
        found = engine.reverse(sub, sym_values, {slot_of[of]: seed}, skip, {slot_of[w] for w in wrt}, comp.ops)
        grads = {w: (found[slot_of[w]].slot if slot_of[w] in found else None) for w in wrt}

    steps: list[Step] = [_step(_slotted(records[n], slot_of)) for n in forward]
    step_records = list(forward)
    step_ops = [records[n][0] for n in forward]
    steps += [_step(rec) for rec in comp.steps]
    step_records += [-1] * len(comp.steps)
    step_ops += [rec[0] for rec in comp.steps]

    initial: dict[int, Any] = {slot_of[v]: stored[v] for v in needed if v in stored and v not in dirty}
    initial.update(comp.consts)
    input_slots = {v: slot_of[v] for v in replaced}
    out_slots = {v: slot_of[v] for v in outputs}
    pinned = set(out_slots.values()) | {s for s in grads.values() if s is not None}
    plan = Plan(tape, len(comp.avals), initial, steps, step_records, step_ops, input_slots, out_slots, grads, seed_slot,
                comp.avals, program=comp.steps, _records=records)
    _schedule_frees(plan, pinned)
    return plan


def compile_jvp(tape: Tape, out_id: int, wrt: Sequence[int], replaced: Sequence[int]) -> Plan:
    """Forward mode for one output: transpose the compiled reverse pass (linear in its seed).

    The reverse program maps a seed u to J^T u; running the engine's reverse pass over that
    program, seeded with tangents v at the gradient slots, yields J v at the seed slot.
    """
    base = compile_plan(tape, [], wrt, out_id, replaced)
    assert base.seed_slot is not None
    seed_slot = base.seed_slot
    program = base.program
    comp = Compiler(list(base.avals))
    tangents = [comp.new(*base.avals[base.inputs[w]] if w in base.inputs else tape.shape_dtype(w)) for w in wrt]
    seeds: dict[int, Any] = {}
    for w, t in zip(wrt, tangents, strict=True):
        slot = base.grads[w]
        if slot is not None:
            seeds[slot] = t if slot not in seeds else comp.ops.add(seeds[slot], t)
    linear = engine.active_set(program, [seed_slot])
    n_base = len(base.avals)
    skip = {s for s in range(n_base) if s not in linear}
    symbols = {s: comp.sym(s) for s in range(n_base)}
    found = engine.reverse(program, symbols, seeds, skip, {seed_slot}, comp.ops)
    out_slot = found[seed_slot].slot if seed_slot in found else -1

    n_fwd = base.n_forward
    keep = [k for k, rec in enumerate(program) if rec[2] not in linear]
    steps: list[Step] = [(c, f, a, b, o, ()) for c, f, a, b, o, _ in base.steps[:n_fwd]]
    steps += [_step(program[k]) for k in keep]
    steps += [_step(rec) for rec in comp.steps]
    step_records = base.step_records[:n_fwd] + [-1] * (len(keep) + len(comp.steps))
    step_ops = base.step_ops[:n_fwd] + [program[k][0] for k in keep] + [rec[0] for rec in comp.steps]
    initial = dict(base.initial)
    initial.update(comp.consts)
    plan = Plan(tape, len(comp.avals), initial, steps, step_records, step_ops, base.inputs, {out_id: out_slot}, {}, None,
                comp.avals, tangent_slots=[t.slot for t in tangents], _records=base._records)
    _schedule_frees(plan, {out_slot})
    return plan


def _slotted(rec: RawRecord, slot_of: Mapping[int, int]) -> RawRecord:
    """A tape record with its ids replaced by slots."""
    return (rec[0], rec[1], slot_of[rec[2]], *(slot_of[i] for i in rec[3:]))


def _step_inputs(step: Step) -> tuple[int, ...]:
    code, _, a, b, _, _ = step
    if code == 1:
        return (a,)
    if code == 2:
        return (a, b)
    return tuple(a)


def _schedule_frees(plan: Plan, pinned: set[int]) -> None:
    """Attach to each step the slots whose last use it is, and predict the peak bytes."""
    last: dict[int, int] = {}
    for k, step in enumerate(plan.steps):
        for s in _step_inputs(step):
            last[s] = k
    frees: list[list[int]] = [[] for _ in plan.steps]
    for s, k in last.items():
        if s not in pinned:
            frees[k].append(s)
    plan.steps = [(code, fn, a, b, out, tuple(frees[k])) for k, (code, fn, a, b, out, _) in enumerate(plan.steps)]

    # Peak model: buffers allocated by steps (views share their input's buffer) while alive.
    buffer_of: dict[int, int] = {}  # slot -> buffer id (the slot that allocated it)
    users: dict[int, int] = {}  # buffer -> live slots using it
    live = peak = 0
    avals = plan.avals
    for step, op in zip(plan.steps, plan.step_ops, strict=True):
        code, _, _, b, out, free = step
        ins = _step_inputs(step)
        attrs = b if code == 3 else None
        scratch = _SCRATCH.get(op, 0) * max(_nbytes(avals[ins[0]]), _nbytes(avals[out]))
        if ins and _may_alias(op, avals[ins[0]], avals[out], attrs):
            buf = buffer_of.get(ins[0])
            if buf is not None:
                buffer_of[out] = buf
                users[buf] += 1
        else:
            buffer_of[out] = out
            users[out] = 1
            live += _nbytes(avals[out])
        peak = max(peak, live + scratch)
        for s in free:
            buf = buffer_of.pop(s, None)
            if buf is not None:
                users[buf] -= 1
                if users[buf] == 0:
                    live -= _nbytes(avals[buf])
    plan.peak_bytes = peak + 8 * plan.n_slots
