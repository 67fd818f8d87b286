"""A tape's definitions as the encoder's rows: what `dump` and `StreamWriter` feed `Encoder.batch`.

Contract:
- `DenseIds` gives the internal ids of a tape (the tracer's serial numbers) the dense ids a file
  stores, in batches: each batch's new variables get the next ids in the order of their
  internal ids, so a stream and `dump` number a recording alike when all its inputs were made
  inside the `record()` block.
- `batch_rows(tape, leaves, records, dense, first_record, source_cache)` turns new leaves and
  records of `tape` into `LeafRows` and `RecordRows` (dense ids, values or (shape, dtype) pairs
  as the tape's `values_mode` stores them, and source lines where every record has one);
  `late_names(...)` gives the NAME entries for variables named after they were written.
- It reads the tape through `Tape.parts()` and `Tape.source_runs()` only, and never changes it.
- Raises `TapegradError` for what cannot be stored: records that are not `(op, attributes,
  output, *inputs)` with 64-bit integer ids, an id the tape does not define, a missing value
  the mode needs, more than 2**32 variables.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, compress, zip_longest
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from ..errors import TapegradError
from ..tape import RawRecord, Tape, TapeParts
from .common import Ints
from .writer import LeafRows, RecordRows, Sources, column, gather

_FIRST = itemgetter(0)
SourceCache = dict[int, tuple[str, dict[int, int]]]  # id of a code object -> (its file, position -> line)
_U32 = struct.Struct("<I")


class DenseIds:
    """Internal ids -> dense ids (the ids a file stores), given out in batches.

    Kept as runs of consecutive internal ids with consecutive dense ids, sorted by internal id,
    in columns that grow by doubling: the ids of a recording are mostly consecutive, so there
    are few runs, and a batch of ids is looked up with a few numpy calls.
    """

    def __init__(self) -> None:
        self.count = 0  # dense ids given out so far
        self._runs = np.zeros((3, 8), dtype=np.int64)  # rows: first internal id, first dense id, length
        self._n = 0

    def add(self, ids: Ints) -> None:
        """Give the next dense ids to `ids`: new internal ids, in increasing order."""
        m = len(ids)
        if not m:
            return
        if self.count + m > 1 << 32:
            raise TapegradError("cannot store the tape: it has more than 2**32 variables")
        first, last = ids[[0, -1]].tolist()
        runs, n = self._runs, self._n
        start, dense, length = runs[:, n - 1].tolist() if n else (0, 0, -1)
        joins = start + length == first and dense + length == self.count  # continues the last run
        if joins and last - first == m - 1:  # (the usual case: all of the batch does)
            runs[2, n - 1] += m
            self.count += m
            return
        heads = np.flatnonzero(ids[1:] - ids[:-1] != 1) + 1
        new = np.empty((3, len(heads) + 1), dtype=np.int64)
        new[0, 0], new[0, 1:] = first, ids[heads]
        new[1, 0], new[1, 1:] = self.count, self.count + heads
        new[2, :-1], new[2, -1] = np.diff(new[1]), self.count + m - new[1, -1]
        self.count += m
        if joins:
            runs[2, n - 1] += new[2, 0]
            new = new[:, 1:]
        k = new.shape[1]
        if n + k > runs.shape[1]:
            runs = self._runs = np.concatenate((runs, np.zeros((3, max(n + k, 2 * n)), dtype=np.int64)), axis=1)
        runs[:, n:n + k] = new
        self._n = n = n + k
        if k and n > k and new[0, 0] < runs[0, n - k - 1]:  # ids older than some given out before
            runs[:, :n] = runs[:, np.argsort(runs[0, :n], kind="stable")]

    def find(self, ids: Ints) -> tuple[Ints, Any]:
        """(the dense id of each of `ids`, whether it has one)."""
        if not self._n:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        runs = self._runs[:, :self._n]
        k = np.searchsorted(runs[0], ids, side="right") - 1
        first, dense, length = runs[:, k]
        offset = ids - first
        return dense + offset, (k >= 0) & (offset < length)

    def __call__(self, ids: Ints) -> Ints:
        """The dense ids of `ids`; KeyError(the first unknown id) if one has none."""
        if not len(ids):
            return ids
        if self._n == 1:  # (the usual case, in fewer steps)
            first, dense0, length = self._runs[:, 0].tolist()
            offset = ids - first
            if offset.min() >= 0 and offset.max() < length:
                mapped: Ints = offset + dense0 if dense0 else offset
                return mapped
        dense, known = self.find(ids)
        if not known.all():
            raise KeyError(int(ids[np.argmin(known)]))
        return dense


def _sources(tape: Tape, start: int, count: int, cache: SourceCache) -> Sources | None:
    """Source locations of records start..start+count-1, or None unless all have one.

    The tape keeps one position per record (a bytecode offset, or a line once loaded) and a run
    (first record, code object or file name) wherever the code changes.  Each distinct position
    of a code is resolved once by `Tape.source_of` and remembered in `cache` under the code's id
    (the tape keeps its code objects alive).  The file table is in order of first use.
    """
    runs, positions = tape.source_runs()
    stop = start + count
    if not count or len(positions) < stop or not runs or runs[0][0] > start:
        return None
    files: dict[str, int] = {}
    file_column: list[bytes] = []
    lines: list[int] = []
    k = bisect_right(runs, start, key=_FIRST) - 1
    a = start
    while a < stop:
        b = min(runs[k + 1][0], stop) if k + 1 < len(runs) else stop
        segment = positions[a:b]
        if segment:
            code = id(runs[k][1])
            file, line_of = cache.get(code, ("", {}))
            try:
                lines += gather(line_of, segment)
            except KeyError:
                for pos in set(segment) - line_of.keys():
                    where = tape.source_of(a + segment.index(pos))
                    if where is None:
                        return None
                    file, line_of[pos] = where
                cache[code] = file, line_of
                lines += gather(line_of, segment)
            file_column.append(_U32.pack(files.setdefault(file, len(files))) * len(segment))
            a = b
        k += 1
    return list(files), b"".join(file_column), column(lines, "I", "a line number")


def _values(parts: TapeParts, mode: str, ids: Sequence[int], store: bool, dense: DenseIds) -> Sequence[Any]:
    """The values of internal ids `ids`, or their (shape, dtype) where the tape has no value."""
    values = parts.values
    try:
        return gather(values, ids)
    except KeyError as exc:
        if store:
            raise TapegradError(f"cannot store v{int(dense(np.array(exc.args, dtype=np.int64))[0])}: the tape has no "
                                f"value for it (values={mode!r})") from None
    avals = parts.avals
    return [values[i] if i in values else avals[i] for i in ids]


_NARROW = 8  # records are read as columns of their first _NARROW items; inputs past those one by one
_CHUNK = 1 << 16  # records transposed at a time


def _int64s(ints: Iterable[Any], count: int) -> Ints:
    """The `count` items of `ints` as an int64 array; TapegradError unless they are integers of
    64 bits (`struct` refuses anything else, unlike numpy, which would parse strings)."""
    try:
        return np.frombuffer(struct.pack(f"={count}q", *ints), dtype=np.int64)
    except struct.error:
        raise TapegradError("cannot store the tape: its records hold variable ids that are not 64-bit integers") from None


class _RecordColumns(NamedTuple):
    """A batch of records as columns (see `_record_columns`); ids are internal ids."""

    ops: Sequence[str]
    attrs: Sequence[Any]
    outputs: Sequence[int]
    output_ids: Ints
    nin: Ints
    inputs: Ints


def _record_columns(records: Sequence[RawRecord], first_record: int) -> _RecordColumns:
    """The columns of `records` (each `(op, attrs, output, *inputs)`): op names, attributes,
    outputs (as ints and as an array), each record's number of inputs, and all their input ids
    concatenated in record order (internal ids, not checked against the tape).

    The records are transposed in C (`zip_longest`) and their ids packed in one `struct` call;
    a record longer than `_NARROW` items contributes its first ones to the columns and its
    further inputs separately, so one wide record does not widen every row.
    """
    n = len(records)
    if n > _CHUNK:  # (bounds the transposition's temporary objects)
        parts = [_record_columns(records[a:a + _CHUNK], first_record + a) for a in range(0, n, _CHUNK)]
        ops, attrs, outputs, output_ids, nin, inputs = zip(*parts, strict=True)
        return _RecordColumns(tuple(chain.from_iterable(ops)), tuple(chain.from_iterable(attrs)),
                              tuple(chain.from_iterable(outputs)), np.concatenate(output_ids), np.concatenate(nin),
                              np.concatenate(inputs))
    try:
        lens = np.frombuffer(bytes(map(len, records)), dtype=np.uint8).astype(np.int64)
    except ValueError:  # a record of 256 items or more
        lens = np.fromiter(map(len, records), dtype=np.int64, count=n)
    if not n:
        return _RecordColumns((), (), (), lens, lens, lens)
    if int(lens.min()) < 3:
        raise TapegradError(f"cannot store record {first_record + int(np.argmin(lens))}: records are (op, attributes, "
                            f"output, *inputs)")
    wide = int(lens.max()) > _NARROW
    rows = list(map(itemgetter(slice(_NARROW)), records)) if wide else records
    cols = list(zip_longest(*rows, fillvalue=-1))
    ids = _int64s(chain.from_iterable(cols[2:]), n * (len(cols) - 2)).reshape(-1, n)
    nin = lens - 3
    table = ids[1:].T  # (record, input) with -1 past each record's inputs
    if int(nin.min()) == table.shape[1]:  # (the usual batch: records of one arity)
        inputs = table.ravel()
    else:
        inputs = table[np.arange(table.shape[1]) < nin[:, None]]
    if wide:  # inputs past the columns, inserted after each long record's first ones
        long = np.flatnonzero(lens > _NARROW)
        more = lens[long] - _NARROW
        rest = _int64s(chain.from_iterable(records[k][_NARROW:] for k in long.tolist()), int(more.sum()))
        inputs = np.insert(inputs, np.repeat(np.cumsum(np.minimum(nin, _NARROW - 3))[long], more), rest)
    return _RecordColumns(cols[0], cols[1], cols[2], ids[0], nin, inputs)


def batch_rows(tape: Tape, leaves: Sequence[int], records: Sequence[RawRecord], dense: DenseIds, first_record: int,
               source_cache: SourceCache) -> tuple[LeafRows, RecordRows]:
    """The `Encoder.batch` rows of new leaves and records of `tape`, whose ids get the next dense
    ids in `dense` (in the order of their internal ids).

    `records` are the tape's records from index `first_record` on (for their source lines).
    """
    cols = _record_columns(records, first_record)
    try:
        leaf_ids = np.array(leaves, dtype=np.int64)
        outs = cols.output_ids
        dense.add(np.sort(np.concatenate((leaf_ids, outs))) if leaves else outs)
        inputs, outs, leaf_dense = dense(cols.inputs), dense(outs), dense(leaf_ids)
        mode = tape.values_mode
        parts = tape.parts()
        names, consts = parts.names, parts.consts
        return (LeafRows(ids=leaf_dense, const=list(map(consts.__contains__, leaves)), names=list(map(names.get, leaves)),
                         values=_values(parts, mode, leaves, mode != "none", dense)),
                RecordRows(ops=cols.ops, attrs=cols.attrs, nin=cols.nin, inputs=inputs, outs=outs,
                           values=_values(parts, mode, cols.outputs, mode == "all", dense),
                           sources=_sources(tape, first_record, len(records), source_cache)))
    except KeyError as exc:
        raise TapegradError(f"cannot store the tape: it refers to variable {exc.args[0]!r}, which it does not "
                            f"define") from None


def late_names(names: Mapping[int, str], dense: DenseIds, named: Iterable[int],
               leaves: Sequence[int]) -> list[tuple[int, str | None]]:
    """NAME entries (dense id, name in `names` or None) for the internal ids in `named` that have
    a dense id, except `leaves` (whose names their VARS rows carry)."""
    leaf_set = set(leaves)
    ids = [v for v in named if v not in leaf_set]
    found, known = dense.find(np.array(ids, dtype=np.int64))
    return sorted(zip(found[known].tolist(), map(names.get, compress(ids, known.tolist())), strict=True))

