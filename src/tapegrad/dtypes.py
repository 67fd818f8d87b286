"""The closed set of array dtypes tapegrad records, stores and loads.

Contract: `DTYPES` maps a stable name (what files store) to a native little-endian numpy dtype.
Names are matched as exact strings *before* any call to `np.dtype`, which would otherwise build
structured or object dtypes from innocent-looking strings.  `as_computable` is the one check
that a value entering a computation (an op's constant, a replay input, a differentiated
argument) has a dtype tapegrad computes with; `COMPUTABLE_KINDS` is what it allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DTypeError, TapegradError

COMPUTABLE_KINDS = frozenset("biuf")
"""The dtype kinds tapegrad computes with: bool, signed and unsigned integers, floats."""

DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
}
"""Allowed dtypes by stored name (little-endian; `bool` and the 8-bit types have no byte order)."""

_BY_DTYPE = {dt.newbyteorder("="): name for name, dt in DTYPES.items()}


def dtype_name(dtype: object) -> str | None:
    """The stored name of `dtype` if it is allowed and native-or-little-endian, else None."""
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        return None
    if dt.byteorder == ">":
        return None
    return _BY_DTYPE.get(dt.newbyteorder("="))


def is_float(dtype: np.dtype[np.generic]) -> bool:
    """True for the dtypes that carry gradients (floating point)."""
    return dtype.kind == "f"


def as_computable(value: Any, what: str | Callable[[], str], dtype: Any = None) -> Any:
    """`value` as an ndarray (of `dtype`, if given: Python scalars take the dtype numpy 2 promotion
    gives them) whose dtype tapegrad computes with, else `DTypeError` naming `what` (or what
    `what()` gives: a name that costs something to make is made only for an error).

    Never casts a value of another kind: a complex number cast to real would differentiate
    another function.  A value numpy cannot turn into an array raises `TapegradError`.
    """
    try:
        arr = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TapegradError(f"cannot use {_name(what)} as an array: {exc}") from None
    if arr.dtype.kind not in COMPUTABLE_KINDS:
        raise DTypeError(f"{_name(what)} has dtype {arr.dtype}: tapegrad computes on bool, integer and float values "
                         "only (complex numbers are not supported) and never casts")
    return arr


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()
