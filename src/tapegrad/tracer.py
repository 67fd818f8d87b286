"""The tracer: `Variable`, recording contexts, and the public op functions.

Contract:
- Every op on Variables (or on arrays and Python scalars mixed with them) computes eagerly with
  numpy and returns a new `Variable`.  Inside `record()` it also appends one `Record` to that
  tape; leaves (Variables created or first used inside the block, constants) enter the tape as
  copies, or, for arrays of 64 KiB or more, shared and fingerprinted (`Tape._kept`): later
  mutation of user arrays cannot change a recording silently.
- Outside `no_record()` and `record()`, each result is appended to an eager segment (`segment`:
  a short implicit tape, freed with the last Variable made on it), so `y.backward()` works with
  or without a tape, as one reverse pass over records in either case.  Nothing global grows.
- Python scalars follow numpy 2 promotion (`x32 * 2.0` stays float32) and are recorded as
  constants of the promoted dtype.  Invalid arguments raise `TapegradError` naming the op and
  the shapes, never a bare numpy error.
- numpy: `Variable.__array_ufunc__` / `__array_function__` are `numpy_dispatch`'s (installed at
  the end of this module), so plain `np.*` calls on Variables record registry ops;
  `np.asarray(x)` gives the data (leaving the graph); `float(x)` of a floating Variable (which
  `math.*` calls) raises `ArgumentError` rather than silently losing the gradient.
- `y.backward()` runs `engine.reverse`, the same engine as file replay (with
  `check_finite=True`, its checking twin `engine.reverse_checked`).
- Recording state (the tape being recorded, `no_record()`) is per thread and per asyncio task
  (`context`): threads and tasks that each enter `record()` record complete tapes of their own,
  and `no_record()` in one changes nothing in another.  A new thread starts outside every block,
  even if started inside one.  An asyncio task (and `asyncio.to_thread`) runs in a copy of its
  creator's context: created inside a `record()` block, it records onto that tape while the
  block is open and computes as at top level once it has ended.  One tape must not be recorded
  onto from two threads at the same time.
- Sharing Variables between threads: a Variable can be used on any thread.  Used in a recording
  other than the one it was made on (a tape of another thread, or none), it enters that tape as
  an input, a copy of its value under its name, exactly like a Variable made outside the block;
  each tape stays complete and separate.  `backward()` from a result that depends on it goes on
  through its own history (the other thread's tape): do that once the other thread's block has
  ended, since it reads that tape.
- Interrupts: `record()` sets up its file with signal handlers held back (`interrupts`), so the
  file exists with a complete header or not at all; however the block ends (normally, an
  exception from user code, `KeyboardInterrupt`, `SystemExit`), its exit writes the last batch
  and the footer before the exception propagates.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from sys import _getframe
from types import FrameType, MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from . import anomaly, backprop, context, engine, nesting
from .dtypes import COMPUTABLE_KINDS, as_computable
from .errors import ArgumentError, CopyError, DTypeError, TapegradError
from .interrupts import held
from .ops import NUMPY, REGISTRY, OpSpec
from .ops.registry import add_backend, backend
from .segment import RECORD_BYTES, Segment, fresh, join
from .tape import Tape, describe_exception

_serials = itertools.count()
_current = context.current  # this thread's or task's recording state (read once per op)
# numpy's module defines `__getattr__`, so `np.ndarray` in a hot path is an unspecialised
# attribute lookup (~180 machine instructions in CPython 3.11): read it once.
_NDARRAY = np.ndarray
NO_ATTRS = None  # the stored attributes of attribute-free records (see tape.RawRecord)


def _emit(name: str, attrs: Any, out: Any, tape: Tape | None, in_serials: tuple[int, ...],
          inputs: tuple[Any, ...]) -> Variable:
    """Wrap op result `out` in a new Variable and record it on `tape`, or (eager) append it to
    the segment its `inputs` (the Variables, and constants' arrays) join (`segment.join`); a
    recorded result has no segment, its history is the tape.
    """
    if type(out) is not _NDARRAY:
        out = np.asarray(out)
    v = _new_variable(Variable)
    v.data = out
    v.grad = None
    v._name = None
    v._tape = tape
    s = v._tapegrad_serial = next(_serials)
    rec = (name, attrs, s, *in_serials)
    if tape is None:
        seg = v._link = join(inputs, in_serials)
        seg.append(rec, out)
    else:
        v._link = None
        if tape.source:
            f = _getframe(2)  # the op's caller: the user's code, unless tapegrad made the op
            if f.f_code is not tape._source_last:
                f = _source_frame(tape, f)
            tape._source_pos.append(f.f_lasti)
        tape._records.append(rec)
        tape._values[s] = out
        if tape._sink is not None and len(tape._records) >= tape._sink_at:
            tape._sink.due()
    return v


# The fast paths of `_unary_op` and `_binary_op` repeat `_emit`'s body inline: a Python call
# with a built input tuple costs ~1,000 machine instructions, 8% of a tiny recorded op plus its
# backward (benchmarks/overhead.py).  Keep the three in step.

def _unary_op(spec: OpSpec, depth: int = 1) -> Callable[[Any], Variable]:
    """`spec` applied to one argument: a fast path for a Variable input already on the active
    tape (if any), everything else through `_apply`.  `depth`: how many frames up the user's
    code is (2 when numpy's protocol calls the op, so no frame walk is needed)."""
    forward, name = spec.forward, spec.name

    def op(x: Any) -> Variable:
        state = _current()
        tape = state.tape
        if type(x) is not Variable or not state.linking:
            return _apply(spec, (x,), NO_ATTRS)
        dx, sx = x.data, x._tapegrad_serial
        if dx is None or (tape is not None and x._tape is not tape and sx not in tape._values):
            return _apply(spec, (x,), NO_ATTRS)
        out = forward(dx)
        if type(out) is not _NDARRAY:
            out = np.asarray(out)
        v = _new_variable(Variable)
        v.data = out
        v.grad = None
        v._name = None
        v._tape = tape
        s = v._tapegrad_serial = next(_serials)
        if tape is None:  # eager: x's segment, unless it has none or that one is full
            seg = x._link
            if seg is None or seg.room <= 0:
                seg = fresh(seg)
                if sx not in seg.values:
                    seg.enter(sx, x)
            v._link = seg
            seg.records.append((name, NO_ATTRS, s, sx))
            seg.values[s] = out
            seg.room -= out.nbytes + RECORD_BYTES
            return v
        v._link = None
        if tape.source:
            f = _getframe(depth)
            if f.f_code is not tape._source_last:
                f = _source_frame(tape, f)
            tape._source_pos.append(f.f_lasti)
        rec = (name, NO_ATTRS, s, sx)
        tape._records.append(rec)
        tape._values[s] = out
        if tape._sink is not None and len(tape._records) >= tape._sink_at:
            tape._sink.due()
        return v

    return op


def _binary_op(spec: OpSpec, reflected: bool = False, depth: int = 1) -> Callable[[Any, Any], Variable]:
    """`spec` applied to two arguments (swapped when `reflected`, for `__radd__` and friends):
    a fast path for Variables already on the active tape (if any) and for constants
    (`_fast_constant`: Python and numpy scalars, ndarrays), else `_apply`.  `depth`: as for
    `_unary_op`."""
    forward, name = spec.forward, spec.name

    def op(a: Any, b: Any) -> Variable:
        state = _current()
        tape = state.tape
        # Each argument: a Variable with data already on this tape (if recording), or a constant
        # the fast path can take (its serial is -1 until it gets an id below, unless it was seen
        # before); `seg`: eager, the newer of the inputs' segments (`segment.join`), if any.
        if type(a) is Variable:
            da, sa, seg = a.data, a._tapegrad_serial, a._link
            if da is None or (tape is not None and a._tape is not tape and sa not in tape._values):
                return _apply(spec, (a, b), NO_ATTRS)
            if type(b) is Variable:
                db, sb, other = b.data, b._tapegrad_serial, b._link
                if db is None or (tape is not None and b._tape is not tape and sb not in tape._values):
                    return _apply(spec, (a, b), NO_ATTRS)
                if other is not seg and other is not None and (seg is None or other.seq > seg.seq):
                    seg = other
            else:  # (a Python float seen before: `_fast_constant`'s first lookup, inlined)
                hit = (_EAGER_SCALARS if tape is None else tape._scalar_ids).get((b, da.dtype)) if type(b) is float else None
                db, sb = hit if hit is not None else _fast_constant(b, da, tape)
                if db is None:
                    return _apply(spec, (a, b), NO_ATTRS)
        elif type(b) is Variable:
            db, sb, seg = b.data, b._tapegrad_serial, b._link
            if db is None or (tape is not None and b._tape is not tape and sb not in tape._values):
                return _apply(spec, (a, b), NO_ATTRS)
            da, sa = _fast_constant(a, db, tape)
            if da is None:
                return _apply(spec, (a, b), NO_ATTRS)
        else:
            return _apply(spec, (a, b), NO_ATTRS)
        if not state.linking:
            return _apply(spec, (a, b), NO_ATTRS)
        try:
            out = forward(da, db)
        except (ValueError, TypeError):
            return _apply(spec, (a, b), NO_ATTRS)  # raises the library's error
        if type(out) is not _NDARRAY:
            out = np.asarray(out)
        if sa < 0:  # a new constant gets its id before the output does (as in `_apply`)
            sa = next(_serials) if tape is None else _recorded_constant(tape, a, da)
        elif sb < 0:
            sb = next(_serials) if tape is None else _recorded_constant(tape, b, db)
        v = _new_variable(Variable)
        v.data = out
        v.grad = None
        v._name = None
        v._tape = tape
        s = v._tapegrad_serial = next(_serials)
        if tape is None:  # eager: `seg`, or a new segment if it is None or full
            if seg is None or seg.room <= 0:
                seg = fresh(seg)
            known = seg.values
            if sa not in known:
                seg.enter(sa, a if type(a) is Variable else da)
            if sb not in known:
                seg.enter(sb, b if type(b) is Variable else db)
            v._link = seg
            seg.records.append((name, NO_ATTRS, s, sa, sb))
            known[s] = out
            seg.room -= out.nbytes + RECORD_BYTES
            return v
        v._link = None
        if tape.source:
            f = _getframe(depth)
            if f.f_code is not tape._source_last:
                f = _source_frame(tape, f)
            tape._source_pos.append(f.f_lasti)
        rec = (name, NO_ATTRS, s, sa, sb)
        tape._records.append(rec)
        tape._values[s] = out
        if tape._sink is not None and len(tape._records) >= tape._sink_at:
            tape._sink.due()
        return v

    if reflected:
        def rop(a: Any, b: Any) -> Variable:
            return op(b, a)
        return rop
    return op


def _fast_constant(c: Any, other: Any, tape: Tape | None) -> tuple[Any, int]:
    """(the array, the id) that constant operand `c` stands for beside the array `other`, when the
    fast path of a two-argument op can take it, else (None, -1): `_apply` then handles or rejects
    `c`.  The id is -1 until the constant is recorded (`_recorded_constant`, after the op ran).

    A Python int or float beside a float array takes the array's dtype, as numpy 2 promotion
    gives it (`x32 * 2.0` stays float32), as a 0-d array (which numpy also combines faster than
    a Python float): a number already seen in that dtype is the array and id made for it before,
    by `tape` (`_recorded_constant`) or, eager, in `_EAGER_SCALARS`; else one is made here.
    An ndarray is used as it is (what a recording keeps of it: `Tape._kept`); a numpy scalar
    becomes a 0-d array of its dtype.  Everything else (Python scalars beside integer arrays,
    which may overflow; bool and complex dtypes; lists) goes the general way.
    """
    t = type(c)
    if t is float or t is int:
        dtype = other.dtype
        if dtype.kind != "f":
            return None, -1
        known = _EAGER_SCALARS if tape is None else tape._scalar_ids
        hit = known.get((c, dtype))  # (zeros and NaN are never kept: see `_recorded_constant`)
        if hit is not None:
            return hit
        try:
            arr = np.array(c, dtype)
        except OverflowError:
            return None, -1
        if tape is None and c != 0 and c == c:
            arr.flags.writeable = False  # (shared by every eager use of the number)
            if len(_EAGER_SCALARS) >= _EAGER_SCALARS_KEPT:
                _EAGER_SCALARS.clear()
            hit = _EAGER_SCALARS[(c, dtype)] = (arr, next(_serials))
            return hit
        return arr, -1
    if t is _NDARRAY:
        return (c, -1) if c.dtype.kind in _FAST_KINDS else (None, -1)
    if isinstance(c, np.generic) and c.dtype.kind in _FAST_KINDS:
        return np.asarray(c), -1
    return None, -1


_FAST_KINDS = frozenset("iuf")  # (bool constants are rare: they take the general path)
_EAGER_SCALARS: dict[tuple[Any, np.dtype[Any]], tuple[Any, int]] = {}
"""(Python number, float dtype) -> (its read-only 0-d array, its id), for eager ops: a loop that
multiplies by 0.9 makes one constant, not one per step (segments hold it like any constant)."""
_EAGER_SCALARS_KEPT = 256  # (cleared when full: a bound, not a cache policy that needs tuning)


def _recorded_constant(tape: Tape, c: Any, arr: Any) -> int:
    """The id on `tape` of constant operand `c`, whose array is `arr`: a new leaf, except that a
    Python number already recorded in the same dtype reuses its leaf (a loop multiplying by 0.9
    records one constant, not one per step: half the cost of a constant, and its memory).
    Zeros and NaN are never reused (`-0.0 == 0.0`, `nan != nan`)."""
    key = None
    if (type(c) is float or type(c) is int) and c != 0 and c == c:
        key = (c, arr.dtype)
        hit = tape._scalar_ids.get(key)
        if hit is not None:
            return hit[1]
    vid = next(_serials)
    tape._add_leaf(vid, arr, None, True, users=arr is c)
    if key is not None:
        tape._scalar_ids[key] = (tape._values[vid], vid)
    return vid


class Variable:
    """A numpy array that records the ops applied to it.  `data` must be an ndarray or None."""

    # _link: the `Segment` an eager result was appended to, None for leaves and recorded results
    # (the tape holds their history); _tape: the tape that produced or first recorded this Variable.
    __slots__ = ("__weakref__", "_link", "_name", "_tape", "_tapegrad_serial", "data", "grad")
    # numpy's protocols (`__array_ufunc__`, `__array_function__`) are installed at the end of
    # this module from `numpy_dispatch`: plain `np.*` calls on Variables record registry ops.

    data: Any
    grad: Any

    def __init__(self, data: Any, name: str | None = None) -> None:
        if data is not None:
            if not isinstance(data, np.ndarray):
                raise DTypeError(f"{type(data).__name__} is not supported: Variable data must be an np.ndarray or None")
            if data.dtype.kind not in COMPUTABLE_KINDS:
                raise DTypeError(f"dtype {data.dtype} is not supported: use bool, integer or float arrays (never cast)")
        if name is not None and not isinstance(name, str):
            raise ArgumentError(f"Variable name must be a str or None, not {type(name).__name__}")
        self.data = data
        self.grad = None
        self._name = name
        self._tapegrad_serial = next(_serials)
        self._link: Segment | None = None
        self._tape: Tape | None = None
        tape = _current().tape
        if tape is not None and data is not None:
            _enter(tape, self)

    # -- naming: names are tape metadata too --
    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise ArgumentError(f"Variable name must be a str or None, not {type(value).__name__}")
        self._name = value
        if self._tape is not None:
            self._tape._set_name(self._tapegrad_serial, value)

    # -- array-like views --
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape; read by the user's code inside a recording, also a shape guard (see `_read_shape`)."""
        _read_shape(self)
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def size(self) -> int:
        _read_shape(self)
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype  # type: ignore[no-any-return]

    def __len__(self) -> int:
        if self.data is None or self.data.ndim == 0:
            raise ArgumentError("len() of a 0-d Variable (or one with no data): it has no first axis")
        _read_shape(self)
        return len(self.data)

    def __iter__(self) -> Iterator[Variable]:
        """The sub-Variables along the first axis (`x[0]`, `x[1]`, ...), each recorded as a getitem."""
        n = len(self)  # (a 0-d Variable raises here, before anything is recorded)
        return (self[i] for i in range(n))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        """The data, for `np.asarray(x)` and code that needs a plain array.  This leaves the graph:
        nothing done with the array is recorded or differentiated."""
        if self.data is None:
            raise TapegradError("cannot convert a Variable with no data to an array")
        if copy is False and dtype is not None and np.dtype(dtype) != self.data.dtype:
            raise CopyError(f"converting a {self.data.dtype} Variable to {np.dtype(dtype)} needs a copy")
        data = self.data if dtype is None else self.data.astype(dtype, copy=False)
        return data.copy() if copy else data  # type: ignore[no-any-return]

    # -- Python values: recorded as guards, so replay can tell when control flow would change --
    def __bool__(self) -> bool:
        return bool(_observe(self, "bool"))

    def __float__(self) -> float:
        return float(_observe(self, "float"))

    def __int__(self) -> int:
        return int(_observe(self, "int"))

    def __index__(self) -> int:
        if self.dtype.kind not in "iub":
            raise ArgumentError(f"only integer Variables can be used as an index, not {self.dtype}")
        return int(_observe(self, "int"))

    def item(self) -> bool | int | float:
        """The single element as a Python scalar (recorded as a guard inside `record()`)."""
        kind = "bool" if self.dtype.kind == "b" else "int" if self.dtype.kind in "iu" else "float"
        return _observe(self, kind)

    def __repr__(self) -> str:
        if self.data is None:
            return "variable(None)"
        body = str(self.data).replace("\n", "\n" + " " * 9)
        return f"variable({body})"

    __hash__ = object.__hash__

    # -- gradients --
    def cleargrad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    def backward(self, *, check_finite: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every floating leaf Variable it depends on.

        The seed is `self.grad`, or ones when it is None.  Gradients add up across calls until
        `cleargrad()`; intermediate results do not keep gradients.  Inside a function being
        differentiated (`grad`, `value_and_grad`, `hessian`) the gradients are Variables that keep
        their dependence on the enclosing function's inputs, so using `.grad` there is differentiated
        correctly; elsewhere they are numpy arrays.  Either way every floating leaf `self` depends
        on receives its gradient, the enclosing function's Variables included.

        With `check_finite` (anomaly mode), a non-finite seed or the first cotangent that
        becomes non-finite raises `NonFiniteError` naming the record whose VJP made it, its op
        and source line (for ops recorded inside `record()`), and no leaf's `.grad` changes.
        """
        if self.data is None:
            raise TapegradError("cannot call backward() on a Variable with no data")
        if self.grad is None:
            self.grad = np.ones_like(self.data)
        traced = nesting.active()
        if check_finite:
            if not anomaly.finite(self.grad):
                tape = self._tape
                on_tape = tape is not None and self._tapegrad_serial in tape.parts().values
                raise anomaly.seed_error(tape if on_tape else None, self._tapegrad_serial if on_tape else None,
                                         self.grad)
            found = reverse_pass(self, self.grad, None, traced, check=True)
        else:
            found = reverse_pass(self, self.grad, None, traced)
        taken = {id(self.grad)}
        for v, g in found.values():
            if traced:  # a Variable, also where the seed reached a leaf unchanged
                g = g if type(g) is Variable else Variable(engine.owned(g, taken))
                v.grad = g if v.grad is None else OPS.add(v.grad, g)
                continue
            g = engine.owned(g, taken)
            v.grad = g if v.grad is None else v.grad + g

    # -- operators (numpy semantics; comparisons are elementwise and carry no gradient) --
    __add__ = _binary_op(REGISTRY["add"])
    __radd__ = _binary_op(REGISTRY["add"], reflected=True)
    __sub__ = _binary_op(REGISTRY["sub"])
    __rsub__ = _binary_op(REGISTRY["sub"], reflected=True)
    __mul__ = _binary_op(REGISTRY["mul"])
    __rmul__ = _binary_op(REGISTRY["mul"], reflected=True)
    __truediv__ = _binary_op(REGISTRY["div"])
    __rtruediv__ = _binary_op(REGISTRY["div"], reflected=True)
    __pow__ = _binary_op(REGISTRY["pow"])
    __rpow__ = _binary_op(REGISTRY["pow"], reflected=True)
    __matmul__ = _binary_op(REGISTRY["matmul"])
    __rmatmul__ = _binary_op(REGISTRY["matmul"], reflected=True)
    __neg__ = _unary_op(REGISTRY["neg"])
    __abs__ = _unary_op(REGISTRY["abs"])
    def __getitem__(self, index: Any) -> Variable:
        return OPS.getitem(self, index)

    __eq__ = _binary_op(REGISTRY["equal"])  # type: ignore[assignment]
    __ne__ = _binary_op(REGISTRY["not_equal"])  # type: ignore[assignment]
    __lt__ = _binary_op(REGISTRY["less"])
    __le__ = _binary_op(REGISTRY["less_equal"])
    __gt__ = _binary_op(REGISTRY["greater"])
    __ge__ = _binary_op(REGISTRY["greater_equal"])

    @property
    def T(self) -> Variable:
        return OPS.transpose(self)

    def reshape(self, *shape: Any) -> Variable:
        return OPS.reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> Variable:
        if not axes or axes == (None,):
            return OPS.transpose(self)
        return OPS.transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return OPS.sum(self, axis, keepdims)

    def astype(self, dtype: Any) -> Variable:
        return OPS.astype(self, dtype)

    # -- operators that are compositions of registry ops, through numpy's ufuncs --
    def __floordiv__(self, other: Any) -> Variable:
        return cast("Variable", np.floor_divide(self, other))

    def __rfloordiv__(self, other: Any) -> Variable:
        return cast("Variable", np.floor_divide(other, self))

    def __mod__(self, other: Any) -> Variable:
        return cast("Variable", np.remainder(self, other))

    def __rmod__(self, other: Any) -> Variable:
        return cast("Variable", np.remainder(other, self))

    def __pos__(self) -> Variable:
        return self

    # -- numpy's array methods, through numpy's own functions (and so `numpy_dispatch`) --
    def mean(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return cast("Variable", np.mean(self, axis=axis, keepdims=keepdims))

    def max(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return cast("Variable", np.max(self, axis=axis, keepdims=keepdims))

    def min(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return cast("Variable", np.min(self, axis=axis, keepdims=keepdims))

    def var(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Variable:
        return cast("Variable", np.var(self, axis=axis, ddof=ddof, keepdims=keepdims))

    def std(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Variable:
        return cast("Variable", np.std(self, axis=axis, ddof=ddof, keepdims=keepdims))

    def any(self, axis: Any = None, keepdims: bool = False) -> Variable:
        """Whether any element is nonzero: a bool Variable (no gradient; `bool()` of it is a guard)."""
        return cast("Variable", np.any(self, axis=axis, keepdims=keepdims))

    def all(self, axis: Any = None, keepdims: bool = False) -> Variable:
        """Whether every element is nonzero: a bool Variable (no gradient; `bool()` of it is a guard)."""
        return cast("Variable", np.all(self, axis=axis, keepdims=keepdims))

    def prod(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return cast("Variable", np.prod(self, axis=axis, keepdims=keepdims))

    def cumsum(self, axis: Any = None) -> Variable:
        return cast("Variable", np.cumsum(self, axis=axis))

    def ravel(self) -> Variable:
        return OPS.reshape(self, (-1,))

    flatten = ravel

    def squeeze(self, axis: Any = None) -> Variable:
        return cast("Variable", np.squeeze(self, axis=axis))

    def dot(self, other: Any) -> Variable:
        return cast("Variable", np.dot(self, other))

    def clip(self, min: Any = None, max: Any = None) -> Variable:  # noqa: A002 (numpy's names)
        return OPS.clip(self, min, max)

    def swapaxes(self, axis1: int, axis2: int) -> Variable:
        return cast("Variable", np.swapaxes(self, axis1, axis2))

    def repeat(self, repeats: Any, axis: Any = None) -> Variable:
        return cast("Variable", np.repeat(self, repeats, axis))

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Variable:
        return cast("Variable", np.diagonal(self, offset, axis1, axis2))

    def trace(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Variable:
        return cast("Variable", np.trace(self, offset, axis1, axis2))

    def round(self, decimals: int = 0) -> Variable:
        return cast("Variable", np.round(self, decimals))

    def __round__(self, ndigits: int | None = None) -> Variable:
        return self.round(ndigits or 0)

    def copy(self) -> Variable:
        """The Variable itself: Variables are immutable, so a copy could not differ."""
        return self

    # -- values that are not differentiable: plain numpy results computed on the data --
    def argmax(self, axis: Any = None, keepdims: bool = False) -> Any:
        return np.argmax(self.data, axis=axis, keepdims=keepdims)

    def argmin(self, axis: Any = None, keepdims: bool = False) -> Any:
        return np.argmin(self.data, axis=axis, keepdims=keepdims)

    def nonzero(self) -> tuple[np.ndarray[Any, Any], ...]:
        return tuple(np.nonzero(self.data))

    def tolist(self) -> Any:
        """The data as (nested) Python lists: leaves the graph, like `np.asarray(x)`."""
        return self.data.tolist()


_new_variable = Variable.__new__


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# The package's own source files (a set lookup on the code's file name is ~10x cheaper than
# str.startswith, and this check runs once per recorded op).
_PKG_FILES = frozenset(os.path.join(folder, name) for folder, _, names in os.walk(_PKG_DIR)
                       for name in names if name.endswith(".py"))


def _user_frame(frame: FrameType) -> FrameType:
    """The innermost frame, from `frame` outwards, that is not tapegrad's own code."""
    while frame.f_code.co_filename in _PKG_FILES:
        back = frame.f_back
        if back is None:
            break
        frame = back
    return frame


def _source_frame(tape: Tape, frame: FrameType) -> FrameType:
    """The user's frame for an op called from `frame`; starts a new run of `tape`'s source
    records when its code object differs from the last record's."""
    user = _user_frame(frame)
    tape._source_run(user.f_code, len(tape._source_pos))
    return user


def _observe(v: Variable, kind: str) -> bool | int | float:
    """`v` as a Python scalar; inside a recording, also append a guard record for replay."""
    if v.data is None:
        raise TapegradError("cannot convert a Variable with no data")
    if v.data.size != 1:
        raise ArgumentError(f"only one-element Variables convert to Python scalars (shape {v.shape}): "
                            "for a truth value use x.any() or x.all() (np.any(x), np.all(x))")
    item = v.data.item()
    value: bool | int | float = bool(item) if kind == "bool" else int(item) if kind == "int" else float(item)
    state = _current()
    if state.tape is not None and state.linking:
        _apply(_GUARD, (v,), {"value": value, "kind": kind})
    return value


def _read_shape(v: Variable) -> None:
    """The caller of the caller reads `v`'s shape: inside a recording, when that is the user's
    code, append a shape guard, so a replay at other shapes refuses rather than reuse numbers
    the code derived from this one.  Reads by tapegrad's own code (binders, VJP rules) are not
    the program's, and one guard per variable is enough (its shape never changes)."""
    state = _current()
    tape = state.tape
    if (tape is None or not state.linking or v.data is None or v._tapegrad_serial in tape._shape_guarded
            or _getframe(2).f_code.co_filename in _PKG_FILES):
        return
    tape._shape_guarded.add(v._tapegrad_serial)
    _apply(_SHAPE_GUARD, (v,), {"shape": tuple(v.data.shape)})


def _enter(tape: Tape, v: Variable) -> None:
    """Register Variable `v` as an input of `tape` (its array kept as `Tape._kept` says)."""
    tape._add_leaf(v._tapegrad_serial, v.data, v._name, False, users=True)
    tape._leaf_vars[v._tapegrad_serial] = v
    if v._tape is None:
        v._tape = tape


def _apply(spec: OpSpec, args: tuple[Any, ...], attrs: Any) -> Variable:
    """Compute `spec` on `args`, wrap the result, record it and link it."""
    state = _current()
    tape = state.tape
    xs: list[Any] = []
    ids: list[int] = []
    weak: list[int] = []
    for a in args:
        if isinstance(a, Variable):
            d = a.data
            if d is None:
                raise TapegradError(f"{spec.name}: input Variable has no data")
            s = a._tapegrad_serial
            if tape is not None and s not in tape._values:
                _enter(tape, a)
            xs.append(d)
            ids.append(s)
        elif type(a) is np.ndarray:
            if a.dtype.kind not in COMPUTABLE_KINDS:
                raise DTypeError(f"{spec.name}: arrays of dtype {a.dtype} are not supported (never cast)")
            xs.append(a)
            ids.append(-1)
        elif isinstance(a, (bool, int, float)):
            weak.append(len(xs))
            xs.append(a)
            ids.append(-1)
        else:
            xs.append(as_computable(a, f"{spec.name}: a {type(a).__name__} argument"))
            ids.append(-1)
    if weak:  # numpy 2 promotion: Python scalars take the dtype of the arrays they meet
        dt = np.result_type(*xs)
        for k in weak:
            xs[k] = as_computable(xs[k], f"{spec.name}: the argument {xs[k]!r}", dt)
    try:
        out = spec.forward(*xs, **attrs) if attrs else spec.forward(*xs)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        shapes = " and ".join(str(np.shape(x)) for x in xs)
        raise TapegradError(f"{spec.name}: {exc} (input shapes {shapes})") from None
    if not state.linking:  # inside no_record(): a plain leaf
        return Variable(np.asarray(out))
    consts = [k for k, i in enumerate(ids) if i < 0]
    for k in consts:  # a constant gets an id before the output does
        ids[k] = c = next(_serials)
        if tape is not None:
            tape._add_leaf(c, xs[k], None, True, users=xs[k] is args[k])
            xs[k] = tape._values[c]
    links: tuple[Any, ...] = ()
    if tape is None:  # eager: link the inputs, constants by their arrays
        links = tuple(xs[k] if k in consts else a for k, a in enumerate(args))
    return _emit(spec.name, attrs, out, tape, tuple(ids), links)


def reverse_pass(y: Variable, seed: Any, targets: dict[int, Variable] | None, traced: bool, *,
                 check: bool = False) -> dict[int, tuple[Variable, Any]]:
    """`backprop.pull` from `y`: on numpy arrays, or `traced` on Variables (so that the reverse
    pass is itself recorded and differentiable); `check`: anomaly mode."""
    if traced:
        return backprop.pull(y, seed, targets, OPS, _node, check=check)
    return backprop.pull(y, seed, targets, NUMPY, check=check)


def _node(owner: Tape | Segment, s: int) -> Variable:
    """The Variable standing for value `s` of a tape or an eager segment in a traced reverse
    pass: for a tape, the Variable that entered it as an input, else a new Variable holding the
    recorded value, whose history is the tape (or the segment)."""
    v: Variable | None
    if type(owner) is Segment:
        v = _new_variable(Variable)
        v.data, v.grad, v._name, v._tapegrad_serial, v._link, v._tape = owner.values[s], None, None, s, owner, None
        return v
    tape = cast("Tape", owner)
    v = tape._leaf_vars.get(s)
    if v is None:
        v = _new_variable(Variable)
        v.data, v.grad, v._name, v._tapegrad_serial, v._link, v._tape = tape._values[s], None, None, s, None, tape
    return v


# ---- recording contexts --------------------------------------------------------------------

@contextmanager
def record(values: str = "all", path: str | os.PathLike[str] | None = None, *, flush_every: int = 256,
           fsync: bool = False, metadata: Mapping[str, Any] | None = None, source: bool = True,
           copy_inputs: bool = False) -> Iterator[Tape]:
    """Record every op inside the block onto a new `Tape` (nested blocks record to the inner tape).

    `values` chooses what a saved file keeps: "all", "inputs" (leaves only; replay recomputes)
    or "none" (structure only).  With `path`, each record is also streamed to that file,
    buffered and flushed every `flush_every` records and when the block exits (also on an
    exception), so a crash leaves a readable prefix (`tg.load(path, recover=True)`); with
    `fsync` each flush also reaches the disk (survives a power cut, not just a process crash).
    With `source` (the default) each record keeps the file and line of the user code that made
    it, for error messages, guards and the inspector.  When the block exits by raising, the
    exception's type and message are kept in `tape.error` and in the file's footer.

    Input arrays (Variables' data, array constants) of 64 KiB or more are shared with the user,
    not copied: the tape checks before each later use (saving, replay, `tape.value`, `backward`)
    that they were not changed in place, and raises `TapegradError` naming the variable if they
    were.  With `copy_inputs` the tape keeps a private copy of every input instead (their memory
    again, but the arrays may then be changed freely, e.g. by an optimizer before saving).

    The recording belongs to this thread or asyncio task (see the module docstring).  A streamed
    file is created with its complete header before the block starts; an interrupt (Ctrl-C,
    `SystemExit` from a signal handler) never cuts a write short, and however the block ends its
    file gets the last batch and the footer before the exception propagates.  A failed write (a
    full disk) raises an `OSError` naming the file and the records being written; the file then
    holds a recoverable prefix.
    """
    tape = Tape(values, metadata)
    tape.source = source
    tape.copy_inputs = copy_inputs
    state = context.block(tape, _current().linking, RECORDER)  # (a replay inside records onto this tape)
    try:
        if path is not None:
            # (held: an interrupt comes after the sink is attached, so its file gets a footer; also
            # one during the first import of the writer, which importlib could drop: see __init__)
            with held():
                from .tape_format.stream import StreamWriter

                tape._sink = StreamWriter(path, tape, flush_every=flush_every, fsync=fsync)
        context.enter(state)
        yield tape
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):  # (a generator closed unfinished: no exception of the block)
            tape.error = describe_exception(exc)  # the file says how the recording ended
        raise
    finally:
        try:
            context.end(state)
        finally:
            if tape._sink is not None:
                sink, tape._sink = tape._sink, None
                sink.close()


@contextmanager
def no_record() -> Iterator[None]:
    """Compute without recording and without graph links (results are plain leaves)."""
    with context.inside(None, False, RECORDER if nesting.active() else None):
        yield


@contextmanager
def _linked() -> Iterator[None]:
    """Make sure ops inside link their results (used by grad(), even under no_record)."""
    outer = _current()
    with context.inside(outer.tape, True, outer.through):
        yield


def recording() -> Tape | None:
    """The tape being recorded in this thread or task, or None."""
    tape: Tape | None = _current().tape
    return tape


# ---- public op functions, one per registry entry -------------------------------------------

OpFunction = Callable[..., Variable]
_GUARD = REGISTRY["guard"]
_SHAPE_GUARD = REGISTRY["shape_guard"]


def _public(spec: OpSpec) -> OpFunction:
    fn: OpFunction
    if spec.simple and spec.arity == 1:
        fn = _unary_op(spec)
    elif spec.simple and spec.arity == 2:
        fn = _binary_op(spec)
    elif spec.simple:
        def fn(*args: Any) -> Variable:
            if len(args) != spec.arity:
                raise ArgumentError(f"{spec.name}() takes {spec.arity} argument(s), got {len(args)}")
            return _apply(spec, args, NO_ATTRS)
    else:
        def fn(*args: Any, **kwargs: Any) -> Variable:
            ins, attrs = spec.bind(args, kwargs)
            return _apply(spec, ins, attrs or None)
    fn.__name__ = fn.__qualname__ = spec.name
    fn.__doc__ = spec.doc
    return fn


_FUNCTIONS = {name: _public(spec) for name, spec in REGISTRY.items()}



class _Ops(Protocol):
    def __getattr__(self, name: str) -> OpFunction: ...


OPS: _Ops = backend("tapegrad.tracer.ops", _FUNCTIONS)
"""The traced backend: every registry op as a function on Variables (VJP rules run on it)."""
add_backend(OPS, _public)  # type: ignore[arg-type]  # (custom ops join it when registered)

FUNCTIONS: Mapping[str, OpFunction] = MappingProxyType({name: fn for name, fn in _FUNCTIONS.items()
                                                        if REGISTRY[name].public})
"""The public op functions, `tapegrad.<name>` for every registry row marked `public`."""

globals().update(FUNCTIONS)

if TYPE_CHECKING:
    def __getattr__(name: str) -> OpFunction: ...  # the op functions installed above


class _Recorder:
    """How `replay` computes on Variables inside `record()` and `grad` (see replay.Recorder)."""

    backend = OPS

    def input(self, value: Any, name: str | None) -> Variable:
        return Variable(value, name=name)

    def apply(self, op: str, inputs: Any, attrs: Any) -> Variable:
        return _apply(REGISTRY[op], tuple(inputs), attrs or None)


RECORDER = _Recorder()


# numpy's protocols: installed here, after `Variable` and the op functions they record with exist.
from . import numpy_dispatch  # noqa: E402

Variable.__array_ufunc__ = numpy_dispatch.array_ufunc  # type: ignore[attr-defined]
Variable.__array_function__ = numpy_dispatch.array_function  # type: ignore[attr-defined]
