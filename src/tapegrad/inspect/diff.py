"""`diff`: where two recordings of (nearly) the same program part ways (`tapegrad diff`).

Contract: `diff(a, b, rtol=1e-5, atol=1e-8, of=None)` returns a `DiffReport`.
- Alignment: each record's key is (op, output shape, output dtype).  Records of the common
  prefix and suffix of the two key sequences pair up in order (tapes of one program: record by
  record); the rest is aligned by `difflib.SequenceMatcher` (no junk heuristic), unless it is
  longer than `ALIGN_LIMIT` pairs to consider, when it is reported as one unaligned stretch.  So
  the cost is linear plus the aligner's on what differs.
- Structural changes (`Change`, in tape order, at most `MAX_LISTED`; `change_count` is the
  total): records only in A ("deleted") or only in B ("inserted"), a paired record whose op or
  shape changed, and records with equal keys whose attributes or input wiring differ.  Inputs
  pair up by name (names unique on both tapes), else by position among the inputs.
- Values: inputs that differ beyond tolerance (`inputs`, at most `MAX_LISTED`), then the first
  aligned record, in A's order, whose values differ (`first_value`), both sides with their
  record, source line and `ValueStats`.  Values a tape does not store are recomputed
  (`recompute`); what cannot be recomputed is not compared (`note` says so).
- With `of` (a name or id on both tapes): the gradients of `of` with respect to every aligned
  floating-point variable, replayed on both; `first_gradient` is the first that differs in
  reverse-pass order (from the output back, where a gradient difference starts).
- Tolerance as in `check.difference`: `|a - b| <= atol + rtol * |b|`, NaN equal to NaN.
`same` is True when nothing differs.  Unknown names raise `TapegradError` saying which tape.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import replay
from ..errors import TapegradError
from ..tape import ATTRS, INPUTS, OP, OUTPUT, Tape, aval
from .check import ATOL, RTOL, Difference, difference
from .common import Progress, VarRef, find, ref
from .health import ValueStats, summarize
from .recompute import Failure, recompute

ALIGN_LIMIT = 4_000_000  # pairs of differing records the aligner may consider (len(A part) * len(B part))
MAX_LISTED = 100


@dataclass(frozen=True)
class Change:
    """A structural difference: `kind` is "deleted" (records only in A), "inserted" (only in
    B), "op changed", "shape changed", "attributes changed", "inputs changed" or "unaligned";
    `a` and `b` are the record ranges [start, stop) it covers on each side (None: none) and
    `detail` says what changed (op names and types, from the files: escape before printing)."""

    kind: str
    a: tuple[int, int] | None
    b: tuple[int, int] | None
    detail: str
    a_source: tuple[str, int] | None
    b_source: tuple[str, int] | None

    def as_dict(self) -> dict[str, Any]:
        def where(s: tuple[str, int] | None) -> Any:
            return None if s is None else {"file": s[0], "line": s[1]}

        return {"kind": self.kind, "a": None if self.a is None else list(self.a), "b": None if self.b is None else list(self.b),
                "detail": self.detail, "a_source": where(self.a_source), "b_source": where(self.b_source)}


@dataclass(frozen=True)
class Side:
    """One side of a value difference: the variable and its value's (or gradient's) health."""

    var: VarRef
    values: ValueStats

    def as_dict(self) -> dict[str, Any]:
        return {"var": self.var.as_dict(), "values": self.values.as_dict()}


@dataclass(frozen=True)
class ValueDiff:
    """Values (`kind` "value" or "input") or gradients ("gradient") that differ, A and B side."""

    kind: str
    a: Side
    b: Side
    difference: Difference

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "a": self.a.as_dict(), "b": self.b.as_dict(), "difference": self.difference.as_dict()}


@dataclass(frozen=True)
class DiffReport:
    """What `diff` found (see the module docstring)."""

    records: tuple[int, int]
    alignment: str  # "record by record", "aligned" or "partly aligned"
    pairs: int
    changes: list[Change]
    change_count: int
    inputs: list[ValueDiff]
    input_count: int
    compared: int
    first_value: ValueDiff | None
    of: tuple[VarRef, VarRef] | None
    first_gradient: ValueDiff | None
    rtol: float
    atol: float
    note: str | None

    @property
    def same(self) -> bool:
        return not (self.change_count or self.input_count or self.first_value or self.first_gradient)

    def as_dict(self) -> dict[str, Any]:
        def opt(x: Any) -> Any:
            return None if x is None else x.as_dict()

        return {"same": self.same, "records": list(self.records), "alignment": self.alignment, "pairs": self.pairs,
                "changes": [c.as_dict() for c in self.changes], "change_count": self.change_count,
                "inputs": [d.as_dict() for d in self.inputs], "input_count": self.input_count, "compared": self.compared,
                "first_value": opt(self.first_value),
                "of": None if self.of is None else [self.of[0].as_dict(), self.of[1].as_dict()],
                "first_gradient": opt(self.first_gradient), "rtol": self.rtol, "atol": self.atol, "note": self.note}


Key = tuple[str, tuple[int, ...], str]


def _keys(tape: Tape) -> list[Key]:
    parts = tape.parts()
    out = []
    for rec in parts.records:
        shape, dtype = tape.shape_dtype(rec[OUTPUT])
        out.append((rec[OP], shape, dtype.name))
    return out


def align(ka: list[Key], kb: list[Key]) -> list[tuple[str, int, int, int, int]]:
    """`SequenceMatcher.get_opcodes()`-style blocks for two key lists (see the module docstring;
    the tag "unaligned" marks a stretch too long to align)."""
    n = min(len(ka), len(kb))
    p = 0
    while p < n and ka[p] == kb[p]:
        p += 1
    s = 0
    while s < n - p and ka[len(ka) - 1 - s] == kb[len(kb) - 1 - s]:
        s += 1
    ea, eb = len(ka) - s, len(kb) - s
    blocks: list[tuple[str, int, int, int, int]] = []
    if p:
        blocks.append(("equal", 0, p, 0, p))
    if (ea - p) * (eb - p) > ALIGN_LIMIT:
        blocks.append(("unaligned", p, ea, p, eb))
    elif ea > p or eb > p:
        matcher = difflib.SequenceMatcher(None, ka[p:ea], kb[p:eb], autojunk=False)
        blocks += [(tag, i1 + p, i2 + p, j1 + p, j2 + p) for tag, i1, i2, j1, j2 in matcher.get_opcodes()]
    if s:
        blocks.append(("equal", ea, len(ka), eb, len(kb)))
    return blocks


def _describe(keys: list[Key], lo: int, hi: int) -> str:
    shown = ", ".join(f"{op} {aval(shape, np.dtype(dt))}" for op, shape, dt in keys[lo:min(hi, lo + 3)])
    return shown + (f", ... ({hi - lo} records)" if hi - lo > 3 else "")


def _leaf_pairs(a: Tape, b: Tape, matched: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inputs and constants of A and B that correspond, in A's leaf order: first by name (a
    name unique on both tapes), then by use (the same input position of matched records), the
    rest by position among the leaves of their kind (input or constant) still unpaired."""
    pa, pb = a.parts(), b.parts()
    leaves_a, leaves_b = set(pa.leaves), set(pb.leaves)
    counts_a, counts_b = Counter(pa.names.values()), Counter(pb.names.values())
    by_name_b = {name: v for v, name in pb.names.items() if counts_b[name] == 1 and v in leaves_b}
    pairs: dict[int, int] = {}
    for v in pa.leaves:
        name = pa.names.get(v)
        if name is not None and counts_a[name] == 1 and name in by_name_b:
            pairs[v] = by_name_b[name]
    taken = set(pairs.values())
    ra, rb = pa.records, pb.records
    for i, j in matched:
        for x, y in zip(ra[i][INPUTS:], rb[j][INPUTS:], strict=False):
            if x in leaves_a and y in leaves_b and x not in pairs and y not in taken:
                pairs[x] = y
                taken.add(y)
    for const in (False, True):
        rest_a = [v for v in pa.leaves if v not in pairs and (v in pa.consts) == const]
        rest_b = [w for w in pb.leaves if w not in taken and (w in pb.consts) == const]
        pairs.update(zip(rest_a, rest_b, strict=False))
    return [(v, pairs[v]) for v in pa.leaves if v in pairs]


def _values(tape: Tape, progress: Progress | None) -> tuple[Mapping[int, Any], str | None]:
    """Every value of the tape: stored, or recomputed where the tape does not store it."""
    parts = tape.parts()
    if all(rec[OUTPUT] in parts.values for rec in parts.records):
        return parts.values, None
    values = dict(parts.values)
    try:
        for n, value in recompute(tape, progress):
            if isinstance(value, Failure):
                return values, f"record {n} cannot be recomputed ({value.message}); later values are not compared"
            values.setdefault(parts.records[n][OUTPUT], value)
    except TapegradError as exc:
        return values, str(exc)
    return values, None


def diff(a: Tape, b: Tape, *, rtol: float = RTOL, atol: float = ATOL, of: str | int | None = None,
         progress: Progress | None = None) -> DiffReport:
    """Compare two tapes (see the module docstring)."""
    of_ids = None
    if of is not None:
        of_ids = (_find(a, of, "first"), _find(b, of, "second"))
    ka, kb = _keys(a), _keys(b)
    blocks = align(ka, kb)
    ra, rb = a.parts().records, b.parts().records
    pairs: list[tuple[int, int]] = []  # records with equal keys
    changed: list[tuple[int, int]] = []  # paired records whose op or shape changed
    changes: list[Change] = []

    def change(kind: str, ia: tuple[int, int] | None, ib: tuple[int, int] | None, detail: str) -> None:
        changes.append(Change(kind, ia, ib, detail, None if ia is None else a.source_of(ia[0]),
                              None if ib is None else b.source_of(ib[0])))

    for tag, i1, i2, j1, j2 in blocks:
        if tag == "equal":
            pairs += zip(range(i1, i2), range(j1, j2), strict=True)
        elif tag == "unaligned":
            change("unaligned", (i1, i2), (j1, j2), f"{i2 - i1} records of A and {j2 - j1} of B differ too much to align")
        else:
            common = min(i2 - i1, j2 - j1) if tag == "replace" else 0
            for i, j in zip(range(i1, i1 + common), range(j1, j1 + common), strict=True):
                changed.append((i, j))
                (op_a, shape_a, dt_a), (op_b, shape_b, dt_b) = ka[i], kb[j]
                was, now = aval(shape_a, np.dtype(dt_a)), aval(shape_b, np.dtype(dt_b))
                if op_a == op_b:
                    change("shape changed", (i, i + 1), (j, j + 1), f"{op_a}: {was} -> {now}")
                else:
                    change("op changed", (i, i + 1), (j, j + 1), f"{op_a} {was} -> {op_b} {now}")
            if i2 > i1 + common:
                change("deleted", (i1 + common, i2), None, _describe(ka, i1 + common, i2))
            if j2 > j1 + common:
                change("inserted", None, (j1 + common, j2), _describe(kb, j1 + common, j2))
    leaf_pairs = _leaf_pairs(a, b, pairs + changed)
    mapped = dict(leaf_pairs)  # A id -> B id: what the input-wiring check compares
    mapped.update((ra[i][OUTPUT], rb[j][OUTPUT]) for i, j in pairs + changed)
    mapped_b = set(mapped.values())
    for i, j in pairs:
        rec_a, rec_b = ra[i], rb[j]
        if (rec_a[ATTRS] or {}) != (rec_b[ATTRS] or {}):
            change("attributes changed", (i, i + 1), (j, j + 1),
                   f"{rec_a[OP]}: {dict(rec_a[ATTRS] or {})} -> {dict(rec_b[ATTRS] or {})}")
            continue
        ins_a, ins_b = rec_a[INPUTS:], rec_b[INPUTS:]
        if any(x not in mapped for x in ins_a) or any(y not in mapped_b for y in ins_b):
            continue  # it reads the output of a record only one tape has: that change is reported
        if [mapped[x] for x in ins_a] != list(ins_b):
            da, db = a.dense_ids(), b.dense_ids()
            change("inputs changed", (i, i + 1), (j, j + 1),
                   f"{rec_a[OP]} {' '.join(f'v{da[x]}' for x in ins_a)} -> {rec_b[OP]} {' '.join(f'v{db[y]}' for y in ins_b)}")
    changes.sort(key=lambda c: (c.a or c.b or (0, 0))[0])

    values_a, note_a = _values(a, progress)
    values_b, note_b = _values(b, progress)
    input_diffs = []
    for va, vb in leaf_pairs:
        if va in values_a and vb in values_b:
            d = difference(values_a[va], values_b[vb], rtol, atol)
            if d is not None:
                input_diffs.append(_value_diff("input", a, va, values_a[va], b, vb, values_b[vb], d))
    first_value = None
    compared = 0
    for i, j in pairs:
        va, vb = ra[i][OUTPUT], rb[j][OUTPUT]
        if va in values_a and vb in values_b:
            compared += 1
            d = difference(values_a[va], values_b[vb], rtol, atol)
            if d is not None:
                first_value = _value_diff("value", a, va, values_a[va], b, vb, values_b[vb], d, i, j)
                break
    first_gradient = None
    if of_ids is not None:
        first_gradient = _first_gradient(a, b, of_ids, pairs, leaf_pairs, rtol, atol)
    notes = [f"{side}: {n}" for side, n in (("A", note_a), ("B", note_b)) if n]
    alignment = ("record by record" if len(pairs) == len(ra) == len(rb) else
                 "partly aligned" if any(blk[0] == "unaligned" for blk in blocks) else "aligned")
    return DiffReport((len(ra), len(rb)), alignment, len(pairs), changes[:MAX_LISTED], len(changes),
                      input_diffs[:MAX_LISTED], len(input_diffs), compared, first_value,
                      None if of_ids is None else (ref(a, of_ids[0]), ref(b, of_ids[1])), first_gradient, rtol, atol,
                      "; ".join(notes) or None)


def _find(tape: Tape, name: str | int, which: str) -> int:
    try:
        return find(tape, name)
    except TapegradError as exc:
        raise TapegradError(f"in the {which} tape: {exc}") from None


def _value_diff(kind: str, a: Tape, va: int, xa: Any, b: Tape, vb: int, xb: Any, d: Difference,
                ia: int | None = None, ib: int | None = None) -> ValueDiff:
    return ValueDiff(kind, Side(ref(a, va, ia), summarize(xa)), Side(ref(b, vb, ib), summarize(xb)), d)


def _first_gradient(a: Tape, b: Tape, of_ids: tuple[int, int], pairs: list[tuple[int, int]],
                    leaf_pairs: list[tuple[int, int]], rtol: float, atol: float) -> ValueDiff | None:
    """The first aligned variable, from the output back, whose gradient of `of` differs."""
    ra, rb = a.parts().records, b.parts().records

    def backward_order() -> Iterator[tuple[int, int, int | None, int | None]]:
        for i, j in reversed(pairs):
            yield ra[i][OUTPUT], rb[j][OUTPUT], i, j
        for va, vb in leaf_pairs:
            yield va, vb, None, None

    candidates = [(va, vb, i, j) for va, vb, i, j in backward_order()
                  if a.shape_dtype(va)[1].kind == "f" and a.shape_dtype(va) == b.shape_dtype(vb)]
    if not candidates:
        return None
    da, db = a.dense_ids(), b.dense_ids()
    with np.errstate(all="ignore"):
        ga = replay.backward(a, of=da[of_ids[0]], wrt=[da[va] for va, _, _, _ in candidates])
        gb = replay.backward(b, of=db[of_ids[1]], wrt=[db[vb] for _, vb, _, _ in candidates])
    for va, vb, i, j in candidates:
        xa, xb = ga[da[va]], gb[db[vb]]
        d = difference(xa, xb, rtol, atol)
        if d is not None:
            return _value_diff("gradient", a, va, xa, b, vb, xb, d, i, j)
    return None
