"""`nan`: where non-finite values (NaN, infinity) start in a tape, forward and in reverse.

Contract:
- `nan(tape, *, inputs=None, of=None) -> NanReport`, from the tape alone:
  - forward finding: the first record, in tape order, whose output is non-finite while all its
    inputs are finite: where a NaN or an infinity is created rather than passed on.  Every
    record of the tape is considered.  Values are the stored ones where the tape has them and no
    replaced input changes them (`values="all"`: a scan that computes nothing), else recomputed
    with the registry's forward functions exactly as a replay does (`values="inputs"` or
    `"none"`, or `inputs` given), so a `values="none"` tape needs every input it uses in
    `inputs`.
  - reverse finding: in the reverse pass of `of` (default: the last recorded output) with
    respect to every floating-point input, the first record whose VJP makes the cotangent of one
    of its inputs non-finite from a finite cotangent of its output, found by a replay with
    `check_finite="reverse"`.  It names that input (with the stats of its new cotangent) and
    gives the stats of the incoming cotangent and of the record's input and output values.
  - the leaves (inputs and constants) whose values are non-finite, the tape's `recovery` (what
    a `recover=True` load dropped) and `error` (the exception that ended the recording).
  Each finding is None when there is none; `reverse_note` says why no reverse pass ran.
- `inputs` maps input names, dense ids or "v<id>" strings (how an .npz file names the arrays of
  unnamed inputs) to arrays of the recorded shape and dtype.  Errors: `TapegradError` for bad
  inputs or values that cannot be computed (`GuardError` when the inputs take another branch
  than the recording did); `LimitError` for a value to compute that alone is over the replay
  memory budget (`tapegrad.budget`), and for a reverse replay over it.
- Cost: one pass over the tape's values (computing those not stored; computed values are dropped
  after their last use), a checked replay of the reverse pass (which recomputes what it needs
  and the tape does not store), and for a reverse finding one more replay for its incoming
  cotangent.  Nothing is recorded, even inside `record()`.
- `NanReport.as_dict()` is JSON-able: numbers, strings, lists and None.  Strings from the file
  (names, source paths, the recorded exception) are in it as they are, capped, so JSON output
  relies on the encoder's escaping (`json.dumps` escapes control characters).
  `format_report(report)` gives the lines `tapegrad nan` prints, every file string escaped and
  capped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import anomaly, budget, engine, replay
from ..errors import GuardError, NonFiniteError, TapegradError, escape
from ..ops import NUMPY, REGISTRY
from ..tape import INPUTS, OP, OUTPUT, Tape
from ..tape_format import Recovery
from .health import ValueStats, summarize
from .loading import error_lines, recovery_lines

_TEXT = 1024  # characters of a name or source path a report keeps
_SHOWN = 200  # characters of a name or source path `format_report` prints


@dataclass(frozen=True)
class Operand:
    """A variable in a report: dense id, name, kind ("input", "const" or "op") and the stats of
    its value (None where the value is not known)."""

    id: int
    name: str | None
    kind: str
    stats: ValueStats | None


@dataclass(frozen=True)
class Finding:
    """The record where non-finite values start in one pass.

    `attrs` are the record's attributes (plain data), `source` the (file, line) of the code that
    made it.  `output` and `inputs` are the record's output and inputs with the stats of their
    (primal) values.  In the reverse pass, `cotangent` is the input whose cotangent became non-finite,
    with the stats of that cotangent, and `incoming` the stats of the (finite) cotangent of the
    record's output; both are None in the forward pass.
    """

    record: int
    op: str
    attrs: dict[str, Any]
    source: tuple[str, int] | None
    output: Operand
    inputs: tuple[Operand, ...]
    cotangent: Operand | None = None
    incoming: ValueStats | None = None


@dataclass(frozen=True)
class NanReport:
    """What `nan()` found (see the module docstring).

    `records` and `values_mode` describe the tape; `replayed` is True when values were
    recomputed (the tape does not store them all, or `inputs` replaced some), `replaced` lists the
    dense ids of the inputs given; `of` is the output whose reverse pass was checked (None for a
    tape without records).
    """

    records: int
    values_mode: str
    replayed: bool
    replaced: tuple[int, ...]
    of: Operand | None
    forward: Finding | None
    reverse: Finding | None
    reverse_note: str | None
    nonfinite_leaves: tuple[Operand, ...]
    recovery: Recovery | None
    error: tuple[str, str] | None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (nested dicts, lists, numbers, strings, None) for JSON."""
        plain: dict[str, Any] = _plain(asdict(self))
        plain["exception"] = plain.pop("error")  # ("error" is what the CLI calls a file it could not read)
        return plain


def _plain(obj: Any) -> Any:
    """Tuples as lists, so the dict equals its JSON round trip."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def nan(tape: Tape, *, inputs: Mapping[Any, Any] | None = None, of: Any = None) -> NanReport:
    """Where non-finite values start in `tape` (see the module docstring)."""
    replaced = _inputs(tape, inputs)
    of_id = (tape.last_output() if of is None else tape.resolve(of)) if len(tape) else None
    err, note = _reverse(tape, of_id, replaced)
    ids = tape.ids_in_order()
    reverse_record = None if err is None else err.record
    keep = {n for n in (reverse_record, None if of_id is None else tape.producer(of_id)) if n is not None}
    scan = _Scan(tape, replaced, keep)
    forward = None if scan.first is None else _finding(tape, scan, scan.first)
    reverse = None
    if err is not None and reverse_record is not None and err.variable is not None:
        vid = ids[err.variable]
        reverse = _finding(tape, scan, reverse_record, cotangent=_operand(tape, vid, summarize(err.value)),
                           incoming=_incoming(tape, of_id, reverse_record, replaced))
    leaves = tuple(_operand(tape, vid, summarize(value)) for vid, value in scan.leaf_values() if not anomaly.finite(value))
    dense = tape.dense_ids()
    return NanReport(len(tape), tape.values_mode, bool(replaced) or tape.values_mode != "all",
                     tuple(sorted(dense[vid] for vid in replaced)),
                     None if of_id is None else _operand(tape, of_id, scan.stats.get(of_id)), forward, reverse, note,
                     leaves, tape.recovery, tape.error)


def _inputs(tape: Tape, inputs: Mapping[Any, Any] | None) -> dict[int, Any]:
    """Replaced inputs by internal id, checked against the recorded shape and dtype."""
    out: dict[int, Any] = {}
    names = set(tape.parts().names.values())
    for ref, value in (inputs or {}).items():
        if isinstance(ref, str) and ref not in names and re.fullmatch(r"v[0-9]{1,12}", ref):
            vid = tape.resolve(int(ref[1:]))
        else:
            vid = tape.resolve(ref)
        label = f"input '{escape(str(ref), _SHOWN)}' (v{tape.dense_ids()[vid]})"
        if tape.producer(vid) is not None or vid in tape.parts().consts:
            raise TapegradError(f"{label} is not an input of the tape; only inputs can be replaced")
        arr = np.asarray(value)
        shape, dtype = tape.shape_dtype(vid)
        if arr.shape != shape or arr.dtype != dtype:
            raise TapegradError(f"{label} was recorded with shape {shape} and dtype {dtype}, "
                                f"got shape {arr.shape} and dtype {arr.dtype}")
        out[vid] = arr
    return out


def _dense_inputs(tape: Tape, replaced: Mapping[int, Any]) -> dict[int, Any]:
    dense = tape.dense_ids()
    return {dense[vid]: value for vid, value in replaced.items()}


def _stored_pass(tape: Tape, of_id: int, replaced: Mapping[int, Any]) -> tuple[list[Any], Mapping[int, Any], set[int], set[int]] | None:
    """(records, values, skip, leaves) for a reverse pass of `of_id` straight over the stored
    values, or None when some value must be recomputed first (not every value is stored, or
    inputs are replaced).  Such a pass compiles no replay plan, whose cost per record would
    dominate on long tapes of tiny values."""
    parts = tape.parts()
    n = tape.producer(of_id)
    if replaced or n is None or len(parts.values) != len(tape.ids_in_order()):
        return None
    records = list(parts.records[: n + 1])
    leaves = {v for v in parts.leaves if v not in parts.consts and tape.shape_dtype(v)[1].kind == "f"}
    active = engine.active_set(records, leaves)
    return records, parts.values, {v for v in parts.values if v not in active}, leaves


def _reverse(tape: Tape, of_id: int | None, replaced: Mapping[int, Any]) -> tuple[NonFiniteError | None, str | None]:
    """The error of a reverse replay of `of_id` checking its cotangents, or why none ran."""
    if of_id is None:
        return None, "the tape has no records"
    dense = tape.dense_ids()
    shape, dtype = tape.shape_dtype(of_id)
    if dtype.kind != "f":
        return None, f"v{dense[of_id]} has dtype {dtype}, which has no gradient"
    parts = tape.parts()
    if not any(v not in parts.consts and tape.shape_dtype(v)[1].kind == "f" for v in parts.leaves):
        return None, "the tape has no floating-point inputs to differentiate with respect to"
    stored = _stored_pass(tape, of_id, replaced)
    try:
        with replay.computing_through(None), np.errstate(all="ignore"):  # never recorded, even inside record()
            if stored is None:
                replay.backward(tape, of=dense[of_id], inputs=_dense_inputs(tape, replaced), check_finite="reverse")
            else:
                records, values, skip, leaves = stored

                def noted(k: int, i: int, g: Any) -> None:
                    if not anomaly.finite(g):
                        raise anomaly.reverse_error(tape, k, records[k], i, g)

                engine.reverse_checked(records, values, {of_id: np.ones(shape, dtype)}, skip, leaves, NUMPY, noted)
    except NonFiniteError as err:
        if err.record is None:  # (the seed is ones: cannot happen)
            return None, str(err)
        return err, None
    return None, None


def _incoming(tape: Tape, of_id: int | None, n: int, replaced: Mapping[int, Any]) -> ValueStats | None:
    """Stats of the cotangent of record `n`'s output in the reverse pass of `of_id`."""
    out = tape.parts().records[n][OUTPUT]
    if of_id is None or tape.shape_dtype(out)[1].kind != "f":
        return None
    dense = tape.dense_ids()
    stored = _stored_pass(tape, of_id, replaced)
    with replay.computing_through(None), np.errstate(all="ignore"):
        if stored is None:
            g = replay.backward(tape, of=dense[of_id], wrt=[dense[out]], inputs=_dense_inputs(tape, replaced))[dense[out]]
        else:
            records, values, skip, _ = stored
            seed = np.ones(*tape.shape_dtype(of_id))
            g = engine.reverse(records, values, {of_id: seed}, skip, {out}, NUMPY)[out]
    return summarize(g)


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= _TEXT else text[:_TEXT]


def _operand(tape: Tape, vid: int, stats: ValueStats | None) -> Operand:
    parts = tape.parts()
    kind = "op" if tape.producer(vid) is not None else "const" if vid in parts.consts else "input"
    return Operand(tape.dense_ids()[vid], _clip(tape.name_of(vid)), kind, stats)


def _finding(tape: Tape, scan: _Scan, n: int, cotangent: Operand | None = None,
             incoming: ValueStats | None = None) -> Finding:
    rec = tape.parts().records[n]
    src = tape.source_of(n)
    source = None if src is None else (_clip(src[0]) or "", src[1])
    return Finding(n, rec[OP], dict(rec[1] or {}), source, _operand(tape, rec[OUTPUT], scan.stats.get(rec[OUTPUT])),
                   tuple(_operand(tape, i, scan.stats.get(i)) for i in rec[INPUTS:]), cotangent, incoming)


class _Scan:
    """One pass over the records in tape order, each value as stored or recomputed.

    `first` is the first record whose output is non-finite while its inputs are finite (None if
    none); `stats` holds the stats of the inputs and output of that record, of the records in
    `keep`, and nothing else.  The pass stops once `first` is found and `keep` is passed.
    """

    def __init__(self, tape: Tape, replaced: Mapping[int, Any], keep: set[int]) -> None:
        self.tape = tape
        self.replaced = replaced
        self.limit: int | None = None  # the replay memory budget, once a value is computed
        parts = tape.parts()
        self.stored = parts.values
        self.computed: dict[int, Any] = {}  # recomputed values still needed by a later record
        self.finite: dict[int, bool] = {}
        self.stats: dict[int, ValueStats] = {}
        self.first: int | None = None
        records = parts.records
        last = {i: n for n, rec in enumerate(records) for i in rec[INPUTS:]}  # id -> index of its last use
        dirty = set(replaced)
        stop = max(keep, default=-1)
        for n, rec in enumerate(records):
            out, ins = rec[OUTPUT], rec[INPUTS:]
            if out in self.stored and not any(i in dirty for i in ins):
                value = self.stored[out]
            else:
                dirty.add(out)
                value = self._compute(n, rec)
                if last.get(out, -1) > n:
                    self.computed[out] = value
            ok = self.finite[out] = anomaly.finite(value)
            starts = self.first is None and not ok and all(self._finite(i) for i in ins)
            if starts:
                self.first = n
            if starts or n in keep:
                self.stats[out] = summarize(value)
                self.stats.update((i, summarize(self.value(i))) for i in ins if i not in self.stats)
            for i in ins:
                if last[i] == n:
                    self.computed.pop(i, None)
            if self.first is not None and n >= stop:
                break

    def value(self, vid: int) -> Any:
        if vid in self.replaced:
            return self.replaced[vid]
        value = self.computed.get(vid)
        if value is None:
            value = self.stored.get(vid)
        if value is None:
            raise TapegradError(f"cannot replay: the tape stores no value for input {anomaly.variable(self.tape, vid)} "
                                f"(values={self.tape.values_mode!r}); pass it in `inputs`")
        return value

    def _finite(self, vid: int) -> bool:
        ok = self.finite.get(vid)
        if ok is None:  # a leaf
            ok = self.finite[vid] = anomaly.finite(self.value(vid))
        return ok

    def _compute(self, n: int, rec: Any) -> Any:
        if self.limit is None:
            self.limit = budget.resolve(None)
        budget.check_record(self.tape, n, self.limit, "cannot scan the tape's values")
        spec = REGISTRY[rec[OP]]
        args = [self.value(i) for i in rec[INPUTS:]]
        attrs = rec[1]
        try:
            with np.errstate(all="ignore"):  # non-finite values are what is looked for: numpy need not warn
                out = spec.forward(*args, **attrs) if attrs else spec.forward(*args)
        except GuardError as exc:
            raise GuardError(f"{anomaly.record(self.tape, n)}: {exc}; the given inputs take a different branch than "
                             "the recording did") from None
        except (TapegradError, ValueError, TypeError, IndexError, ArithmeticError) as exc:
            raise TapegradError(f"{anomaly.record(self.tape, n)}: {type(exc).__name__}: {exc}") from None
        return np.asarray(out)

    def leaf_values(self) -> list[tuple[int, Any]]:
        """(id, value) of every leaf whose value is known (stored or replaced)."""
        parts = self.tape.parts()
        return [(vid, self.replaced.get(vid, parts.values.get(vid))) for vid in parts.leaves
                if vid in self.replaced or vid in parts.values]


# ---- text ---------------------------------------------------------------------------------------

def format_report(report: NanReport) -> list[str]:
    """The lines `tapegrad nan` prints for `report`; every string from the file is escaped and capped."""
    if report.replaced:
        how = f"values recomputed with the given inputs ({', '.join(f'v{i}' for i in report.replaced[:20])}"
        how += ", ...)" if len(report.replaced) > 20 else ")"
    else:
        how = "values recomputed from the stored inputs" if report.replayed else "stored values scanned"
    lines = [f"tape: {report.records:,} records, values={report.values_mode!r}; {how}"]
    lines += recovery_lines(report.recovery)
    lines += error_lines(report.error)
    if report.nonfinite_leaves:
        lines.append("non-finite leaves:")
        lines += [f"  {_label(leaf)}: {leaf.stats}" for leaf in report.nonfinite_leaves]
    if report.forward is None:
        lines.append("forward pass: no record makes a non-finite value from finite inputs")
    else:
        f = report.forward
        lines.append(f"forward pass: the first record to make a non-finite value from finite inputs is {_where(f)}")
        lines += _record_lines(f)
    of = "" if report.of is None else f" of {_label(report.of)}"
    if report.reverse_note is not None:
        lines.append(f"reverse pass{of}: not checked: {escape(report.reverse_note, 1000)}")
    elif report.reverse is None:
        lines.append(f"reverse pass{of}: no cotangent becomes non-finite")
    else:
        r = report.reverse
        lines.append(f"reverse pass{of}: the first VJP to make a cotangent non-finite from a finite one is that of "
                     f"{_where(r)}")
        lines += _record_lines(r)
    return lines


def _label(operand: Operand) -> str:
    name = "" if operand.name is None else f" '{escape(operand.name, _SHOWN)}'"
    kind = "" if operand.kind == "op" else f" ({operand.kind})"
    return f"v{operand.id}{name}{kind}"


def _where(finding: Finding) -> str:
    at = "" if finding.source is None else f" at {escape(finding.source[0], _SHOWN)}:{finding.source[1]}"
    return f"record {finding.record}{at}"


def _record_lines(finding: Finding) -> list[str]:
    """The record as the listing shows it, then its values (and cotangents, in reverse)."""
    def stats(o: Operand) -> str:
        return "value not known" if o.stats is None else str(o.stats)

    out = finding.output
    typed = f"v{out.id}" if out.stats is None else f"v{out.id}:{out.stats.type}"
    attrs = "".join(f" {escape(str(k), _SHOWN)}={escape(repr(v), _SHOWN)}" for k, v in finding.attrs.items())
    args = " ".join(f"v{i.id}" for i in finding.inputs)
    lines = [f"  {finding.record:5d} {typed} = {escape(finding.op, _SHOWN)} {args}{attrs}"]
    if finding.cotangent is not None:
        lines.append(f"  cotangent of {_label(finding.cotangent)}, made non-finite here: {finding.cotangent.stats}")
    if finding.incoming is not None:
        lines.append(f"  incoming cotangent, of {_label(out)}: {finding.incoming}")
    lines.append(f"  output {_label(out)}: {stats(out)}")
    lines += [f"  input  {_label(i)}: {stats(i)}" for i in finding.inputs]
    return lines
