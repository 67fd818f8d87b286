"""The op registry: every primitive tapegrad records, one row each.

Contract:
- `REGISTRY` is the closed mapping from a stable lowercase op name (the string files store) to
  its `OpSpec`.  Tracer, replay and the file loader look ops up here and nowhere else; a name from
  a file is only ever used as a key into this dict.
- VJP rules use only ops of the backend `F` they are given (`F.mul`, `F.sum`, ...), so the same
  rule runs on numpy arrays (`NUMPY`, the fast first-order path) and on Variables (the tracer's
  backend, to record a reverse pass for higher derivatives).  Rules return the cotangent of input
  `k`.  Rules of multi-input ops may return any shape the input broadcasts to, and any dtype:
  the engine sums and casts it back once, generically.  Rules of one-input ops must return the
  input's exact shape and dtype (the engine does not check them; the gradient sweep test does).
- The table is built explicitly in `_build()`; importing this module registers nothing else.
- Arithmetic forwards are the `operator` functions: on ndarrays they are exactly numpy's ufuncs,
  reached through the number protocol, which is several hundred ns cheaper per call on tiny
  arrays than calling the ufunc object.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import Any, cast

import numpy as np

from ..errors import ArgumentError, TapegradError
from . import infer, kernels
from .spec import (
    ARRAY,
    AXES,
    AXIS,
    BOOL,
    DTYPE,
    GUARD_KIND,
    INDEX,
    NEWSHAPE,
    PERM,
    SCALAR,
    SHAPE,
    Attr,
    Attrs,
    Aval,
    Binder,
    OpSpec,
    ShapeRule,
    Vjp,
    always_aliases,
    canon,
    decode_index,
    dtype_of,
    encode_index,
    ndim_of,
    never_aliases,
    normalize_axis,
    pass_on,
    shape_of,
    split_args,
)

# ---- helpers for rules (backend-generic) ---------------------------------------------------


def _axes(a: Attrs) -> tuple[int, ...] | None:
    """The stored `axis` attribute of a reduction (None or a tuple of ints, schema-checked)."""
    return cast("tuple[int, ...] | None", a["axis"])


def _unreduce(F: Any, g: Any, x: Any, axis: tuple[int, ...] | None, keepdims: Any) -> Any:
    """Broadcast the cotangent of a reduction back to the reduced input's shape."""
    if axis is not None and not keepdims:
        g = F.reshape(g, tuple(1 if i in axis else d for i, d in enumerate(x.shape)))
    return F.broadcast_to(g, tuple(x.shape))


def _count(x: Any, axis: tuple[int, ...] | None) -> int:
    return math.prod(x.shape) if axis is None else math.prod(x.shape[i] for i in axis)


def _swap_last(F: Any, a: Any) -> Any:
    nd = a.ndim
    return F.transpose(a, tuple(range(nd - 2)) + (nd - 1, nd - 2))


def _matmul_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Attrs | None, k: int) -> Any:
    x, y = ins
    if x.ndim == 1 and y.ndim == 1:  # inner product: g is 0-d
        return F.mul(g, ins[1 - k])
    x2 = F.reshape(x, (1, x.shape[0])) if x.ndim == 1 else x
    y2 = F.reshape(y, (y.shape[0], 1)) if y.ndim == 1 else y
    gshape = tuple(g.shape)
    if x.ndim == 1:
        gshape = gshape[:-1] + (1, gshape[-1])
    if y.ndim == 1:
        gshape = gshape + (1,)
    g2 = F.reshape(g, gshape) if gshape != tuple(g.shape) else g
    target = x2 if k == 0 else y2
    r = F.matmul(g2, _swap_last(F, y2)) if k == 0 else F.matmul(_swap_last(F, x2), g2)
    if tuple(r.shape) != tuple(target.shape):
        r = F.sum_to(r, tuple(target.shape))
    return F.reshape(r, tuple(ins[k].shape)) if ins[k].ndim == 1 else r


def _maxmin_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    (x,) = ins
    axis, keepdims = _axes(a), a["keepdims"]
    mask = F.astype(F.equal(x, _unreduce(F, out, x, axis, keepdims)), x.dtype)
    share = F.div(mask, F.sum(mask, axis, True))  # ties split the cotangent evenly
    return F.mul(share, _unreduce(F, g, x, axis, keepdims))


def _prod_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """d prod / d x_i is the product of the other elements, also where x has zeros (never a
    division by zero): out / x_i where x_i != 0; where x_i == 0, the product of the nonzero
    elements if x_i is its slice's only zero, else 0.  Second derivatives are exact except where
    a slice has two or more exact zeros (there the rule's masks are constant)."""
    (x,) = ins
    axis, keepdims = _axes(a), a["keepdims"]
    zero = F.equal(x, 0)
    safe = F.where(zero, 1, x)
    only_zero = F.equal(_unreduce(F, F.sum(F.astype(zero, "int64"), axis, True), x, axis, True), 1)
    nonzero_product = _unreduce(F, F.prod(safe, axis, True), x, axis, True)
    whole = _unreduce(F, out, x, axis, keepdims)
    share = F.where(zero, F.where(only_zero, nonzero_product, 0), F.div(whole, safe))
    return F.mul(share, _unreduce(F, g, x, axis, keepdims))


def _concat_slice(ins: Sequence[Any], axis: int, k: int) -> tuple[Any, ...]:
    start = sum(int(ins[j].shape[axis]) for j in range(k))
    return (slice(None),) * axis + (slice(start, start + int(ins[k].shape[axis])),)


# ---- custom binders (public signature != record form) --------------------------------------

def _bind_reshape(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The target shape is stored as written, -1 included: a replay at another input shape then
    gives the -1 dimension the size that fits, as the recorded code would have."""
    ins, attrs = split_args(spec, args, kw, 1)
    x, shape = ins[0], attrs["shape"]
    dims = tuple(shape if isinstance(shape, (tuple, list)) else (shape,))
    if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) for d in dims):
        raise TapegradError(f"reshape: shape must be integers, got {dims}")
    new = canon(spec.name, NEWSHAPE, dims, 0, ())
    if infer.resolve_newshape(shape_of(x), cast("tuple[int, ...]", new)) is None:
        raise TapegradError(f"reshape: cannot reshape input of shape {shape_of(x)} into shape {dims}")
    return ins, {"shape": new}


def _bind_shape_to(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ins, attrs = split_args(spec, args, kw, 1)
    shape = canon(spec.name, SHAPE, attrs["shape"], 0, ())
    src, dst = (shape_of(ins[0]), shape) if spec.name == "broadcast_to" else (shape, shape_of(ins[0]))
    assert isinstance(src, tuple) and isinstance(dst, tuple)
    try:
        ok = np.broadcast_shapes(src, dst) == dst  # type: ignore[arg-type]
    except ValueError:
        ok = False
    if not ok:
        raise TapegradError(f"{spec.name}: shape {src} does not broadcast to shape {dst}")
    return ins, {"shape": shape}


def _bind_clip(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ins, _ = split_args(spec, args, kw, 3)
    x, lo, hi = ins
    dt = dtype_of(x)
    if lo is None or hi is None:
        info: Any = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt) if dt.kind in "iu" else None
        if info is None:
            raise TapegradError(f"clip: cannot clip an array of dtype {dt}")
        lo = np.array(-np.inf if dt.kind == "f" else info.min, dtype=dt) if lo is None else lo
        hi = np.array(np.inf if dt.kind == "f" else info.max, dtype=dt) if hi is None else hi
    return (x, lo, hi), {}


def _bind_getitem(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ins, attrs = split_args(spec, args, kw, 1)
    index, arrays = encode_index("getitem", attrs["index"], _is_array)
    return (ins[0], *arrays), {"index": index}


def _bind_scatter_add(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if set(kw) != {"shape", "index"}:
        raise ArgumentError("scatter_add(g, *index_arrays, shape=..., index=...) needs shape and index")
    shape = canon("scatter_add", SHAPE, kw["shape"], 0, ())
    return args, {"shape": shape, "index": kw["index"]}


def _bind_sequence(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not args or len(args) > 2:
        raise ArgumentError(f"{spec.name}(xs, axis=0) takes a sequence of arrays and an axis")
    xs = tuple(args[0])
    if not xs:
        raise TapegradError(f"{spec.name}: need at least one array")
    axis = args[1] if len(args) == 2 else kw.pop("axis", 0)
    if kw:
        raise ArgumentError(f"{spec.name}() got unexpected keyword arguments {sorted(kw)}")
    nd = ndim_of(xs[0]) + (1 if spec.name == "stack" else 0)
    return xs, {"axis": normalize_axis(spec.name, axis, nd, shape_of(xs[0]))}


def _is_array(x: Any) -> bool:
    """Array-like for indexing: ndarrays, Variables and plan symbols all carry shape and dtype."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.generic, bool, int, float))


# ---- VJP rules that branch on the input they are for -----------------------------------------


def _sub_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    return g if k == 0 else F.neg(g)


def _div_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """d(x / y) = dx / y - dy * out / y."""
    if k == 0:
        return F.div(g, ins[1])
    return F.neg(F.mul(g, F.div(out, ins[1])))


def _pow_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """d(x ** y) = dx * y * x ** (y - 1) + dy * out * log(x)."""
    x, y = ins
    if k == 0:
        return F.mul(g, F.mul(y, F.pow(x, F.sub(y, 1))))
    return F.mul(F.mul(g, out), F.log(x))


def _maximum_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """Ties send the cotangent to x."""
    x, y = ins
    return F.where(F.greater_equal(x, y) if k == 0 else F.less(x, y), g, 0)


def _minimum_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """Ties send the cotangent to x."""
    x, y = ins
    return F.where(F.less_equal(x, y) if k == 0 else F.greater(x, y), g, 0)


def _where_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """No cotangent for the condition; x takes it where cond holds, y elsewhere."""
    if k == 0:
        return None
    return F.where(ins[0], g, 0) if k == 1 else F.where(ins[0], 0, g)


def _clip_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """clip = minimum(maximum(x, a_min), a_max): a_max takes the cotangent where the upper bound
    is active; elsewhere a_min takes it where x is below a_min, and x takes the rest."""
    x, lo, hi = ins
    upper = F.greater(F.maximum(x, lo), hi)
    if k == 2:
        return F.where(upper, g, 0)
    below = F.less(x, lo)
    return F.where(upper, 0, F.where(below, g, 0) if k == 1 else F.where(below, 0, g))


def _getitem_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """The cotangent scattered back into x's shape; none for the index arrays."""
    if k != 0:
        return None
    return F.scatter_add(g, *ins[1:], shape=tuple(ins[0].shape), index=a["index"])


def _scatter_add_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """The cotangent gathered at the index; none for the index arrays."""
    if k != 0:
        return None
    return F.getitem(g, decode_index(a["index"], ins[1:]))


def _arctan2_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """arctan2(y, x): d/dy = x / (x**2 + y**2), d/dx = -y / (x**2 + y**2)."""
    y, x = ins
    r2 = F.add(F.square(x), F.square(y))
    return F.div(F.mul(g, x), r2) if k == 0 else F.neg(F.div(F.mul(g, y), r2))


def _flip(F: Any, x: Any, axis: int) -> Any:
    return F.getitem(x, (slice(None),) * axis + (slice(None, None, -1),))


def _cumsum_vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, a: Any, k: int) -> Any:
    """The cotangent summed from the end: a reversed cumulative sum."""
    axis = a["axis"]
    return _flip(F, F.cumsum(_flip(F, g, axis), axis), axis)


_LN2, _LN10 = math.log(2.0), math.log(10.0)


# ---- memory facts that depend on the record ---------------------------------------------------


def _sum_to_aliases(x: Aval, out: Aval, attrs: Attrs | None) -> bool:
    """sum_to to the input's own shape returns the input."""
    return x[0] == out[0]


def _getitem_aliases(x: Aval, out: Aval, attrs: Attrs | None) -> bool:
    """Basic indexing that leaves a C-contiguous block returns a view of it, except an integer
    for every axis, which gives numpy a scalar (the kernel then makes a new 0-d array)."""
    index = cast("tuple[Any, ...]", attrs["index"]) if attrs is not None else ()
    if attrs is None or any(item == ARRAY for item in index):
        return False
    if len(index) == len(x[0]) and all(type(item) is int for item in index):
        return False
    return infer.basic_index_is_contiguous(x[0], index)


# ---- the table -----------------------------------------------------------------------------

_RED = (Attr("axis", AXES, None), Attr("keepdims", BOOL, False))


def _elementwise(name: str, arity: int, forward: Callable[..., Any], vjp: Vjp | None, doc: str, *,
                 scratch: int = 0, binder: Binder | None = None) -> OpSpec:
    """The row of an elementwise op: inputs broadcast and map element by element to a new
    C-ordered buffer (never a view of an input); no attributes; a public function."""
    return OpSpec(name=name, arity=arity, forward=forward, vjp=vjp, doc=doc, attrs=(), binder=binder,
                  shape=infer.elementwise, elementwise=True, scratch=scratch, aliases=never_aliases, view=False,
                  public=True)


def _reduction(name: str, forward: Callable[..., Any], vjp: Vjp, doc: str, *, scratch: int = 0,
               attrs: tuple[Attr, ...] = _RED, shape: ShapeRule = infer.reduction) -> OpSpec:
    """The row of a reduction-like op over `axis`: a new buffer; a public function."""
    return OpSpec(name=name, arity=1, forward=forward, vjp=vjp, doc=doc, attrs=attrs, binder=None,
                  shape=shape, elementwise=False, scratch=scratch, aliases=never_aliases, view=False, public=True)


def _rows() -> list[OpSpec]:
    E = _elementwise  # a short family name keeps each elementwise row on one line
    return [
        # elementwise, broadcasting
        E("add", 2, operator.add, pass_on, "x + y"),
        E("sub", 2, operator.sub, _sub_vjp, "x - y"),
        E("mul", 2, operator.mul, lambda F, g, ins, out, a, k: F.mul(g, ins[1 - k]), "x * y"),
        E("div", 2, operator.truediv, _div_vjp, "x / y (true division)"),
        E("pow", 2, np.power, _pow_vjp, "x ** y"),
        E("maximum", 2, np.maximum, _maximum_vjp, "elementwise max; ties send the gradient to x"),
        E("minimum", 2, np.minimum, _minimum_vjp, "elementwise min; ties send the gradient to x"),
        E("logaddexp", 2, np.logaddexp, lambda F, g, ins, out, a, k: F.mul(g, F.exp(F.sub(ins[k], out))),
          "log(e ** x + e ** y), computed stably"),
        E("logaddexp2", 2, np.logaddexp2, lambda F, g, ins, out, a, k: F.mul(g, F.exp2(F.sub(ins[k], out))),
          "log2(2 ** x + 2 ** y), computed stably"),
        E("arctan2", 2, np.arctan2, _arctan2_vjp, "the angle of the point (x, y): arctan2(y, x), y first as in numpy"),
        E("where", 3, np.where, _where_vjp, "cond ? x : y elementwise (no gradient to cond)"),
        E("clip", 3, kernels.clip, _clip_vjp, "min(max(x, a_min), a_max); a None bound is the dtype's extreme",
          scratch=1, binder=_bind_clip),
        # elementwise, unary
        E("neg", 1, operator.neg, lambda F, g, ins, out, a, k: F.neg(g), "-x"),
        E("exp", 1, np.exp, lambda F, g, ins, out, a, k: F.mul(g, out), "e ** x"),
        E("log", 1, np.log, lambda F, g, ins, out, a, k: F.div(g, ins[0]), "natural logarithm"),
        E("log1p", 1, np.log1p, lambda F, g, ins, out, a, k: F.div(g, F.add(1, ins[0])), "log(1 + x), exact near 0"),
        E("sin", 1, np.sin, lambda F, g, ins, out, a, k: F.mul(g, F.cos(ins[0])), "sine"),
        E("cos", 1, np.cos, lambda F, g, ins, out, a, k: F.neg(F.mul(g, F.sin(ins[0]))), "cosine"),
        E("tan", 1, np.tan, lambda F, g, ins, out, a, k: F.mul(g, F.add(1, F.mul(out, out))), "tangent"),
        E("tanh", 1, np.tanh, lambda F, g, ins, out, a, k: F.mul(g, F.sub(1, F.mul(out, out))), "hyperbolic tangent"),
        E("sqrt", 1, np.sqrt, lambda F, g, ins, out, a, k: F.div(g, F.mul(2, out)), "square root"),
        E("abs", 1, np.abs, lambda F, g, ins, out, a, k: F.mul(g, F.sign(ins[0])), "absolute value"),
        E("sign", 1, np.sign, None, "-1, 0 or 1 (gradient zero almost everywhere)"),
        E("square", 1, np.square, lambda F, g, ins, out, a, k: F.mul(g, F.mul(2, ins[0])), "x * x"),
        E("expm1", 1, np.expm1, lambda F, g, ins, out, a, k: F.mul(g, F.add(out, 1)), "e ** x - 1, exact near 0"),
        E("exp2", 1, np.exp2, lambda F, g, ins, out, a, k: F.mul(g, F.mul(out, _LN2)), "2 ** x"),
        E("log2", 1, np.log2, lambda F, g, ins, out, a, k: F.div(g, F.mul(ins[0], _LN2)), "base-2 logarithm"),
        E("log10", 1, np.log10, lambda F, g, ins, out, a, k: F.div(g, F.mul(ins[0], _LN10)), "base-10 logarithm"),
        E("sinh", 1, np.sinh, lambda F, g, ins, out, a, k: F.mul(g, F.cosh(ins[0])), "hyperbolic sine"),
        E("cosh", 1, np.cosh, lambda F, g, ins, out, a, k: F.mul(g, F.sinh(ins[0])), "hyperbolic cosine"),
        E("arcsin", 1, np.arcsin, lambda F, g, ins, out, a, k: F.div(g, F.sqrt(F.sub(1, F.square(ins[0])))),
          "inverse sine"),
        E("arccos", 1, np.arccos, lambda F, g, ins, out, a, k: F.neg(F.div(g, F.sqrt(F.sub(1, F.square(ins[0]))))),
          "inverse cosine"),
        E("arctan", 1, np.arctan, lambda F, g, ins, out, a, k: F.div(g, F.add(1, F.square(ins[0]))), "inverse tangent"),
        E("arcsinh", 1, np.arcsinh, lambda F, g, ins, out, a, k: F.div(g, F.sqrt(F.add(F.square(ins[0]), 1))),
          "inverse hyperbolic sine"),
        E("arccosh", 1, np.arccosh, lambda F, g, ins, out, a, k: F.div(g, F.sqrt(F.sub(F.square(ins[0]), 1))),
          "inverse hyperbolic cosine"),
        E("arctanh", 1, np.arctanh, lambda F, g, ins, out, a, k: F.div(g, F.sub(1, F.square(ins[0]))),
          "inverse hyperbolic tangent"),
        E("floor", 1, np.floor, None, "round down (gradient zero almost everywhere)"),
        E("ceil", 1, np.ceil, None, "round up (gradient zero almost everywhere)"),
        E("trunc", 1, np.trunc, None, "round towards zero (gradient zero almost everywhere)"),
        E("rint", 1, np.rint, None, "round to the nearest integer, ties to even (gradient zero almost everywhere)"),
        E("sigmoid", 1, kernels.sigmoid, lambda F, g, ins, out, a, k: F.mul(g, F.mul(out, F.sub(1, out))),
          "1 / (1 + e ** -x)", scratch=2),
        E("relu", 1, kernels.relu, lambda F, g, ins, out, a, k: F.where(F.greater(ins[0], 0), g, 0), "max(x, 0)"),
        # comparisons: never differentiable, bool outputs
        E("equal", 2, np.equal, None, "x == y"),
        E("not_equal", 2, np.not_equal, None, "x != y"),
        E("less", 2, np.less, None, "x < y"),
        E("less_equal", 2, np.less_equal, None, "x <= y"),
        E("greater", 2, np.greater, None, "x > y"),
        E("greater_equal", 2, np.greater_equal, None, "x >= y"),
        OpSpec(name="astype", arity=1, forward=kernels.astype,
               vjp=lambda F, g, ins, out, a, k: F.astype(g, ins[0].dtype) if out.dtype.kind == "f" else None,
               doc="cast to dtype (gradient cast back; none through a cast to a non-float dtype)",
               attrs=(Attr("dtype", DTYPE),), binder=None, shape=infer.same_shape, elementwise=False,
               scratch=0, aliases=never_aliases, view=False, public=True),
        # reductions
        _reduction("sum", kernels.sum_, lambda F, g, ins, out, a, k: _unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
                   "sum over axis (None: all)"),
        _reduction("mean", kernels.mean,
                   lambda F, g, ins, out, a, k: F.div(_unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
                                                      _count(ins[0], _axes(a))),
                   "mean over axis (None: all)"),
        _reduction("prod", kernels.prod, _prod_vjp, "product over axis (None: all); its gradient is exact with zeros",
                   scratch=1),
        _reduction("max", kernels.max_, _maxmin_vjp, "max over axis; ties share the gradient"),
        _reduction("min", kernels.min_, _maxmin_vjp, "min over axis; ties share the gradient"),
        _reduction("logsumexp", kernels.logsumexp,
                   lambda F, g, ins, out, a, k: F.mul(_unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
                                                      F.exp(F.sub(ins[0], _unreduce(F, out, ins[0], _axes(a), a["keepdims"])))),
                   "log(sum(exp(x))) over axis, computed stably", scratch=2),
        _reduction("softmax", kernels.softmax,
                   lambda F, g, ins, out, a, k: F.mul(out, F.sub(g, F.sum(F.mul(g, out), a["axis"], True))),
                   "exp(x) / sum(exp(x)) over axis", scratch=1, attrs=(Attr("axis", AXES, -1),), shape=infer.same_shape),
        _reduction("log_softmax", kernels.log_softmax,
                   lambda F, g, ins, out, a, k: F.sub(g, F.mul(F.exp(out), F.sum(g, a["axis"], True))),
                   "x - logsumexp(x) over axis", scratch=2, attrs=(Attr("axis", AXES, -1),), shape=infer.same_shape),
        OpSpec(name="cumsum", arity=1, forward=kernels.cumsum, vjp=_cumsum_vjp,
               doc="cumulative sum along axis", attrs=(Attr("axis", AXIS),), binder=None, shape=infer.same_shape,
               elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        # shapes
        OpSpec(name="reshape", arity=1, forward=kernels.reshape,
               vjp=lambda F, g, ins, out, a, k: F.reshape(g, tuple(ins[0].shape)),
               doc="same elements, new shape (one -1 allowed)", attrs=(Attr("shape", NEWSHAPE),), binder=_bind_reshape,
               shape=infer.reshape, elementwise=False, scratch=0, aliases=always_aliases, view=False, public=True),
        OpSpec(name="transpose", arity=1, forward=kernels.transpose,
               vjp=lambda F, g, ins, out, a, k: F.transpose(g, tuple(np.argsort(a["axes"]).tolist())),
               doc="permute axes (None: reverse)", attrs=(Attr("axes", PERM, None),), binder=None,
               shape=infer.transpose, elementwise=False, scratch=0, aliases=always_aliases, view=True, public=True),
        OpSpec(name="broadcast_to", arity=1, forward=kernels.broadcast_to,
               vjp=lambda F, g, ins, out, a, k: F.sum_to(g, tuple(ins[0].shape)),
               doc="broadcast to shape (materialised)", attrs=(Attr("shape", SHAPE),), binder=_bind_shape_to,
               shape=infer.broadcast_to, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        OpSpec(name="sum_to", arity=1, forward=kernels.sum_to,
               vjp=lambda F, g, ins, out, a, k: F.broadcast_to(g, tuple(ins[0].shape)),
               doc="sum down to a shape that broadcasts to x.shape", attrs=(Attr("shape", SHAPE),), binder=_bind_shape_to,
               shape=infer.sum_to, elementwise=False, scratch=0, aliases=_sum_to_aliases, view=False, public=True),
        OpSpec(name="matmul", arity=2, forward=operator.matmul, vjp=_matmul_vjp,
               doc="matrix product, numpy semantics (1-D and batched)", attrs=(), binder=None,
               shape=infer.matmul, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        OpSpec(name="getitem", arity=-1, forward=kernels.getitem, vjp=_getitem_vjp,
               doc="x[index]: basic and integer-array indexing", attrs=(Attr("index", INDEX),), binder=_bind_getitem,
               shape=infer.getitem, elementwise=False, scratch=0, aliases=_getitem_aliases, view=False, public=True),
        OpSpec(name="scatter_add", arity=-1, forward=kernels.scatter_add, vjp=_scatter_add_vjp,
               doc="zeros(shape) with g added at index; repeats accumulate",
               attrs=(Attr("shape", SHAPE), Attr("index", INDEX)), binder=_bind_scatter_add,
               shape=infer.scatter_add, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        OpSpec(name="concatenate", arity=-1, forward=kernels.concatenate,
               vjp=lambda F, g, ins, out, a, k: F.getitem(g, _concat_slice(ins, a["axis"], k)),
               doc="join arrays along an existing axis", attrs=(Attr("axis", AXIS, 0),), binder=_bind_sequence,
               shape=infer.concatenate, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        OpSpec(name="stack", arity=-1, forward=kernels.stack,
               vjp=lambda F, g, ins, out, a, k: F.getitem(g, (slice(None),) * a["axis"] + (k,)),
               doc="join arrays along a new axis", attrs=(Attr("axis", AXIS, 0, extra_dims=1),), binder=_bind_sequence,
               shape=infer.stack, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        # control flow
        OpSpec(name="guard", arity=1, forward=kernels.guard, vjp=None,
               doc="the recording branched on bool/int/float(x) == value; replay re-checks it",
               attrs=(Attr("value", SCALAR), Attr("kind", GUARD_KIND)), binder=None,
               shape=infer.guard, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
        OpSpec(name="shape_guard", arity=1, forward=kernels.shape_guard, vjp=None,
               doc="the recording read x.shape (or len(x), x.size) == shape; replay at other shapes refuses",
               attrs=(Attr("shape", SHAPE),), binder=None,
               shape=infer.shape_guard, elementwise=False, scratch=0, aliases=never_aliases, view=False, public=True),
    ]


def _build() -> dict[str, OpSpec]:
    table: dict[str, OpSpec] = {}
    for spec in _rows():
        if spec.name in table:
            raise AssertionError(f"op {spec.name!r} has two rows")  # a registry bug, not user input
        table[spec.name] = spec
    return table


_TABLE = _build()
REGISTRY: Mapping[str, OpSpec] = MappingProxyType(_TABLE)
BUILTIN: frozenset[str] = frozenset(_TABLE)
"""The ops this module defines; the others in `REGISTRY` are custom ops registered at run time."""


def _numpy_function(spec: OpSpec) -> Callable[..., Any]:
    if spec.simple:
        return spec.forward
    forward, bind = spec.forward, spec.bind

    def call(*args: Any, **kwargs: Any) -> Any:
        ins, attrs = bind(args, kwargs)
        return forward(*ins, **attrs)

    call.__name__ = spec.name
    return call


def backend(name: str, functions: Mapping[str, Callable[..., Any]]) -> Any:
    """A backend `F` for VJP rules: a module object, because the interpreter specialises
    attribute loads on modules (`F.mul` is then a cached dict-slot read, several times cheaper
    than an attribute of a plain instance, and rules do several per record)."""
    module = ModuleType(name)
    module.__dict__.update(functions)
    return module


NUMPY: Any = backend("tapegrad.ops.numpy_backend", {name: _numpy_function(spec) for name, spec in REGISTRY.items()})
"""The numpy backend: every op with its public signature, computing on plain arrays."""


# ---- custom ops: registered at run time, by an explicit call (tapegrad.custom) ------------------

_LISTENERS: list[Callable[[str, OpSpec | None], None]] = []


def on_change(listener: Callable[[str, OpSpec | None], None]) -> None:
    """Call `listener(name, spec)` when a custom op is registered (`spec` None: unregistered):
    for modules that keep tables derived from `REGISTRY` (backends, the engine's rule table)."""
    _LISTENERS.append(listener)


def add_backend(module: ModuleType, make: Callable[[OpSpec], Callable[..., Any]]) -> None:
    """Keep backend `module` complete: `make(spec)` joins it for every op registered later."""
    def listener(name: str, spec: OpSpec | None) -> None:
        if spec is None:
            module.__dict__.pop(name, None)
        else:
            module.__dict__[name] = make(spec)
    on_change(listener)


add_backend(NUMPY, _numpy_function)


def register(spec: OpSpec) -> None:
    """Add custom op `spec` to `REGISTRY` (and to every backend), or replace the custom op of
    that name (re-running a definition, as notebooks do).  Built-in names cannot be taken."""
    if spec.name in BUILTIN:
        raise TapegradError(f"op name {spec.name!r} is a built-in op: choose another name (e.g. 'mylib.{spec.name}')")
    _TABLE[spec.name] = spec
    for listener in _LISTENERS:
        listener(spec.name, spec)


def unregister(name: str) -> None:
    """Remove custom op `name` (tests; a tape naming it then no longer loads in this process)."""
    if name in BUILTIN:
        raise TapegradError(f"op {name!r} is built in and cannot be unregistered")
    if _TABLE.pop(name, None) is not None:
        for listener in _LISTENERS:
            listener(name, None)


def op_table_markdown() -> str:
    """The attribute schemas of the registry as the Markdown table docs/FORMAT.md shows (a test
    keeps the two equal): ops with the same attributes share a row, in registry order, and ops
    without attributes fall under "every other op", so adding one leaves the table as it is.
    Regenerate with `python -m tapegrad.ops`."""
    groups: dict[str, list[str]] = {}
    for spec in REGISTRY.values():
        if spec.attrs and spec.name in BUILTIN:
            groups.setdefault(", ".join(f"`{a.name}`: {a.kind}" for a in spec.attrs), []).append(spec.name)
    rows = ["| op | attribute: kind |", "|----|-----------------|"]
    rows += [f"| {', '.join(names)} | {attrs} |" for attrs, names in groups.items()]
    rows.append("| every other op | none |")
    return "\n".join(rows)
