"""numpy's dispatch protocols for Variables: plain `np.*` calls record registry ops.

Contract:
- `array_ufunc` and `array_function` are `Variable.__array_ufunc__` and
  `Variable.__array_function__` (the tracer installs them).  numpy calls them whenever any
  argument of a ufunc or of a dispatched numpy function is a Variable, in any position, mixed
  with arrays and Python scalars.  Each supported name records registry ops, through the same
  op functions as `tapegrad.<name>` (`UFUNCS`, `FUNCTIONS`: the two tables), and returns a
  Variable; several names are compositions of registry ops (`np.var`, `np.tensordot`,
  `np.einsum`, `np.pad`, ...), recorded as the ops they are made of.
- Values that are not differentiable functions of the input (`np.argmax`, `np.shape`,
  `np.isnan`, `np.nonzero`, `np.zeros_like`, ...) are computed on the data and returned as plain
  numpy results: they leave the graph, as `np.asarray(x)` does (`PLAIN`).  Comparisons and
  `np.any`/`np.all` return Variables that carry no gradient, so `if np.all(x > 0):` inside
  `record()` leaves a guard that replay re-checks.
- A ufunc, ufunc method or numpy function with no entry raises `UnsupportedError` (a TypeError)
  naming it and saying how to add an op; an argument numpy accepts but tapegrad cannot honour
  (`out=`, `where=`, `initial=`, a `dtype` other than None) raises `ArgumentError`.  Nothing
  drops silently out of the tape.
- A call that fails leaves the tape unchanged: every handler checks its arguments (axes,
  shapes, sections) before it records its first op.
- `public_functions()` maps the numpy names to the handlers, for `tapegrad.numpy`.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import ArgumentError, TapegradError, UnsupportedError
from .ops import REGISTRY
from .ops.spec import AXES, canon, dtype_of, normalize_axis
from .tracer import OPS, Variable, _binary_op, _unary_op

Handler = Callable[..., Any]

_HOW = ("register one with tg.defop(name, forward, vjp) or a tg.Function subclass "
        "(docs/numpy.md, 'Adding an op'), or call np.asarray(x) to leave the graph on purpose")


def unsupported(what: str) -> UnsupportedError:
    """The error for a numpy callable with no registry op."""
    return UnsupportedError(f"{what} has no tapegrad op, so it cannot record a gradient: {_HOW}")


# ---- small helpers ----------------------------------------------------------------------------


def _shape(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(x))


def _ndim(x: Any) -> int:
    return len(_shape(x))


def _reject(name: str, given: dict[str, Any], allowed: dict[str, Any] | None = None) -> None:
    """ArgumentError for numpy keyword arguments tapegrad cannot honour (None, or the value in
    `allowed`, means "not used" and is accepted)."""
    allowed = allowed or {}
    for key, value in given.items():
        if value is None or (key in allowed and _same(value, allowed[key])) or value is np._NoValue:
            continue
        if key == "out":
            raise ArgumentError(f"np.{name}: out= cannot hold a Variable result (Variables are immutable): "
                                f"assign the result instead (y = np.{name}(...))")
        raise ArgumentError(f"np.{name}: the argument {key}={value!r} is not supported on Variables")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _axes(name: str, axis: Any, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """`axis` normalised (None, or sorted distinct non-negative ints); raises before any record."""
    return canon(name, AXES, axis, len(shape), shape)  # type: ignore[return-value]


def _axis(name: str, axis: Any, ndim: int, shape: tuple[int, ...]) -> int:
    return normalize_axis(name, axis, ndim, shape)


def _broadcast_shapes(name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise TapegradError(f"{name}: shapes {', '.join(map(str, shapes))} do not broadcast") from None


def _data(x: Any) -> Any:
    """Variables (also inside lists, tuples and dicts) replaced by their data."""
    if isinstance(x, Variable):
        return x.data
    if isinstance(x, (list, tuple)):
        return type(x)(_data(v) for v in x)
    if isinstance(x, dict):
        return {k: _data(v) for k, v in x.items()}
    return x


def _plain(func: Handler) -> Handler:
    """`func` computed on the data: for results that are not differentiable values."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return func(*_data(args), **_data(kwargs))
    call.__name__ = getattr(func, "__name__", "plain")
    return call


# ---- reductions -------------------------------------------------------------------------------


def _scalar_axis(a: Any, axis: Any) -> Any:
    """numpy's sum, prod, max, min, any and all (not mean, var, std) reduce a 0-d array over
    axis 0 or -1 as if it had one axis: the whole of it."""
    if axis is not None and _ndim(a) == 0:
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        if all(isinstance(i, (int, np.integer)) and i in (0, -1) for i in axes):
            return None
    return axis


def _sum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
         initial: Any = None, where: Any = True) -> Variable:
    _reject("sum", {"out": out, "initial": initial, "where": where}, {"where": True})
    axis = _scalar_axis(a, axis)
    if dtype is not None:
        a = OPS.astype(a, dtype)
    return OPS.sum(a, axis, keepdims)


def _mean(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False, *,
          where: Any = True) -> Variable:
    _reject("mean", {"out": out, "where": where}, {"where": True})
    if dtype is not None:
        a = OPS.astype(a, dtype)
    return OPS.mean(a, axis, keepdims)


def _extreme(name: str) -> Handler:
    def call(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False, initial: Any = None,
             where: Any = True) -> Variable:
        _reject(name, {"out": out, "initial": initial, "where": where}, {"where": True})
        axis = _scalar_axis(a, axis)
        return getattr(OPS, name)(a, axis, keepdims)  # type: ignore[no-any-return]
    return call


def _prod(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False, initial: Any = None,
          where: Any = True) -> Variable:
    _reject("prod", {"out": out, "initial": initial, "where": where}, {"where": True})
    axis = _scalar_axis(a, axis)
    if dtype is not None:
        a = OPS.astype(a, dtype)
    return OPS.prod(a, axis, keepdims)


def _var(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, ddof: Any = 0, keepdims: bool = False, *,
         where: Any = True, mean: Any = None, correction: Any = None) -> Variable:
    _reject("var", {"out": out, "where": where, "mean": mean}, {"where": True})
    if correction is not None:
        ddof = correction
    shape = _shape(a)
    axes = _axes("var", axis, shape)
    if dtype is not None:
        a = OPS.astype(a, dtype)
    count = math.prod(shape) if axes is None else math.prod(shape[i] for i in axes)
    d = OPS.sub(a, OPS.mean(a, axis, True))
    return OPS.div(OPS.sum(OPS.mul(d, d), axis, keepdims), max(count - ddof, 0))


def _std(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, ddof: Any = 0, keepdims: bool = False, *,
         where: Any = True, mean: Any = None, correction: Any = None) -> Variable:
    return OPS.sqrt(_var(a, axis, dtype, out, ddof, keepdims, where=where, mean=mean, correction=correction))


def _any(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False, *, where: Any = True) -> Variable:
    _reject("any", {"out": out, "where": where}, {"where": True})
    axis = _scalar_axis(a, axis)
    _axes("any", axis, _shape(a))
    return OPS.greater(OPS.sum(OPS.astype(OPS.not_equal(a, 0), "int64"), axis, keepdims), 0)


def _all(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False, *, where: Any = True) -> Variable:
    _reject("all", {"out": out, "where": where}, {"where": True})
    axis = _scalar_axis(a, axis)
    _axes("all", axis, _shape(a))
    return OPS.equal(OPS.sum(OPS.astype(OPS.equal(a, 0), "int64"), axis, keepdims), 0)


def _cumsum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> Variable:
    _reject("cumsum", {"out": out})
    if axis is None:
        a, axis = OPS.reshape(a, (-1,)), 0
    else:
        _axis("cumsum", axis, _ndim(a), _shape(a))
    if dtype is not None:
        a = OPS.astype(a, dtype)
    return OPS.cumsum(a, axis)


def _diff(a: Any, n: int = 1, axis: int = -1, prepend: Any = np._NoValue, append: Any = np._NoValue) -> Any:
    shape = _shape(a)
    if not shape:
        raise ArgumentError("np.diff: the input must be at least one-dimensional")
    ax = _axis("diff", axis, len(shape), shape)
    if type(n) is not int or n < 0:
        raise ArgumentError(f"np.diff: n must be a non-negative int, got {n!r}")
    if prepend is not np._NoValue or append is not np._NoValue:
        parts = [p for p in (prepend, a, append) if p is not np._NoValue]
        parts = [OPS.broadcast_to(p, shape[:ax] + (1,) + shape[ax + 1:]) if _ndim(p) == 0 else p for p in parts]
        a = OPS.concatenate(parts, ax)
    lead = (slice(None),) * ax
    for _ in range(n):
        a = OPS.sub(OPS.getitem(a, lead + (slice(1, None),)), OPS.getitem(a, lead + (slice(None, -1),)))
    return a


def _norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Variable:  # noqa: A002
    shape = _shape(x)
    axes = _axes("linalg.norm", axis, shape)
    vector = (axes is None and (ord is None or len(shape) == 1)) or (axes is not None and len(axes) == 1)
    if ord is None or (ord == 2 and vector) or (ord == "fro" and not vector):
        return OPS.sqrt(OPS.sum(OPS.mul(x, x), axes, keepdims))
    if vector and ord == 1:
        return OPS.sum(OPS.abs(x), axes, keepdims)
    if vector and ord == np.inf:
        return OPS.max(OPS.abs(x), axes, keepdims)
    raise unsupported(f"np.linalg.norm with ord={ord!r} on {'a vector' if vector else 'a matrix'}")


# ---- products -------------------------------------------------------------------------------


def _tensordot(a: Any, b: Any, axes: Any = 2) -> Variable:
    sa, sb = _shape(a), _shape(b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        if n < 0 or n > len(sa) or n > len(sb):
            raise TapegradError(f"tensordot: cannot sum over {n} axes of shapes {sa} and {sb}")
        ax_a, ax_b = list(range(len(sa) - n, len(sa))), list(range(n))
    else:
        try:
            ax_a_in, ax_b_in = axes
        except (TypeError, ValueError):
            raise ArgumentError(f"np.tensordot: axes must be an int or a pair of axis lists, got {axes!r}") from None
        ax_a_in = [ax_a_in] if isinstance(ax_a_in, (int, np.integer)) else list(ax_a_in)
        ax_b_in = [ax_b_in] if isinstance(ax_b_in, (int, np.integer)) else list(ax_b_in)
        ax_a = [_axis("tensordot", i, len(sa), sa) for i in ax_a_in]
        ax_b = [_axis("tensordot", i, len(sb), sb) for i in ax_b_in]
    if len(ax_a) != len(ax_b) or any(sa[i] != sb[j] for i, j in zip(ax_a, ax_b, strict=False)):
        raise TapegradError(f"tensordot: axes {ax_a} of shape {sa} do not match axes {ax_b} of shape {sb}")
    free_a = [i for i in range(len(sa)) if i not in ax_a]
    free_b = [j for j in range(len(sb)) if j not in ax_b]
    k = math.prod(sa[i] for i in ax_a)
    a2 = OPS.reshape(OPS.transpose(a, tuple(free_a + ax_a)), (math.prod(sa[i] for i in free_a), k))
    b2 = OPS.reshape(OPS.transpose(b, tuple(ax_b + free_b)), (k, math.prod(sb[j] for j in free_b)))
    return OPS.reshape(OPS.matmul(a2, b2), tuple(sa[i] for i in free_a) + tuple(sb[j] for j in free_b))


def _dot(a: Any, b: Any, out: Any = None) -> Variable:
    _reject("dot", {"out": out})
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return OPS.mul(a, b)
    if na <= 2 and nb <= 2:
        return OPS.matmul(a, b)
    return _tensordot(a, b, ([na - 1], [nb - 2 if nb >= 2 else 0]))


def _vdot(a: Any, b: Any) -> Variable:
    return OPS.sum(OPS.mul(OPS.reshape(a, (-1,)), OPS.reshape(b, (-1,))))


def _inner(a: Any, b: Any) -> Variable:
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return OPS.mul(a, b)
    return _tensordot(a, b, ([na - 1], [nb - 1]))


def _outer(a: Any, b: Any, out: Any = None) -> Variable:
    _reject("outer", {"out": out})
    return OPS.mul(OPS.reshape(a, (-1, 1)), OPS.reshape(b, (1, -1)))


def _einsum(subscripts: Any, *operands: Any, out: Any = None, optimize: Any = False, **kwargs: Any) -> Variable:
    """einsum as diagonals (an index repeated within one operand), transposes, one broadcast
    product and one sum: the product of all operands is materialised, so keep operands small or
    use matmul/tensordot for big contractions.  Everything is checked before the first record."""
    _reject("einsum", {"out": out, **kwargs}, {"dtype": None, "order": "K", "casting": "safe"})
    if not isinstance(subscripts, str):
        raise unsupported("np.einsum in the interleaved (operand, sublist) form")
    spec = subscripts.replace(" ", "")
    ins_part, arrow, out_part = spec.partition("->")
    in_labels = ins_part.split(",")
    if len(in_labels) != len(operands):
        raise ArgumentError(f"np.einsum: subscripts {subscripts!r} name {len(in_labels)} operand(s), got {len(operands)}")
    # An ellipsis stands for an operand's unnamed leading axes; they broadcast, aligned from the right.
    spare = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in spec]
    unnamed = []
    for labels, x in zip(in_labels, operands, strict=True):
        named = labels.replace("...", "", 1)
        extra = _ndim(x) - len(named)
        if not set(named) <= set(string.ascii_letters) or extra < 0 or (extra and "..." not in labels):
            raise ArgumentError(f"np.einsum: {labels!r} does not fit an input of shape {_shape(x)}")
        unnamed.append(extra)
    ell = "".join(spare[:max(unnamed, default=0)])
    in_labels = [labels.replace("...", ell[len(ell) - k:], 1) for labels, k in zip(in_labels, unnamed, strict=True)]
    if arrow:
        out_part = out_part.replace("...", ell, 1)
    else:
        once = [c for c in sorted(set("".join(in_labels)) - set(ell)) if "".join(in_labels).count(c) == 1]
        out_part = ell + "".join(once)
    sizes: dict[str, int] = {}
    for labels, x in zip(in_labels, operands, strict=True):
        for c, d in zip(labels, _shape(x), strict=True):
            known = sizes.setdefault(c, d)
            if known != d and not (c in ell and 1 in (known, d)):
                raise TapegradError(f"einsum: index {c!r} has sizes {known} and {d}")
            sizes[c] = max(known, d)
    if len(set(out_part)) != len(out_part) or not set(out_part) <= set(sizes):
        raise ArgumentError(f"np.einsum: bad output subscripts in {subscripts!r}")
    order = list(out_part) + sorted(set(sizes) - set(out_part))
    product: Any = None
    for labels, x in zip(in_labels, operands, strict=True):
        while len(set(labels)) != len(labels):  # a repeated index: its diagonal, appended last
            c = next(c for c in labels if labels.count(c) > 1)
            first = labels.index(c)
            second = labels.index(c, first + 1)
            x = _diagonal(x, 0, first, second)
            labels = "".join(d for k, d in enumerate(labels) if k not in (first, second)) + c
        mine = sorted(labels, key=order.index)
        if mine != list(labels):
            x = OPS.transpose(x, tuple(labels.index(c) for c in mine))
        full = tuple(_shape(x)[mine.index(c)] if c in mine else 1 for c in order)
        if full != _shape(x):
            x = OPS.reshape(x, full)
        product = x if product is None else OPS.mul(product, x)
    assert product is not None
    summed = tuple(range(len(out_part), len(order)))
    result = OPS.sum(product, summed) if summed else product
    want = tuple(sizes[c] for c in out_part)
    return result if _shape(result) == want else OPS.broadcast_to(result, want)


def _diagonal(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Variable:
    shape = _shape(a)
    if len(shape) < 2:
        raise ArgumentError("np.diagonal: the input must have at least two dimensions")
    a1, a2 = _axis("diagonal", axis1, len(shape), shape), _axis("diagonal", axis2, len(shape), shape)
    if a1 == a2:
        raise TapegradError("diagonal: axis1 and axis2 cannot be the same")
    rest = [i for i in range(len(shape)) if i not in (a1, a2)]
    n = max(0, min(shape[a1] - max(0, -offset), shape[a2] - max(0, offset)))
    rows = np.arange(n) + max(0, -offset)
    moved = OPS.transpose(a, (*rest, a1, a2))
    return OPS.getitem(moved, (Ellipsis, rows, rows + offset))


def _trace(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None, out: Any = None) -> Variable:
    _reject("trace", {"out": out, "dtype": dtype})
    return OPS.sum(_diagonal(a, offset, axis1, axis2), -1)


def _diag(v: Any, k: int = 0) -> Variable:
    shape = _shape(v)
    if len(shape) == 2:
        return _diagonal(v, k)
    if len(shape) != 1:
        raise ArgumentError("np.diag: the input must be 1-D or 2-D")
    n = shape[0] + abs(k)
    rows = np.arange(shape[0]) + max(0, -k)
    return OPS.scatter_add(v, rows, rows + k, shape=(n, n), index=(("array",), ("array",)))


def _tri(upper: bool) -> Handler:
    def call(m: Any, k: int = 0) -> Variable:
        shape = _shape(m)
        if len(shape) < 2:
            raise ArgumentError(f"np.{'triu' if upper else 'tril'}: the input must have at least two dimensions")
        ones = np.ones(shape[-2:], dtype=bool)
        keep = np.triu(ones, k) if upper else np.tril(ones, k)
        return OPS.where(keep, m, 0)
    return call


# ---- shapes -----------------------------------------------------------------------------------


def _reshape(a: Any, shape: Any = None, order: str = "C", *, newshape: Any = None, copy: Any = None) -> Variable:
    _reject("reshape", {"order": order, "copy": copy}, {"order": "C"})
    return OPS.reshape(a, newshape if shape is None else shape)


def _ravel(a: Any, order: str = "C") -> Variable:
    _reject("ravel", {"order": order}, {"order": "C"})
    return OPS.reshape(a, (-1,))


def _squeeze(a: Any, axis: Any = None) -> Variable:
    shape = _shape(a)
    axes = _axes("squeeze", axis, shape)
    drop = [i for i, d in enumerate(shape) if d == 1] if axes is None else list(axes)
    if any(shape[i] != 1 for i in drop):
        raise TapegradError(f"squeeze: cannot select an axis of size other than one (shape {shape}, axis {axis})")
    return OPS.reshape(a, tuple(d for i, d in enumerate(shape) if i not in drop))


def _expand_dims(a: Any, axis: Any) -> Variable:
    shape = _shape(a)
    given = axis if isinstance(axis, (tuple, list)) else (axis,)
    nd = len(shape) + len(given)
    axes = canon("expand_dims", AXES, tuple(given), nd, (*shape, *(1,) * len(given)))
    assert isinstance(axes, tuple)
    it = iter(shape)
    return OPS.reshape(a, tuple(1 if i in axes else next(it) for i in range(nd)))


def _transpose(a: Any, axes: Any = None) -> Variable:
    return OPS.transpose(a, axes)


def _swapaxes(a: Any, axis1: int, axis2: int) -> Variable:
    shape = _shape(a)
    i, j = _axis("swapaxes", axis1, len(shape), shape), _axis("swapaxes", axis2, len(shape), shape)
    perm = list(range(len(shape)))
    perm[i], perm[j] = j, i
    return OPS.transpose(a, tuple(perm))


def _moveaxis(a: Any, source: Any, destination: Any) -> Variable:
    shape = _shape(a)
    src = [source] if isinstance(source, (int, np.integer)) else list(source)
    dst = [destination] if isinstance(destination, (int, np.integer)) else list(destination)
    src_n = [_axis("moveaxis", s, len(shape), shape) for s in src]
    dst_n = [_axis("moveaxis", d, len(shape), shape) for d in dst]
    if len(src_n) != len(dst_n) or len(set(src_n)) != len(src_n) or len(set(dst_n)) != len(dst_n):
        raise ArgumentError("np.moveaxis: source and destination must be distinct axes of the same length")
    order = [n for n in range(len(shape)) if n not in src_n]
    for d, s in sorted(zip(dst_n, src_n, strict=True)):
        order.insert(d, s)
    return OPS.transpose(a, tuple(order))


def _atleast(n: int) -> Handler:
    def one(x: Any) -> Any:
        shape = _shape(x)
        if len(shape) >= n:
            return x if isinstance(x, Variable) else OPS.reshape(x, shape)
        if n == 3 and len(shape) == 2:
            return OPS.reshape(x, (*shape, 1))
        if n == 3 and len(shape) == 1:
            return OPS.reshape(x, (1, *shape, 1))
        return OPS.reshape(x, (1,) * (n - len(shape)) + shape)

    def call(*arys: Any) -> Any:
        results = [one(x) for x in arys]
        return results[0] if len(results) == 1 else tuple(results)
    return call


def _broadcast_to(array: Any, shape: Any, subok: bool = False) -> Variable:
    return OPS.broadcast_to(array, shape)


def _broadcast_arrays(*args: Any, subok: bool = False) -> tuple[Any, ...]:
    shape = _broadcast_shapes("broadcast_arrays", *(_shape(a) for a in args))
    return tuple(a if _shape(a) == shape else OPS.broadcast_to(a, shape) for a in args)


def _flip(m: Any, axis: Any = None) -> Variable:
    shape = _shape(m)
    axes = _axes("flip", axis, shape)
    flipped = range(len(shape)) if axes is None else axes
    return OPS.getitem(m, tuple(slice(None, None, -1) if i in flipped else slice(None) for i in range(len(shape))))


def _fliplr(m: Any) -> Variable:
    return _flip(m, 1)


def _flipud(m: Any) -> Variable:
    return _flip(m, 0)


def _rot90(m: Any, k: int = 1, axes: Any = (0, 1)) -> Variable:
    shape = _shape(m)
    a0, a1 = (_axis("rot90", ax, len(shape), shape) for ax in axes)
    if a0 == a1:
        raise ArgumentError("np.rot90: the two axes must differ")
    k %= 4
    if k == 0:
        return m if isinstance(m, Variable) else OPS.reshape(m, shape)
    if k == 2:
        return _flip(m, (a0, a1))
    perm = list(range(len(shape)))
    perm[a0], perm[a1] = perm[a1], perm[a0]
    return OPS.transpose(_flip(m, a1), tuple(perm)) if k == 1 else _flip(OPS.transpose(m, tuple(perm)), a1)


def _rollaxis(a: Any, axis: int, start: int = 0) -> Variable:
    shape = _shape(a)
    ax = _axis("rollaxis", axis, len(shape), shape)
    start = start + len(shape) if start < 0 else start
    if not 0 <= start <= len(shape):
        raise ArgumentError(f"np.rollaxis: start {start} is out of range for {len(shape)} dimensions")
    order = [i for i in range(len(shape)) if i != ax]
    order.insert(start - 1 if ax < start else start, ax)
    return OPS.transpose(a, tuple(order))


def _dstack(tup: Any) -> Variable:
    tup = list(tup)
    _joinable("dstack", [_at_least(3, _shape(x)) for x in tup], 2)
    return OPS.concatenate([_atleast(3)(x) for x in tup], 2)


def _roll(a: Any, shift: Any, axis: Any = None) -> Variable:
    shape = _shape(a)
    if axis is None:
        return OPS.reshape(_roll(OPS.reshape(a, (-1,)), shift, 0), shape)
    shifts = [shift] if isinstance(shift, (int, np.integer)) else list(shift)
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    if len(shifts) == 1:
        shifts = shifts * len(axes)
    if len(axes) == 1:
        axes = axes * len(shifts)
    if len(shifts) != len(axes):
        raise ArgumentError("np.roll: shift and axis must have the same length")
    norm = [_axis("roll", ax, len(shape), shape) for ax in axes]
    for s, ax in zip(shifts, norm, strict=True):
        k = int(s) % shape[ax] if shape[ax] else 0
        if k:
            lead = (slice(None),) * ax
            a = OPS.concatenate([OPS.getitem(a, lead + (slice(-k, None),)), OPS.getitem(a, lead + (slice(None, -k),))], ax)
    return a  # type: ignore[no-any-return]


def _tile(A: Any, reps: Any) -> Variable:
    reps_t = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    if any(not isinstance(r, (int, np.integer)) or r < 0 for r in reps_t):
        raise ArgumentError(f"np.tile: reps must be non-negative integers, got {reps!r}")
    shape = _shape(A)
    n = max(len(shape), len(reps_t))
    shape = (1,) * (n - len(shape)) + shape
    reps_t = (1,) * (n - len(reps_t)) + reps_t
    paired = tuple(d for pair in zip((1,) * n, shape, strict=True) for d in pair)
    wide = tuple(d for pair in zip(reps_t, shape, strict=True) for d in pair)
    x = OPS.broadcast_to(OPS.reshape(A, paired), wide)
    return OPS.reshape(x, tuple(r * d for r, d in zip(reps_t, shape, strict=True)))


def _repeat(a: Any, repeats: Any, axis: Any = None) -> Variable:
    if axis is not None and _ndim(a) == 0:  # (numpy repeats a 0-d array along axis 0 or -1)
        if _scalar_axis(a, axis) is not None:
            raise TapegradError(f"repeat: axis {axis} is out of bounds for a 0-d input")
        axis = None
    if axis is None:
        a, axis = OPS.reshape(a, (-1,)), 0
    shape = _shape(a)
    ax = _axis("repeat", axis, len(shape), shape)
    try:
        index = np.repeat(np.arange(shape[ax]), _data(repeats))
    except ValueError as exc:
        raise TapegradError(f"repeat: {exc} (input shape {shape})") from None
    return OPS.getitem(a, (slice(None),) * ax + (index,))


def _concatenate(arrays: Any, axis: Any = 0, out: Any = None, *, dtype: Any = None, casting: Any = None) -> Variable:
    _reject("concatenate", {"out": out, "dtype": dtype, "casting": casting}, {"casting": "same_kind"})
    arrays = list(arrays)
    if axis is None:
        return OPS.concatenate([OPS.reshape(x, (-1,)) for x in arrays], 0)
    return OPS.concatenate(arrays, axis)


def _stack(arrays: Any, axis: int = 0, out: Any = None, *, dtype: Any = None, casting: Any = None) -> Variable:
    _reject("stack", {"out": out, "dtype": dtype, "casting": casting}, {"casting": "same_kind"})
    return OPS.stack(list(arrays), axis)


def _joinable(name: str, shapes: list[tuple[int, ...]], axis: int) -> None:
    """Raise (before the reshapes that precede the join are recorded) unless the shapes join."""
    if not shapes:
        raise ArgumentError(f"np.{name}: need at least one array")
    REGISTRY["concatenate"].infer(shapes, [np.dtype(np.float64)] * len(shapes),
                                  {"axis": normalize_axis(name, axis, len(shapes[0]), shapes[0])})


def _at_least(n: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) >= n:
        return shape
    if n == 3:
        return (1, *shape, 1) if len(shape) == 1 else (*shape, 1) if len(shape) == 2 else (1, 1, 1)
    return (1,) * (n - len(shape)) + shape


def _hstack(tup: Any, *, dtype: Any = None, casting: Any = None) -> Variable:
    tup = list(tup)
    shapes = [_at_least(1, _shape(x)) for x in tup]
    axis = 0 if shapes and len(shapes[0]) == 1 else 1
    _joinable("hstack", shapes, axis)
    return _concatenate([_atleast(1)(x) for x in tup], axis, dtype=dtype, casting=casting)


def _vstack(tup: Any, *, dtype: Any = None, casting: Any = None) -> Variable:
    tup = list(tup)
    _joinable("vstack", [_at_least(2, _shape(x)) for x in tup], 0)
    return _concatenate([_atleast(2)(x) for x in tup], 0, dtype=dtype, casting=casting)


def _column_stack(tup: Any) -> Variable:
    tup = list(tup)
    _joinable("column_stack", [(math.prod(_shape(x)), 1) if _ndim(x) < 2 else _shape(x) for x in tup], 1)
    return OPS.concatenate([OPS.reshape(x, (-1, 1)) if _ndim(x) < 2 else x for x in tup], 1)


def _split_points(name: str, n: int, sections: Any, equal: bool) -> list[int]:
    if isinstance(sections, (int, np.integer)):
        k = int(sections)
        if k <= 0:
            raise ArgumentError(f"np.{name}: the number of sections must be larger than 0")
        if equal and n % k:
            raise TapegradError(f"{name}: an axis of length {n} does not split into {k} equal sections")
        each, extra = divmod(n, k)
        sizes = [each + 1] * extra + [each] * (k - extra)
        return [sum(sizes[:i]) for i in range(k + 1)]
    return [0, *(int(i) for i in sections), n]


def _splitter(name: str, equal: bool, fixed_axis: int | None = None) -> Handler:
    def call(ary: Any, indices_or_sections: Any, axis: int = 0) -> list[Variable]:
        shape = _shape(ary)
        if fixed_axis is not None:
            axis = 1 if fixed_axis == 1 and len(shape) > 1 else 0 if fixed_axis == 1 else fixed_axis
        ax = _axis(name, axis, len(shape), shape)
        points = _split_points(name, shape[ax], indices_or_sections, equal)
        lead = (slice(None),) * ax
        return [OPS.getitem(ary, lead + (slice(start, max(start, stop)),))
                for start, stop in itertools.pairwise(points)]
    return call


def _pad(array: Any, pad_width: Any, mode: str = "constant", **kwargs: Any) -> Variable:
    if mode != "constant":
        raise unsupported(f"np.pad with mode={mode!r} (only 'constant' is supported)")
    value = kwargs.pop("constant_values", 0)
    _reject("pad", kwargs)
    if not isinstance(value, (int, float, np.integer, np.floating)):
        raise unsupported("np.pad with per-axis constant_values")
    shape = _shape(array)
    try:
        widths = np.broadcast_to(np.asarray(_data(pad_width), dtype=np.int64), (len(shape), 2))
    except (ValueError, TypeError) as exc:
        raise ArgumentError(f"np.pad: pad_width {pad_width!r} does not fit an input of shape {shape}: {exc}") from None
    if (widths < 0).any():
        raise ArgumentError(f"np.pad: negative pad width in {pad_width!r}")
    dtype = dtype_of(array)
    x = array
    current = list(shape)
    for ax, (before, after) in enumerate(widths.tolist()):
        if not before and not after:
            continue
        def block(width: int, ax: int = ax) -> np.ndarray[Any, Any]:
            return np.full((*current[:ax], width, *current[ax + 1:]), value, dtype=dtype)
        x = OPS.concatenate([*([block(before)] if before else []), x, *([block(after)] if after else [])], ax)
        current[ax] += before + after
    return x if isinstance(x, Variable) else OPS.reshape(x, shape)


def _where(condition: Any, x: Any = None, y: Any = None) -> Any:
    if x is None and y is None:
        return np.where(_data(condition))  # positions: integer arrays, not values
    if x is None or y is None:
        raise ArgumentError("np.where: give either both x and y or neither")
    return OPS.where(condition, x, y)


def _clip(a: Any, a_min: Any = np._NoValue, a_max: Any = np._NoValue, out: Any = None, *,
          min: Any = np._NoValue, max: Any = np._NoValue, **kwargs: Any) -> Variable:  # noqa: A002 (numpy's names)
    _reject("clip", {"out": out, **kwargs})
    lo = min if a_min is np._NoValue else a_min
    hi = max if a_max is np._NoValue else a_max
    return OPS.clip(a, None if lo is np._NoValue else lo, None if hi is np._NoValue else hi)


def _round(a: Any, decimals: int = 0, out: Any = None) -> Variable:
    _reject("round", {"out": out})
    if decimals == 0:
        return OPS.rint(a)
    scale = 10.0 ** decimals
    return OPS.div(OPS.rint(OPS.mul(a, scale)), scale)


def _nan_to_num(x: Any, copy: bool = True, nan: float = 0.0, posinf: float | None = None,
                neginf: float | None = None) -> Variable:
    dtype = dtype_of(x)
    if dtype.kind != "f":
        return x if isinstance(x, Variable) else OPS.reshape(x, _shape(x))
    big = float(np.finfo(dtype).max)
    hi, lo = big if posinf is None else posinf, -big if neginf is None else neginf
    # (comparisons, not np.isnan: they are recorded, so replay with new inputs re-decides)
    x = OPS.where(OPS.equal(x, np.inf), hi, OPS.where(OPS.equal(x, -np.inf), lo, x))
    return OPS.where(OPS.not_equal(x, x), nan, x)


def _fminmax(pick: str) -> Handler:
    def call(x: Any, y: Any) -> Variable:
        """Like maximum / minimum, except that a NaN loses to a number."""
        chosen = getattr(OPS, pick)(x, y)
        return OPS.where(OPS.not_equal(y, y), x, OPS.where(OPS.not_equal(x, x), y, chosen))
    return call


def _sinc(x: Any) -> Variable:
    zero = OPS.equal(x, 0)
    px = OPS.where(zero, 1.0, OPS.mul(x, math.pi))  # (a safe denominator: no 0/0 in either pass)
    return OPS.where(zero, 1.0, OPS.div(OPS.sin(px), px))


def _kron(a: Any, b: Any) -> Variable:
    sa, sb = _shape(a), _shape(b)
    n = max(len(sa), len(sb))
    sa, sb = (1,) * (n - len(sa)) + sa, (1,) * (n - len(sb)) + sb
    a2 = OPS.reshape(a, tuple(d for da in sa for d in (da, 1)))
    b2 = OPS.reshape(b, tuple(d for db in sb for d in (1, db)))
    return OPS.reshape(OPS.mul(a2, b2), tuple(da * db for da, db in zip(sa, sb, strict=True)))


def _cross(a: Any, b: Any, axisa: int = -1, axisb: int = -1, axisc: int = -1, axis: Any = None) -> Variable:
    if (axisa, axisb, axisc, axis) != (-1, -1, -1, None) or _shape(a)[-1:] != (3,) or _shape(b)[-1:] != (3,):
        raise unsupported("np.cross other than of 3-vectors along the last axis")
    ai = [OPS.getitem(a, (Ellipsis, k)) for k in range(3)]
    bi = [OPS.getitem(b, (Ellipsis, k)) for k in range(3)]
    parts = [OPS.sub(OPS.mul(ai[(k + 1) % 3], bi[(k + 2) % 3]), OPS.mul(ai[(k + 2) % 3], bi[(k + 1) % 3]))
             for k in range(3)]
    return OPS.stack(parts, -1)


def _linspace(start: Any, stop: Any, num: int = 50, endpoint: bool = True, retstep: bool = False,
              dtype: Any = None, axis: int = 0, *, device: Any = None) -> Variable:
    _reject("linspace", {"retstep": retstep, "dtype": dtype, "axis": axis, "device": device},
            {"retstep": False, "axis": 0})
    if type(num) is not int or num < 0:
        raise ArgumentError(f"np.linspace: num must be a non-negative int, got {num!r}")
    nd = len(_broadcast_shapes("linspace", _shape(start), _shape(stop)))
    steps = np.arange(num, dtype=np.float64) / max(num - 1 if endpoint else num, 1)
    return OPS.add(start, OPS.mul(OPS.sub(stop, start), steps.reshape((num,) + (1,) * nd)))


def _real(x: Any) -> Any:
    return x  # (float data: complex numbers are not supported)


def _fix(x: Any, out: Any = None) -> Variable:
    _reject("fix", {"out": out})
    return OPS.trunc(x)


def _copy(a: Any, order: str = "K", subok: bool = False) -> Any:
    return a  # Variables are immutable: a copy would be indistinguishable


# ---- the tables ---------------------------------------------------------------------------------


def _op(name: str) -> Handler:
    """The op function of registry op `name` as `array_ufunc` calls it: the tracer's fast path
    for one or two Variables, finding the user's source line two frames up."""
    spec = REGISTRY[name]
    if not spec.simple or spec.arity not in (1, 2):
        return getattr(OPS, name)  # type: ignore[no-any-return]
    fn: Handler = _unary_op(spec, depth=2) if spec.arity == 1 else _binary_op(spec, depth=2)
    fn.__name__ = fn.__qualname__ = name
    return fn


_SAME_NAME_UFUNCS = (
    "add", "maximum", "minimum", "exp", "log", "log1p", "sin", "cos", "tan", "tanh", "sqrt", "sign", "equal",
    "not_equal", "less", "less_equal", "greater", "greater_equal", "matmul", "square", "expm1", "exp2", "log2",
    "log10", "sinh", "cosh", "arcsin", "arccos", "arctan", "arcsinh", "arccosh", "arctanh", "floor", "ceil", "trunc",
    "rint", "logaddexp", "logaddexp2", "arctan2",
)

UFUNCS: dict[np.ufunc, Handler] = {getattr(np, name): _op(name) for name in _SAME_NAME_UFUNCS}
"""Each supported ufunc -> the function recording it (positional arguments, as the ufunc takes them)."""
UFUNCS.update({
    np.subtract: _op("sub"), np.multiply: _op("mul"), np.divide: _op("div"), np.power: _op("pow"),
    np.negative: _op("neg"), np.absolute: _op("abs"), np.fabs: _op("abs"),
    np.positive: lambda x: x,
    np.reciprocal: lambda x: OPS.div(1, x),
    np.deg2rad: lambda x: OPS.mul(x, math.pi / 180), np.radians: lambda x: OPS.mul(x, math.pi / 180),
    np.rad2deg: lambda x: OPS.mul(x, 180 / math.pi), np.degrees: lambda x: OPS.mul(x, 180 / math.pi),
    np.hypot: lambda x, y: OPS.sqrt(OPS.add(OPS.square(x), OPS.square(y))),
    # x - y * floor(x / y): the derivative numpy's definition has (1 and -floor(x / y)) almost everywhere
    np.remainder: lambda x, y: OPS.sub(x, OPS.mul(y, OPS.floor(OPS.div(x, y)))),
    np.fmod: lambda x, y: OPS.sub(x, OPS.mul(y, OPS.trunc(OPS.div(x, y)))),
    np.floor_divide: lambda x, y: OPS.floor(OPS.div(x, y)),
    np.cbrt: lambda x: OPS.mul(OPS.sign(x), OPS.pow(OPS.abs(x), 1.0 / 3.0)),
    np.fmax: _fminmax("maximum"), np.fmin: _fminmax("minimum"), np.conjugate: _real,
})
for _name in ("isnan", "isinf", "isfinite", "signbit", "logical_and", "logical_or", "logical_xor", "logical_not"):
    UFUNCS[getattr(np, _name)] = _plain(getattr(np, _name))

_REDUCE = {np.add: "sum", np.multiply: "prod", np.maximum: "max", np.minimum: "min"}
_ACCUMULATE = {np.add: "cumsum"}


FUNCTIONS: dict[Any, Handler] = {
    # reductions
    np.sum: _sum, np.mean: _mean, np.max: _extreme("max"), np.amax: _extreme("max"), np.min: _extreme("min"),
    np.amin: _extreme("min"), np.prod: _prod, np.var: _var, np.std: _std, np.any: _any, np.all: _all, np.cumsum: _cumsum,
    np.diff: _diff, np.linalg.norm: _norm,
    # products
    np.dot: _dot, np.vdot: _vdot, np.inner: _inner, np.outer: _outer, np.tensordot: _tensordot, np.einsum: _einsum,
    np.trace: _trace, np.diagonal: _diagonal, np.diag: _diag, np.triu: _tri(True), np.tril: _tri(False),
    # shapes
    np.reshape: _reshape, np.ravel: _ravel, np.squeeze: _squeeze, np.expand_dims: _expand_dims,
    np.transpose: _transpose, np.swapaxes: _swapaxes, np.moveaxis: _moveaxis, np.atleast_1d: _atleast(1),
    np.atleast_2d: _atleast(2), np.atleast_3d: _atleast(3), np.broadcast_to: _broadcast_to,
    np.broadcast_arrays: _broadcast_arrays, np.flip: _flip, np.fliplr: _fliplr, np.flipud: _flipud, np.roll: _roll,
    np.rot90: _rot90, np.rollaxis: _rollaxis, np.dstack: _dstack,
    np.tile: _tile, np.repeat: _repeat, np.concatenate: _concatenate, np.stack: _stack, np.hstack: _hstack,
    np.vstack: _vstack, np.column_stack: _column_stack, np.split: _splitter("split", True),
    np.array_split: _splitter("array_split", False), np.hsplit: _splitter("hsplit", True, 1),
    np.vsplit: _splitter("vsplit", True, 0), np.pad: _pad,
    # elementwise with arguments
    np.where: _where, np.clip: _clip, np.round: _round, np.around: _round, np.copy: _copy,
    np.fix: _fix, np.nan_to_num: _nan_to_num, np.sinc: _sinc, np.kron: _kron, np.cross: _cross,
    np.linspace: _linspace, np.real: _real, np.real_if_close: lambda a, tol=100: a,
    np.dsplit: _splitter("dsplit", True, 2),
}
"""Each supported numpy function -> its handler (numpy's signature; returns Variables)."""

PLAIN: tuple[Any, ...] = (
    np.shape, np.ndim, np.size, np.argmax, np.argmin, np.argsort, np.nonzero, np.flatnonzero, np.argwhere,
    np.count_nonzero, np.isclose, np.allclose, np.array_equal, np.zeros_like, np.ones_like, np.empty_like,
    np.full_like, np.iscomplexobj, np.isrealobj, np.result_type, np.can_cast, np.may_share_memory,
    np.shares_memory,
)
"""numpy functions whose results are not differentiable values: computed on the data."""
FUNCTIONS.update({func: _plain(func) for func in PLAIN})


# ---- the protocols ------------------------------------------------------------------------------


def _ufunc_name(ufunc: Any, method: str) -> str:
    name = getattr(ufunc, "__name__", repr(ufunc))
    return f"np.{name}" if method == "__call__" else f"np.{name}.{method}"


def array_ufunc(self: Variable, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """`Variable.__array_ufunc__`: record the registry op of `ufunc` (see the module docstring)."""
    if method == "__call__" and not kwargs:
        fn = UFUNCS.get(ufunc)
        if fn is not None:
            return fn(*inputs)
    return _ufunc_slow(ufunc, method, inputs, kwargs)


def _ufunc_slow(ufunc: Any, method: str, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    name = _ufunc_name(ufunc, method)
    out = kwargs.pop("out", None)
    if any(o is not None for o in (out if isinstance(out, tuple) else (out,))):
        raise ArgumentError(f"{name}: out= cannot hold a Variable result (Variables are immutable); "
                            "write `a = a + x` instead of `a += x` when `a` is a numpy array")
    if method == "__call__":
        fn = UFUNCS.get(ufunc)
        if fn is None:
            raise unsupported(name)
        _reject(ufunc.__name__, kwargs, {"where": True, "casting": "same_kind", "order": "K", "subok": True})
        return fn(*inputs)
    if method == "reduce" and ufunc in _REDUCE:
        (a,) = inputs
        axis = kwargs.pop("axis", 0)
        keepdims = kwargs.pop("keepdims", False)
        _reject(ufunc.__name__ + ".reduce", kwargs, {"where": True})
        if kwargs.get("dtype") is not None:
            a = OPS.astype(a, kwargs["dtype"])
        return getattr(OPS, _REDUCE[ufunc])(a, axis, keepdims)
    if method == "accumulate" and ufunc in _ACCUMULATE:
        (a,) = inputs
        return _cumsum(a, kwargs.pop("axis", 0), kwargs.pop("dtype", None))
    if method == "outer" and ufunc in UFUNCS and ufunc.nin == 2 and not kwargs:
        a, b = inputs
        return UFUNCS[ufunc](OPS.reshape(a, _shape(a) + (1,) * _ndim(b)), b)
    raise unsupported(name)


def array_function(self: Variable, func: Any, types: Sequence[type], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    """`Variable.__array_function__`: the handler of `func` (see the module docstring)."""
    handler = FUNCTIONS.get(func)
    if handler is None:
        if not all(issubclass(t, (Variable, np.ndarray)) for t in types):
            return NotImplemented  # another library's array type: let it try
        module = getattr(func, "__module__", "numpy") or "numpy"
        prefix = "np.linalg." if "linalg" in module else "np.fft." if "fft" in module else "np."
        raise unsupported(prefix + getattr(func, "__name__", repr(func)))
    return handler(*args, **kwargs)


def public_functions() -> dict[str, Handler]:
    """numpy name -> handler for every supported ufunc and function (what `tapegrad.numpy` offers)."""
    names: dict[str, Handler] = {}
    for ufunc, fn in UFUNCS.items():  # (the fast-path functions look two frames up: not for direct calls)
        names[ufunc.__name__] = getattr(OPS, fn.__name__) if fn.__name__ in REGISTRY else fn
    for func, fn in FUNCTIONS.items():
        names[func.__name__] = fn
    for alias in ("abs", "divide", "true_divide", "amax", "amin", "around", "round", "max", "min", "mod", "fix",
                  "conj"):
        target = getattr(np, alias)
        names[alias] = names[target.__name__]
    return names
