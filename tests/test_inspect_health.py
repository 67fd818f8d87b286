"""`tapegrad.inspect.summarize`: value health for every kind of array, without raising."""

from __future__ import annotations

import json

import numpy as np

from tapegrad.inspect import summarize


def test_counts_and_range_are_over_finite_values() -> None:
    s = summarize(np.array([1.0, np.nan, -2.0, np.inf, 0.0, -np.inf]))
    assert (s.size, s.nan, s.inf, s.zero) == (6, 1, 2, 1)
    assert (s.min, s.max) == (-2.0, 1.0) and s.mean == -1.0 / 3
    assert not s.finite and s.type == "f64[6]"
    assert "nan 1" in str(s) and "inf 2" in str(s)


def test_degenerate_arrays() -> None:
    empty = summarize(np.zeros((0, 3), np.float32))
    assert (empty.size, empty.min, empty.type) == (0, None, "f32[0,3]") and empty.finite
    nan = summarize(np.full(3, np.nan))
    assert nan.min is None and "no finite values" in str(nan)
    assert summarize(np.array(5)).as_dict() == {"type": "i64[]", "size": 1, "nan": 0, "inf": 0, "zero": 0,
                                                "min": 5.0, "max": 5.0, "mean": 5.0}
    flags = summarize(np.array([True, False, False]))
    assert (flags.zero, flags.max) == (2, 1.0)
    big = summarize(np.full(4, 60000.0, np.float16))
    assert big.mean == 60000.0  # accumulated in float64


def test_as_dict_is_json() -> None:
    json.dumps(summarize(np.arange(4.0)).as_dict())
