"""Functional differentiation: `grad`, `value_and_grad` and `hessian`, as in JAX and HIPS autograd.

Contract:
- At top level, called with numpy arrays or Python scalars, the returned functions give numpy
  arrays.
- Called with Variables, inside `record()`, or inside a function that is itself being
  differentiated, they run the reverse pass on Variables and return Variables.  The result then
  keeps its dependence on every enclosing input, including inputs the function only closes over:
  `grad(lambda x: x * grad(lambda y: x * y)(2.0))(1.0)` is 2.0, `grad(grad(f))` gives second
  derivatives, and a recorded gradient computation can be saved and replayed.
- Each differentiated argument is a Variable of its own for the duration of the call (a Variable
  argument is passed through an identity `reshape`, so it stays on its graph): an inner `grad`
  called on an outer variable differentiates its argument only, never a closure over that same
  outer variable (no perturbation confusion).  Integer and bool arguments are differentiated as
  float64; complex and other non-numeric arguments raise `DTypeError` (never a cast).
- `f` must return a scalar: a one-element floating-point Variable, or a number that does not
  depend on the inputs (a Python int or float, a one-element float array), whose gradient is zero
  (zeros of each input's shape and dtype, as in JAX and autograd).  A value computed with numpy
  from `x.data` has left the graph: it is such a constant, and its gradient is zero.  Any other
  result (several elements, an integer or bool dtype, None, a tuple, a string) raises
  `TapegradError` saying why.  `argnums` is an int (one gradient) or a tuple of ints (a tuple).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import engine, nesting, replay, tracer
from .dtypes import as_computable
from .errors import TapegradError
from .tracer import Variable


def value_and_grad(f: Callable[..., Any], argnums: int | tuple[int, ...] = 0) -> Callable[..., tuple[Any, Any]]:
    """Return a function computing `(f(*args), df/d args[argnums])`."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        for n in nums:
            if not -len(args) <= n < len(args):
                raise TapegradError(f"argnums {argnums!r} does not fit {len(args)} positional argument(s)")
        traced = _traced(args)
        positions = [n % len(args) for n in nums]
        vs = list(args)
        with tracer._linked():
            for n in dict.fromkeys(positions):
                vs[n] = _own_variable(vs[n])
            level = nesting.enter()  # reverse passes inside f return Variables: they may depend on vs
            try:
                with replay.computing_through(tracer.RECORDER):  # and so do replays
                    out = f(*vs, **kwargs)
            finally:
                nesting.leave(level)
            out = _scalar(out)
            grads = _reverse(out, [vs[n] for n in positions], traced)
            if traced and not isinstance(out, Variable):
                out = Variable(out)
        value: Any = out if traced or not isinstance(out, Variable) else out.data
        return value, grads[0] if isinstance(argnums, int) else tuple(grads)

    wrapped.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return wrapped


def grad(f: Callable[..., Any], argnums: int | tuple[int, ...] = 0) -> Callable[..., Any]:
    """Return a function computing the gradient of scalar `f` with respect to `args[argnums]`."""
    vg = value_and_grad(f, argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return vg(*args, **kwargs)[1]

    wrapped.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return wrapped


def _traced(args: tuple[Any, ...]) -> bool:
    """Whether a reverse pass started now must run on Variables and return them.

    Inside a function being differentiated its result may depend on the enclosing function's
    inputs (through a closure) even when every argument is a plain number, so the decision
    cannot be taken from the arguments alone.
    """
    return nesting.active() or tracer.recording() is not None or any(isinstance(a, Variable) for a in args)


def _float_array(a: Any) -> Any:
    """A differentiated argument as a floating-point ndarray (integers and bools become float64)."""
    arr = as_computable(a, "a differentiated argument")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def _own_variable(a: Any) -> Variable:
    """A new Variable standing for argument `a` during one differentiation.

    For a Variable it is an identity `reshape` of it: the reverse pass stops there (this
    differentiation's own input), while an enclosing one still reaches `a` through it.
    """
    if isinstance(a, Variable):
        return tracer.reshape(a, a.shape)
    return Variable(_float_array(a))


def _scalar(out: Any) -> Any:
    """`f`'s result checked to be a scalar: a Variable, or a float ndarray for a constant."""
    if isinstance(out, Variable):
        data = out.data
    elif isinstance(out, (int, float)) and not isinstance(out, bool):
        data = np.asarray(float(out))  # Python numbers are weakly typed (numpy 2): float64
    elif isinstance(out, (np.ndarray, np.generic)):
        data = np.array(out)
    else:
        raise TapegradError(f"the function must return a scalar (a one-element Variable or a number), "
                            f"got {type(out).__name__}")
    if data is None or data.size != 1:
        raise TapegradError(f"grad needs a scalar output, got shape {None if data is None else data.shape}")
    if data.dtype.kind != "f":
        raise TapegradError(f"grad needs a floating-point output, got dtype {data.dtype} "
                            "(integer and bool values carry no gradient)")
    return out if isinstance(out, Variable) else data


def _reverse(out: Any, wrt: list[Variable], traced: bool) -> list[Any]:
    """Gradients of `out` (a Variable, or an ndarray constant) for `wrt`, zeros where none flows."""
    found: dict[int, tuple[Variable, Any]] = {}
    taken: set[int] = set()
    if isinstance(out, Variable):
        targets = {v._tapegrad_serial: v for v in wrt if v.data.dtype.kind == "f"}
        seed = np.ones_like(out.data)
        found = tracer.reverse_pass(out, seed, targets, traced)
        taken.add(id(seed))
    result = []
    for v in wrt:
        hit = found.get(v._tapegrad_serial)
        g = np.zeros_like(v.data) if hit is None else hit[1]
        if traced:
            result.append(g if isinstance(g, Variable) else Variable(np.asarray(g)))
        else:
            result.append(engine.owned(g, taken))
    return result


def hessian(f: Callable[..., Any], argnums: int = 0) -> Callable[..., Any]:
    """Return a function computing the Hessian of scalar `f` w.r.t. `args[argnums]`.

    For small inputs: one Hessian-vector product (a reverse pass over a recorded reverse pass)
    per element.  The result has shape `x.shape + x.shape`: a numpy array at top level, a
    Variable under the same conditions as `grad` (so a Hessian inside a differentiated function
    is differentiated correctly).
    """
    g = grad(f, argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not -len(args) <= argnums < len(args):
            raise TapegradError(f"argnums {argnums!r} does not fit {len(args)} positional argument(s)")
        n = argnums % len(args)
        x = args[n]
        if not isinstance(x, Variable):
            x = _float_array(x)
            args = args[:n] + (x,) + args[n + 1:]
        shape = tuple(x.shape)
        rows = []
        for i in range(x.size):
            basis = np.zeros(x.size, dtype=x.dtype)
            basis[i] = 1
            e = basis.reshape(shape)
            rows.append(grad(lambda *a, e=e: tracer.sum(tracer.mul(g(*a, **kwargs), e)), n)(*args))
        if any(isinstance(r, Variable) for r in rows):
            return tracer.reshape(tracer.stack([tracer.reshape(r, (x.size,)) for r in rows]), shape + shape)
        if rows:
            return np.stack([r.ravel() for r in rows]).reshape(shape + shape)
        zeros = np.zeros(shape + shape, x.dtype)
        return Variable(zeros) if _traced(args) else zeros

    wrapped.__name__ = f"hessian({getattr(f, '__name__', 'f')})"
    return wrapped
