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

Every message is safe to print (docs/FORMAT.md, "Security notes"): `escape(text)` is the one
helper that makes a string from a file (an op name, a variable name, a source path, an attribute
or metadata value) printable and short: non-printable characters become their Python escapes and
a long text is cut with its length shown.  Every error path that quotes file text uses it (`quote`
is `escape` in quotes, `show` the short description of any untrusted value), and
`TapegradError` itself caps every message at `MESSAGE_LIMIT` characters, so no message can flood
a terminal or a log whatever it quotes.
"""

from __future__ import annotations

from typing import Any

ESCAPE_LIMIT = 200
"""How many characters of one untrusted string `escape` shows by default."""

MESSAGE_LIMIT = 4000
"""Characters of one error message; a longer message is cut (`TapegradError`)."""


def escape(text: object, limit: int = ESCAPE_LIMIT) -> str:
    """Printable form of untrusted text (names, op names, source paths and metadata come from
    files): every character that is not printable (control characters, so terminal escape
    sequences and line breaks; format characters such as bidi overrides; the lone surrogates
    that stand for undecodable bytes) is written as its Python escape (`\\x1b`), and text
    longer than `limit` characters is cut there and says how long it was.  A value that is not
    a str is escaped as its `repr` (cut before it is built in full for long containers)."""
    if not isinstance(text, str):
        text = _short_repr(text, limit)
    cut = ""
    if len(text) > limit:
        cut = f"...[{len(text):,} characters]"
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + cut


def quote(text: object, limit: int = ESCAPE_LIMIT) -> str:
    """`escape(text)` in single quotes: how a message quotes a string from a file."""
    return f"'{escape(text, limit)}'"


def show(value: object, limit: int = 40) -> str:
    """A short, safe description of an untrusted value (never a deep repr): scalars as
    themselves, strings quoted and escaped (`quote`), containers by their type and length."""
    if value is None or type(value) in (bool, int, float):
        return escape(repr(value), limit)
    if type(value) is str:
        return quote(value, limit)
    if type(value) in (tuple, list, dict, bytes):
        return f"a {type(value).__name__} of length {len(value):,}"  # type: ignore[arg-type]
    return f"a {escape(type(value).__name__, limit)}"


_HEAD_ITEMS = 8  # items of a long tuple or list that `escape` shows


def _short_repr(value: object, limit: int) -> str:
    """`repr(value)`, but a tuple or list of many items is shown by its first items and length."""
    if type(value) in (tuple, list) and len(value) > _HEAD_ITEMS:  # type: ignore[arg-type]
        items = list(value[:_HEAD_ITEMS])  # type: ignore[index]
        return f"{repr(items)[:-1]}, ... ({len(value):,} items)]"  # type: ignore[arg-type]
    try:
        return repr(value)
    except Exception:  # a hostile __repr__ is not worth a crash inside an error path
        return f"<{type(value).__name__}>"


def _capped(message: str) -> str:
    """`message` cut to `MESSAGE_LIMIT` characters, saying how long it was."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    return f"{message[:MESSAGE_LIMIT]}...[message cut: {len(message):,} characters]"


class TapegradError(Exception):
    """Root of every error tapegrad raises on purpose.  A message (the first argument, when it
    is a str) longer than `MESSAGE_LIMIT` characters is cut, saying how long it was."""

    def __init__(self, *args: object) -> None:
        if args and type(args[0]) is str and len(args[0]) > MESSAGE_LIMIT:
            args = (_capped(args[0]), *args[1:])
        super().__init__(*args)


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
        super().__init__(_capped(message))
        self.pass_ = pass_
        self.record = record
        self.op = op
        self.source = source
        self.variable = variable
        self.value = value
