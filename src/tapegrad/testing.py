"""Gradient checking as a library (like HIPS autograd's `check_grads` and JAX's `check_vjp`).

Contract: `check_grads(f, *args)` raises `AssertionError` (never prints and returns a bool)
when the reverse-mode derivative of `f` disagrees with central finite differences in float64.
The check is an inner product along random directions: for a random output cotangent `u` and
random input directions `d_k`, `sum_k <grad_k(<u, f>), d_k>` must equal
`(<u, f(x + eps d)> - <u, f(x - eps d)>) / (2 eps)`.  `order=2` also checks the derivative of
the recorded reverse pass (second derivatives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import tracer
from .functional import grad
from .tracer import Variable


def _float64(a: Any) -> Any:
    arr = np.asarray(a)
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def check_grads(f: Callable[..., Any], *args: Any, order: int = 1, eps: float = 1e-6,
                rtol: float = 1e-5, atol: float = 1e-8, seed: int = 0) -> None:
    """Assert that `f`'s gradients (up to `order`) match central differences on `args`.

    `f` takes Variables and returns a Variable.  Floating arguments are promoted to float64 and
    differentiated; integer and bool arguments are passed through unchanged.
    """
    rng = np.random.default_rng(seed)
    xs = [_float64(a) for a in args]
    diff = [k for k, x in enumerate(xs) if x.dtype.kind == "f"]
    if not diff:
        raise ValueError("check_grads needs at least one floating-point argument")
    with tracer.no_record():
        y0 = f(*[Variable(x) for x in xs])
    u = rng.standard_normal(y0.shape)

    def scalar(*zs: Any) -> Any:
        return tracer.sum(tracer.mul(f(*zs), u))

    directions = {k: rng.standard_normal(xs[k].shape) for k in diff}

    def at(t: float) -> float:
        shifted = [np.asarray(x + t * directions[k]) if k in directions else x for k, x in enumerate(xs)]
        with tracer.no_record():
            return float(scalar(*[Variable(z) for z in shifted]).data)

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    grads = grad(scalar, argnums=tuple(diff))(*xs)
    for k, g in zip(diff, grads, strict=True):
        if g.shape != xs[k].shape or g.dtype != xs[k].dtype:
            raise AssertionError(f"gradient of argument {k} has shape {g.shape} dtype {g.dtype}, "
                                 f"expected {xs[k].shape} {xs[k].dtype}")
    analytic = float(sum(np.vdot(g, directions[k]) for k, g in zip(diff, grads, strict=True)))
    if not np.isfinite(numeric) or not np.isfinite(analytic):
        raise AssertionError(f"non-finite derivative: numeric {numeric}, analytic {analytic}")
    if abs(numeric - analytic) > atol + rtol * max(abs(numeric), abs(analytic)):
        raise AssertionError(f"gradient mismatch: reverse mode gives {analytic!r}, central "
                             f"differences give {numeric!r} (difference {analytic - numeric:.3g})")
    if order > 1:
        weights = {k: rng.standard_normal(xs[k].shape) for k in diff}

        def grad_dot(*zs: Any) -> Any:
            gs = grad(scalar, argnums=tuple(diff))(*zs)
            total: Any = 0.0
            for k, g in zip(diff, gs, strict=True):
                total = tracer.add(total, tracer.sum(tracer.mul(g, weights[k])))
            return total

        check_grads(grad_dot, *xs, order=order - 1, eps=eps, rtol=rtol * 10, atol=atol * 10, seed=seed + 1)
