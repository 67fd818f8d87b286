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

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import DTYPES, dtype_name
from ..errors import ArgumentError, TapegradError, escape, show

AttrValue = None | bool | int | float | str | tuple["AttrValue", ...]
Attrs = Mapping[str, AttrValue]
Vjp = Callable[[Any, Any, Sequence[Any], Any, Any, int], Any]  # (F, g, ins, out, attrs or None, k)


def pass_on(F: Any, g: Any, ins: Sequence[Any], out: Any, attrs: Any, k: int) -> Any:
    """The VJP rule of an op whose every input takes the output's cotangent as it is (`add`);
    the reverse loop recognises it and skips the call where no unbroadcasting is needed."""
    return g


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
NEWSHAPE = "newshape"  # reshape's target: tuple of non-negative ints and at most one -1 (the size that fits)
PERM = "perm"  # permutation of range(ndim)
DTYPE = "dtype"  # stored dtype name
INDEX = "index"  # encoded index, see encode_index
SCALAR = "scalar"  # a bool, int or float (a value the recording observed)
GUARD_KIND = "guard_kind"  # "bool", "int" or "float": how a guard converts its input
GUARD_KINDS = ("bool", "int", "float")


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its name, kind and default.

    `extra_dims`: an AXIS that indexes the output, which has that many more dimensions than
    the inputs (stack's new axis).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    extra_dims: int = 0


Aval = tuple[tuple[int, ...], "np.dtype[Any]"]
AliasRule = Callable[[Aval, Aval, "Attrs | None"], bool]
"""(input 0's shape and dtype, the output's, the stored attributes) -> whether the kernel's
result is (a view of) the buffer of its C-contiguous input 0 rather than a new allocation."""


def never_aliases(x: Aval, out: Aval, attrs: Attrs | None) -> bool:
    """The alias rule of an op whose kernel always allocates its result."""
    return False


def always_aliases(x: Aval, out: Aval, attrs: Attrs | None) -> bool:
    """The alias rule of an op whose kernel always returns a view of input 0 (reshape, transpose)."""
    return True


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """Everything tapegrad knows about one primitive op: one row of the registry.

    Identity and semantics: `name` (the stable string files store), `arity` (-1: variadic, at
    least one input), `forward` (numpy, record form), `vjp` (None: outputs carry no gradient),
    `doc` (one line).  Signature: `attrs` (the attribute schema) and `binder` (None: the first
    `arity` arguments are inputs and the attributes follow in order).
    Shapes: `shape` infers the output's shape and dtype; `elementwise` says the op broadcasts its
    inputs and maps them element by element, so cotangents come out in the inputs' shapes (the
    reverse loop relies on it).  Memory: `scratch` is the kernel's temporary space in units of
    the larger of input 0's and the output's bytes; `aliases` says when the result shares input
    0's buffer; `view` says the result is a view in another layout than C order, which replay
    recomputes rather than reading a stored copy.  Export: `public` makes the op a function
    `tapegrad.<name>`.

    Every fact is a required keyword: a row cannot leave one to a default.
    """

    name: str
    arity: int
    forward: Callable[..., Any]
    vjp: Vjp | None
    doc: str
    attrs: tuple[Attr, ...]
    binder: Binder | None
    shape: ShapeRule
    elementwise: bool
    scratch: int
    aliases: AliasRule
    view: bool
    public: bool
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
        return self.shape(self, shapes, dtypes, attrs)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Public call arguments -> (inputs, canonical attrs)."""
        if self.binder is not None:
            return self.binder(self, args, kwargs)
        return default_binder(self, args, kwargs)


def split_args(spec: OpSpec, args: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A public call -> (its first `n` positional arguments, every attribute by name).

    Attributes come positionally after the inputs or by keyword; missing ones take their
    defaults.  Misuse raises `ArgumentError` (a TypeError, as Python raises for a bad call).
    """
    if len(args) < n:
        raise ArgumentError(f"{spec.name}() takes {n} array argument(s), got {len(args)}")
    if len(args) > n + len(spec.attrs):
        raise ArgumentError(f"{spec.name}() got too many positional arguments")
    given = dict(zip((a.name for a in spec.attrs), args[n:], strict=False))
    for key, value in kwargs.items():
        if key not in spec.attr_names:
            raise ArgumentError(f"{spec.name}() got an unexpected keyword argument {key!r}")
        if key in given:
            raise ArgumentError(f"{spec.name}() got multiple values for argument {key!r}")
        given[key] = value
    for a in spec.attrs:
        if given.setdefault(a.name, a.default) is REQUIRED:
            raise ArgumentError(f"{spec.name}() missing required argument {a.name!r}")
    return args[:n], given


def default_binder(spec: OpSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Fixed-arity ops: the first `arity` arguments are inputs, the rest attributes in order."""
    ins, given = split_args(spec, args, kwargs, spec.arity)
    ndim, shape = (ndim_of(ins[0]), shape_of(ins[0])) if ins else (0, ())
    return ins, {a.name: canon(spec.name, a.kind, given[a.name], ndim, shape) for a in spec.attrs}


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
    if kind == NEWSHAPE:
        dims = value if isinstance(value, (tuple, list)) else (value,)
        out = tuple(_as_int(op, "shape", d) for d in dims)
        if any(d < -1 for d in out) or out.count(-1) > 1:
            raise TapegradError(f"{op}: shape {out} may hold non-negative dimensions and one -1")
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


# ---- stored-form checks (attributes read from files) ------------------------------------------

def _is_int(x: Any) -> bool:
    return type(x) is int


def check_stored(kind: str, value: Any, ndim: int, n_arrays: int, max_ndim: int) -> str | None:
    """Why `value` is not a well-formed *stored* attribute of `kind` (as a file holds it: exact
    Python types, canonical form) for an input of `ndim` dimensions, or None if it is."""
    if kind == BOOL:
        return None if type(value) is bool else f"expected a bool, got {show(value)}"
    if kind == AXES:
        if value is None:
            return None
        if type(value) is not tuple or not all(_is_int(a) for a in value):
            return f"expected None or a tuple of axes, got {show(value)}"
        if any(not 0 <= a < ndim for a in value) or any(a >= b for a, b in itertools.pairwise(value)):
            return f"axes {escape(value, 100)} must be distinct, sorted and in [0, {ndim})"
        return None
    if kind == AXIS:
        if not _is_int(value) or not 0 <= value < ndim:
            return f"axis must be an integer in [0, {ndim}), got {show(value)}"
        return None
    if kind == SHAPE:
        if type(value) is not tuple or not all(_is_int(d) and d >= 0 for d in value):
            return f"expected a shape (tuple of non-negative integers), got {show(value)}"
        if len(value) > max_ndim:
            return f"shape has {len(value)} dimensions, over max_ndim={max_ndim}"
        return None
    if kind == NEWSHAPE:
        if type(value) is not tuple or not all(_is_int(d) and d >= -1 for d in value) or value.count(-1) > 1:
            return f"expected a shape (tuple of non-negative integers and at most one -1), got {show(value)}"
        if len(value) > max_ndim:
            return f"shape has {len(value)} dimensions, over max_ndim={max_ndim}"
        return None
    if kind == PERM:
        if type(value) is not tuple or not all(_is_int(a) for a in value) or sorted(value) != list(range(ndim)):
            return f"expected a permutation of range({ndim}), got {escape(value, 100)}"
        return None
    if kind == DTYPE:
        return None if type(value) is str and value in DTYPES else f"expected a dtype name, got {show(value)}"
    if kind == INDEX:
        return _check_index(value, n_arrays, max_ndim)
    if kind == SCALAR:
        return None if type(value) in (bool, int, float) else f"expected a bool, int or float, got {show(value)}"
    if kind == GUARD_KIND:
        return None if type(value) is str and value in GUARD_KINDS else f"expected one of {GUARD_KINDS}, got {show(value)}"
    raise AssertionError(f"unknown attribute kind {kind!r}")  # a registry bug, not file content


def _check_index(value: Any, n_arrays: int, max_ndim: int) -> str | None:
    """Stored index form (see `ops.spec.encode_index`): a tuple of index items."""
    if type(value) is not tuple:
        return f"expected an index tuple, got {show(value)}"
    if len(value) > 2 * max_ndim:
        return f"index has {len(value)} items, over 2 * max_ndim"
    arrays = ellipses = 0
    for item in value:
        if item is None or _is_int(item):
            continue
        if type(item) is str:
            if item != "...":
                return f"bad index item {show(item)}"
            ellipses += 1
        elif type(item) is tuple and item == ("array",) and type(item[0]) is str:
            arrays += 1
        elif (type(item) is tuple and len(item) == 4 and type(item[0]) is str and item[0] == "slice"
              and all(b is None or _is_int(b) for b in item[1:])):
            continue
        else:
            return f"bad index item {show(item)}"
    if ellipses > 1:
        return "an index can only have one ellipsis"
    if arrays != n_arrays:
        return f"the index uses {arrays} integer arrays but the record has {n_arrays} index inputs"
    return None
