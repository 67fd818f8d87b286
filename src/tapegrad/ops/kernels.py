"""numpy forward kernels that are more than one numpy call.

Contract: every kernel takes arrays positionally and canonical attributes as keywords (record
form), never mutates its inputs, and returns a C-contiguous array (or a fresh numpy result), so
that what is recorded, stored and replayed is the same bytes in the same layout.  The one
exception is `transpose`, which returns a view; ops whose row says `view` are recomputed on replay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GuardError, TapegradError
from .spec import AttrValue, decode_index

Array = np.ndarray[Any, Any]

def contiguous(a: Array) -> Array:
    """`a` itself when C-contiguous, else a C-ordered copy (keeps 0-d arrays 0-d)."""
    return a if a.flags.c_contiguous else a.copy()


def reshape(x: Array, shape: tuple[int, ...]) -> Array:
    return contiguous(np.reshape(x, shape))


def transpose(x: Array, axes: tuple[int, ...]) -> Array:
    # A view, not a copy: matmul hands transposed operands to BLAS as they are, which is where
    # the reverse pass of matmul spends its transposes.  Replay recomputes transposes from
    # their inputs instead of loading the stored (C-ordered) copy, so results stay identical.
    return np.transpose(x, axes)


def broadcast_to(x: Array, shape: tuple[int, ...]) -> Array:
    try:
        return np.array(np.broadcast_to(x, shape), order="C")  # np.array keeps a broadcast layout otherwise
    except ValueError:
        raise TapegradError(f"broadcast_to: cannot broadcast shape {np.shape(x)} to {shape}") from None


def sum_to(x: Array, shape: tuple[int, ...]) -> Array:
    """Sum `x` down to `shape`, the inverse of broadcasting `shape` to `x.shape`."""
    xshape = np.shape(x)
    lead = len(xshape) - len(shape)
    if lead < 0 or any(s not in (1, d) for s, d in zip(shape, xshape[lead:], strict=True)):
        raise TapegradError(f"sum_to: shape {shape} does not broadcast to input shape {xshape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and xshape[lead + i] != 1)
    if not axes:
        return contiguous(np.asarray(x))
    return np.asarray(np.sum(x, axis=axes, keepdims=True, dtype=np.result_type(x))).reshape(shape)


def _reduce(fn: Any, x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return np.asarray(fn(x, axis=axis, keepdims=keepdims))


def prod(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return _reduce(np.prod, x, axis, keepdims)


def cumsum(x: Array, axis: int) -> Array:
    return np.cumsum(x, axis=axis)


def sum_(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return _reduce(np.sum, x, axis, keepdims)


def mean(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return _reduce(np.mean, x, axis, keepdims)


def max_(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return _reduce(np.max, x, axis, keepdims)


def min_(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    return _reduce(np.min, x, axis, keepdims)


def logsumexp(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.asarray(out if keepdims else np.squeeze(out, axis=axis))


def softmax(x: Array, axis: tuple[int, ...]) -> Array:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return np.asarray(e / np.sum(e, axis=axis, keepdims=True))


def log_softmax(x: Array, axis: tuple[int, ...]) -> Array:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return np.asarray(shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True)))


def sigmoid(x: Array) -> Array:
    # tanh form: no overflow warnings for large |x|, and float32 stays float32.
    return np.asarray(0.5 * (np.tanh(0.5 * x) + 1))


def relu(x: Array) -> Array:
    return np.maximum(x, 0)


def clip(x: Array, a_min: Array, a_max: Array) -> Array:
    return np.minimum(np.maximum(x, a_min), a_max)


def getitem(x: Array, *arrays: Array, index: AttrValue) -> Array:
    try:
        return contiguous(np.asarray(x[decode_index(index, arrays)]))
    except IndexError as exc:
        raise TapegradError(f"getitem: {exc} (input shape {np.shape(x)})") from None


def scatter_add(g: Array, *arrays: Array, shape: tuple[int, ...], index: AttrValue) -> Array:
    """zeros(shape) with `g` added at `index`; repeated integer indices accumulate."""
    out = np.zeros(shape, dtype=np.result_type(g))
    idx = decode_index(index, arrays)
    if arrays:
        np.add.at(out, idx, g)
    else:  # basic indexing never repeats an element
        out[idx] += g
    return out


def concatenate(*xs: Array, axis: int) -> Array:
    return np.concatenate(xs, axis=axis)


def stack(*xs: Array, axis: int) -> Array:
    return np.stack(xs, axis=axis)


def astype(x: Array, dtype: str) -> Array:
    return np.asarray(x).astype(dtype)


def shape_guard(x: Array, shape: tuple[int, ...]) -> Array:
    """Check that a shape the recording read in Python is unchanged (raises GuardError if not)."""
    if np.shape(x) != shape:
        raise GuardError(f"the recording read the shape {shape} in Python, now {np.shape(x)}")
    return np.array(True)


def guard(x: Array, value: bool | int | float, kind: str) -> Array:
    """Check that a value the recording branched on is unchanged (raises GuardError if not)."""
    item = np.asarray(x).item()
    actual = bool(item) if kind == "bool" else int(item) if kind == "int" else float(item)
    if actual != value and not (actual != actual and value != value):  # NaN == NaN for guards
        raise GuardError(f"recorded {kind}({value!r}), now {kind}({actual!r})")
    return np.array(True)
