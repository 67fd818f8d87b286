"""`grad`: gradients replayed from a tape, with their health (`tapegrad grad`).

Contract: `grad(tape, of=None, wrt=None)` replays the reverse pass (`replay.backward`, so the
numbers are bit for bit those of eager `backward()` on the recorded values) and returns a
`Gradients`: the output `of` (default: the last recorded output) and, per variable of `wrt`
(names, `v<N>` or dense ids; default: every floating-point input), the gradient array, its
`ValueStats` and its L2 norm over the finite elements (so the norm is a number even when a NaN
appears; the counts say that it did).  Unknown names raise `TapegradError` listing the tape's
names nearest first (`common.find`); `as_dict()` leaves the arrays out.  Floating-point warnings
are silenced (the counts say what happened).

`save_npz(path, arrays)` writes `np.savez` data to exactly `path` (no `.npz` appended),
atomically: a temporary file in the same directory is written, flushed, fsynced and renamed
over `path`; on any failure it is removed and `path` is untouched.  `npz_key` is the archive
key of a gradient: its variable's name when that is a plain file name (letters, digits, `_`,
`.`, `-`; no leading dot), else `v<N>`, so no name from a file becomes a path in the archive.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import replay
from ..tape import Tape
from ..tape_format.atomic import write_atomically
from .common import VarRef, find, ref
from .health import ValueStats, summarize


@dataclass(frozen=True)
class Gradient:
    """The gradient with respect to `wrt`: the array, its health and finite L2 norm."""

    wrt: VarRef
    values: ValueStats
    norm: float
    array: Any = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"wrt": self.wrt.as_dict(), "norm": self.norm, "values": self.values.as_dict()}


@dataclass(frozen=True)
class Gradients:
    """The gradients of `of` (see the module docstring)."""

    of: VarRef
    grads: list[Gradient]

    def arrays(self) -> dict[str, Any]:
        """The gradients keyed by `npz_key` (what `--out` writes; `v<N>` where keys would clash)."""
        out: dict[str, Any] = {}
        for g in self.grads:
            key = npz_key(g.wrt)
            out[f"v{g.wrt.id}" if key in out else key] = g.array
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"of": self.of.as_dict(), "grads": [g.as_dict() for g in self.grads]}


def finite_norm(a: Any) -> float:
    """The L2 norm of the finite elements of `a`, computed in float64."""
    arr = np.asarray(a, dtype=np.float64)
    if not np.isfinite(arr).all():
        arr = arr[np.isfinite(arr)]
    return float(np.linalg.norm(arr.ravel()))


def grad(tape: Tape, of: str | int | None = None, wrt: Sequence[str | int] | None = None) -> Gradients:
    """Replay the gradients of `of` with respect to `wrt` (see the module docstring)."""
    of_id = tape.last_output() if of is None else find(tape, of)
    dense = tape.dense_ids()
    if wrt is None:
        parts = tape.parts()
        wrt_ids = [v for v in parts.leaves if v not in parts.consts and tape.shape_dtype(v)[1].kind == "f"]
    else:
        wrt_ids = list(dict.fromkeys(find(tape, w) for w in wrt))
    with np.errstate(all="ignore"):  # the NaN and Inf counts report what happened
        found = replay.backward(tape, of=dense[of_id], wrt=[dense[v] for v in wrt_ids])
    grads = [Gradient(ref(tape, v), summarize(found[dense[v]]), finite_norm(found[dense[v]]), found[dense[v]])
             for v in wrt_ids]
    return Gradients(ref(tape, of_id), grads)


_PLAIN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}"


def npz_key(var: VarRef) -> str:
    """The archive key of `var`'s gradient (see the module docstring)."""
    return var.name if var.name is not None and re.fullmatch(_PLAIN, var.name) else f"v{var.id}"


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
    """`np.savez(path, **arrays)`, atomically and to exactly `path` (see the module docstring)."""
    write_atomically(path, lambda f: np.savez(f, **arrays), "gradients")
