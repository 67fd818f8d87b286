"""`show`: the tape listing, filtered, with optional value summaries (`tapegrad show`).

Contract: `show(tape, ...)` yields `ShownLine`s lazily, in listing order, and their `text` is
exactly the line `str(tape)` prints (`Tape.listing_lines`).  Filters:
- `records=(start, stop)`: the records `records[start:stop]` and the leaves that enter the tape
  among them (see `Tape.listing_lines`); None for the whole tape.
- `grep`: a line matches when its record's op is `grep`, or when the variable it defines or one
  of the record's inputs has a name equal to `grep`; a pattern with `*`, `?` or `[` matches op
  and names as a shell glob (`fnmatch.fnmatchcase`).
- `values=True`: each line carries the `ValueStats` of its stored value (None where the tape
  stores none).
- `details=True`: each line also carries its `VarRef` and input ids (what `--json` prints).
Time and memory are linear in the lines produced; nothing is materialised for the whole tape.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..tape import INPUTS, OP, Tape
from .common import Progress, VarRef, ref
from .health import ValueStats, summarize

_EVERY = 1 << 14  # lines between progress calls


@dataclass(frozen=True)
class ShownLine:
    """One listing line: the `record` it shows (None for a leaf), the dense `id` of the variable
    it defines, its `text`, the value's `values` summary and, with `details`, `var` and the
    record's `inputs` (dense ids)."""

    record: int | None
    id: int
    text: str
    values: ValueStats | None = None
    var: VarRef | None = None
    inputs: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"record": self.record, "id": self.id, "text": self.text}
        if self.var is not None:
            out.update(self.var.as_dict())
            out["inputs"] = list(self.inputs)
        out["values"] = None if self.values is None else self.values.as_dict()
        return out


def parse_range(text: str) -> tuple[int | None, int | None]:
    """`"A:B"`, `"A:"`, `":B"` or `"A"` (record A alone) as (start, stop); ValueError if not."""
    start, colon, stop = text.partition(":")
    if not colon:
        n = int(start)
        return n, (n + 1) or None
    return (int(start) if start.strip() else None), (int(stop) if stop.strip() else None)


def _matcher(pattern: str) -> Any:
    if any(c in pattern for c in "*?["):
        return lambda s: s is not None and fnmatch.fnmatchcase(s, pattern)
    return lambda s: s == pattern


def show(tape: Tape, *, records: tuple[int | None, int | None] | None = None, grep: str | None = None,
         values: bool = False, details: bool = False, progress: Progress | None = None) -> Iterator[ShownLine]:
    """The listing lines of `tape` (see the module docstring)."""
    start, stop = records if records is not None else (None, None)
    count = len(tape)
    first, last, _ = slice(start, stop).indices(count)
    total = max(last - first, 0)
    parts = tape.parts()
    raw, stored, names = parts.records, parts.values, parts.names
    order = tape.ids_in_order()
    match = _matcher(grep) if grep is not None else None
    for k, line in enumerate(tape.listing_lines(first, last)):
        if progress is not None and k % _EVERY == 0:
            progress((first if line.record is None else line.record) - first, total)
        vid = order[line.id]
        rec = raw[line.record] if line.record is not None else None
        if match is not None and not (
                match(names.get(vid)) or (rec is not None and (match(rec[OP]) or any(match(names.get(i)) for i in rec[INPUTS:])))):
            continue
        value = stored.get(vid) if values else None
        var = ref(tape, vid, line.record) if details else None
        inputs = tuple(tape.dense_ids()[i] for i in rec[INPUTS:]) if details and rec is not None else ()
        yield ShownLine(line.record, line.id, line.text, None if value is None else summarize(value), var, inputs)
