"""A loaded tape's values: a read-only mapping id -> ndarray whose arrays are made when read.

Contract:
- `StoredValues(ids, offsets, types, table, buf, copies)` maps `ids[k]` (distinct non-negative
  ints) to a read-only C-contiguous ndarray of type `table[types[k]]` (shape, dtype) over the
  bytes of `buf` from `offsets[k]` on, or, where `offsets[k]` is negative, to `copies[k]` (a
  value the reader had to copy: one split over several DATA frames).  Nothing is checked here:
  the reader checked every reference against the file before (`reader._Builder._data`).
- A value's array is made each time it is read (`m[vid]`, `get`, `values()`, `items()`): two
  reads give two read-only views of the same bytes, never a writeable array (`buf` is taken
  read-only).  Nothing is cached, so a loaded tape holds about 20 bytes per stored value in
  numpy columns instead of an ndarray object and a dict entry each (some 250 bytes).
- `in`, `len` and iteration (the ids in row order, as given) make no array.  Lookups are O(1):
  a table of rows indexed by id when the ids are compact (every tape tapegrad writes, and its
  recovered prefixes), else a dict (a hand-made tape whose ids leave wide gaps).
- It is a `MutableMapping` only so that it can stand where a recording's dict of values does
  (`Tape._values`): every write raises `TapegradError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from ..errors import TapegradError
from .common import AvalTable, Ints

_SLACK = 1024  # ids up to 2 * count + _SLACK get the table of rows by id (4 bytes per id)


class StoredValues(MutableMapping[int, Any]):
    """Id -> read-only ndarray over a loaded tape's bytes, made on read (see the module docstring)."""

    __slots__ = ("_buf", "_copies", "_ids", "_offsets", "_rows", "_table", "_types")

    def __init__(self, ids: Ints, offsets: Ints, types: Ints, table: AvalTable, buf: memoryview,
                 copies: Mapping[int, Any]) -> None:
        count = len(ids)
        top = int(ids.max()) + 1 if count else 0
        self._ids = ids.astype(np.uint32 if top <= 1 << 32 else np.int64)
        self._offsets = offsets.astype(np.int64)
        self._types = types.astype(np.uint16 if len(table) <= 1 << 16 else np.int64)
        self._table = table
        self._buf = buf.toreadonly()
        self._copies = dict(copies)
        self._rows: Any
        if top <= 2 * count + _SLACK:
            rows = np.full(top, -1, dtype=np.int32 if count < 1 << 31 else np.int64)
            rows[ids] = np.arange(count)
            self._rows = rows
        else:
            self._rows = dict(zip(ids.tolist(), range(count), strict=True))

    def _row(self, vid: Any) -> int:
        """The row of id `vid`, or -1 if it has no value here."""
        if type(vid) is not int:
            if not isinstance(vid, np.integer):
                return -1
            vid = int(vid)
        rows = self._rows
        if type(rows) is dict:
            return rows.get(vid, -1)  # type: ignore[no-any-return]
        return rows.item(vid) if 0 <= vid < len(rows) else -1

    def _array(self, row: int) -> Any:
        offset = self._offsets.item(row)
        if offset < 0:
            return self._copies[row]
        shape, dtype = self._table[self._types.item(row)]
        return np.ndarray(shape, dtype=dtype, buffer=self._buf, offset=offset)

    def __getitem__(self, vid: Any) -> Any:
        row = self._row(vid)
        if row < 0:
            raise KeyError(vid)
        return self._array(row)

    def get(self, vid: Any, default: Any = None) -> Any:
        row = self._row(vid)
        return default if row < 0 else self._array(row)

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
        return None if row < 0 else self._table[self._types.item(row)]

    def __setitem__(self, vid: int, value: Any) -> None:
        raise TapegradError("a loaded tape's values are read-only")

    def __delitem__(self, vid: int) -> None:
        raise TapegradError("a loaded tape's values are read-only")

    def __repr__(self) -> str:
        return f"<StoredValues of {len(self):,} values>"
