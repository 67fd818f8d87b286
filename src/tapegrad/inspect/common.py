"""What every inspection command shares: loading a file, finding a variable, describing one.

Contract:
- `load_tape(path, recover=False)` reads a tape file as the inspector must: a path that is not a
  regular file (a directory, FIFO, device or socket) is refused from its `stat`, before anything
  opens it, so nothing blocks; then `tg.load` reads and validates it (strictly, unless
  `recover`).  A recovered tape carries its `Recovery` in `tape.recovery`; the
  `TapeRecoveryWarning` is not raised (the caller reports `tape.recovery`).  Errors:
  `TapegradError` for the content, `OSError` for the path.
- `find(tape, ref)` is `tape.resolve` for a name, `v<N>`, a dense id or a Variable, except that an unknown
  name is a `TapegradError` listing the tape's names nearest first (at most `_SHOWN` of them).
- `VarRef` describes one variable (dense id, name, type, producing record and op, source line);
  `ref(tape, vid)` builds one from an internal id.
- `jsonable(x)` turns plain data (metadata, reports' `as_dict()`) into what `json.dumps(...,
  allow_nan=False)` accepts: non-finite floats become the strings "nan", "inf" and "-inf", bytes
  their Python `repr`, tuples lists and other keys strings.  Untrusted strings stay as they are:
  JSON escapes control characters itself.
- `Progress` is the callback long functions take: `progress(done, total)`, called now and then.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import TapeFormatError, TapegradError, escape, quote
from ..tape import OP, Tape, aval
from ..tape_format import TapeRecoveryWarning
from ..tape_format import load_path as _load_path

Progress = Callable[[int, int], None]
"""`progress(done, total)`: how far a long function is (called every few thousand steps)."""

_SHOWN = 20  # names listed in an unknown-name error

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def load_tape(path: str | os.PathLike[str], *, recover: bool = False) -> Tape:
    """The validated tape in the regular file `path` (see the module docstring)."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise TapeFormatError(f"is {kind}; tapes are read only from regular files")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TapeRecoveryWarning)
        return _load_path(path, recover=recover)


def find(tape: Tape, ref: Any) -> int:
    """The internal id of the variable named `ref` (or `v<N>` / dense id N, when no variable is
    named so; or a Variable); an unknown name lists the names the tape has, nearest first."""
    if not isinstance(ref, str):
        return tape.resolve(ref)
    names = set(tape.parts().names.values())
    if ref not in names and re.fullmatch(r"v[0-9]+", ref):
        return tape.resolve(int(ref[1:]))
    if ref in names:
        return tape.resolve(ref)  # (ambiguous names: resolve's error lists the ids)
    ordered = sorted(names)
    near = difflib.get_close_matches(ref, ordered, n=5, cutoff=0.5)
    rest = [n for n in ordered if n not in near]
    shown = ", ".join(quote(n, 60) for n in (near + rest)[:_SHOWN])
    more = f" and {len(names) - _SHOWN:,} more" if len(names) > _SHOWN else ""
    known = f"its names, nearest first: {shown}{more}" if names else "it has no named variables"
    raise TapegradError(f"no variable named {quote(ref)} on this tape ({len(tape.ids_in_order()):,} variables, "
                        f"v0..v{len(tape.ids_in_order()) - 1}); {known}")


@dataclass(frozen=True)
class VarRef:
    """One variable as reports show it: dense `id`, `name`, `type` (`f64[3,2]`), the `record`
    that produced it and its `op` ("input" and "const" for leaves, record None), and the
    record's `source` (file, line) if the tape has sources."""

    id: int
    name: str | None
    type: str
    record: int | None
    op: str
    source: tuple[str, int] | None

    @property
    def label(self) -> str:
        """`name (v7)` or `v7`, escaped for printing."""
        return f"{escape(self.name)} (v{self.id})" if self.name is not None else f"v{self.id}"

    def as_dict(self) -> dict[str, Any]:
        where = None if self.source is None else {"file": self.source[0], "line": self.source[1]}
        return {"id": self.id, "name": self.name, "type": self.type, "record": self.record, "op": self.op,
                "source": where}


def ref(tape: Tape, vid: int, record: int | None = None) -> VarRef:
    """The `VarRef` of internal id `vid` (`record`: its producer, when the caller knows it)."""
    parts = tape.parts()
    if record is None:
        record = tape.producer(vid)
    if record is None:
        op = "const" if vid in parts.consts else "input"
        source = None
    else:
        op = parts.records[record][OP]
        source = tape.source_of(record)
    return VarRef(tape.dense_ids()[vid], tape.name_of(vid), aval(*tape.shape_dtype(vid)), record, op, source)


def jsonable(x: Any) -> Any:
    """`x` as data `json.dumps(..., allow_nan=False)` takes (see the module docstring)."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else "nan" if x != x else "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k if isinstance(k, str) else repr(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy scalars
        return jsonable(x.item())
    return repr(x)
