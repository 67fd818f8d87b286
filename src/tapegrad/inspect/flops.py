"""FLOP estimates: how many floating-point operations a record costs, by op name.

Contract: `flops(op, ins, out, attrs)` takes the op name, the input shapes, the output shape
and the record's attributes and returns a non-negative int; it never raises for a record of a
valid tape.  The rules are estimates, written as the table `RULES` below:
- An elementwise op (a registry row marked `elementwise`) without a rule of its own costs one
  per output element: arithmetic, comparisons, `where`, and transcendental functions alike
  (`exp` is one operation here, as in most FLOP counts).
- `matmul` costs 2*K per output element (K multiplies and K adds, K the contracted length);
  reductions one per input element; the softmax family a few per element (see the table).
- Data movement costs nothing: reshape, transpose, broadcast_to, getitem, concatenate, stack,
  astype and guard.
Every registry op that is not elementwise has an explicit rule (a test walks the registry), so
no default silently stands in for an op nobody thought about; an op unknown to the registry
(impossible in a validated tape) falls back to one per output element.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..ops import REGISTRY

Shape = tuple[int, ...]
Rule = Callable[[Sequence[Shape], Shape, Mapping[str, Any]], int]


def _size(shape: Shape) -> int:
    return math.prod(shape)


def _per_output(k: int) -> Rule:
    return lambda ins, out, attrs: k * _size(out)


def _per_input(k: int) -> Rule:
    return lambda ins, out, attrs: k * _size(ins[0]) if ins else 0


def _free(ins: Sequence[Shape], out: Shape, attrs: Mapping[str, Any]) -> int:
    return 0


def _matmul(ins: Sequence[Shape], out: Shape, attrs: Mapping[str, Any]) -> int:
    k = ins[0][-1] if ins and ins[0] else 1
    return 2 * k * _size(out)


RULES: Mapping[str, Rule] = {
    # elementwise ops that cost more than one operation per element
    "clip": _per_output(2),  # a max and a min
    "sigmoid": _per_output(3),  # exp, add, divide
    # reductions: one per input element
    "sum": _per_input(1),
    "cumsum": _per_input(1),
    "prod": _per_input(1),
    "mean": _per_input(1),
    "max": _per_input(1),
    "min": _per_input(1),
    "sum_to": _per_input(1),
    "logsumexp": _per_input(3),  # subtract the max, exp, add (the log per output is noise)
    "softmax": _per_input(4),  # subtract the max, exp, sum, divide
    "log_softmax": _per_input(4),  # subtract the max, exp, sum, subtract the log
    "scatter_add": _per_input(1),  # one add per scattered element
    "matmul": _matmul,
    # data movement
    "reshape": _free,
    "transpose": _free,
    "broadcast_to": _free,
    "getitem": _free,
    "concatenate": _free,
    "stack": _free,
    "astype": _free,
    "guard": _free,
    "shape_guard": _free,
}

ELEMENTWISE_DEFAULT: Rule = _per_output(1)
"""The rule of an elementwise op without one of its own: one operation per output element."""


def flops(op: str, ins: Sequence[Shape], out: Shape, attrs: Mapping[str, Any] | None = None) -> int:
    """The estimated FLOPs of one record (see the module docstring)."""
    return max(0, int(RULES.get(op, ELEMENTWISE_DEFAULT)(ins, out, attrs or {})))


def missing_rules() -> list[str]:
    """Registry ops that are not elementwise and have no rule (a test keeps this empty)."""
    return [name for name, spec in REGISTRY.items() if not spec.elementwise and name not in RULES]
