"""Custom ops: `defop` and `Function` add a user's primitive to the one op registry at run time.

Contract:
- `defop(name, forward, vjp, *, shape=None, arity=None, scratch=1)` registers op `name` and
  returns its op function (Variables, arrays and Python scalars in, a Variable out), exactly
  like a built-in `tapegrad.<op>`.  Also a decorator: `@defop(name, vjp=rule)` over `forward`.
  - `forward(*arrays)` computes the op with numpy on plain arrays.  Its result is stored as a
    fresh C-ordered array (a view of an input is copied), and must have a bool, integer or
    float dtype.
  - `vjp(F, g, ins, out)` returns one cotangent per input (None: no gradient), written with
    the op functions of the backend `F` (`F.mul`, `F.cos`, `F.sum`: the names of `tapegrad.*`),
    so one rule runs on arrays (`backward()`), on Variables (higher derivatives, a recorded
    reverse pass) and in compiled replay (`tg.replay.backward`).  `vjp=None`: the output
    carries no gradient.  The engine asks for one input's cotangent at a time, so the rule of an
    op with several inputs runs once per input that needs a gradient (keep it cheap, or split
    the op).  Forward mode (`tg.replay.jvp`) transposes the VJP, so an op needs no
    separate JVP rule.
  - `shape(shapes, dtypes) -> (shape, dtype)`: the output's shape and dtype from the inputs',
    used to check tapes on load; None (the default) means the op is elementwise: inputs
    broadcast, and the dtype is found by running `forward` on one-element arrays.  The tracer
    checks every result against the rule.
- `Function`: the same for users of DeZero's and PyTorch's `Function`: a subclass with
  `forward(self, *arrays)` and `backward(self, F, g, ins, out)` (the `vjp` above) is
  registered when the class is defined, under its `name` attribute (default: the lowercased
  class name); `MyOp.apply(x)` or `MyOp()(x)` applies it.  A subclass without `forward` is an
  abstract base and registers nothing.
- A tape stores a custom op by name only.  Loading a tape in a process where that name is not
  registered fails with a `TapeFormatError` naming the op and saying to import the module that
  defines it; nothing named by a file is ever imported or run.
- Names: lowercase identifiers, dotted allowed (`"mylib.softplus"`); a built-in name is
  refused; registering a custom name again replaces the earlier definition (re-running a
  notebook cell).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from .errors import ArgumentError, TapegradError
from .ops import OpSpec
from .ops.registry import register
from .ops.spec import never_aliases
from .tracer import OPS, OpFunction

UserVjp = Callable[[Any, Any, Sequence[Any], Any], Any]
UserShape = Callable[[Sequence[tuple[int, ...]], Sequence["np.dtype[Any]"]], tuple[Sequence[int], Any]]

_NAME = r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*"  # a lowercase identifier, dots allowed
_KINDS = frozenset("biuf")


def _arity(name: str, forward: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        raise ArgumentError(f"defop {name!r}: cannot read forward's signature: pass arity=") from None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ArgumentError(f"defop {name!r}: forward takes *args: pass arity=")
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
    if n < 1:
        raise ArgumentError(f"defop {name!r}: forward must take at least one array")
    return n


def _forward(name: str, user: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*xs: Any) -> Any:
        out = np.asarray(user(*xs))
        if out.dtype.kind not in _KINDS:
            raise TapegradError(f"{name}: forward returned dtype {out.dtype}; ops return bool, integer or float arrays")
        if not out.flags.c_contiguous or any(isinstance(x, np.ndarray) and np.may_share_memory(out, x) for x in xs):
            out = np.array(out, order="C", copy=True)  # a view of an input would break replay's layout facts
        return out
    forward.__name__ = name
    return forward


def _vjp(name: str, user: UserVjp, arity: int) -> Callable[..., Any]:
    def vjp(F: Any, g: Any, ins: Sequence[Any], out: Any, attrs: Any, k: int) -> Any:
        cotangents = user(F, g, ins, out)
        if arity == 1 and not isinstance(cotangents, (tuple, list)):
            cotangents = (cotangents,)
        if not isinstance(cotangents, (tuple, list)) or len(cotangents) != arity:
            raise TapegradError(f"{name}: the VJP rule must return {arity} cotangent(s) (one per input, None for none)")
        return cotangents[k]
    return vjp


def _shape_rule(name: str, user: UserShape) -> Any:
    def shape(spec: OpSpec, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]],
              attrs: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
        try:
            out_shape, out_dtype = user(shapes, dtypes)
            return tuple(int(d) for d in out_shape), np.dtype(out_dtype)
        except TapegradError:
            raise
        except Exception as exc:  # a user rule may raise anything for inputs it does not accept
            raise TapegradError(f"{name}: shape rule failed for input shapes {list(shapes)}: {exc}") from None
    return shape


def _checked(spec: OpSpec, fn: OpFunction) -> OpFunction:
    """`fn` with each result checked against the op's shape rule (a wrong rule would make the
    tape fail to load later, far from the cause)."""
    known: dict[Any, tuple[tuple[int, ...], np.dtype[Any]]] = {}  # (the elementwise rule runs forward once per key)

    def call(*args: Any) -> Any:
        result = fn(*args)
        shapes = tuple(tuple(np.shape(getattr(a, "data", a))) for a in args)
        if any(isinstance(a, (bool, int, float)) for a in args):  # (promoted like numpy 2: check the shape only)
            dtypes = (result.dtype,) * len(args)
        else:
            dtypes = tuple(np.asarray(getattr(a, "data", a)).dtype for a in args)
        hint = " (an op that is not elementwise needs shape= in defop)" if spec.elementwise else ""
        want = known.get((shapes, dtypes))
        if want is None:
            try:
                want = known[shapes, dtypes] = spec.infer(shapes, dtypes, {})
            except TapegradError as exc:
                raise TapegradError(f"{exc}{hint}") from None
            if len(known) > 64:
                known.clear()
        if any(isinstance(a, (bool, int, float)) for a in args):
            want = (want[0], result.dtype)
        if (result.shape, result.dtype) != want:
            raise TapegradError(f"{spec.name}: forward returned shape {result.shape} dtype {result.dtype}, "
                                f"but its shape rule says {want[0]} {want[1]}{hint}")
        return result
    call.__name__ = call.__qualname__ = spec.name
    call.__doc__ = spec.doc
    return call


def defop(name: str, forward: Callable[..., Any] | None = None, vjp: UserVjp | None = None, *,
          shape: UserShape | None = None, arity: int | None = None, scratch: int = 1,
          doc: str | None = None) -> Any:
    """Register custom op `name` and return its op function (see the module docstring).

    Called without `forward`, returns a decorator: `@defop("mylib.softplus", vjp=rule)`.
    """
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise ArgumentError(f"op name {name!r} must be a lowercase identifier, dots allowed ('mylib.softplus')")
    if forward is None:
        def decorate(fn: Callable[..., Any]) -> OpFunction:
            return defop(name, fn, vjp, shape=shape, arity=arity, scratch=scratch, doc=doc)  # type: ignore[no-any-return]
        return decorate
    if not callable(forward) or (vjp is not None and not callable(vjp)):
        raise ArgumentError(f"defop {name!r}: forward and vjp must be callables")
    n = _arity(name, forward) if arity is None else arity
    if type(n) is not int or n < 1:
        raise ArgumentError(f"defop {name!r}: arity must be a positive int, got {n!r}")
    from .ops import infer  # (the elementwise shape rule of the built-in ops)

    line = (doc or (forward.__doc__ or "").strip().split("\n")[0] or f"custom op {name}").replace("\n", " ")
    spec = OpSpec(name=name, arity=n, forward=_forward(name, forward),
                  vjp=None if vjp is None else _vjp(name, vjp, n), doc=line, attrs=(), binder=None,
                  shape=infer.elementwise if shape is None else _shape_rule(name, shape),
                  elementwise=shape is None, scratch=scratch, aliases=never_aliases, view=False, public=False)
    register(spec)
    return _checked(spec, getattr(OPS, name))


class Function:
    """A custom op in the style of DeZero's and PyTorch's `Function` (see the module docstring).

    ```python
    class Softplus(tg.Function):
        name = "mylib.softplus"
        def forward(self, x):                      # numpy arrays in, a numpy array out
            return np.logaddexp(0.0, x)
        def backward(self, F, g, ins, out):        # one cotangent per input, with F's ops
            return F.mul(g, F.sigmoid(ins[0]))
    y = Softplus.apply(x)
    ```
    """

    name: ClassVar[str | None] = None
    shape: ClassVar[UserShape | None] = None
    _op: ClassVar[OpFunction]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.forward is Function.forward:
            return  # an abstract base of the user's own ops: nothing to register
        name = cls.__dict__.get("name") or cls.__name__.lower()
        instance = cls()
        n = _arity(name, instance.forward)
        backward = None if cls.backward is Function.backward else instance.backward
        cls._op = defop(name, instance.forward, backward, shape=cls.__dict__.get("shape"), arity=n,
                        doc=(cls.__doc__ or "").strip().split("\n")[0] or None)

    def forward(self, *xs: Any) -> Any:
        raise NotImplementedError

    def backward(self, F: Any, g: Any, ins: Sequence[Any], out: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *args: Any) -> Any:
        """Apply the op (PyTorch's spelling)."""
        return cls._op(*args)

    def __call__(self, *args: Any) -> Any:
        """Apply the op (DeZero's spelling: `Square()(x)`)."""
        return type(self)._op(*args)
