"""Replay plans: a tape's forward and reverse passes compiled to flat lists of numpy calls.

Contract:
- `compile_plan(tape, ...)` is pure analysis: it allocates no arrays the size of the tape's
  values.  The reverse pass is compiled by running the one engine (`engine.reverse`) with a
  symbolic backend: ops on `Sym` values infer their output shape and dtype through the registry
  and append a step instead of computing.  So compiled gradients perform exactly the numpy
  calls, in the same order on the same values, as `y.backward()` does: results are bit for bit
  those of eager differentiation.  The engine runs once per record signature (op, attributes,
  shapes and dtypes, which inputs get no cotangent, already hold one, or repeat), on that one
  record, and the steps it appends are a `Template` stamped out for every record of that
  signature (`Compiler.reverse`): the steps of running it over the whole tape, step for step.
- Compilation works on slots (one per tape variable, seed, tangent, constant and temporary);
  lowering then assigns the slots registers by liveness, once per plan.  A `Plan` runs its
  steps, one `fn(*input registers)` call each with attributes bound at compile time, on a list
  of registers.  A step's result takes the register of an input whose last use it is where
  there is one, so storing it drops that input; a value of more than `_LINGER_BYTES` that dies
  otherwise is dropped by a release step right after its last use, a smaller one when its
  register is next written.  Replay memory follows `Plan.peak_bytes`, which models every
  buffer a step allocates, kernel scratch space, dead values until their register is written
  or released, and results kept to the end.
- Forward steps recompute only what is needed and not already stored (or what depends on a
  replaced input); guard records are re-checked whenever they are recomputed.
- New input shapes (`compile_plan(..., shapes=)`): `reshaped` re-infers every record the new
  shapes reach with its op's shape rule, generalising the attributes that say how (reshape's
  -1, the dimensions `broadcast_to` / `sum_to` pass through, constant `arange` index arrays),
  and raises `GuardError` naming the record, its source line and the changed dimension where
  the recorded program does not apply (a fixed reshape, a `shape_guard`).  The reverse pass is
  compiled on symbols of the new shapes, so it too is what eager differentiation does there.
  The caller keeps one plan per input-shape signature.
- Errors while running a step raise `TapegradError` (`GuardError` for a failed guard) naming
  the record index and op, with the user's source line when the tape has one.
- Anomaly mode: a plan compiled with `checked=True` also knows, for each step, whether it makes
  a value worth checking (a recomputed record's output, or a cotangent of a record's input: the
  reverse pass is then compiled by `engine.reverse_checked`, which notes where each cotangent
  is made; its steps are the same as `engine.reverse`'s).  `run(..., check=...)` on such a plan
  runs a separate loop that raises `NonFiniteError` at the first non-finite value of the passes
  asked for; the plain loop is unchanged, so a replay without checks costs what it did.
- A `Plan` holds its tape weakly (`Plan.tape`): the tape's plan cache holds its plans, so a
  strong link back would be a reference cycle, and a dropped tape, its values and the file a
  mapped tape keeps open would wait for the garbage collector.  A plan runs without its tape
  (its registers hold the stored values it needs); its error messages then name the record by
  index only, and a checked run needs the tape.
- Compiling (`compile_plan`, `compile_jvp`) pauses the cyclic garbage collector
  (`collector.no_gc`): its tens of thousands of small tuples otherwise trigger collections that
  cost about a tenth of the compile (`benchmarks/replay.py` (d)).
- Compiling costs a few list and dict operations per record and step (the first replay of a
  freshly loaded tape pays it in full): a loaded tape's dense ids are recognised without
  sorting them (`_dense`), the shapes of its ids without a stored value come from its table
  (`_avals`; `reshaped` is given the compile's table), what to recompute is decided against a
  set of the unstored ids (`_recomputed`), slot sizes are kept as slots are made
  (`Compiler.sizes`), and the loops that run per record or step (`Compiler.reverse`,
  `_recomputed`, `_lower`) read only fast locals.  tests/test_plan_compile.py checks each.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from types import SimpleNamespace
from typing import Any, NamedTuple, cast

import numpy as np

from . import anomaly, engine
from .collector import no_gc
from .errors import GuardError, TapegradError, escape
from .ops import REGISTRY, OpSpec
from .ops.infer import expand_index
from .ops.registry import on_change
from .ops.spec import never_aliases
from .tape import ATTRS, INPUTS, OP, OUTPUT, RawRecord, Tape

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
    """A backend whose ops append steps `(op, attrs, output slot, *input slots)` to `steps`.

    `reverse` compiles a reverse pass with it: each record's share of the pass (its VJP rule,
    the unbroadcasting, the sums of reused cotangents) is compiled once per signature into a
    `Template`, by running the engine on that one record, and the template is then stamped out
    for every record with that signature.  Each slot's shape and dtype (`avals`) and the bytes of
    its value (`sizes`, for the lowering's memory model) grow together as slots are made.
    """

    def __init__(self, avals: list[Aval], sizes: list[int] | None = None) -> None:
        self.avals = avals  # slot -> (shape, dtype); grows as temporaries are created
        self.sizes = _slot_bytes(avals) if sizes is None else sizes  # slot -> bytes of its value, as `avals` grows
        self.steps: list[RawRecord] = []
        self.consts: dict[int, Any] = {}
        self.templates: dict[Hashable, Template] = {}

    @property
    def ops(self) -> Any:
        """The backend: a namespace of one function per registry op, each appending a step here.

        Made anew on each access and not kept: its functions refer to this compiler, so keeping
        it would be a reference cycle (its tape-sized tables would then wait for the collector).
        """
        return SimpleNamespace(**{name: self._op(spec) for name, spec in REGISTRY.items()})

    def sym(self, slot: int) -> Sym:
        shape, dtype = self.avals[slot]
        return Sym(slot, shape, dtype)

    def new(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Sym:
        self.avals.append((shape, dtype))
        self.sizes.append(_nbytes((shape, dtype)))
        return Sym(len(self.avals) - 1, shape, dtype)

    def const(self, value: Any) -> Sym:
        arr = np.asarray(value)
        sym = self.new(tuple(arr.shape), arr.dtype)
        self.consts[sym.slot] = arr
        return sym

    def apply(self, spec: OpSpec, args: Sequence[Any], attrs: Mapping[str, Any] | None) -> Sym:
        """Append the step `spec(*args, **attrs)`; its result's symbol."""
        if not all([type(a) is Sym for a in args]):
            args = self._symbols(args)
        attrs = attrs or None
        shape, dtype = infer(spec, tuple([a.shape for a in args]), tuple([a.dtype for a in args]), attrs)
        sym = self.new(shape, dtype)
        self.steps.append((spec.name, attrs, sym.slot, *[a.slot for a in args]))
        return sym

    def _symbols(self, args: Sequence[Any]) -> list[Sym]:
        """`args` as symbols: arrays and Python scalars (numpy 2 promotion) become constants."""
        weak = [a for a in args if isinstance(a, (bool, int, float))]
        dt = np.result_type(*[a.dtype for a in args if not isinstance(a, (bool, int, float))], *weak) if weak else None
        return [a if isinstance(a, Sym) else self.const(np.asarray(a, dtype=dt) if isinstance(a, (bool, int, float)) else a)
                for a in args]

    def _op(self, spec: OpSpec) -> Callable[..., Sym]:
        def simple(*args: Any) -> Sym:  # (the record form is the public signature: nothing to bind)
            return self.apply(spec, args, None)

        def bound(*args: Any, **kwargs: Any) -> Sym:
            ins, attrs = spec.bind(args, kwargs)
            return self.apply(spec, ins, attrs)

        op = simple if spec.simple else bound
        op.__name__ = spec.name
        return op

    def reverse(self, records: Sequence[RawRecord], seeds: Mapping[int, int], skip: Collection[int],
                want: Collection[int], noted: Callable[[int, int, int], None] | None = None) -> dict[int, int]:
        """Compile the reverse pass over slot-form `records`: what `engine.reverse` (with `noted`:
        `engine.reverse_checked`) appends when run on symbols, step for step; returns the slots of
        the cotangents of the slots in `want` that receive one.

        `seeds` maps slots to the slots of their starting cotangents.  `noted(k, i, cotangent)` is
        told, in the engine's order, each new cotangent slot of input slot `i` made by `records[k]`.
        The loop is the engine's (records in reverse, each one's cotangent complete once the later
        records have added to theirs; it stays in `cot`, where no earlier record looks, and is
        found there if wanted), and what the engine does for one record follows from its
        signature: its op and attributes, the shapes and dtypes of its cotangent, output and
        inputs, which inputs are skipped, which already hold a cotangent (and its shape and
        dtype), and which are the same variable.  So each signature's steps are compiled once, by
        running the engine on that record alone (`_template`), and stamped out for every record
        that has it.
        """
        cot: list[int | None] = [None] * len(self.avals)  # slot -> the slot of its cotangent so far
        for slot, seed in seeds.items():
            cot[slot] = seed
        found: dict[int, int] = {}
        avals, sizes, steps, consts, templates = self.avals, self.sizes, self.steps, self.consts, self.templates
        add_step = steps.append
        for k in range(len(records) - 1, -1, -1):
            rec = records[k]
            out = rec[OUTPUT]
            g = cot[out]  # (left in place: no record before this one reads it)
            if g is None:
                continue
            attrs = rec[ATTRS]
            if attrs is not None:
                attrs = tuple(attrs.items())
            # The frame: the global slots of the record's cotangent, output, inputs and the
            # cotangents they hold (see `Template`); the slots the template makes follow.
            frame: list[Any]
            key: tuple[Any, ...]
            if len(rec) == 5:  # (the signature spelt out for two inputs and one: a third of the loop's time)
                i, j = rec[INPUTS], rec[INPUTS + 1]
                frame = [g, out, i, j, p := cot[i], q := cot[j]]
                key = (rec[OP], attrs, avals[g], avals[out], avals[i], avals[j], i in skip, j in skip,
                       p is not None and avals[p], q is not None and avals[q], i == j)
            elif len(rec) == 4:
                i = rec[INPUTS]
                frame = [g, out, i, p := cot[i]]
                key = (rec[OP], attrs, avals[g], avals[out], avals[i], i in skip, p is not None and avals[p])
            else:  # (no comprehensions in this function: their closures would make its variables cells, slower)
                ins = rec[INPUTS:]
                prevs = list(map(cot.__getitem__, ins))
                frame = [g, out, *ins, *prevs]
                key = (rec[OP], attrs, avals[g], avals[out], tuple(map(ins.index, ins)), *map(avals.__getitem__, ins),
                       *map(skip.__contains__, ins), *_held(avals, prevs))
            template = templates.get(key)
            if template is None:
                template = templates[key] = self._template(rec, g, frame[len(rec) - 1:], skip, noted is not None)
            base = len(avals)
            frame += range(base, base + len(template.avals))
            avals += template.avals
            sizes += template.sizes
            for op_attrs, slots in template.steps:
                add_step(op_attrs + slots(frame))
            if template.consts:
                for n, value in template.consts:
                    consts[base + n] = value
            for n, local in template.cots:
                cot[frame[n]] = frame[local]
            if noted is not None:
                for n, local in template.notes:
                    noted(k, frame[n], frame[local])
        for i in want:
            if (got := cot[i]) is not None:
                found[i] = got
        return found

    def _template(self, rec: RawRecord, g: int, prevs: Sequence[int | None], skip: Collection[int],
                  checked: bool) -> Template:
        """The template of `rec`'s signature (see `Template`): the engine run on `rec` alone, on
        placeholder symbols of its cotangent `g`, output, inputs and their cotangents `prevs`."""
        ins = rec[INPUTS:]
        n = len(ins)
        avals = self.avals
        local = Compiler([avals[g], avals[rec[OUTPUT]], *[avals[i] for i in ins],
                          *[avals[i] if p is None else avals[p] for i, p in zip(ins, prevs, strict=True)]])
        syms = [local.sym(s) for s in range(2 + 2 * n)]
        first = [2 + ins.index(i) for i in ins]  # an input's local slot: its first position's
        values = {1: syms[1], **{s: syms[s] for s in first}}
        seeds = {1: syms[0], **{s: syms[s + n] for s in first if prevs[s - 2] is not None}}
        record = (rec[OP], rec[ATTRS], 1, *first)
        local_skip = {2 + ins.index(i) for i in ins if i in skip}
        notes: list[tuple[int, int]] = []
        if checked:
            found = engine.reverse_checked([record], values, seeds, local_skip, set(first), local.ops,
                                           lambda k, s, c: notes.append((s, c.slot)), outputs_wanted=False)
        else:
            found = engine.reverse([record], values, seeds, local_skip, set(first), local.ops, outputs_wanted=False)
        fixed = 2 + 2 * n
        return Template(steps=tuple(((op, attrs), operator.itemgetter(*slots)) for op, attrs, *slots in local.steps),
                        avals=tuple(local.avals[fixed:]), sizes=tuple(local.sizes[fixed:]),
                        consts=tuple((s - fixed, value) for s, value in local.consts.items()),
                        cots=tuple((s, sym.slot) for s, sym in found.items()), notes=tuple(notes))


def _held(avals: Sequence[Aval], cotangents: Iterable[int | None]) -> list[Aval | bool]:
    """For a template's key: the aval of each cotangent slot, False where there is none."""
    return [False if c is None else avals[c] for c in cotangents]


class Template(NamedTuple):
    """The steps the reverse pass appends for every record of one signature (`Compiler.reverse`).

    Slots are local, numbered as the frame lists them: 0 is the record's cotangent, 1 its output,
    2 .. n+1 its n inputs (by position; a repeated input is used at its first position), n+2 ..
    2n+1 the cotangents those inputs already hold (unused where none), then the slots the
    template makes: step results and constants, in order, of shapes and dtypes `avals` (values
    of `sizes` bytes).  `steps` are `((op, attrs), slots)`, where `slots(frame)` gives the
    step's `(output, *inputs)` from the frame of global slots; `consts` are (index into `avals`,
    value); `cots` are (local slot of an input, local slot of its cotangent after the record);
    `notes` (compiled for checking) are (local slot of an input, local slot of a new cotangent
    of it), in the engine's order.
    """

    steps: tuple[tuple[tuple[str, Any], Callable[[Sequence[int | None]], tuple[int, ...]]], ...]
    avals: tuple[Aval, ...]
    sizes: tuple[int, ...]
    consts: tuple[tuple[int, Any], ...]
    cots: tuple[tuple[int, int], ...]
    notes: tuple[tuple[int, int], ...]


def infer(spec: OpSpec, shapes: tuple[tuple[int, ...], ...], dtypes: tuple[np.dtype[Any], ...],
          attrs: Mapping[str, Any] | None) -> Aval:
    """`spec.infer`, remembered: a compiled program applies few distinct (op, shapes, dtypes,
    attributes) combinations many times, and inferring a dtype runs the op on a surrogate array
    (about 7 us, most of a plan's compile time before this cache; `benchmarks/replay.py` (d))."""
    return _infer_cached(spec.name, shapes, dtypes, None if attrs is None else tuple(attrs.items()))


@lru_cache(maxsize=4096)
def _infer_cached(op: str, shapes: tuple[tuple[int, ...], ...], dtypes: tuple[np.dtype[Any], ...],
                  attrs: tuple[tuple[str, Any], ...] | None) -> Aval:
    return REGISTRY[op].infer(shapes, dtypes, dict(attrs or ()))


def _nbytes(aval: Aval) -> int:
    return math.prod(aval[0]) * aval[1].itemsize


Step = tuple[Callable[..., Any], Any, Any, int]
"""One executable step on registers: `(fn, a, None, out)` computes `fn(r[a])`, `(fn, a, b, out)`
`fn(r[a], r[b])`, and `(fn, None, (a, b, c, ...), out)` `fn(r[a], r[b], r[c], ...)`; the result is
stored in register `out`.  Attributes are bound into `fn` (`functools.partial`) at compile time."""

_REVERSE = -1  # step_records entry of a step of the compiled reverse pass
_RELEASE = -2  # step_records entry of a release step (drops a dead value's register)

_LINGER_BYTES = 4096
"""A dead value whose buffer is at most this big stays in its register until the register is
next written; a bigger one is released by a step of its own right after its last use.  Release
steps cost a loop iteration each, which is a sizeable share of a step on tiny arrays and
negligible on big ones, while a lingering value costs at most this many bytes per register."""


class StepCheck(NamedTuple):
    """What a step of a plan compiled for checking makes: the output of tape record `record`
    (`reverse` False; `var` is that output's internal id) or a cotangent made by that record's
    VJP (`reverse` True; `var` is the input whose cotangent it is)."""

    reverse: bool
    record: int
    var: int


def _release(value: Any) -> None:
    """The function of a release step: the register it writes then holds None."""
    return None


@dataclass
class Program:
    """A replay in slot form, before registers are assigned: one slot per tape variable, seed,
    tangent, constant and temporary; `records` are `(op, attrs, out slot, *input slots)`.

    `initial` maps slots to the stored values and constants a run starts from; `inputs` maps
    the internal ids of replaceable inputs to their slots; `outputs` and `grads` map the
    requested ids to the slots holding their values and gradients at the end (a gradient slot
    of None: the gradient is zero; an output slot of -1: the value is zero).
    """

    tape: Tape
    avals: list[Aval]  # slot -> (shape, dtype)
    sizes: list[int]  # slot -> bytes of its value
    initial: dict[int, Any]
    records: list[RawRecord]
    origins: list[int]  # tape record index of each record (_REVERSE: compiled reverse pass)
    inputs: dict[int, int]
    outputs: dict[int, int]
    grads: dict[int, int | None]
    seed_slot: int | None = None
    tangent_slots: list[int] = field(default_factory=list)
    checks: list[StepCheck | None] | None = None  # per record, when compiled for checking
    resized: dict[int, Aval] = field(default_factory=dict)  # tape ids whose shape differs from the recording

    @property
    def n_forward(self) -> int:
        return sum(1 for r in self.origins if r >= 0)


@dataclass
class Plan:
    """A compiled replay of one tape: the steps to run on a list of registers.

    `registers` is the register list a run starts from (stored values and constants in place);
    `inputs` maps internal ids of replaceable inputs to registers; `outputs` and `grads` map the
    requested ids to the registers holding their values and gradients after `run()` (as in
    `Program`: None and -1 for zero results).  `step_records` gives, per step, the tape record
    it recomputes, or _REVERSE / _RELEASE.  `checks` (plans compiled with `checked=True` only)
    gives, per step, the `StepCheck` of the value it makes, or None for a step whose value is not
    checked (a temporary inside a VJP rule, a release).  `tape_ref` is a weak reference to the
    tape compiled from (see the module docstring); `tape` resolves it.
    """

    tape_ref: weakref.ref[Tape] = field(repr=False)
    steps: list[Step] = field(repr=False)
    step_records: list[int] = field(repr=False)
    registers: list[Any] = field(repr=False)
    inputs: dict[int, int]
    outputs: dict[int, int]
    grads: dict[int, int | None]
    seed_register: int | None
    tangent_registers: list[int]
    peak_bytes: int
    checks: list[StepCheck | None] | None = field(default=None, repr=False)
    resized: dict[int, Aval] = field(default_factory=dict, repr=False)

    def shape_dtype(self, vid: int) -> Aval:
        """Shape and dtype of tape variable `vid` (internal id) in this plan's replays: the
        recorded ones, or those re-inferred for the new input shapes it was compiled for."""
        return self.resized[vid] if vid in self.resized else self.tape.shape_dtype(vid)

    @property
    def tape(self) -> Tape:
        """The tape this plan replays; TapegradError if it was freed."""
        tape = self.tape_ref()
        if tape is None:
            raise TapegradError("the tape of this plan was freed; keep a reference to the tape while using its plans")
        return tape

    @property
    def n_forward(self) -> int:
        """Number of tape records the replay recomputes."""
        return sum(1 for r in self.step_records if r >= 0)

    @property
    def n_backward(self) -> int:
        """Number of steps of the compiled reverse pass."""
        return sum(1 for r in self.step_records if r == _REVERSE)

    def run(self, replaced: Mapping[int, Any], seed: Any = None, tangents: Sequence[Any] = (), *,
            check: Collection[str] = ()) -> list[Any]:
        """Execute with `replaced` input values (internal id -> array); returns the registers.

        `check` names the passes ("forward", "reverse") whose values must be finite: the run then
        raises `NonFiniteError` at the first NaN or infinity among the replaced inputs and the
        recomputed values (forward), or the seed and the cotangents (reverse).  Only a plan
        compiled with `checked=True` can check.
        """
        vals = self.registers.copy()
        for vid, value in replaced.items():
            vals[self.inputs[vid]] = value
        if self.seed_register is not None:
            vals[self.seed_register] = seed
        for reg, value in zip(self.tangent_registers, tangents, strict=True):
            vals[reg] = value
        if check:
            return self._run_checked(vals, check, replaced, seed)
        steps = iter(self.steps)
        try:
            for fn, a, b, out in steps:
                if b is None:
                    vals[out] = fn(vals[a])
                elif a is None:  # (a comprehension here would make `vals` a closure cell, slower to load)
                    vals[out] = fn(*map(vals.__getitem__, b))
                else:
                    vals[out] = fn(vals[a], vals[b])
        except (TapegradError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
            raise self._failed(exc, self._stopped_at(steps)) from None
        return vals

    def _run_checked(self, vals: list[Any], check: Collection[str], replaced: Mapping[int, Any],
                     seed: Any) -> list[Any]:
        """`run`'s loop, checking the values of the passes in `check` (see `run`)."""
        checks = self.checks
        if checks is None:
            raise TapegradError("this plan was compiled without finiteness checks (compile_plan(..., checked=True))")
        tape = self.tape  # (held for the run: its errors name the tape's variables and sources)
        forward, reverse = "forward" in check, "reverse" in check
        if forward:
            for vid, value in replaced.items():
                if not anomaly.finite(value):
                    raise anomaly.input_error(tape, vid, value)
        if reverse and self.seed_register is not None and not anomaly.finite(seed):
            raise anomaly.seed_error(tape, None, seed)
        records = tape.parts().records
        for k, (fn, a, b, out) in enumerate(self.steps):
            try:  # (the result is checked before it is stored: its register may hold an input)
                if b is None:
                    value = fn(vals[a])
                elif a is None:
                    value = fn(*[vals[r] for r in b])
                else:
                    value = fn(vals[a], vals[b])
            except (TapegradError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
                raise self._failed(exc, k) from None
            c = checks[k]
            if c is not None and (reverse if c.reverse else forward) and not anomaly.finite(value):
                if c.reverse:
                    raise anomaly.reverse_error(tape, c.record, records[c.record], c.var, value)
                regs = (a,) if b is None else b if a is None else (a, b)
                raise anomaly.forward_error(tape, c.record, value, [vals[r] for r in regs])
            vals[out] = value
        return vals

    def _stopped_at(self, rest: Iterator[Step]) -> int:
        """The index of the step that failed; `rest` is the step iterator it stopped in."""
        return len(self.steps) - operator.length_hint(rest) - 1

    def _failed(self, exc: BaseException, k: int) -> Exception:
        """The error to raise for `exc`, raised by step `k`: it says where the step comes from."""
        if isinstance(exc, GuardError):
            return GuardError(f"{self._where(k)}: {exc}; {self._guard_hint(k)}")
        if isinstance(exc, TapegradError):
            return type(exc)(f"{self._where(k)}: {exc}")
        return TapegradError(f"{self._where(k)}: {type(exc).__name__}: {exc}")

    def _guard_hint(self, k: int) -> str:
        """What a failed guard at step `k` means, and what to do about it."""
        rec, tape = self.step_records[k], self.tape_ref()
        if tape is None or rec < 0:
            return "the replayed inputs take a different branch than the recording did"
        records = tape.parts().records
        guard = records[rec]
        if guard[OP] != "guard":
            return "record the step again with inputs of this shape to replay at it"
        kind, vid = guard[ATTRS]["kind"], guard[INPUTS]
        call = _GUARD_CALLS[kind]
        hint = (f"the recording converted v{tape.dense_ids()[vid]} to a Python {kind} ({call}) and the "
                "replayed inputs give another value: the recorded program took its branch on the old one")
        used = any(vid in r[INPUTS:] for r in records[rec + 1:] if r[OP] not in engine.GUARDS)
        if kind != "bool" and tape.shape_dtype(vid)[0] == () and not used:  # (a bool is a branch, not a log)
            hint += (f"; no later record uses v{tape.dense_ids()[vid]}, so if its value was only logged or "
                     "printed, log `v.data` instead (or compute it inside `tg.no_record()`), which records no guard")
        return hint

    def _where(self, k: int) -> str:
        """Where step `k` comes from."""
        rec = self.step_records[k]
        if rec < 0:
            return "in the reverse pass"
        tape = self.tape_ref()
        if tape is None:  # (a plan kept after its tape: the record's index is all it knows)
            return f"record {rec}"
        src = tape.source_of(rec)
        at = f" at {escape(src[0])}:{src[1]}" if src else ""  # (file strings: escaped)
        return f"record {rec} ({escape(tape.parts().records[rec][0])}){at}"


# ---- new input shapes: the recorded program re-checked record by record -------------------

class Reshaped(NamedTuple):
    """What a tape's records become for new input shapes (see `reshaped`): `avals` are the new
    shape and dtype of every id whose shape changed (replaced inputs, resized constants, the
    records they reach); `attrs` the generalised attributes of records whose attributes encode
    a shape; `consts` the new values of resized constants (`arange` index arrays)."""

    avals: dict[int, Aval]
    attrs: dict[int, Mapping[str, Any]]
    consts: dict[int, Any]


def reshaped(tape: Tape, shapes: Mapping[int, tuple[int, ...]], numbers: Iterable[int],
             recorded: Callable[[int], Aval] | None = None) -> Reshaped:
    """Re-infer the shapes of records `numbers` (tape order) for inputs of new `shapes`.

    Every record reached by a changed shape is re-checked with its op's shape rule.  Attributes
    that encode a shape are generalised where the recorded program says how (`_generalised`),
    and a constant integer index array that was `arange(n)` over an axis of size n (the "every
    row" index, `x[np.arange(len(x)), labels]`) becomes `arange` of the new size.  A record that
    does not apply to the new shapes raises `GuardError` naming it, its source line and the
    dimension that changed.  `recorded(id)` gives an id's recorded shape and dtype (default
    `tape.shape_dtype`; a compile passes the table it already has).
    """
    parts = tape.parts()
    records = parts.records
    recorded = tape.shape_dtype if recorded is None else recorded
    changed: dict[int, Aval] = {vid: (tuple(shape), tape.shape_dtype(vid)[1]) for vid, shape in shapes.items()}
    new_attrs: dict[int, Mapping[str, Any]] = {}
    new_consts: dict[int, Any] = {}
    for n in numbers:
        rec = records[n]
        ins = rec[INPUTS:]
        if changed.keys().isdisjoint(ins):
            continue
        spec = REGISTRY[rec[OP]]
        was = list(map(recorded, ins))
        before = list(map(_SHAPE, was))
        if rec[OP] == "getitem":
            _resize_rows(tape, n, rec, before, changed, new_consts)
        after = list(map(_SHAPE, map(changed.get, ins, was)))  # (an input's new aval, else its recorded one)
        attrs = _generalised(rec, before[0], after[0])
        try:
            out = infer(spec, tuple(after), tuple(map(_DTYPE, was)), attrs or None)
        except TapegradError as exc:
            raise _shape_error(tape, n, rec, before, after, str(exc), shapes) from None
        if attrs is not rec[ATTRS]:
            new_attrs[n] = attrs
        if out[0] != recorded(rec[OUTPUT])[0]:
            changed[rec[OUTPUT]] = out
    return Reshaped(changed, new_attrs, new_consts)


_SHAPE, _DTYPE = operator.itemgetter(0), operator.itemgetter(1)  # (of an Aval)


def _generalised(rec: RawRecord, before: tuple[int, ...], after: tuple[int, ...]) -> Any:
    """`rec`'s attributes for input 0 of shape `after` instead of `before`.

    `broadcast_to` and `sum_to` keep the dimensions they passed through from their input
    (aligned from the right) following the input; the dimensions they broadcast or summed stay
    as recorded.  Other attributes stay as recorded: a `reshape` to a fixed shape, for one, says
    nothing of where its numbers came from, and the shape rule then refuses what does not fit.
    """
    op, attrs = rec[OP], rec[ATTRS]
    if op not in ("broadcast_to", "sum_to") or before == after or len(before) != len(after):
        return attrs
    shape = list(attrs["shape"])
    lead = len(before) - len(shape)  # (broadcast_to: negative, its input has fewer dimensions)
    for k in range(max(0, -lead), len(shape)):
        i = k + lead
        if before[i] == shape[k] and (op == "broadcast_to" or shape[k] != 1):
            shape[k] = after[i]
    return {**attrs, "shape": tuple(shape)}


def _resize_rows(tape: Tape, n: int, rec: RawRecord, before: list[tuple[int, ...]], changed: dict[int, Aval],
                 new_consts: dict[int, Any]) -> None:
    """Resize the constant `arange` index arrays of getitem record `rec` whose axis changed size."""
    old_in = before[0]
    new_in = changed[rec[INPUTS]][0] if rec[INPUTS] in changed else old_in
    if len(new_in) != len(old_in):
        return
    axis = arrays = 0
    for item in expand_index("getitem", old_in, rec[ATTRS]["index"]):
        if item is None:
            continue
        if item == ("array",):
            vid = rec[INPUTS + 1 + arrays]
            arrays += 1
            old, new = old_in[axis], new_in[axis]
            value = tape.parts().values.get(vid)
            if (old != new and vid in tape.parts().consts and value is not None and value.shape == (old,)
                    and np.array_equal(value, np.arange(old))):
                if vid in new_consts and len(new_consts[vid]) != new:
                    raise _shape_error(tape, n, rec, before, [changed.get(i, (s, None))[0] for i, s in
                                                              zip(rec[INPUTS:], before, strict=True)],
                                       f"the constant index array v{tape.dense_ids()[vid]} (arange({old})) would "
                                       f"need two sizes, {len(new_consts[vid])} and {new}", {})
                new_consts[vid] = np.arange(new, dtype=value.dtype)
                changed[vid] = ((new,), value.dtype)
        axis += 1


def _shape_error(tape: Tape, n: int, rec: RawRecord, before: Sequence[tuple[int, ...]],
                 after: Sequence[tuple[int, ...]], why: str, shapes: Mapping[int, tuple[int, ...]]) -> GuardError:
    """The error for record `n` that does not apply to inputs of shapes `after` (recorded: `before`);
    `shapes` are the replay's new input shapes."""
    given = "; ".join(f"input {escape(repr(tape.name_of(v))) if tape.name_of(v) else ''} (v{tape.dense_ids()[v]}) has "
                      f"shape {shape}, recorded {tape.shape_dtype(v)[0]} (dtype {tape.shape_dtype(v)[1]})"
                      for v, shape in shapes.items())
    src = tape.source_of(n)
    at = f" at {src[0]}:{src[1]}" if src else ""
    dims = []
    for k, (b, a) in enumerate(zip(before, after, strict=True)):
        if len(a) != len(b):
            dims.append(f"input {k} has {len(a)} dimensions, recorded {len(b)}")
        dims.extend(f"input {k} dimension {d} is {y}, recorded {x}" for d, (x, y) in enumerate(zip(b, a, strict=True))
                    if x != y)
    fixed = ""
    if rec[OP] == "reshape":
        target = rec[ATTRS]["shape"]
        fixed = f"; the recorded code reshapes to {target}" + ("" if -1 in target else ", a fixed shape (-1 would adapt)")
    return GuardError(f"record {n} ({rec[OP]}){at} does not apply to the new input shapes: {why}"
                      f"{fixed} ({'; '.join(dims) or 'shapes unchanged'}); {given + '; ' if given else ''}"
                      "to replay at these shapes, record the step again with inputs of these shapes")


_GUARD_CALLS = {"bool": "`if v:`, `while v:`, `and`/`or`/`not`, bool(v) or v.item()",
                 "int": "int(v), v.item() or use as an index", "float": "float(v) or v.item()"}
"""Which Python calls make a value guard of each kind (the tracer's `_observe`)."""


def compile_plan(tape: Tape, outputs: Sequence[int], wrt: Sequence[int] = (), of: int | None = None,
                 replaced: Sequence[int] = (), *, checked: bool = False,
                 shapes: Mapping[int, tuple[int, ...]] | None = None) -> Plan:
    """Compile a replay of `tape` computing `outputs` and, when `of` is given, d of / d `wrt`.

    `replaced` are the internal ids of inputs the caller will supply (everything downstream of
    them is recomputed); other values come from the tape when stored, else are recomputed.
    `shapes` gives the replaced inputs whose shapes differ from the recorded ones: the plan is
    then compiled for those shapes (see `reshaped`; `GuardError` when the program does not apply).
    With `checked`, the plan can check its values (`Plan.run(check=...)`).
    """
    with no_gc():  # (tens of thousands of small tuples: the collector's passes cost more than the work)
        return _lower(_program(tape, outputs, wrt, of, replaced, checked, shapes))


def _program(tape: Tape, outputs: Sequence[int], wrt: Sequence[int], of: int | None,
             replaced: Sequence[int], checked: bool = False,
             shapes: Mapping[int, tuple[int, ...]] | None = None) -> Program:
    """`compile_plan` in slot form."""
    parts = tape.parts()
    records = parts.records
    # (A loaded tape numbers its variables 0, 1, ... in definition order: its records are in slot form.)
    dense = _dense(tape)
    ids = range(len(parts.leaves) + len(records)) if dense else tape.ids_in_order()
    slot_of: Sequence[int] | dict[int, int] = ids if dense else {vid: n for n, vid in enumerate(ids)}
    avals = _avals(tape, ids, dense)

    # Which records the backward pass walks: those `of` depends on.
    needed = engine.needed_ids(records, [*outputs, *([] if of is None else [of])])
    every = len(needed) == len(avals)  # (every variable is needed, so every record)
    live_records: Sequence[int] = range(len(records)) if every else [n for n, rec in enumerate(records)
                                                                      if rec[OUTPUT] in needed]

    # New input shapes: every record they reach is re-inferred (and recomputed, below).
    new = reshaped(tape, shapes, live_records, avals.__getitem__ if dense else None) if shapes else Reshaped({}, {}, {})
    for vid, aval in new.avals.items():
        avals[slot_of[vid]] = aval

    # The live records in slot form (with generalised attributes at new shapes).
    if dense:
        sub = list(records) if every else [records[n] for n in live_records]
    else:
        sub = [_slotted(records[n], slot_of) for n in live_records]
    if new.attrs:
        for k, n in enumerate(live_records):
            if n in new.attrs:
                sub[k] = (sub[k][OP], new.attrs[n], *sub[k][OUTPUT:])

    # Forward: recompute what is missing or depends on a replaced input (guards included).
    stored = parts.values
    unstored = needed.difference(stored)  # (a set: `in` a loaded tape's values is a Python call)
    dirty = set(replaced) | new.consts.keys()
    forward, forward_sub = _recomputed(records, live_records, sub, unstored, dirty)
    missing = [vid for vid in unstored.difference(dirty) if tape.producer(vid) is None]
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
    made: dict[int, StepCheck] = {}  # (checked) slot of a cotangent -> the record whose VJP made it
    if of is not None:
        seed_slot = comp.new(*avals[slot_of[of]]).slot
        active = engine.active_set(sub, [slot_of[w] for w in wrt])
        skip = needed.difference(active) if dense else set(map(slot_of.__getitem__, needed)).difference(active)
        noted = None
        if checked:
            def noted(k: int, i: int, cot: int) -> None:
                made.setdefault(cot, StepCheck(True, live_records[k], ids[i]))  # (the first note: its maker)

        found = comp.reverse(sub, {slot_of[of]: seed_slot}, skip, {slot_of[w] for w in wrt}, noted)
        grads = {w: found.get(slot_of[w]) for w in wrt}

    initial: dict[int, Any] = {slot_of[v]: value for v in needed if v not in dirty and (value := stored.get(v)) is not None}
    initial.update((slot_of[v], value) for v, value in new.consts.items())
    initial.update(comp.consts)
    checks: list[StepCheck | None] | None = None
    if checked:
        checks = [StepCheck(False, n, records[n][OUTPUT]) for n in forward]
        checks += [made.get(step[OUTPUT]) for step in comp.steps]
    return Program(tape, comp.avals, comp.sizes, initial, forward_sub + comp.steps,
                   forward + [_REVERSE] * len(comp.steps), {v: slot_of[v] for v in replaced},
                   {v: slot_of[v] for v in outputs}, grads, seed_slot, checks=checks, resized=new.avals)


def _recomputed(records: Sequence[RawRecord], live: Sequence[int], sub: Sequence[RawRecord], unstored: Collection[int],
                dirty: set[int]) -> tuple[list[int], list[RawRecord]]:
    """The records a replay recomputes, of the `live` ones (tape indices; `sub`: the same records
    in slot form): those whose value is `unstored`, views, and those that read a `dirty` id
    (replaced inputs and resized constants at first); each adds its output to `dirty`.
    Returns their tape indices and slot forms."""
    forward: list[int] = []
    forward_sub: list[RawRecord] = []
    for n, srec in zip(live, sub, strict=True):
        rec = records[n]
        if rec[OUTPUT] in unstored or rec[OP] in _VIEWS or not dirty.isdisjoint(rec[INPUTS:]):
            dirty.add(rec[OUTPUT])
            forward.append(n)
            forward_sub.append(srec)
    return forward, forward_sub


def compile_jvp(tape: Tape, out_id: int, wrt: Sequence[int], replaced: Sequence[int],
                shapes: Mapping[int, tuple[int, ...]] | None = None) -> Plan:
    """Forward mode for one output: transpose the compiled reverse pass (linear in its seed).

    The reverse program maps a seed u to J^T u; running the engine's reverse pass over that
    program, seeded with tangents v at the gradient slots, yields J v at the seed slot.
    """
    with no_gc():  # (as in `compile_plan`)
        return _lower(_jvp_program(tape, out_id, wrt, replaced, shapes))


def _jvp_program(tape: Tape, out_id: int, wrt: Sequence[int], replaced: Sequence[int],
                 shapes: Mapping[int, tuple[int, ...]] | None) -> Program:
    """`compile_jvp` in slot form."""
    base = _program(tape, [], wrt, out_id, replaced, shapes=shapes)
    assert base.seed_slot is not None
    seed_slot = base.seed_slot
    n_fwd = base.n_forward
    program = base.records[n_fwd:]
    comp = Compiler(list(base.avals), list(base.sizes))
    tangents = [comp.new(*base.avals[base.inputs[w]] if w in base.inputs else tape.shape_dtype(w)) for w in wrt]
    seeds: dict[int, Sym] = {}
    for w, t in zip(wrt, tangents, strict=True):
        slot = base.grads[w]
        if slot is not None:
            seeds[slot] = t if slot not in seeds else comp.ops.add(seeds[slot], t)
    linear = engine.active_set(program, [seed_slot])
    skip = {s for s in range(len(base.avals)) if s not in linear}
    found = comp.reverse(program, {s: t.slot for s, t in seeds.items()}, skip, {seed_slot})
    out_slot = found.get(seed_slot, -1)

    keep = [rec for rec in program if rec[OUTPUT] not in linear]
    records = base.records[:n_fwd] + keep + comp.steps
    origins = base.origins[:n_fwd] + [_REVERSE] * (len(keep) + len(comp.steps))
    return Program(tape, comp.avals, comp.sizes, {**base.initial, **comp.consts}, records, origins, base.inputs,
                   {out_id: out_slot}, {}, tangent_slots=[t.slot for t in tangents], resized=base.resized)


_VIEWS = frozenset(name for name, spec in REGISTRY.items() if spec.view)


def _dense(tape: Tape) -> bool:
    """Whether `tape`'s internal ids are 0, 1, ... n-1 (a loaded tape's are), found without
    sorting them (`Tape.ids_in_order`): its ids are its leaves and its records' outputs, each
    once, and the outputs increase in tape order (the `Tape` contract), so with n of them they
    are 0 .. n-1 when the least is 0 and the greatest n - 1."""
    parts = tape.parts()
    n = len(parts.leaves) + len(parts.records)
    if n != len(parts.values) + len(parts.avals):  # (not as the contract says: the sorted ids decide)
        ids = tape.ids_in_order()
        return ids == list(range(len(ids)))
    ends = [*parts.leaves, parts.records[0][OUTPUT], parts.records[-1][OUTPUT]] if parts.records else parts.leaves
    return not ends or (min(ends) == 0 and max(ends) == n - 1)


def _avals(tape: Tape, ids: Sequence[int], dense: bool) -> list[Aval]:
    """Shape and dtype of each of `ids` (every id of `tape`, in order; `dense`: they are 0 .. n-1).

    Densely numbered, the ids without a value come from the table of those (`TapeParts.avals`,
    a dict lookup each, and all of them for a tape loaded without its intermediate values) and
    the stored ones from the values, in bulk for a loaded tape's (`TypedValues.typed_items`);
    every id has one or the other (the `Tape` contract)."""
    if not dense:
        return [tape.shape_dtype(vid) for vid in ids]
    parts = tape.parts()
    avals = list(map(parts.avals.get, ids))
    if tape._typed is not None:
        for vid, aval in tape._typed.typed_items():
            avals[vid] = aval
    else:
        for vid in parts.values:
            avals[vid] = tape.shape_dtype(vid)
    return cast("list[Aval]", avals)


def _slotted(rec: RawRecord, slot_of: Sequence[int] | Mapping[int, int]) -> RawRecord:
    """A tape record with its ids replaced by slots."""
    return (rec[OP], rec[ATTRS], slot_of[rec[OUTPUT]], *map(slot_of.__getitem__, rec[INPUTS:]))


_FORWARD = {name: spec.forward for name, spec in REGISTRY.items()}  # (custom ops join it: `_op_changed`)
_PLAIN = frozenset(name for name, spec in REGISTRY.items() if not spec.scratch and spec.aliases is never_aliases)
"""Ops whose step allocates its result and nothing else (no scratch space, never a view of its
input's buffer): the lowering's short way through the memory model.  Built-in ops only: a
custom op takes the general way."""


def _op_changed(name: str, spec: OpSpec | None) -> None:
    """Keep `_FORWARD` in step with the custom ops registered at run time (`tapegrad.defop`)."""
    if spec is None:
        _FORWARD.pop(name, None)
    else:
        _FORWARD[name] = spec.forward


on_change(_op_changed)


def _lower(prog: Program) -> Plan:
    """Assign registers to slots by liveness, emit the executable steps, and predict the peak.

    A step's result goes to the register of an input whose last use it is (the biggest such
    input: storing the result drops it), else to the most recently freed register, else to a
    new one.  Other values dying at a step stay in their registers until those are reused
    (up to _LINGER_BYTES), or are released by a release step right after it.  Results
    (outputs and gradients) keep their registers to the end.

    The peak model counts the bytes of each buffer a step allocates (a view shares its input's
    buffer) while a register holds a value that uses it, plus the step kernel's scratch space;
    values supplied from outside are not counted.  This runs once per step of a plan, about
    two fifths of a compile (`benchmarks/replay.py` (d)): one loop over plain lists, short ways
    for one and two inputs and for `_PLAIN` ops, and no closure or comprehension in the function
    (they would make the variables they read cells, slower at every step; the rare ways call
    `_release_step` and `_plan_of`).
    """
    avals, records = prog.avals, prog.records
    n_slots, end = len(avals), len(records)
    nbytes = [*prog.sizes, 0]  # slot -> bytes of its value; [-1] (no buffer) is 0
    last = [-1] * n_slots  # slot -> index of the step that reads it last (-1: none; `end`: a result)
    for k, rec in enumerate(records):
        if len(rec) == 5:  # (two inputs, the usual step of a reverse pass: spelt out)
            last[rec[INPUTS]] = last[rec[INPUTS + 1]] = k
        else:
            for s in rec[INPUTS:]:
                last[s] = k
    for s in (*prog.outputs.values(), *prog.grads.values()):
        if s is not None and s >= 0:
            last[s] = end
    reg_of = [-1] * n_slots  # slot -> its register
    reg_buf: list[int] = []  # register -> the buffer its value (live or dead) keeps alive; -1: none counted
    users = [1] * n_slots  # buffer (named by the slot that allocated it) -> registers whose value uses it
    free: list[int] = []  # registers whose value is dead, most recently freed last
    live = peak = 0  # bytes of the buffers kept alive, and their most at any step
    steps: list[Step] = []
    released: list[int] = []  # per release step, the index of the record it follows

    preset = [*prog.initial, *prog.inputs.values(), *prog.tangent_slots]
    if prog.seed_slot is not None:
        preset.append(prog.seed_slot)
    for s in preset:
        reg_of[s] = len(reg_buf)
        reg_buf.append(-1)
    for s in preset:
        if last[s] < 0:
            free.append(reg_of[s])
    forward, plain = _FORWARD, _PLAIN
    a: int | None
    b: int | tuple[int, ...] | None
    for k, rec in enumerate(records):
        # The input registers (a, b: see `Step`); `top`, the biggest input read for the last time
        # here (-1: none), and `more`, the others (rare: none for one input).
        more: Sequence[int] = ()
        if len(rec) == 5:
            op, attrs, out, x, y = rec
            a, b = reg_of[x], reg_of[y]
            if last[x] != k:
                top = y if last[y] == k else -1
            elif last[y] != k or x == y:
                top = x
            elif nbytes[reg_buf[a]] >= nbytes[reg_buf[b]]:  # (`held`, inline: both inputs die here)
                top, more = x, (y,)
            else:
                top, more = y, (x,)
        elif len(rec) == 4:
            op, attrs, out, x = rec
            a, b = reg_of[x], None
            top = x if last[x] == k else -1
        else:
            op, attrs, out, *ins = rec
            x = ins[0]
            a, b = None, tuple(map(reg_of.__getitem__, ins))
            held: dict[int, int] = {}  # (no comprehension: its closure would make this function's variables cells)
            for s in ins:
                if last[s] == k:
                    held[s] = nbytes[reg_buf[reg_of[s]]]
            top, *more = sorted(held, key=held.__getitem__, reverse=True) or [-1]
        # The step allocates its result's buffer (unless the result is a view of x's) and its scratch space.
        if op in plain:
            buf = out
            live += nbytes[out]
            if live > peak:
                peak = live
        else:
            spec = REGISTRY[op]
            if spec.aliases(avals[x], avals[out], attrs):
                buf = reg_buf[reg_of[x]]
                if buf >= 0:
                    users[buf] += 1
            else:
                buf = out
                live += nbytes[out]
            scratch = spec.scratch * max(nbytes[x], nbytes[out]) if spec.scratch else 0
            if live + scratch > peak:
                peak = live + scratch
        # The result's register: a dying input's, else a free one, else a new one; the value it
        # held (dead) is dropped when the result is stored.
        if top >= 0:
            reg = reg_of[top]
        elif free:
            reg = free.pop()
        else:
            reg = len(reg_buf)
            reg_buf.append(-1)
        old = reg_buf[reg]
        if old >= 0:
            users[old] -= 1
            if users[old] == 0:
                live -= nbytes[old]
        reg_buf[reg] = buf
        reg_of[out] = reg
        steps.append((partial(forward[op], **attrs) if attrs else forward[op], a, b, reg))
        # Values dead after the step (other dying inputs, an unused result) free their registers,
        # released by a step of their own if big.
        if more:
            for s in more:
                if nbytes[reg_buf[reg_of[s]]] > _LINGER_BYTES:
                    live -= _release_step(reg_of[s], k, steps, released, reg_buf, users, nbytes)
                free.append(reg_of[s])
        if last[out] < 0:
            if nbytes[buf] > _LINGER_BYTES:
                live -= _release_step(reg, k, steps, released, reg_buf, users, nbytes)
            free.append(reg)

    return _plan_of(prog, steps, released, reg_of, len(reg_buf), peak + 8 * len(reg_buf))


def _plan_of(prog: Program, steps: list[Step], released: list[int], reg_of: list[int], n_registers: int,
             peak_bytes: int) -> Plan:
    """The plan of `prog` lowered to `steps` (`_lower`: `released` are the records release steps
    follow, `reg_of` the register of each slot)."""
    registers: list[Any] = [None] * n_registers
    for s, value in prog.initial.items():
        registers[reg_of[s]] = value
    return Plan(weakref.ref(prog.tape), steps, _interleave(prog.origins, released, _RELEASE), registers,
                inputs={v: reg_of[s] for v, s in prog.inputs.items()},
                outputs={v: reg_of[s] if s >= 0 else -1 for v, s in prog.outputs.items()},
                grads={v: None if s is None else reg_of[s] for v, s in prog.grads.items()},
                seed_register=None if prog.seed_slot is None else reg_of[prog.seed_slot],
                tangent_registers=[reg_of[s] for s in prog.tangent_slots], peak_bytes=peak_bytes,
                checks=None if prog.checks is None else _interleave(prog.checks, released, None),
                resized=prog.resized)


def _release_step(reg: int, k: int, steps: list[Step], released: list[int], reg_buf: list[int], users: list[int],
                  nbytes: list[int]) -> int:
    """Append a step right after record `k` that drops the (dead, big) value of register `reg`;
    the bytes this frees."""
    steps.append((_release, reg, None, reg))
    released.append(k)
    buf = reg_buf[reg]
    reg_buf[reg] = -1
    users[buf] -= 1
    return nbytes[buf] if users[buf] == 0 else 0


def _slot_bytes(avals: Sequence[Aval]) -> list[int]:
    """The bytes of each slot's value (computed once per distinct aval object: slots share them)."""
    sizes: dict[int, int] = {}
    out = []
    for aval in avals:
        n = sizes.get(id(aval))
        if n is None:
            n = sizes[id(aval)] = _nbytes(aval)
        out.append(n)
    return out


def _interleave(per_record: Sequence[Any], after: Sequence[int], filler: Any) -> list[Any]:
    """`per_record` with `filler` inserted after entry k once for each k in `after` (ascending)."""
    if not after:
        return list(per_record)
    out: list[Any] = []
    pending = iter(after)
    k_next = next(pending)
    for k, item in enumerate(per_record):
        out.append(item)
        while k_next == k:
            out.append(filler)
            k_next = next(pending, -1)
    return out
