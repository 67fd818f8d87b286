"""Holding back signal handlers while something that must not be cut short runs (a write).

Contract:
- Inside `with held():` the Python-level signal handlers do not run: Ctrl-C's
  `KeyboardInterrupt` (SIGINT, also from `_thread.interrupt_main()`), a SIGTERM handler that
  raises `SystemExit`, any handler the program installed.  A signal that arrives is noted, and
  its handler runs when the block ends (each signal once, in order of arrival), so whatever it
  raises propagates from the end of the block, after the write, as if the signal had come then.
  Signals whose handling is not Python's (SIG_DFL, SIG_IGN: SIGKILL, a default SIGTERM) are
  not affected.
- Python runs signal handlers on the main thread only, between bytecodes; on other threads
  `held()` does nothing (no handler can raise there).  Blocks nest.
- A handler the block itself installs stays.  If the handlers cannot all be put back (a handler
  that ran while they were being restored raised), the ones left in place behave as the
  originals they stand for.
- Cost: about 2 microseconds per block on the main thread.
- `Worker(fn)` runs `fn()` on a bare `_thread` thread and `join()` waits for it: the library's
  background threads (checksumming a write, reading a file) are such workers, never
  `threading.Thread`s (see below).
- This module imports nothing from tapegrad.

Why: an exception raised in the middle of a write leaves half a frame in a file; one raised
inside a finalizer or weakref callback (Python runs some in the middle of other code: importlib
frees a lock per imported module through one, `threading` one per `Thread` object when it is
freed, on whichever thread frees it) is printed as "Exception ignored" and dropped, so the
interrupt is lost and the program goes on.
"""

from __future__ import annotations

# Only `_signal` (built in): `tapegrad/__init__` holds interrupts while the package imports, so
# this module's own imports run before anything is held.  `_signal` has the C functions behind
# `signal.getsignal` and `signal.signal`, whose wrappers also turn every handler into an enum
# member (or fail to, through an exception): 20 times the cost of the call.
import _signal  # type: ignore[import-not-found]
import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

_getsignal: Callable[[int], Any] = _signal.getsignal
_setsignal: Callable[[int, Any], Any] = _signal.signal
_SIGNALS = tuple(sorted(int(s) for s in _signal.valid_signals()))


class held:  # (named like the function it is used as: `with held():`)
    """Hold back the Python-level signal handlers for the duration of a block (see the module
    docstring)."""

    __slots__ = ("_active", "_caught", "_saved")

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}  # signal number -> the handler `_hold` stands in for
        self._caught: dict[int, FrameType | None] = {}  # signals noted, in order of arrival
        self._active = False

    def __enter__(self) -> None:
        self._active = True
        try:
            for signum in _SIGNALS:
                if callable(_getsignal(signum)):
                    # (setting a handler first runs the handlers of signals already pending:
                    # one may raise here, before anything is held; then nothing stays held)
                    self._saved[signum] = _setsignal(signum, self._hold)
        except ValueError:  # not the main thread (handlers never run there): nothing to hold
            self.__exit__()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            for signum, handler in self._saved.items():
                if _getsignal(signum) == self._hold:  # (not one the block itself installed)
                    _setsignal(signum, handler)  # (pending signals are noted by `_hold` first)
        finally:
            self._active = False
            caught, self._caught = list(self._caught.items()), {}
            self._deliver(caught)

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        if self._active:
            self._caught.setdefault(signum, frame)
        else:  # left installed by an exit that a signal cut short: act as the original
            self._saved[signum](signum, frame)

    def _deliver(self, caught: list[tuple[int, FrameType | None]]) -> None:
        """Run the original handler of each signal noted; each runs even if one before raised."""
        if not caught:
            return
        (signum, frame), rest = caught[0], caught[1:]
        try:
            handler = self._saved.get(signum)
            if callable(handler):
                handler(signum, frame)
        finally:
            self._deliver(rest)


class Worker:
    """`fn()` on a bare thread (`_thread`, which registers no weakref callback: see the module
    docstring); `join()` returns once `fn` has returned or raised.  `fn` should hand its own
    exceptions to whoever waits for its work: one escaping it is printed by `_thread`."""

    __slots__ = ("_done",)

    def __init__(self, fn: Callable[[], object]) -> None:
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, (fn,))

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        finally:
            self._done.release()

    def join(self) -> None:
        with self._done:
            pass
