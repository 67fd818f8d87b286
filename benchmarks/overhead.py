"""Overhead of recording + backward on tiny ops, against hand-written numpy in the same run.

A chain of N elementwise ops on shape (4,) float64, cycling add/mul/sin/exp with a parameter
`c`, is run forward (recorded) and backward.  The baseline is the same chain written by hand in
numpy: a forward loop keeping the values it needs and a backward loop applying the derivative of
each op.  Prints the median time of each and the ratio tapegrad / numpy (target: <= 2.0).
A last row runs the chain spelled with plain numpy functions on Variables (`np.sin(x)`, through
numpy's `__array_ufunc__` protocol) against the same chain spelled `tg.sin(x)` (target: <= 1.3).

Run: python benchmarks/overhead.py [--n 10000] [--repeat 21]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import tapegrad as tg

X0 = np.linspace(0.1, 0.4, 4)
C = np.full(4, 0.9)


def numpy_chain(x: np.ndarray, a: Any, c: Any, n: int, const_grads: bool) -> list[np.ndarray]:
    """The hand-written baseline: the chain's forward, keeping exactly what the backward needs, and
    its backward; d/dx, and with `const_grads` also d/da and d/dc."""
    y = x
    saved: list[np.ndarray] = []
    for i in range(n):
        k = i % 4
        if k == 0:
            y = y + a
        elif k == 1:
            saved.append(y)
            y = y * c
        elif k == 2:
            saved.append(y)
            y = np.sin(y)
        else:
            y = np.exp(y)
            saved.append(y)
    g = np.ones_like(y)
    ga = gc_ = np.zeros_like(y)
    for i in reversed(range(n)):
        k = i % 4
        if k == 0:
            if const_grads:
                ga = ga + g
        elif k == 1:
            s = saved.pop()
            if const_grads:
                gc_ = gc_ + g * s
            g = g * c
        elif k == 2:
            g = g * np.cos(saved.pop())
        else:
            g = g * saved.pop()
    return [g, ga, gc_] if const_grads else [g]


def numpy_chain_fair(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The baseline of this benchmark: the chain with one parameter `c` (`y + c`, `y * c`), and
    the gradients of x and c."""
    g, ga, gc_ = numpy_chain(X0, C, C, n, True)
    return g, ga + gc_


def chain(y: Any, a: Any, c: Any, n: int, sin: Callable[[Any], Any] = tg.sin,
          exp: Callable[[Any], Any] = tg.exp) -> Any:
    """The chain itself on any array type with these `sin` and `exp`: y + a, y * c, sin, exp, repeated."""
    for i in range(n):
        k = i % 4
        if k == 0:
            y = y + a
        elif k == 1:
            y = y * c
        elif k == 2:
            y = sin(y)
        else:
            y = exp(y)
    return y


def spelled_chain(y: Any, c: Any, n: int, ops: tuple[Callable[..., Any], ...]) -> Any:
    """The chain with each op a given function: (add, mul, sin, exp)."""
    for i in range(n):
        k = i % 4
        y = ops[k](y, c) if k < 2 else ops[k](y)
    return y


TG_OPS = (tg.add, tg.mul, tg.sin, tg.exp)
NP_OPS = (np.add, np.multiply, np.sin, np.exp)  # on Variables, through numpy's __array_ufunc__


def protocol_pair(n: int) -> tuple[float, float]:
    """Seconds for the chain recorded + backward with `tg.*` functions, then with plain `np.*`."""
    times = []
    for ops in (TG_OPS, NP_OPS):
        t0 = time.perf_counter()
        with tg.record():
            x, c = tg.Variable(X0), tg.Variable(C)
            y = spelled_chain(x, c, n, ops)
        y.backward()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def tapegrad_chain(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The same chain with tapegrad: recorded forward, then backward()."""
    with tg.record():
        x = tg.Variable(X0)
        c = tg.Variable(C)
        y = chain(x, c, c, n)
    y.backward()
    return x.grad, c.grad


def paired(n: int, repeat: int) -> tuple[float, float, float]:
    """Median times of numpy and tapegrad, run alternately, and the median of per-pair ratios.

    Alternating the two in one loop cancels slow drift of the machine (shared cores, frequency
    changes) that would otherwise land on one side only.
    """
    base, ours, ratios = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        numpy_chain_fair(n)
        t1 = time.perf_counter()
        tapegrad_chain(n)
        t2 = time.perf_counter()
        base.append(t1 - t0)
        ours.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(base), statistics.median(ours), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    gx, gc_ = tapegrad_chain(args.n)
    hx, hc = numpy_chain_fair(args.n)
    assert np.allclose(gx, hx) and np.allclose(gc_, hc), "tapegrad and hand-written gradients differ"
    print(f"chain of {args.n} tiny ops (shape (4,), add/mul/sin/exp), record + backward, "
          f"median of {args.repeat} alternating pairs (target: ratio <= 2.0 with the collector on)")
    rows = []
    for label, collector in (("gc on", True), ("gc off", False)):
        if not collector:
            gc.disable()
        try:
            rows.append((label, *paired(args.n, args.repeat)))
        finally:
            gc.enable()
    for label, base, ours, ratio in rows:
        print(f"  {label:7s} numpy {base * 1e3:8.2f} ms   tapegrad {ours * 1e3:8.2f} ms   ratio {ratio:5.2f}x")
    print(f"  collector cost for tapegrad: {rows[0][2] / rows[1][2]:.2f}x of collector-off")
    pairs = [protocol_pair(args.n) for _ in range(args.repeat)]
    tg_t, np_t = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    print(f"  np.* via numpy's protocol (np.add/multiply/sin/exp on Variables) vs tg.add/mul/sin/exp: "
          f"tg {tg_t * 1e3:8.2f} ms   np {np_t * 1e3:8.2f} ms   ratio {ratio:5.2f}x (target <= 1.3)")


if __name__ == "__main__":
    main()
