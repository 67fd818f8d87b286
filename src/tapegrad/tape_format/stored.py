"""A loaded tape's values: a read-only mapping id -> ndarray whose arrays are made when read.

Contract:
- `StoredValues(ids, offsets, types, table, buf, copies)` maps `ids[k]` (distinct non-negative
  ints) to a read-only C-contiguous ndarray of type `table[types[k]]` (shape, dtype) over the
  bytes of `buf` from `offsets[k]` on (a multiple of `ALIGN`), or, where `offsets[k]` is
  negative, to `copies[k]` (a value the reader had to copy: one split over several DATA
  frames).  Nothing is checked here: the reader checked every reference against the file before
  (`reader._Builder._data`).
- A value's array is made each time it is read (`m[vid]`, `get`, `values()`, `items()`): two
  reads give two read-only views of the same bytes, never a writeable array (`buf` is taken
  read-only).  Nothing is cached, so a loaded tape holds about 20 bytes per stored value in
  columns instead of an ndarray object and a dict entry each (some 250 bytes).
- Reading is one index into a view per type: for each (shape, dtype) of `table`, the rows of
  that type at every `ALIGN`-th byte of `buf` (overlapping, read-only), so the value at offset
  `o` is row `o // ALIGN` of its type's view, as cheap as indexing an array.
- `in`, `len`, `shape_dtype` and `typed_items` (`tape.TypedValues`) and iteration (the ids in
  row order, as given) make no array.  Lookups are O(1): a table of rows indexed by id when the ids are compact (every
  tape tapegrad writes, and its recovered prefixes; as `validate.locate` decides), else a dict
  (a hand-made tape whose ids leave wide gaps).
- It is a `MutableMapping` only so that it can stand where a recording's dict of values does
  (`Tape._values`): every write raises `TapegradError`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from ..errors import TapegradError
from .common import AvalTable, Ints
from .frames import ALIGN


class StoredValues(MutableMapping[int, Any]):
    """Id -> read-only ndarray over a loaded tape's bytes, made on read (see the module docstring)."""

    __slots__ = ("_copies", "_ids", "_rows", "_slots", "_table", "_types", "_views")

    def __init__(self, ids: Ints, offsets: Ints, types: Ints, table: AvalTable, buf: memoryview,
                 copies: Mapping[int, Any]) -> None:
        count = len(ids)
        top = int(ids.max()) + 1 if count else 0
        self._ids = ids.astype(np.uint32 if top <= 1 << 32 else np.int64)
        # Python arrays, not numpy ones: indexing them from Python is several times faster.
        self._slots = _ints(offsets // ALIGN, len(buf) // ALIGN)  # negative: a copy
        self._types = _ints(types, len(table))
        self._table = table
        self._copies = dict(copies)
        readonly = buf.toreadonly()
        self._views = [_rows(shape, dtype, readonly) for shape, dtype in table]
        self._rows: array[int] | dict[int, int]
        if top <= 4 * count + 1024:  # (about `validate.locate`'s rule for a table)
            rows = np.full(top, -1, dtype=np.int64)
            rows[ids] = np.arange(count)
            self._rows = _ints(rows, count)
        else:
            self._rows = dict(zip(ids.tolist(), range(count), strict=True))

    def _row(self, vid: Any) -> int:
        """The row of id `vid`, or -1 if it has no value here."""
        rows = self._rows
        if type(vid) is int and type(rows) is array:  # the usual case, first (replay plans ask per id)
            return rows[vid] if 0 <= vid < len(rows) else -1
        if not isinstance(vid, (int, np.integer)):
            return -1
        vid = int(vid)
        if type(rows) is dict:
            return rows.get(vid, -1)
        return rows[vid] if 0 <= vid < len(rows) else -1

    def __getitem__(self, vid: Any) -> Any:
        row = self._row(vid)
        if row < 0:
            raise KeyError(vid)
        return self._array(row)

    def get(self, vid: Any, default: Any = None) -> Any:
        row = self._row(vid)
        return default if row < 0 else self._array(row)

    def _array(self, row: int) -> Any:
        """A new read-only array of the value in `row`."""
        slot = self._slots[row]
        return self._copies[row][...] if slot < 0 else self._views[self._types[row]][slot, ...]

    def __contains__(self, vid: object) -> bool:
        return self._row(vid) >= 0

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[int]:
        ids = self._ids
        for start in range(0, len(ids), 4096):  # a block at a time: no list of every id at once
            yield from ids[start:start + 4096].tolist()

    def shape_dtype(self, vid: int) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
        """(shape, dtype) of the value of `vid` without making its array; None if it has none
        (`tape.TypedValues`)."""
        row = self._row(vid)
        return None if row < 0 else self._table[self._types[row]]

    def typed_items(self) -> Iterator[tuple[int, tuple[tuple[int, ...], np.dtype[Any]]]]:
        """`(id, (shape, dtype))` of every value, in row order, without making arrays (a plan's
        compile reads them all: one pass over the columns, not a lookup per id)."""
        return zip(self._ids.tolist(), map(self._table.__getitem__, self._types), strict=True)

    def __setitem__(self, vid: int, value: Any) -> None:
        raise TapegradError("a loaded tape's values are read-only")

    def __delitem__(self, vid: int) -> None:
        raise TapegradError("a loaded tape's values are read-only")

    def __repr__(self) -> str:
        return f"<StoredValues of {len(self):,} values>"


def _rows(shape: tuple[int, ...], dtype: np.dtype[Any], buf: memoryview) -> Any:
    """The values of type (shape, dtype) that start at each `ALIGN`-th byte of `buf` and fit in
    it, as the rows of one read-only strided view (rows overlap where a value is over `ALIGN`
    bytes: views never write)."""
    nbytes = math.prod(shape) * dtype.itemsize
    count = (len(buf) - nbytes) // ALIGN + 1 if len(buf) >= nbytes else 0
    inner = tuple(dtype.itemsize * math.prod(shape[k + 1:]) for k in range(len(shape)))  # C order
    return np.ndarray((count, *shape), dtype=dtype, buffer=buf, strides=(ALIGN, *inner))


def _ints(column: Ints, bound: int) -> array[int]:
    """`column` (ints of magnitude below `bound`) as a Python array of 4-byte ints where they fit."""
    small = bound < 1 << 31
    return array("i" if small else "q", column.astype(np.intc if small else np.int64).tobytes())
