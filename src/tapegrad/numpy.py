"""`import tapegrad.numpy as tnp`: numpy's functions, recorded explicitly.

Contract:
- Every numpy name tapegrad supports (`tnp.sin`, `tnp.sum`, `tnp.tensordot`, `tnp.linalg.norm`,
  ...: the tables of `numpy_dispatch`) is a function here with numpy's signature that records
  registry ops and returns a Variable, whether its arguments are Variables, plain arrays or
  Python scalars.  Plain `np.*` calls do the same whenever an argument is a Variable; `tnp` is
  for code that wants to say so, or that must record a computation on plain arrays inside
  `record()` (a constant the tape should show).
- Names whose results are not differentiable values (`tnp.argmax`, `tnp.shape`, `tnp.isnan`,
  ...) return plain numpy results, as numpy's do.  numpy's constants, dtypes and array
  constructors (`tnp.pi`, `tnp.float32`, `tnp.zeros`, `tnp.array`, ...) are numpy's own.
- Any other numpy name raises `UnsupportedError` naming it and saying how to add an op.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from .numpy_dispatch import public_functions, unsupported

_FUNCTIONS = public_functions()
globals().update(_FUNCTIONS)

# numpy's own: constants, dtypes and constructors of plain arrays (no Variable in, no gradient).
_PASSED = ("pi", "e", "inf", "nan", "newaxis", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "bool_", "ndarray", "dtype", "array", "asarray", "zeros", "ones", "empty", "full", "arange",
           "linspace", "eye", "identity", "random")
globals().update({name: getattr(np, name) for name in _PASSED})

linalg = types.ModuleType("tapegrad.numpy.linalg", "numpy.linalg's supported functions, recorded (norm).")
linalg.norm = _FUNCTIONS["norm"]  # type: ignore[attr-defined]


def _linalg_getattr(name: str) -> Any:
    raise unsupported(f"tnp.linalg.{name}")


linalg.__getattr__ = _linalg_getattr  # type: ignore[method-assign]


def __getattr__(name: str) -> Any:
    if not name.startswith("__") and hasattr(np, name):
        raise unsupported(f"tnp.{name}")
    raise AttributeError(f"module 'tapegrad.numpy' has no attribute {name!r}")
