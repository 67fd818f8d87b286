"""The tracer: `Variable`, recording contexts, and the public op functions.

Contract:
- Every op on Variables (or on arrays and Python scalars mixed with them) computes eagerly with
  numpy and returns a new `Variable`.  Inside `record()` it also appends one `Record` to that
  tape; leaves (Variables created or first used inside the block, constants) enter the tape as
  copies, so later mutation of user arrays cannot change a recording.
- Outside `no_record()`, each result keeps a link to its record and input Variables (DeZero's
  "creator"), so `y.backward()` works with or without a tape.  Nothing global grows: links live
  exactly as long as the Variables that hold them.
- Python scalars follow numpy 2 promotion (`x32 * 2.0` stays float32) and are recorded as
  constants of the promoted dtype.  Invalid arguments raise `TapegradError` naming the op and
  the shapes, never a bare numpy error.
- `y.backward()` runs `replay.reverse`, the same engine as file replay.
- Recording state is process-wide: record from one thread at a time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from operator import itemgetter
from types import MappingProxyType, SimpleNamespace
from typing import Any

import numpy as np

from . import replay
from .errors import TapegradError
from .ops import REGISTRY, OpSpec
from .ops.registry import set_array_predicate
from .tape import EMPTY_ATTRS, Record, Tape

_serials = itertools.count()
_tape: Tape | None = None  # the active recording, if any
_linking = True  # False inside no_record(): results get no graph links
_new_record = tuple.__new__
_ALLOWED_KINDS = frozenset("biuf")


class Variable:
    """A numpy array that records the ops applied to it.  `data` must be an ndarray or None."""

    __slots__ = ("data", "grad", "_name", "_tapegrad_serial", "_rec", "_ins", "_tape", "__weakref__")
    __array_ufunc__ = None  # make numpy defer to our reflected operators (np.ones(3) + x)

    data: Any
    grad: Any

    def __init__(self, data: Any, name: str | None = None) -> None:
        if data is not None:
            if not isinstance(data, np.ndarray):
                raise TypeError(f"{type(data).__name__} is not supported: Variable data must be an np.ndarray or None")
            if data.dtype.kind not in _ALLOWED_KINDS:
                raise TypeError(f"dtype {data.dtype} is not supported: use bool, integer or float arrays")
        if name is not None and not isinstance(name, str):
            raise TypeError("Variable name must be a str or None")
        self.data = data
        self.grad = None
        self._name = name
        self._tapegrad_serial = next(_serials)
        self._rec: Record | None = None
        self._ins: tuple[Any, ...] = ()
        self._tape: Tape | None = None
        if _tape is not None and data is not None:
            _enter(_tape, self)

    # -- naming: names are tape metadata too --
    @property
    def name(self) -> str | None:
        return self._name

    @name.setter
    def name(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError("Variable name must be a str or None")
        self._name = value
        if self._tape is not None:
            self._tape._set_name(self._tapegrad_serial, value)

    # -- array-like views --
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return int(self.data.ndim)

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.data)

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

    def backward(self, retain_grad: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into `.grad` of every floating leaf Variable it depends on.

        The seed is `self.grad`, or ones when it is None.  Gradients add up across calls until
        `cleargrad()`.  Intermediate results keep their gradients only with `retain_grad=True`.
        """
        if self.data is None:
            raise TapegradError("cannot call backward() on a Variable with no data")
        if self.grad is None:
            self.grad = np.ones_like(self.data)
        records, nodes = _gather(self, ())
        values = {s: (n.data if type(n) is Variable else n) for s, n in nodes.items()}
        leaves = [s for s, n in nodes.items()
                  if type(n) is Variable and n._rec is None and n.data.dtype.kind == "f"]
        active = replay.active_set(records, leaves, values)
        me = self._tapegrad_serial
        want = set(active) if retain_grad else set(leaves)
        want.discard(me)
        found = replay.reverse(records, values, {me: self.grad}, active, want)
        taken = {id(self.grad)}
        for s, g in found.items():
            v = nodes[s]
            g = replay.owned(g, taken)
            v.grad = g if v.grad is None else v.grad + g

    # -- operators (numpy semantics; comparisons are elementwise and carry no gradient) --
    def __add__(self, other: Any) -> Variable:
        return _apply(_ADD, (self, other), EMPTY_ATTRS)

    def __radd__(self, other: Any) -> Variable:
        return _apply(_ADD, (other, self), EMPTY_ATTRS)

    def __sub__(self, other: Any) -> Variable:
        return _apply(_SUB, (self, other), EMPTY_ATTRS)

    def __rsub__(self, other: Any) -> Variable:
        return _apply(_SUB, (other, self), EMPTY_ATTRS)

    def __mul__(self, other: Any) -> Variable:
        return _apply(_MUL, (self, other), EMPTY_ATTRS)

    def __rmul__(self, other: Any) -> Variable:
        return _apply(_MUL, (other, self), EMPTY_ATTRS)

    def __truediv__(self, other: Any) -> Variable:
        return _apply(_DIV, (self, other), EMPTY_ATTRS)

    def __rtruediv__(self, other: Any) -> Variable:
        return _apply(_DIV, (other, self), EMPTY_ATTRS)

    def __pow__(self, other: Any) -> Variable:
        return _apply(_POW, (self, other), EMPTY_ATTRS)

    def __rpow__(self, other: Any) -> Variable:
        return _apply(_POW, (other, self), EMPTY_ATTRS)

    def __matmul__(self, other: Any) -> Variable:
        return _apply(_MATMUL, (self, other), EMPTY_ATTRS)

    def __rmatmul__(self, other: Any) -> Variable:
        return _apply(_MATMUL, (other, self), EMPTY_ATTRS)

    def __neg__(self) -> Variable:
        return _apply(_NEG, (self,), EMPTY_ATTRS)

    def __abs__(self) -> Variable:
        return _apply(REGISTRY["abs"], (self,), EMPTY_ATTRS)

    def __getitem__(self, index: Any) -> Variable:
        return getitem(self, index)

    def __eq__(self, other: Any) -> Variable:  # type: ignore[override]
        return _apply(REGISTRY["equal"], (self, other), EMPTY_ATTRS)

    def __ne__(self, other: Any) -> Variable:  # type: ignore[override]
        return _apply(REGISTRY["not_equal"], (self, other), EMPTY_ATTRS)

    def __lt__(self, other: Any) -> Variable:
        return _apply(REGISTRY["less"], (self, other), EMPTY_ATTRS)

    def __le__(self, other: Any) -> Variable:
        return _apply(REGISTRY["less_equal"], (self, other), EMPTY_ATTRS)

    def __gt__(self, other: Any) -> Variable:
        return _apply(REGISTRY["greater"], (self, other), EMPTY_ATTRS)

    def __ge__(self, other: Any) -> Variable:
        return _apply(REGISTRY["greater_equal"], (self, other), EMPTY_ATTRS)

    @property
    def T(self) -> Variable:
        return transpose(self)

    def reshape(self, *shape: Any) -> Variable:
        return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> Variable:
        if not axes or axes == (None,):
            return transpose(self)
        return transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Variable:
        return sum(self, axis, keepdims)

    def astype(self, dtype: Any) -> Variable:
        return astype(self, dtype)


_new_variable = Variable.__new__


def _enter(tape: Tape, v: Variable) -> None:
    """Register Variable `v` as an input of `tape` (a private C-ordered copy of its data)."""
    tape._add_leaf(v._tapegrad_serial, np.array(v.data, order="C", copy=True), v._name, False)
    if v._tape is None:
        v._tape = tape


def _constant(a: Any, dtype: Any) -> Any:
    """An ndarray for a non-Variable op argument (Python scalars get `dtype`)."""
    try:
        arr = np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise TapegradError(f"cannot use {a!r} as an array: {exc}") from None
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TapegradError(f"cannot use {type(a).__name__} of dtype {arr.dtype} in an op")
    return arr


def _apply(spec: OpSpec, args: tuple[Any, ...], attrs: Any) -> Variable:
    """Compute `spec` on `args`, wrap the result, record it and link it."""
    tape = _tape
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
            if a.dtype.kind not in _ALLOWED_KINDS:
                raise TapegradError(f"{spec.name}: arrays of dtype {a.dtype} are not supported")
            xs.append(a)
            ids.append(-1)
        elif isinstance(a, (bool, int, float)):
            weak.append(len(xs))
            xs.append(a)
            ids.append(-1)
        else:
            xs.append(_constant(a, None))
            ids.append(-1)
    if weak:  # numpy 2 promotion: Python scalars take the dtype of the arrays they meet
        dt = np.result_type(*xs)
        for k in weak:
            xs[k] = _constant(xs[k], dt)
    try:
        out = spec.forward(*xs, **attrs)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        shapes = " and ".join(str(np.shape(x)) for x in xs)
        raise TapegradError(f"{spec.name}: {exc} (input shapes {shapes})") from None
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    v = _new_variable(Variable)
    v.data = out
    v.grad = None
    v._name = None
    v._tape = tape
    if not _linking:
        v._tapegrad_serial = next(_serials)
        v._rec = None
        v._ins = ()
        return v
    ins = list(args)
    for k, i in enumerate(ids):
        if i < 0:  # a constant: give it an id (before the output's) and link its array
            const = xs[k] if tape is None else np.array(xs[k], order="C", copy=True)
            ids[k] = c = next(_serials)
            ins[k] = const
            if tape is not None:
                tape._add_leaf(c, const, None, True)
    s = v._tapegrad_serial = next(_serials)
    rec = _new_record(Record, (spec.name, tuple(ids), (s,), attrs))
    v._rec = rec
    v._ins = tuple(ins)
    if tape is not None:
        tape._records.append(rec)
        tape._values[s] = out
        if tape._sink is not None:
            tape._sink.record(rec, out)
    return v


_by_output = itemgetter(2)


def _gather(y: Variable, stop: tuple[int, ...]) -> tuple[list[Record], dict[int, Any]]:
    """The records `y` depends on, in tape order, and every Variable/constant they mention.

    The walk does not go past the serials in `stop` (the variables being differentiated).
    """
    nodes: dict[int, Any] = {y._tapegrad_serial: y}
    records: list[Record] = []
    stack = [y]
    while stack:
        v = stack.pop()
        rec = v._rec
        if rec is None or v._tapegrad_serial in stop:
            continue
        records.append(rec)
        for s, u in zip(rec.inputs, v._ins):
            if s not in nodes:
                nodes[s] = u
                if type(u) is Variable:
                    stack.append(u)
    records.sort(key=_by_output)
    return records, nodes


# ---- recording contexts --------------------------------------------------------------------

@contextmanager
def record(values: str = "all", path: str | os.PathLike[str] | None = None, *, flush_every: int = 256,
           metadata: Mapping[str, Any] | None = None) -> Iterator[Tape]:
    """Record every op inside the block onto a new `Tape` (nested blocks record to the inner tape).

    `values` chooses what a saved file keeps: "all", "inputs" (leaves only; replay recomputes)
    or "none" (structure only).  With `path`, each record is also streamed to that file,
    buffered and flushed every `flush_every` records and when the block exits (also on an
    exception), so a crash leaves a readable prefix (`tg.load(path, recover=True)`).
    """
    global _tape
    tape = Tape(values, metadata)
    if path is not None:
        from .tape_format import StreamWriter

        tape._sink = StreamWriter(path, tape, flush_every=flush_every)
    outer = _tape
    _tape = tape
    try:
        yield tape
    finally:
        _tape = outer
        if tape._sink is not None:
            sink, tape._sink = tape._sink, None
            sink.close()


@contextmanager
def no_record() -> Iterator[None]:
    """Compute without recording and without graph links (results are plain leaves)."""
    global _tape, _linking
    outer = (_tape, _linking)
    _tape, _linking = None, False
    try:
        yield
    finally:
        _tape, _linking = outer


@contextmanager
def _linked() -> Iterator[None]:
    """Make sure ops inside link their results (used by grad(), even under no_record)."""
    global _linking
    outer = _linking
    _linking = True
    try:
        yield
    finally:
        _linking = outer


def recording() -> Tape | None:
    """The tape being recorded, or None."""
    return _tape


# ---- public op functions, one per registry entry -------------------------------------------

OpFunction = Callable[..., Variable]


def _public(spec: OpSpec) -> OpFunction:
    if spec.simple:
        def simple(*args: Any) -> Variable:
            if len(args) != spec.arity:
                raise TypeError(f"{spec.name}() takes {spec.arity} argument(s), got {len(args)}")
            return _apply(spec, args, EMPTY_ATTRS)
        fn = simple
    else:
        def general(*args: Any, **kwargs: Any) -> Variable:
            ins, attrs = spec.bind(args, kwargs)
            return _apply(spec, ins, MappingProxyType(attrs) if attrs else EMPTY_ATTRS)
        fn = general
    fn.__name__ = fn.__qualname__ = spec.name
    fn.__doc__ = spec.doc
    return fn


_ADD, _SUB, _MUL, _DIV, _POW, _NEG, _MATMUL = (
    REGISTRY[n] for n in ("add", "sub", "mul", "div", "pow", "neg", "matmul"))

add = _public(REGISTRY["add"])
sub = _public(REGISTRY["sub"])
mul = _public(REGISTRY["mul"])
div = _public(REGISTRY["div"])
pow = _public(REGISTRY["pow"])  # noqa: A001 - numpy's name
maximum = _public(REGISTRY["maximum"])
minimum = _public(REGISTRY["minimum"])
where = _public(REGISTRY["where"])
clip = _public(REGISTRY["clip"])
neg = _public(REGISTRY["neg"])
exp = _public(REGISTRY["exp"])
log = _public(REGISTRY["log"])
sin = _public(REGISTRY["sin"])
cos = _public(REGISTRY["cos"])
tan = _public(REGISTRY["tan"])
tanh = _public(REGISTRY["tanh"])
sqrt = _public(REGISTRY["sqrt"])
abs = _public(REGISTRY["abs"])  # noqa: A001
sign = _public(REGISTRY["sign"])
sigmoid = _public(REGISTRY["sigmoid"])
relu = _public(REGISTRY["relu"])
astype = _public(REGISTRY["astype"])
equal = _public(REGISTRY["equal"])
not_equal = _public(REGISTRY["not_equal"])
less = _public(REGISTRY["less"])
less_equal = _public(REGISTRY["less_equal"])
greater = _public(REGISTRY["greater"])
greater_equal = _public(REGISTRY["greater_equal"])
sum = _public(REGISTRY["sum"])  # noqa: A001
mean = _public(REGISTRY["mean"])
max = _public(REGISTRY["max"])  # noqa: A001
min = _public(REGISTRY["min"])  # noqa: A001
logsumexp = _public(REGISTRY["logsumexp"])
softmax = _public(REGISTRY["softmax"])
log_softmax = _public(REGISTRY["log_softmax"])
reshape = _public(REGISTRY["reshape"])
transpose = _public(REGISTRY["transpose"])
broadcast_to = _public(REGISTRY["broadcast_to"])
sum_to = _public(REGISTRY["sum_to"])
matmul = _public(REGISTRY["matmul"])
getitem = _public(REGISTRY["getitem"])
scatter_add = _public(REGISTRY["scatter_add"])
concatenate = _public(REGISTRY["concatenate"])
stack = _public(REGISTRY["stack"])

OPS: Any = SimpleNamespace(**{name: globals()[name] for name in REGISTRY})
"""The traced backend: the public op functions by registry name (VJP rules run on it)."""

set_array_predicate(lambda x: isinstance(x, (np.ndarray, Variable)))
