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
from dataclasses import replace
from types import MappingProxyType, ModuleType
from typing import Any, cast

import numpy as np

from ..errors import TapegradError
from . import infer as I
from . import kernels as K
from .spec import (
    AXES,
    AXIS,
    BOOL,
    DTYPE,
    GUARD_KIND,
    INDEX,
    PERM,
    SCALAR,
    SHAPE,
    Attr,
    Attrs,
    OpSpec,
    canon,
    decode_index,
    dtype_of,
    encode_index,
    ndim_of,
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


def _concat_slice(ins: Sequence[Any], axis: int, k: int) -> tuple[Any, ...]:
    start = sum(int(ins[j].shape[axis]) for j in range(k))
    return (slice(None),) * axis + (slice(start, start + int(ins[k].shape[axis])),)


# ---- custom binders (public signature != record form) --------------------------------------

def _bind_reshape(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    ins, attrs = split_args(spec, args, kw, 1)
    x, shape = ins[0], attrs["shape"]
    dims = list(shape if isinstance(shape, (tuple, list)) else (shape,))
    size = math.prod(shape_of(x))
    if dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        if known and size % known == 0:
            dims[dims.index(-1)] = size // known
    if any(not isinstance(d, (int, np.integer)) or isinstance(d, bool) for d in dims):
        raise TapegradError(f"reshape: shape must be integers, got {tuple(dims)}")
    if -1 in dims or math.prod(dims) != size:
        raise TapegradError(f"reshape: cannot reshape input of shape {shape_of(x)} into shape {tuple(dims)}")
    new = canon(spec.name, SHAPE, tuple(dims), 0, ())
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
        raise TypeError("scatter_add(g, *index_arrays, shape=..., index=...) needs shape and index")
    shape = canon("scatter_add", SHAPE, kw["shape"], 0, ())
    return args, {"shape": shape, "index": kw["index"]}


def _bind_sequence(spec: OpSpec, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not args or len(args) > 2:
        raise TypeError(f"{spec.name}(xs, axis=0) takes a sequence of arrays and an axis")
    xs = tuple(args[0])
    if not xs:
        raise TapegradError(f"{spec.name}: need at least one array")
    axis = args[1] if len(args) == 2 else kw.pop("axis", 0)
    if kw:
        raise TypeError(f"{spec.name}() got unexpected keyword arguments {sorted(kw)}")
    nd = ndim_of(xs[0]) + (1 if spec.name == "stack" else 0)
    return xs, {"axis": normalize_axis(spec.name, axis, nd, shape_of(xs[0]))}


def _is_array(x: Any) -> bool:
    """Array-like for indexing: ndarrays, Variables and plan symbols all carry shape and dtype."""
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (np.generic, bool, int, float))


# ---- the table -----------------------------------------------------------------------------

_RED = (Attr("axis", AXES, None), Attr("keepdims", BOOL, False))


def _build() -> dict[str, OpSpec]:
    specs = [
        # elementwise, broadcasting
        OpSpec("add", 2, operator.add, pass_on, "x + y"),
        OpSpec("sub", 2, operator.sub, lambda F, g, ins, out, a, k: g if k == 0 else F.neg(g), "x - y"),
        OpSpec("mul", 2, operator.mul, lambda F, g, ins, out, a, k: F.mul(g, ins[1 - k]), "x * y"),
        OpSpec("div", 2, operator.truediv,
               lambda F, g, ins, out, a, k: F.div(g, ins[1]) if k == 0 else F.neg(F.mul(g, F.div(out, ins[1]))),
               "x / y (true division)"),
        OpSpec("pow", 2, np.power,
               lambda F, g, ins, out, a, k: F.mul(g, F.mul(ins[1], F.pow(ins[0], F.sub(ins[1], 1)))) if k == 0
               else F.mul(F.mul(g, out), F.log(ins[0])),
               "x ** y"),
        OpSpec("maximum", 2, np.maximum,
               lambda F, g, ins, out, a, k: F.where(F.greater_equal(ins[0], ins[1]) if k == 0 else F.less(ins[0], ins[1]), g, 0),
               "elementwise max; ties send the gradient to x"),
        OpSpec("minimum", 2, np.minimum,
               lambda F, g, ins, out, a, k: F.where(F.less_equal(ins[0], ins[1]) if k == 0 else F.greater(ins[0], ins[1]), g, 0),
               "elementwise min; ties send the gradient to x"),
        OpSpec("where", 3, np.where,
               lambda F, g, ins, out, a, k: None if k == 0 else F.where(ins[0], g, 0) if k == 1 else F.where(ins[0], 0, g),
               "cond ? x : y elementwise (no gradient to cond)"),
        OpSpec("clip", 3, K.clip,
               lambda F, g, ins, out, a, k: (  # clip = minimum(maximum(x, a_min), a_max)
                   F.where(F.greater(F.maximum(ins[0], ins[1]), ins[2]), g if k == 2 else 0,
                           0 if k == 2 else F.where(F.less(ins[0], ins[1]), g if k == 1 else 0, 0 if k == 1 else g))),
               "min(max(x, a_min), a_max); a None bound is the dtype's extreme", binder=_bind_clip),
        # elementwise, unary
        OpSpec("neg", 1, operator.neg, lambda F, g, ins, out, a, k: F.neg(g), "-x"),
        OpSpec("exp", 1, np.exp, lambda F, g, ins, out, a, k: F.mul(g, out), "e ** x"),
        OpSpec("log", 1, np.log, lambda F, g, ins, out, a, k: F.div(g, ins[0]), "natural logarithm"),
        OpSpec("sin", 1, np.sin, lambda F, g, ins, out, a, k: F.mul(g, F.cos(ins[0])), "sine"),
        OpSpec("cos", 1, np.cos, lambda F, g, ins, out, a, k: F.neg(F.mul(g, F.sin(ins[0]))), "cosine"),
        OpSpec("tan", 1, np.tan, lambda F, g, ins, out, a, k: F.mul(g, F.add(1, F.mul(out, out))), "tangent"),
        OpSpec("tanh", 1, np.tanh, lambda F, g, ins, out, a, k: F.mul(g, F.sub(1, F.mul(out, out))), "hyperbolic tangent"),
        OpSpec("sqrt", 1, np.sqrt, lambda F, g, ins, out, a, k: F.div(g, F.mul(2, out)), "square root"),
        OpSpec("abs", 1, np.abs, lambda F, g, ins, out, a, k: F.mul(g, F.sign(ins[0])), "absolute value"),
        OpSpec("sign", 1, np.sign, None, "-1, 0 or 1 (gradient zero almost everywhere)"),
        OpSpec("sigmoid", 1, K.sigmoid, lambda F, g, ins, out, a, k: F.mul(g, F.mul(out, F.sub(1, out))), "1 / (1 + e ** -x)"),
        OpSpec("relu", 1, K.relu, lambda F, g, ins, out, a, k: F.where(F.greater(ins[0], 0), g, 0), "max(x, 0)"),
        OpSpec("astype", 1, K.astype,
               lambda F, g, ins, out, a, k: F.astype(g, ins[0].dtype) if out.dtype.kind == "f" else None,
               "cast to dtype (gradient cast back; none through a cast to a non-float dtype)",
               (Attr("dtype", DTYPE),)),
        # comparisons: never differentiable, bool outputs
        OpSpec("equal", 2, np.equal, None, "x == y"),
        OpSpec("not_equal", 2, np.not_equal, None, "x != y"),
        OpSpec("less", 2, np.less, None, "x < y"),
        OpSpec("less_equal", 2, np.less_equal, None, "x <= y"),
        OpSpec("greater", 2, np.greater, None, "x > y"),
        OpSpec("greater_equal", 2, np.greater_equal, None, "x >= y"),
        # reductions
        OpSpec("sum", 1, K.sum_, lambda F, g, ins, out, a, k: _unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
               "sum over axis (None: all)", _RED),
        OpSpec("mean", 1, K.mean,
               lambda F, g, ins, out, a, k: F.div(_unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
                                                  _count(ins[0], _axes(a))),
               "mean over axis (None: all)", _RED),
        OpSpec("max", 1, K.max_, _maxmin_vjp, "max over axis; ties share the gradient", _RED),
        OpSpec("min", 1, K.min_, _maxmin_vjp, "min over axis; ties share the gradient", _RED),
        OpSpec("logsumexp", 1, K.logsumexp,
               lambda F, g, ins, out, a, k: F.mul(_unreduce(F, g, ins[0], _axes(a), a["keepdims"]),
                                                  F.exp(F.sub(ins[0], _unreduce(F, out, ins[0], _axes(a), a["keepdims"])))),
               "log(sum(exp(x))) over axis, computed stably", _RED),
        OpSpec("softmax", 1, K.softmax,
               lambda F, g, ins, out, a, k: F.mul(out, F.sub(g, F.sum(F.mul(g, out), a["axis"], True))),
               "exp(x) / sum(exp(x)) over axis", (Attr("axis", AXES, -1),)),
        OpSpec("log_softmax", 1, K.log_softmax,
               lambda F, g, ins, out, a, k: F.sub(g, F.mul(F.exp(out), F.sum(g, a["axis"], True))),
               "x - logsumexp(x) over axis", (Attr("axis", AXES, -1),)),
        # shapes
        OpSpec("reshape", 1, K.reshape, lambda F, g, ins, out, a, k: F.reshape(g, tuple(ins[0].shape)),
               "same elements, new shape (one -1 allowed)", (Attr("shape", SHAPE),), _bind_reshape),
        OpSpec("transpose", 1, K.transpose,
               lambda F, g, ins, out, a, k: F.transpose(g, tuple(np.argsort(a["axes"]).tolist())),
               "permute axes (None: reverse)", (Attr("axes", PERM, None),)),
        OpSpec("broadcast_to", 1, K.broadcast_to, lambda F, g, ins, out, a, k: F.sum_to(g, tuple(ins[0].shape)),
               "broadcast to shape (materialised)", (Attr("shape", SHAPE),), _bind_shape_to),
        OpSpec("sum_to", 1, K.sum_to, lambda F, g, ins, out, a, k: F.broadcast_to(g, tuple(ins[0].shape)),
               "sum down to a shape that broadcasts to x.shape", (Attr("shape", SHAPE),), _bind_shape_to),
        OpSpec("matmul", 2, operator.matmul, _matmul_vjp, "matrix product, numpy semantics (1-D and batched)"),
        OpSpec("getitem", -1, K.getitem,
               lambda F, g, ins, out, a, k: F.scatter_add(g, *ins[1:], shape=tuple(ins[0].shape), index=a["index"]) if k == 0 else None,
               "x[index]: basic and integer-array indexing", (Attr("index", INDEX),), _bind_getitem),
        OpSpec("scatter_add", -1, K.scatter_add,
               lambda F, g, ins, out, a, k: F.getitem(g, decode_index(a["index"], ins[1:])) if k == 0 else None,
               "zeros(shape) with g added at index; repeats accumulate",
               (Attr("shape", SHAPE), Attr("index", INDEX)), _bind_scatter_add),
        OpSpec("concatenate", -1, K.concatenate,
               lambda F, g, ins, out, a, k: F.getitem(g, _concat_slice(ins, a["axis"], k)),
               "join arrays along an existing axis", (Attr("axis", AXIS, 0),), _bind_sequence),
        OpSpec("stack", -1, K.stack,
               lambda F, g, ins, out, a, k: F.getitem(g, (slice(None),) * a["axis"] + (k,)),
               "join arrays along a new axis", (Attr("axis", AXIS, 0, extra_dims=1),), _bind_sequence),
        # control flow
        OpSpec("guard", 1, K.guard, None, "the recording branched on bool/int/float(x) == value; replay re-checks it",
               (Attr("value", SCALAR), Attr("kind", GUARD_KIND))),
    ]
    rules = {"sum": I.reduction, "mean": I.reduction, "max": I.reduction, "min": I.reduction,
             "logsumexp": I.reduction, "softmax": I.same_shape, "log_softmax": I.same_shape,
             "astype": I.same_shape, "reshape": I.reshape, "transpose": I.transpose,
             "broadcast_to": I.broadcast_to, "sum_to": I.sum_to, "matmul": I.matmul,
             "getitem": I.getitem, "scatter_add": I.scatter_add, "concatenate": I.concatenate,
             "stack": I.stack, "guard": I.guard}  # every other op is elementwise
    return {s.name: replace(s, shape_rule=rules.get(s.name)) for s in specs}


REGISTRY: Mapping[str, OpSpec] = MappingProxyType(_build())


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
