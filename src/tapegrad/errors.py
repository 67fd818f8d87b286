"""The tapegrad error family.

Contract: every problem tapegrad detects in user input or in file content raises a subclass of
`TapegradError`.  `DTypeError` (also a `TypeError`) is raised for values of an unsupported type or
dtype, such as complex numbers, wherever they enter (Variable, op arguments, grad, replay inputs).
`TapeFormatError` (also a `ValueError`, like msgpack's own errors) is raised for
bytes or files that are not a valid tape, including well-formed files whose records are
inconsistent.  Messages name the record index, op and variable ids where they apply.
Filesystem problems are left as `OSError`.
"""

from __future__ import annotations


class TapegradError(Exception):
    """Root of every error tapegrad raises on purpose."""


class DTypeError(TapegradError, TypeError):
    """A value of a type or dtype tapegrad does not compute with (complex numbers, strings,
    objects).  Raised instead of casting: a cast would differentiate another function."""


class TapeFormatError(TapegradError, ValueError):
    """Bytes or a file that are not a valid tape (bad container, bad records, bad arrays)."""


class TruncatedTapeError(TapeFormatError):
    """A tape that ends early, typically a streamed recording cut off by a crash."""


class LimitError(TapeFormatError):
    """A tape that exceeds a configured safety limit (records, array bytes, nesting...)."""


class GuardError(TapegradError):
    """A replay whose inputs would take a different branch than the recording did."""
