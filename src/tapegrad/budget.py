"""The replay memory budget: a replay whose predicted peak memory exceeds it is refused.

A tape within every load limit can still ask replay for more memory than the machine has (one
element, `broadcast_to [2**32]`, then `sin`: 32 GiB).  Replay predicts its peak memory before it
runs (`Plan.peak_bytes`, the plan's model of every buffer its steps allocate), so it can refuse
such a tape with a clear error instead of dying in numpy's allocator or in the swap.

Contract:
- `default_budget()` is the budget a replay gets when its caller passes `budget=None`: the
  environment variable `TAPEGRAD_REPLAY_BUDGET` (bytes, a non-negative integer) when set, else
  `FRACTION` (one half) of the machine's physical memory (`os.sysconf`), else, where the
  machine does not say, `FALLBACK` (8 GiB).
- `check(tape, plan, budget, call)` returns None when `plan.peak_bytes <= budget` (`budget`
  None: `default_budget()`), else raises `LimitError` naming the predicted peak, the record that
  allocates the largest buffer of the replay (its index, op and type: the allocation to look at), the
  budget and how to raise it (`call`, the replay function, takes `budget=`).
- Every replay is checked (`replay.forward`, `backward`, `jvp`), whether its tape was loaded or
  recorded; a replay inside `record()` or `grad`, which computes on Variables through the tracer
  and keeps every value, is checked against the same plan's prediction, a lower bound for it.
- The inspector's own recomputations (`tapegrad.inspect`: `recompute`, `nan`'s forward scan)
  run records one by one without a plan: `check_record` refuses, before computing it, a record
  whose value alone is over the budget (`resolve(None)`).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import LimitError, TapegradError, escape
from .ops import REGISTRY
from .tape import ATTRS, INPUTS, OP, OUTPUT, Tape

FRACTION = 0.5
"""Share of the machine's physical memory a replay may plan to use by default."""
FALLBACK = 8 << 30
"""The default budget where the machine's memory size is unknown."""
ENV = "TAPEGRAD_REPLAY_BUDGET"


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where `os.sysconf` does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def default_budget() -> int:
    """The budget of a replay given `budget=None` (see the module docstring)."""
    text = os.environ.get(ENV)
    if text is not None:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0:
            raise TapegradError(f"{ENV} must be a non-negative number of bytes, got {escape(text, 40)!r}")
        return value
    memory = physical_memory()
    return FALLBACK if memory is None else int(memory * FRACTION)


def resolve(budget: int | None) -> int:
    """The budget in bytes: `budget` itself (checked), or `default_budget()` for None."""
    if budget is None:
        return default_budget()
    if type(budget) is int and budget >= 0:
        return budget
    raise TapegradError(f"budget must be a non-negative int (bytes) or None, got {escape(budget, 40)}")


def check(tape: Tape, plan: Any, budget: int | None, call: str) -> None:
    """Raise `LimitError` if `plan` (a `Plan` of `tape`) predicts more than `budget` bytes."""
    limit = resolve(budget)
    peak = int(plan.peak_bytes)
    if peak <= limit:
        return
    where = _largest(tape, plan)
    raise LimitError(f"replaying this tape would need about {_size(peak)} ({peak:,} bytes) at its peak{where}, over "
                     f"{_budget(budget, limit)}; if you trust this tape and have the memory, raise the budget: "
                     f"{call}(..., budget=<bytes>) or ${ENV}")


def check_record(tape: Tape, n: int, limit: int, what: str) -> None:
    """Raise `LimitError` if record `n` alone allocates more than `limit` bytes (a budget from
    `resolve`): the check of computations that run records one by one without a plan (the
    inspector's `recompute` and `nan` scans; `what` names them)."""
    size = _allocates(tape, n)
    if size > limit:
        rec = tape.parts().records[n]
        shape, dtype = tape.shape_dtype(rec[OUTPUT])
        raise LimitError(f"{what}: record {n} ({escape(rec[OP], 60)}) would allocate a {dtype.name}{list(shape)} "
                         f"value of {_size(size)} ({size:,} bytes), over {_budget(None, limit)}; if you trust this "
                         f"tape and have the memory, raise the budget: ${ENV}=<bytes>")


def _budget(given: int | None, limit: int) -> str:
    """`the replay memory budget of 8.0 GiB (... bytes) (the default: ...)`."""
    source = "" if given is not None else (
        f" (${ENV})" if ENV in os.environ else f" (the default: {FRACTION:.0%} of this machine's memory)")
    return f"the replay memory budget of {_size(limit)} ({limit:,} bytes){source}"


def _allocates(tape: Tape, n: int) -> int:
    """Bytes of the buffer record `n` allocates for its value: 0 for a view of its input."""
    rec = tape.parts().records[n]
    out = tape.shape_dtype(rec[OUTPUT])
    if len(rec) > INPUTS and REGISTRY[rec[OP]].aliases(tape.shape_dtype(rec[INPUTS]), out, rec[ATTRS]):
        return 0
    size = out[1].itemsize
    for d in out[0]:
        size *= d
    return size


def _largest(tape: Tape, plan: Any) -> str:
    """`; record 3 (sin) alone allocates a float64[4294967296] value of 32.0 GiB`: the biggest
    buffer a record of the plan allocates (a view of its input, like `broadcast_to`'s, allocates
    nothing); of all records when the plan recomputes none (its reverse pass then allocates
    cotangents of their size)."""
    records = tape.parts().records
    rows = sorted({r for r in plan.step_records if r >= 0}) or range(len(records))
    best, best_bytes = -1, 0
    for n in rows:
        size = _allocates(tape, n)
        if size > best_bytes:
            best, best_bytes = n, size
    if best < 0:
        return ""
    shape, dtype = tape.shape_dtype(records[best][OUTPUT])
    return (f"; record {best} ({escape(records[best][OP], 60)}) alone allocates a {dtype.name}{list(shape)} value "
            f"of {_size(best_bytes)}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
