"""Pausing the cyclic garbage collector while many small objects are built (a tape loaded or
checked, a replay plan compiled).

Contract: inside `with no_gc():` the collector does not run.  Nested and concurrent users (any
thread) share one pause, and the last to leave restores the collector's state from before the
first.  Pausing and resuming run with signal handlers held back (`interrupts.held`), and a
pause that an interrupt ends at once is undone, so a Ctrl-C can never leave the collector off.

Why: building tens of thousands of small tuples triggers young and full collections whose
traversals cost more than the work itself (a plan compile spent about 15% of its time in them).
"""

from __future__ import annotations

import gc
import threading

from .interrupts import held


class no_gc:  # (named like the function it replaced: `with no_gc():`)
    """Pause the cyclic garbage collector while building or checking many small tuples.

    Building a tape's records allocates millions of small objects; with the collector running,
    each allocation burst triggers full traversals that cost more than the work itself.  Nested
    and concurrent users share one pause; the collector's previous state is restored by the last.
    Pausing and resuming run with signal handlers held back, and a pause that an interrupt
    ends at once is undone: otherwise a Ctrl-C there could leave the collector off for good.
    """

    def __init__(self) -> None:
        self._paused = False

    def __enter__(self) -> None:
        global _gc_users, _gc_was_enabled
        try:
            with held(), _gc_lock:
                if _gc_users == 0:
                    _gc_was_enabled = gc.isenabled()
                    gc.disable()
                _gc_users += 1
                self._paused = True
        except BaseException:  # (an interrupt held during the pause: the `with` will not call __exit__)
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        global _gc_users
        with held(), _gc_lock:
            if self._paused:
                self._paused = False
                _gc_users -= 1
                if _gc_users == 0 and _gc_was_enabled:
                    gc.enable()


_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = True
