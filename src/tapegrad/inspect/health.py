"""Value health: the summary of one array that every inspection command prints.

Contract: `summarize(a)` reads the array once per statistic (no copies beyond numpy's own
reductions), never raises for any numeric array (empty, 0-d, all-NaN, integer or bool), and
returns plain Python numbers, so a `ValueStats` goes to JSON as it is (`as_dict`).  `min`, `max`
and `mean` are over the finite elements only (None when there are none), so one NaN does not
hide the range of the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..tape import aval


@dataclass(frozen=True)
class ValueStats:
    """Shape, dtype and health of one value."""

    type: str  # `f64[3,2]`, as listings print it
    size: int
    nan: int
    inf: int
    zero: int
    min: float | None
    max: float | None
    mean: float | None

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if self.min is None:
            span = "no finite values"
        else:
            span = f"min {self.min:.6g} max {self.max:.6g} mean {self.mean:.6g}"
        bad = f" nan {self.nan}" * bool(self.nan) + f" inf {self.inf}" * bool(self.inf)
        return f"{self.type} {span}{bad}"


def summarize(a: Any) -> ValueStats:
    """The `ValueStats` of array `a` (see the module docstring)."""
    arr = np.asarray(a)
    size = int(arr.size)
    if arr.dtype.kind == "f":
        nan = int(np.count_nonzero(np.isnan(arr)))
        inf = int(np.count_nonzero(np.isinf(arr)))
        finite = arr[np.isfinite(arr)] if nan or inf else arr
    else:
        nan = inf = 0
        finite = arr
    zero = int(size - np.count_nonzero(arr))
    if finite.size:
        with np.errstate(over="ignore"):  # a float16 mean may overflow; the value is still reported
            lo, hi, mean = finite.min(), finite.max(), finite.mean(dtype=np.float64)
        return ValueStats(aval(arr.shape, arr.dtype), size, nan, inf, zero, float(lo), float(hi), float(mean))
    return ValueStats(aval(arr.shape, arr.dtype), size, nan, inf, zero, None, None, None)
