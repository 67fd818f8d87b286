"""The closed set of array dtypes tapegrad records, stores and loads.

Contract: `DTYPES` maps a stable name (what files store) to a native little-endian numpy dtype.
Names are matched as exact strings *before* any call to `np.dtype`, which would otherwise build
structured or object dtypes from innocent-looking strings.
"""

from __future__ import annotations

import numpy as np

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
