"""What ops do in this thread or asyncio task: the recording state, one context variable.

Contract:
- `current()` is the `State` of the running context (a `contextvars` context: each thread has
  its own, each asyncio task a copy of its creator's): `tape`, the tape ops record onto (None:
  they do not record); `linking`, whether results keep graph links for `backward()` (False
  inside `no_record()`); `through`, how a replay computes (a `replay.Recorder`, which makes it
  compute on Variables so that it is itself recorded, or None: on numpy arrays).  The tracer
  reads it once per op.
- A block (`record()`, `no_record()`, the tracer's `_linked()`, `replay.computing_through()`)
  makes its state with `block(tape, linking, through)`, or through `inside(...)`, (which remembers the state the block
  started from), makes it current with `enter()` and ends it with `end()` in a `finally`, in the
  same context.  `end()` is safe wherever the block was cut short, even before or during
  `enter()` (an interrupt).
- Blocks may end out of order (a generator's block ended after one started later in the same
  context): the context then returns to the nearest enclosing block still open, or stays in a
  later block still open.  A state that has ended never becomes current again.
- Copies of a context made inside a block (asyncio tasks created in it, `asyncio.to_thread`)
  share its `State` while the block is open: they record onto its tape.  When the block ends the
  shared state turns into the top-level state (no tape, linking, numpy replays), so code still
  running in such a copy computes as at top level and never adds to a finished tape.
- This module imports nothing from tapegrad.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any


class State:
    """What ops do in one context (see the module docstring); written only by `enter`/`end`."""

    __slots__ = ("linking", "open", "outer", "tape", "through", "token")

    def __init__(self, tape: Any, linking: bool, through: Any, outer: State | None) -> None:
        self.tape = tape
        self.linking = linking
        self.through = through
        self.outer = outer  # the state the block started from (None: this is the top level)
        self.open = True  # until `end`
        self.token: Token[State] | None = None


TOP = State(None, True, None, None)  # outside every block (never changed)
_STATE: ContextVar[State] = ContextVar("tapegrad_state", default=TOP)
current = _STATE.get
"""The state of the running thread or task (bound once: the tracer calls it on every op)."""
_current = current


def block(tape: Any, linking: bool, through: Any) -> State:
    """The state of a block starting now in this context (current once `enter`ed)."""
    return State(tape, linking, through, _current())


def enter(state: State) -> None:
    """Make `state`, made in this context, the current one."""
    state.token = _STATE.set(state)


def end(state: State) -> None:
    """End the block of `state` (see the module docstring); call it in the context `state` was
    made in, also when `enter(state)` was never reached or was cut short."""
    state.open = False
    if _current() is state:
        outer = state.outer
        while outer is not None and not outer.open:
            outer = outer.outer
        if outer is not state.outer or not _reset(state):
            _STATE.set(TOP if outer is None else outer)
    state.tape, state.linking, state.through = None, True, None


@contextmanager
def inside(tape: Any, linking: bool, through: Any) -> Iterator[None]:
    """A block whose state is (tape, linking, through): `block`, `enter`, then `end` on the way
    out (the blocks that need nothing more: `no_record()`, `_linked()`, `computing_through()`)."""
    state = block(tape, linking, through)
    try:
        enter(state)
        yield
    finally:
        end(state)


def _reset(state: State) -> bool:
    """Undo `enter(state)`; False if that cannot be done (it was cut short, or happened in
    another context: a generator's block resumed elsewhere).

    (Resetting, rather than setting the outer state, leaves the context without the variable
    after an outermost block.  That matters: numpy looks up a context variable of its own in
    every ufunc call, and finds it fastest in an empty context.)
    """
    if state.token is None:
        return False
    try:
        _STATE.reset(state.token)
    except ValueError:
        return False
    return True
