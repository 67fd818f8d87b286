"""Whether a differentiation is in progress: the one fact that decides how a reverse pass runs.

Contract:
- `grad`/`value_and_grad` (and so `hessian`) call `enter()` before they run the function being
  differentiated and `leave()` after it, before their own reverse pass.
- `active()` is True in between.  Every reverse pass started while it is True (an inner `grad`,
  `value_and_grad`, `hessian`, `y.backward()`, or a replay) runs on Variables and returns
  Variables, because its result may depend on Variables of the enclosing differentiation (a
  closure over an outer argument) and must stay on the graph that differentiation walks.  At top
  level it is False and reverse passes keep the fast numpy path.
- The state is per thread and per asyncio task (a `contextvars.ContextVar`), like the recording
  state (`context`): one thread's differentiation never changes how another thread's runs.
- This module imports nothing from tapegrad.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_depth: ContextVar[int] = ContextVar("tapegrad_differentiation_depth", default=0)


def active() -> bool:
    """True while some function is being differentiated (its reverse pass has not started yet)."""
    return _depth.get() > 0


def enter() -> Token[int]:
    """Mark the code that follows as being differentiated by one more level; pass the token to
    `leave` (a plain function pair rather than a context manager: `grad` calls it every time)."""
    return _depth.set(_depth.get() + 1)


def leave(token: Token[int]) -> None:
    """End the level that `enter` started (also when the function raised)."""
    _depth.reset(token)
