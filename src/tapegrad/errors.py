"""The tapegrad error family.

Contract: every problem tapegrad detects in user input or in file content raises a subclass of
`TapegradError`.  `DTypeError` (also a `TypeError`) is raised for values of an unsupported type or
dtype, such as complex numbers, wherever they enter (Variable, op arguments, grad, replay inputs).
`ArgumentError` and `UnsupportedError` (also `TypeError`s) are raised for a bad call and for a
numpy function with no registry op.  `TapeFormatError` (also a `ValueError`, like msgpack's own errors) is raised for
bytes or files that are not a valid tape, including well-formed files whose records are
inconsistent.  `NonFiniteError` (also a `FloatingPointError`) is raised by anomaly mode
(`check_finite=True`) at the first NaN or infinity and carries where it arose as attributes.
Messages name the record index, op and variable ids where they apply.
Filesystem problems are left as `OSError`.
"""

from __future__ import annotations

from typing import Any


class TapegradError(Exception):
    """Root of every error tapegrad raises on purpose."""


class DTypeError(TapegradError, TypeError):
    """A value of a type or dtype tapegrad does not compute with (complex numbers, strings,
    objects).  Raised instead of casting: a cast would differentiate another function."""


class ArgumentError(TapegradError, TypeError):
    """A call with arguments of the wrong kind or number (where Python raises `TypeError`), or a
    conversion that would silently leave the graph (`float(x)` of a floating Variable, so also
    `math.exp(x)`); the message says what to call instead."""


class UnsupportedError(TapegradError, TypeError):
    """A numpy function, ufunc or ufunc method called on a Variable that no registry op records
    (`np.sort`, `np.add.reduceat`, `np.linalg.eig`); the message names it and says how to add
    an op (`tg.defop`, `tg.Function`).  A `TypeError`, as numpy raises for unsupported types."""


class CopyError(TapegradError, ValueError):
    """`np.asarray(x, dtype=..., copy=False)` of a Variable whose data would need a copy (numpy's
    protocol expects a `ValueError` there)."""


class TapeFormatError(TapegradError, ValueError):
    """Bytes or a file that are not a valid tape (bad container, bad records, bad arrays)."""


class TruncatedTapeError(TapeFormatError):
    """A tape that ends early, typically a streamed recording cut off by a crash."""


class LimitError(TapeFormatError):
    """A tape that exceeds a configured safety limit (records, array bytes, nesting...)."""


class GuardError(TapegradError):
    """A replay whose inputs would take a different branch than the recording did."""


class NonFiniteError(TapegradError, FloatingPointError):
    """Anomaly mode (`check_finite=True`) met a NaN or an infinity; the message says where.

    Attributes, for scripts:
    - `pass_`: "forward" (a value was computed non-finite) or "reverse" (a cotangent became
      non-finite); named with an underscore because `pass` is a keyword.
    - `record`: the index of the tape record that made it, or None (an eager op that was not
      recorded, a replaced input or the seed).
    - `op`: the record's op name, or None.
    - `source`: (file, line) of the user code that made the record, or None.
    - `variable`: the dense id of the variable whose value (forward) or cotangent (reverse) is
      non-finite, or None off a tape.
    - `value`: the non-finite array itself.
    """

    def __init__(self, message: str, *, pass_: str | None = None, record: int | None = None, op: str | None = None,
                 source: tuple[str, int] | None = None, variable: int | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.pass_ = pass_
        self.record = record
        self.op = op
        self.source = source
        self.variable = variable
        self.value = value
