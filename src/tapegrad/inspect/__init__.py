"""Inspecting tapes and debugging runs offline, from the tape alone.

Every command of the `tapegrad` CLI is a plain function here that returns data (the CLI only
formats it), for notebooks and scripts.  Each takes a `Tape` (`load_tape(path)` reads one the
way the CLI does), numbers records from 0 in tape order as `tape.records` does, accepts
variables by name, `v<N>` or dense id, and returns a report with an `as_dict()` (its JSON form,
documented in docs/inspect.md).  Long ones take `progress=callback(done, total)`.

- `show(tape, records=, grep=, values=)` -> iterator of `ShownLine` (`listing`): the listing.
- `stats(tape, values=)` -> `TapeStats` (`stats`): counts, op histogram, bytes, FLOPs, peak
  replay memory, inputs, outputs, metadata, value health.  `flops(op, ...)` is the FLOP rule.
- `grad(tape, of, wrt)` -> `Gradients` (`grads`): replayed gradients and their health;
  `save_npz(path, arrays)` writes them atomically.
- `check(tape, rtol=, atol=, grad=)` -> `CheckReport` (`check`): the first record whose stored
  value is not what recomputing it gives, and a finite-difference gradient check.
- `diff(a, b, rtol=, atol=, of=)` -> `DiffReport` (`diff`): aligns two tapes and reports the
  structural changes and the first value (and gradient) that differs.
- `nan(tape, inputs=, of=)` -> `NanReport` (`nan`): the first record whose output is NaN or
  infinite from finite inputs, forward, and the first whose VJP makes a non-finite cotangent
  from a finite one, in reverse; `load_for_debugging(path)` (`loading`) opens a crashed run's
  file with recovery.
- `slice(tape, var)` -> `Slice` (`slicing`): the minimal tape computing `var`.
Helpers: `health.summarize` (value health, `ValueStats`), `common` (`load_tape`, `find`,
`VarRef`, `jsonable`), `recompute` (a tape's values recomputed from its leaves).
"""

from .check import CheckReport, GradCheck, Mismatch, check
from .common import Progress, VarRef, find, jsonable, load_tape
from .diff import Change, DiffReport, ValueDiff, diff
from .flops import flops
from .grads import Gradient, Gradients, grad, save_npz
from .health import ValueStats, summarize
from .listing import ShownLine, parse_range, show
from .loading import load_for_debugging
from .nan import NanReport, nan
from .slicing import Slice, slice  # noqa: A004 (the command's name)
from .stats import Health, TapeStats, stats

__all__ = [
    "Change", "CheckReport", "DiffReport", "GradCheck", "Gradient", "Gradients", "Health", "Mismatch",
    "NanReport", "Progress", "ShownLine", "Slice", "TapeStats", "ValueDiff", "ValueStats", "VarRef", "check",
    "diff", "find", "flops", "grad", "jsonable", "load_for_debugging", "load_tape", "nan", "parse_range",
    "save_npz", "show", "slice", "stats", "summarize",
]
