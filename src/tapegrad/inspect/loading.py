"""Opening a tape for debugging, and what a file says about how its recording ended.

Contract:
- `load_for_debugging(path) -> (tape, recovery)` loads the tape file at `path` with
  `recover=True` (through `common.load_tape`, which reads only regular files): a complete tape
  loads as usual (`recovery` None); the file of a
  killed streaming run loads as its whole-record prefix, and the `TapeRecoveryWarning` such a
  load issues is captured instead of printed: `recovery` (also `tape.recovery`) says what was
  kept and dropped.  It raises what `tg.load` raises: a `TapeFormatError` for damage that
  recovery cannot skip, `OSError` for the path (only regular files are read).
- `recovery_lines(recovery)` and `error_lines(error)` are the lines every inspection command
  prints about a recovered file (how many records were recovered, where the file was cut and
  why) and about a recording that ended by raising (`tape.error`: the exception's type and
  message).  Every string from the file is escaped (`tapegrad.errors.escape`) and capped.
"""

from __future__ import annotations

import os

from ..errors import escape
from ..tape import ERROR_MESSAGE_BYTES, ERROR_TYPE_BYTES, Tape
from ..tape_format import Recovery
from .common import load_tape


def load_for_debugging(path: str | os.PathLike[str]) -> tuple[Tape, Recovery | None]:
    """The tape at `path`, loaded with recovery, and what recovery dropped (see the module docstring)."""
    tape = load_tape(path, recover=True)
    recovery: Recovery | None = tape.recovery
    return tape, recovery


def recovery_lines(recovery: Recovery | None) -> list[str]:
    """What a recovered file kept and dropped, or no lines for a file that was whole."""
    if recovery is None:
        return []
    if recovery.complete:
        head = (f"recovered: the tape is complete ({recovery.records:,} records); {recovery.dropped_bytes:,} bytes "
                f"after its end, from byte {recovery.offset:,}, were ignored")
    else:
        head = (f"recovered: {recovery.records:,} records ({recovery.variables:,} variables) from a tape cut off at "
                f"byte {recovery.offset:,}; {recovery.kept_bytes:,} bytes kept, {recovery.dropped_bytes:,} dropped "
                "(a recording that did not finish, e.g. a killed process)")
    return [head, f"  why: {escape(recovery.reason, 500)}"]


def error_lines(error: tuple[str, str] | None) -> list[str]:
    """The exception that ended the recording, or no lines when it ended normally."""
    if error is None:
        return []
    kind, message = error
    lines = message.splitlines() or [""]
    shown = [f"recording ended with an exception: {escape(kind, ERROR_TYPE_BYTES)}: "
             f"{escape(lines[0], ERROR_MESSAGE_BYTES)}"]
    budget = ERROR_MESSAGE_BYTES - len(lines[0])
    for line in lines[1:20]:
        if budget <= 0:
            break
        shown.append(f"  {escape(line, budget)}")
        budget -= len(line)
    if len(lines) > 20:
        shown.append(f"  ... ({len(lines) - 20:,} more lines)")
    return shown
