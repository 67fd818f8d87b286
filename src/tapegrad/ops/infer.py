"""Shape and dtype inference for registry ops, without computing (or allocating) the result.

Contract: `infer_<family>(spec, shapes, dtypes, attrs) -> (shape, dtype)` returns what
`spec.forward` would produce for inputs of those shapes and dtypes, or raises `TapegradError`
naming the op and the shapes when the inputs are inconsistent.  Attributes are in stored
(canonical) form and already schema-checked.  Work is proportional to the number of dimensions,
never to the number of elements: dtypes come from running the forward on 0-d or all-ones-shape
surrogates, shapes from the rules below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import TapegradError

if TYPE_CHECKING:
    from .spec import OpSpec

Shape = tuple[int, ...]
DType = np.dtype[Any]


def _fail(spec: OpSpec, shapes: Sequence[Shape], why: str) -> TapegradError:
    return TapegradError(f"{spec.name}: {why} (input shapes {', '.join(map(str, shapes))})")


def _dtype_by_surrogate(spec: OpSpec, dtypes: Sequence[DType], ndims: Sequence[int], attrs: Mapping[str, Any]) -> DType:
    """Output dtype from the forward on tiny zero arrays of the input dtypes."""
    args = [np.zeros((1,) * nd, dtype=dt) for nd, dt in zip(ndims, dtypes, strict=True)]
    try:
        with np.errstate(all="ignore"):
            return np.asarray(spec.forward(*args, **attrs)).dtype
    except (TypeError, ValueError, IndexError, TapegradError) as exc:
        raise TapegradError(f"{spec.name}: cannot apply to dtypes {', '.join(map(str, dtypes))}: {exc}") from None


def elementwise(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    try:
        shape = tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise _fail(spec, shapes, "shapes do not broadcast") from None
    return shape, _dtype_by_surrogate(spec, dtypes, [0] * len(shapes), attrs)


def reduction(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    (shape,) = shapes
    axis, keepdims = attrs["axis"], attrs["keepdims"]
    axes = range(len(shape)) if axis is None else axis
    if spec.name in ("max", "min") and any(shape[a] == 0 for a in axes):
        raise _fail(spec, shapes, "zero-size reduction has no identity")
    if keepdims:
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
    else:
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
    return out, _dtype_by_surrogate(spec, dtypes, [len(shape)], attrs)


def same_shape(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    """softmax, log_softmax, astype: the output has the input's shape."""
    (shape,) = shapes
    return shape, _dtype_by_surrogate(spec, dtypes, [len(shape)], attrs)


def resolve_newshape(shape: Shape, new: Shape) -> Shape | None:
    """A reshape target with its -1 (if any) replaced by the size that fits `shape`, or None
    when no size fits (numpy's rule: -1 takes the remaining size, which must divide exactly)."""
    size = math.prod(shape)
    if -1 not in new:
        return new if math.prod(new) == size else None
    known = math.prod(d for d in new if d != -1)
    if known == 0 or size % known:
        return None
    return tuple(size // known if d == -1 else d for d in new)


def reshape(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    (shape,) = shapes
    new = resolve_newshape(shape, attrs["shape"])
    if new is None:
        raise _fail(spec, shapes, f"cannot reshape into {attrs['shape']}")
    return new, dtypes[0]


def transpose(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    (shape,) = shapes
    perm = attrs["axes"]
    if sorted(perm) != list(range(len(shape))):
        raise _fail(spec, shapes, f"axes {perm} are not a permutation")
    return tuple(shape[p] for p in perm), dtypes[0]


def _broadcasts(src: Shape, dst: Shape) -> bool:
    return len(src) <= len(dst) and all(s in (1, d) for s, d in zip(src[::-1], dst[::-1], strict=False))


def broadcast_to(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if not _broadcasts(shapes[0], attrs["shape"]):
        raise _fail(spec, shapes, f"cannot broadcast to {attrs['shape']}")
    return attrs["shape"], dtypes[0]


def sum_to(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if not _broadcasts(attrs["shape"], shapes[0]):
        raise _fail(spec, shapes, f"shape {attrs['shape']} does not broadcast to the input")
    return attrs["shape"], dtypes[0]


def matmul(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    a, b = shapes
    if not a or not b:
        raise _fail(spec, shapes, "matmul needs at least 1-D inputs")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _fail(spec, shapes, f"inner dimensions {a2[-1]} and {b2[-2]} differ")
    try:
        batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError:
        raise _fail(spec, shapes, "batch dimensions do not broadcast") from None
    out = batch + ((a2[-2],) if len(a) > 1 else ()) + ((b2[-1],) if len(b) > 1 else ())
    return out, _dtype_by_surrogate(spec, dtypes, [len(a), len(b)], attrs)


def expand_index(op: str, shape: Shape, index: Sequence[Any]) -> list[Any]:
    """A stored index with its ellipsis (or the implied trailing one) replaced by full slices."""
    consumed = sum(1 for item in index if item is not None and item != "...")
    if sum(1 for item in index if item == "...") > 1:
        raise TapegradError(f"{op}: an index can only have a single ellipsis")
    if consumed > len(shape):
        raise TapegradError(f"{op}: too many indices ({consumed}) for input of shape {shape}")
    full = [("slice", None, None, None)] * (len(shape) - consumed)
    items: list[Any] = []
    for item in index:
        items.extend(full if item == "..." else [item])
    if "..." not in index:
        items.extend(full)
    return items


def index_shape(op: str, shape: Shape, index: Sequence[Any], array_shapes: Sequence[Shape]) -> Shape:
    """Shape of `x[index]` for `x` of `shape` (stored index form, integer arrays by shape)."""
    items = expand_index(op, shape, index)
    arrays = iter(array_shapes)
    has_arrays = any(isinstance(item, tuple) and item[0] == "array" for item in items)
    dims: list[Any] = []  # ints are output dims; "ADV" marks an advanced-index position
    adv_shapes: list[Shape] = []
    adv_positions: list[int] = []
    axis = 0
    for item in items:
        if item is None:
            dims.append(1)
            continue
        d = shape[axis]
        if isinstance(item, int) and not isinstance(item, bool):
            if not -d <= item < d:
                raise TapegradError(f"{op}: index {item} is out of bounds for axis {axis} with size {d}")
            if has_arrays:
                adv_shapes.append(())
                adv_positions.append(len(dims))
                dims.append("ADV")
        elif item[0] == "slice":
            step = item[3]
            if step == 0:
                raise TapegradError(f"{op}: slice step cannot be zero")
            dims.append(len(range(*slice(*item[1:]).indices(d))))
        else:
            ashape = next(arrays)
            if d == 0 and math.prod(ashape) > 0:
                raise TapegradError(f"{op}: cannot index an empty axis {axis} with integer arrays")
            adv_shapes.append(ashape)
            adv_positions.append(len(dims))
            dims.append("ADV")
        axis += 1
    if not adv_shapes:
        return tuple(dims)
    try:
        bshape = tuple(np.broadcast_shapes(*adv_shapes))
    except ValueError:
        raise TapegradError(f"{op}: index arrays of shapes {adv_shapes} do not broadcast") from None
    basic = [d for d in dims if d != "ADV"]
    adjacent = adv_positions == list(range(adv_positions[0], adv_positions[0] + len(adv_positions)))
    if adjacent:
        first = adv_positions[0]
        before = [d for d in dims[:first] if d != "ADV"]
        after = [d for d in dims[first:] if d != "ADV"]
        return tuple(before) + bshape + tuple(after)
    return bshape + tuple(basic)


def getitem(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if any(dt.kind not in "iu" for dt in dtypes[1:]):
        raise _fail(spec, shapes, "index arrays must have an integer dtype")
    return index_shape(spec.name, shapes[0], attrs["index"], shapes[1:]), dtypes[0]


def scatter_add(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if any(dt.kind not in "iu" for dt in dtypes[1:]):
        raise _fail(spec, shapes, "index arrays must have an integer dtype")
    target = index_shape(spec.name, attrs["shape"], attrs["index"], shapes[1:])
    if not _broadcasts(shapes[0], target):
        raise _fail(spec, shapes, f"values of shape {shapes[0]} do not fit the indexed shape {target}")
    return attrs["shape"], dtypes[0]


def concatenate(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    axis = attrs["axis"]
    first = shapes[0]
    if not first or axis >= len(first):
        raise _fail(spec, shapes, f"axis {axis} is out of bounds")
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first, strict=True)) if i != axis):
            raise _fail(spec, shapes, "shapes differ outside the concatenation axis")
    out = first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]
    return out, np.result_type(*dtypes)


def stack(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    axis = attrs["axis"]
    first = shapes[0]
    if any(s != first for s in shapes[1:]):
        raise _fail(spec, shapes, "all inputs must have the same shape")
    if axis > len(first):
        raise _fail(spec, shapes, f"axis {axis} is out of bounds")
    return first[:axis] + (len(shapes),) + first[axis:], np.result_type(*dtypes)


def guard(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if math.prod(shapes[0]) != 1:
        raise _fail(spec, shapes, "a guard checks a one-element value")
    return (), np.dtype(bool)


def shape_guard(spec: OpSpec, shapes: Sequence[Shape], dtypes: Sequence[DType], attrs: Mapping[str, Any]) -> tuple[Shape, DType]:
    if shapes[0] != attrs["shape"]:
        raise _fail(spec, shapes, f"the recording read the shape {attrs['shape']} in Python (x.shape, len(x) "
                    "or x.size), and the program may depend on it")
    return (), np.dtype(bool)


def basic_index_is_contiguous(shape: tuple[int, ...], index: Sequence[Any]) -> bool:
    """Whether `x[index]` (ints, slices, None, Ellipsis) of a C-contiguous x is C-contiguous."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    items = expand_index("getitem", shape, index)
    dims: list[tuple[int, int]] = []
    axis = 0
    for item in items:
        if item is None:
            dims.append((1, 0))
        elif isinstance(item, int):
            axis += 1
        else:
            rng = range(*slice(*item[1:]).indices(shape[axis]))
            dims.append((len(rng), strides[axis] * rng.step))
            axis += 1
    if any(n == 0 for n, _ in dims):
        return True
    expected = 1
    for n, stride in reversed(dims):
        if n != 1:
            if stride != expected:
                return False
            expected *= n
    return True
