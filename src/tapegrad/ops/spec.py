"""What one op-registry entry is, and how public arguments bind to record form.

Contract:
- `OpSpec` describes one primitive: `forward(*arrays, **attrs)` computes it with numpy in *record
  form* (inputs positional, canonical attributes as keywords); `vjp(F, g, ins, out, attrs, k)`
  returns the cotangent of input `k` (or None for "no contribution") using only the op functions
  of the backend `F`, so one rule runs on numpy arrays and on traced Variables.
- `OpSpec.bind(args, kwargs)` turns a numpy-style public call (`sum(x, axis=1)`) into
  `(inputs, attrs)` with canonical attributes (axes normalised, shapes as int tuples, dtypes as
  stored names).  Invalid arguments raise `TapegradError` naming the op and the shapes involved.
- Attribute values are plain data only: None, bool, int, float, str and tuples of these.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import dtype_name
from ..errors import TapegradError

AttrValue = None | bool | int | float | str | tuple["AttrValue", ...]
Attrs = Mapping[str, AttrValue]
Vjp = Callable[[Any, Any, Sequence[Any], Any, Any, int], Any]  # (F, g, ins, out, attrs or None, k)
Binder = Callable[["OpSpec", tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]
ShapeRule = Callable[["OpSpec", Sequence[tuple[int, ...]], Sequence["np.dtype[Any]"], Attrs],
                     tuple[tuple[int, ...], "np.dtype[Any]"]]

REQUIRED: Any = object()
"""Default marker for an attribute the caller must give."""

# Attribute kinds.  Each kind has a canonicaliser (public value -> stored value) used at record
# time; `tape_format` validation checks stored values against the same kinds.
AXES = "axes"  # None or tuple of distinct non-negative ints < ndim, sorted
AXIS = "axis"  # one non-negative int < ndim
BOOL = "bool"
SHAPE = "shape"  # tuple of non-negative ints
PERM = "perm"  # permutation of range(ndim)
DTYPE = "dtype"  # stored dtype name
INDEX = "index"  # encoded index, see encode_index
SCALAR = "scalar"  # a bool, int or float (a value the recording observed)
GUARD_KIND = "guard_kind"  # "bool", "int" or "float": how a guard converts its input
GUARD_KINDS = ("bool", "int", "float")


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its name, kind and default."""

    name: str
    kind: str
    default: Any = REQUIRED


@dataclass(frozen=True)
class OpSpec:
    """One primitive op: name, arity, numpy forward, VJP rule, attribute schema and doc line."""

    name: str
    arity: int  # number of inputs; -1 means variadic (at least one)
    forward: Callable[..., Any]
    vjp: Vjp | None  # None: not differentiable (outputs carry no gradient)
    doc: str
    attrs: tuple[Attr, ...] = ()
    binder: Binder | None = None
    shape_rule: ShapeRule | None = None  # None: elementwise (broadcast shapes)
    attr_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr_names", frozenset(a.name for a in self.attrs))

    @property
    def simple(self) -> bool:
        """True when the public signature is the record form: fixed inputs, no attributes."""
        return self.arity >= 0 and not self.attrs and self.binder is None

    def infer(self, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]],
              attrs: Attrs) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Output shape and dtype for inputs of these shapes/dtypes (TapegradError if inconsistent).

        Attributes must be in stored form and schema-checked; nothing is allocated.
        """
        from . import infer

        rule = self.shape_rule or infer.elementwise
        return rule(self, shapes, dtypes, attrs)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Public call arguments -> (inputs, canonical attrs)."""
        if self.binder is not None:
            return self.binder(self, args, kwargs)
        return default_binder(self, args, kwargs)


def default_binder(spec: OpSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Fixed-arity ops: the first `arity` arguments are inputs, the rest attributes in order."""
    n = spec.arity
    if len(args) < n:
        raise TypeError(f"{spec.name}() takes {n} array argument(s), got {len(args)}")
    if len(args) > n + len(spec.attrs):
        raise TypeError(f"{spec.name}() got too many positional arguments")
    ins = args[:n]
    given = dict(zip((a.name for a in spec.attrs), args[n:], strict=False))
    for key, value in kwargs.items():
        if key not in spec.attr_names:
            raise TypeError(f"{spec.name}() got an unexpected keyword argument {key!r}")
        if key in given:
            raise TypeError(f"{spec.name}() got multiple values for argument {key!r}")
        given[key] = value
    ndim = ndim_of(ins[0]) if ins else 0
    attrs: dict[str, Any] = {}
    for a in spec.attrs:
        value = given.get(a.name, a.default)
        if value is REQUIRED:
            raise TypeError(f"{spec.name}() missing required argument {a.name!r}")
        attrs[a.name] = canon(spec.name, a.kind, value, ndim, shape_of(ins[0]) if ins else ())
    return ins, attrs


def ndim_of(x: Any) -> int:
    nd = getattr(x, "ndim", None)
    return int(nd) if nd is not None else int(np.ndim(x))


def shape_of(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def dtype_of(x: Any) -> np.dtype[Any]:
    dt = getattr(x, "dtype", None)
    return dt if isinstance(dt, np.dtype) else np.result_type(x)


def _as_int(op: str, what: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TapegradError(f"{op}: {what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TapegradError(f"{op}: {what} must be an integer, got {value!r}") from None


def normalize_axis(op: str, axis: Any, ndim: int, shape: tuple[int, ...]) -> int:
    ax = _as_int(op, "axis", axis)
    if not -ndim <= ax < ndim:
        raise TapegradError(f"{op}: axis {ax} is out of bounds for input of shape {shape}")
    return ax % ndim


def canon(op: str, kind: str, value: Any, ndim: int, shape: tuple[int, ...]) -> AttrValue:
    """Canonical stored form of one public attribute value (raises TapegradError if invalid)."""
    if kind == BOOL:
        if not isinstance(value, (bool, np.bool_)):
            raise TapegradError(f"{op}: expected a bool, got {value!r}")
        return bool(value)
    if kind == AXES:
        if value is None:
            return None
        axes = value if isinstance(value, (tuple, list)) else (value,)
        norm = sorted(normalize_axis(op, a, ndim, shape) for a in axes)
        if len(set(norm)) != len(norm):
            raise TapegradError(f"{op}: repeated axis in {value!r}")
        return tuple(norm)
    if kind == AXIS:
        return normalize_axis(op, value, ndim, shape)
    if kind == SHAPE:
        dims = value if isinstance(value, (tuple, list)) else (value,)
        out = tuple(_as_int(op, "shape", d) for d in dims)
        if any(d < 0 for d in out):
            raise TapegradError(f"{op}: negative dimension in shape {out}")
        return out
    if kind == PERM:
        if value is None:
            return tuple(range(ndim))[::-1]
        perm = tuple(normalize_axis(op, a, ndim, shape) for a in value)
        if sorted(perm) != list(range(ndim)):
            raise TapegradError(f"{op}: axes {tuple(value)} are not a permutation for input of shape {shape}")
        return perm
    if kind == DTYPE:
        name = dtype_name(value)
        if name is None:
            raise TapegradError(f"{op}: dtype {value!r} is not supported")
        return name
    if kind == SCALAR:
        if not isinstance(value, (bool, int, float)):
            raise TapegradError(f"{op}: expected a bool, int or float, got {value!r}")
        return value
    if kind == GUARD_KIND:
        if value not in GUARD_KINDS:
            raise TapegradError(f"{op}: kind must be one of {GUARD_KINDS}, got {value!r}")
        return str(value)
    raise AssertionError(f"unknown attribute kind {kind!r}")  # registry bug, not user input


# ---- indexing: public Python indices <-> plain-data attribute + integer array inputs ----------
#
# Stored form: a tuple with one entry per index item:
#   int -> an integer index;  None -> np.newaxis;  "..." -> Ellipsis;
#   ("slice", start, stop, step) -> a slice;  ("array",) -> the next integer-array input.
# Boolean masks are stored as the integer arrays of their nonzero() positions.

ARRAY = ("array",)


def encode_index(op: str, index: Any, is_array: Callable[[Any], bool]) -> tuple[AttrValue, list[Any]]:
    """Split a public index into (stored index, integer-array inputs)."""
    items = index if isinstance(index, tuple) else (index,)
    encoded: list[AttrValue] = []
    arrays: list[Any] = []
    for item in items:
        if item is None:
            encoded.append(None)
        elif item is Ellipsis:
            encoded.append("...")
        elif isinstance(item, slice):
            encoded.append(("slice", *(None if v is None else _as_int(op, "slice bound", v)
                                       for v in (item.start, item.stop, item.step))))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            encoded.append(int(item))
        elif is_array(item) or isinstance(item, (list, np.ndarray)):
            arr = item if is_array(item) else np.asarray(item)
            kind = dtype_of(arr).kind
            if kind == "b":
                if not isinstance(arr, np.ndarray):
                    raise TapegradError(f"{op}: boolean masks must be numpy arrays, not traced values")
                for part in np.nonzero(arr):
                    encoded.append(ARRAY)
                    arrays.append(part)
            elif kind in "iu":
                encoded.append(ARRAY)
                arrays.append(arr)
            else:
                raise TapegradError(f"{op}: index arrays must be integer or boolean, got dtype {dtype_of(arr)}")
        else:
            raise TapegradError(f"{op}: unsupported index item {item!r}")
    return tuple(encoded), arrays


def decode_index(index: AttrValue, arrays: Sequence[Any]) -> tuple[Any, ...]:
    """Stored index + its integer-array inputs -> a Python index tuple."""
    assert isinstance(index, tuple)
    out: list[Any] = []
    it = iter(arrays)
    for item in index:
        if item is None or isinstance(item, int):
            out.append(item)
        elif item == "...":
            out.append(Ellipsis)
        elif item == ARRAY:
            out.append(next(it))
        else:
            assert isinstance(item, tuple)
            out.append(slice(*item[1:]))
    return tuple(out)
