"""What the writer, the reader and the validator share: plain data, attribute keys, dtype names
and id columns.

Contract:
- `check_plain(value, limits)` raises `TapegradError` unless `value` is plain data (None, bool,
  int, float, str, bytes, lists, tuples, dicts with string keys) nested at most
  `limits.max_nesting` deep (deeper raises `LimitError`): what metadata may hold, checked alike
  when writing and reading.
- `attrs_key(attrs)` is the hashable identity of an attribute map under which equal keys mean
  identical stored values (`True`, `1` and `1.0` differ, and so do `0.0` and `-0.0`);
  `attr_codes(attrs)` interns a column of attribute maps (None for none) into a table of
  distinct maps and codes, raising `Reject(row)` for the first one that cannot be keyed.
- `Reject` is the bare exception of the bulk checks (no message: the validator's reference
  pass names the problem).
- `allowed_dtype_name(dtype)` is `dtypes.dtype_name`, remembered per dtype object (it is asked
  once per value of a batch).
- `Ints` (an int64 column) and `AvalTable` (distinct (shape, dtype) pairs) are the shared types.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Any

import numpy as np

from ..dtypes import dtype_name
from ..errors import TapegradError, show
from .limits import Limits

Ints = np.ndarray[Any, np.dtype[np.int64]]
AvalTable = list[tuple[tuple[int, ...], np.dtype[Any]]]

_F64 = struct.Struct("<d")


class Reject(Exception):
    """A bulk check failed; the reference pass (`validate.explain`) says why.  `attr_codes`
    raises it with the row whose attributes cannot be keyed."""


def check_plain(value: Any, limits: Limits, depth: int = 0) -> None:
    """Raise TapegradError unless `value` is plain data (metadata): nesting and keys bounded.

    Depth counts containers: the metadata map itself is at depth 0 and a value inside a map or
    array at depth d is at depth d + 1; a value deeper than `max_nesting` raises `LimitError`."""
    if depth > limits.max_nesting:
        limits.check("max_nesting", depth, "the nesting depth of a metadata value")
    t = type(value)
    if value is None or t in (bool, int, float, str, bytes):
        return
    if t in (list, tuple):
        for item in value:
            check_plain(item, limits, depth + 1)
        return
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TapegradError(f"metadata keys must be strings, got {show(key)}")
            check_plain(item, limits, depth + 1)
        return
    raise TapegradError(f"metadata values must be plain data (None, bool, int, float, str, bytes, lists, dicts), "
                        f"got {show(value)}")


def attr_codes(attrs: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """(table of the distinct attribute maps, None first; each entry's index into it), told apart
    by `attrs_key` and touching only the entries that have attributes.  Raises `Reject(row)` for
    the first entry that cannot be keyed (not a mapping, unhashable or absurdly nested values)."""
    table: list[Any] = [None]
    index: dict[Any, int] = {}
    codes = [0] * len(attrs)
    for row in compress(range(len(attrs)), attrs):
        try:
            key = attrs_key(attrs[row])
            code = index.get(key)  # (hashing the key finds unhashable values)
        except (TypeError, RecursionError, AttributeError):
            raise Reject(row) from None
        if code is None:
            index[key] = code = len(table)
            table.append(attrs[row])
        codes[row] = code
    return table, codes


def attrs_key(attrs: Mapping[str, Any]) -> Any:
    """A hashable key of an attribute map, equal only for identical stored values.

    `==` takes `True == 1 == 1.0` and `0.0 == -0.0`; tables keyed that way would store one for
    the other.  Raises TypeError for unhashable values and RecursionError for absurd nesting.
    """
    return tuple((name, _strict(value)) for name, value in attrs.items())


def _strict(value: Any) -> Any:
    kind = type(value)
    if kind is tuple or kind is list:
        return (kind, *map(_strict, value))
    if kind is float:
        return (kind, _F64.pack(value))
    return (kind, value)


_DTYPE_NAMES: dict[Any, str | None] = {}


def allowed_dtype_name(dtype: Any) -> str | None:
    """`dtype_name(dtype)` (the stored name of an allowed dtype, else None), cached per dtype."""
    name = _DTYPE_NAMES.get(dtype, "?")
    if name == "?":
        name = _DTYPE_NAMES[dtype] = dtype_name(dtype)
    return name


