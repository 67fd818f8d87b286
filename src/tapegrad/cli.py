"""The `tapegrad` command line: a thin layer over `tapegrad.inspect`.

Contract:
- `main(argv) -> int` never raises for user errors.  Exit codes: 0 success; 1 a bad or
  unreadable tape (one line on stderr, `tapegrad: FILE: problem`, no traceback), a file that
  cannot be written, or a `check` / `diff` that found a difference; 2 usage (argparse's own).
  `tapegrad` alone prints the help, which lists the commands; `--version` the version.
- Commands are rows of `COMMANDS`: a name, a one-line summary, how many files it takes
  ("many": each file is a unit of its own; "one"; "two"; "none"), its options, `compute(args,
  paths, progress)` which loads the files and calls the `tapegrad.inspect` function, and the
  `text` and `json` formatters of the result.  Adding a command is adding a row.
- Several files ("many"): one block per file (headed `==> FILE <==` when there are several), or
  one JSON object per file, one per line; a file that fails gets its error line on stderr (and
  `{"file": ..., "error": ...}` with `--json`) and the others go on; the exit code is then 1.
- `--json` output is valid JSON (`allow_nan=False`, ASCII only), fields in docs/inspect.md.
- Everything printed that came from a file (names, op names, source paths, metadata, error
  messages quoting them) or from the command line (paths) goes through `errors.escape`.
- Output is written as it is produced; a closed pipe (`| head`) ends the command quietly with 0.
- Progress: a bar on stderr, only when stderr is a terminal that the output does not share
  (stdout is not a pipe, which a pager would draw on, nor, for `show`, which prints as it
  goes, the terminal), and only once the work has taken a second.
- Files are loaded strictly (`inspect.load_tape`); `show` and `stats` take `--recover`, and then
  say on stderr how many records were recovered and where the file was cut.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from . import __version__, inspect
from .errors import TapegradError, TruncatedTapeError, escape
from .inspect.check import ATOL, RTOL, Difference
from .inspect.diff import Side
from .inspect.loading import error_lines, recovery_lines
from .inspect.nan import NanReport, format_report
from .inspect.stats import MAX_PLAN_RECORDS
from .tape import Tape

Progress = inspect.Progress


class _Failure(Exception):
    """A problem to report as `tapegrad: {where}: {message}` (where: a path)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


@dataclass(frozen=True)
class Command:
    """One subcommand (see the module docstring)."""

    name: str
    summary: str
    files: str  # "many", "one", "two" or "none"
    options: Callable[[argparse.ArgumentParser], None]
    compute: Callable[[argparse.Namespace, tuple[str, ...], Progress | None], Any]
    text: Callable[[Any, argparse.Namespace], Iterable[str]]
    json: Callable[[Any, argparse.Namespace], dict[str, Any] | Iterable[str]] | None = None  # None: result.as_dict()
    failed: Callable[[Any], bool] = lambda result: False  # exit 1 although nothing went wrong (a difference found)
    streams: bool = False  # prints while it computes (no progress bar on a shared terminal)


# ---- loading and small formatting helpers ------------------------------------------------------

_TRUNCATED_HINT = "tapegrad show --recover and stats --recover read the whole records before the cut"


def _load(path: str, recover: bool = False) -> Tape:
    """`inspect.load_tape`, with problems as `_Failure`s naming `path` as the user gave it."""
    try:
        return inspect.load_tape(path, recover=recover)
    except TruncatedTapeError as exc:
        raise _Failure(path, f"{exc} ({_TRUNCATED_HINT})") from None
    except TapegradError as exc:
        raise _Failure(path, str(exc)) from None
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _Failure(path, exc.strerror or str(exc)) from None


def _recovery_note(path: str, tape: Tape) -> None:
    """On stderr: how much of a recovered file was read, and how its recording ended if by an exception."""
    for line in recovery_lines(tape.recovery) + error_lines(tape.error):
        print(f"tapegrad: {escape(path)}: {line}", file=sys.stderr)


def _where(source: tuple[str, int] | None) -> str:
    """`file.py:42` (the file's last path component, escaped), or '' without a source."""
    return "" if source is None else f"{escape(os.path.basename(source[0]) or source[0])}:{source[1]}"


def _span(values: inspect.ValueStats) -> str:
    """`min -1 max 2 mean 0.5` (over the finite elements)."""
    if values.min is None or values.max is None or values.mean is None:
        return "no finite values"
    return f"min {values.min:.4g} max {values.max:.4g} mean {values.mean:.4g}"


def _brief(values: inspect.ValueStats | None) -> str:
    """`min -1 max 2 mean 0.5 nan 1`: a value summary without the type, counts only when not 0."""
    if values is None:
        return "not stored"
    return _span(values) + f" nan {values.nan}" * bool(values.nan) + f" inf {values.inf}" * bool(values.inf)


def _var(v: inspect.VarRef) -> str:
    """`loss (v14) f64[] mean @ file.py:42`."""
    where = _where(v.source)
    return f"{v.label} {v.type} {escape(v.op)}" + (f" @ {where}" if where else "")


def _names(refs: Sequence[inspect.VarRef], limit: int = 20) -> str:
    shown = ", ".join(f"{v.label} {v.type}" for v in refs[:limit])
    return (shown + (f", ... ({len(refs):,} in all)" if len(refs) > limit else "")) or "none"


def _range(text: str) -> tuple[int | None, int | None]:
    try:
        return inspect.parse_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B, A:, :B or A (record indices), got {text!r}") from None


# ---- show -----------------------------------------------------------------------------------

def _show_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--range", type=_range, metavar="A:B", help="records A to B-1 (as in Python slices; A alone: record A)")
    p.add_argument("--values", action="store_true", help="add min, max, mean and NaN/Inf counts of each stored value")
    p.add_argument("--grep", metavar="OP_OR_NAME",
                   help="only records of this op, and lines defining or using a variable of this name (globs allowed)")
    p.add_argument("--recover", action="store_true", help="read the whole records of a cut-off or damaged file")


@dataclass
class _Listing:
    tape: Tape
    lines: Iterator[inspect.ShownLine]


def _show(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> _Listing:
    tape = _load(paths[0], args.recover)
    _recovery_note(paths[0], tape)
    lines = inspect.show(tape, records=args.range, grep=args.grep, values=args.values, details=args.json, progress=progress)
    return _Listing(tape, lines)


def _show_text(result: _Listing, args: argparse.Namespace) -> Iterator[str]:
    if args.values:
        return (f"{line.text}  | {_brief(line.values)}" for line in result.lines)
    return (line.text for line in result.lines)


def _show_json(result: _Listing, args: argparse.Namespace) -> Iterator[str]:
    rec = result.tape.recovery
    yield f'"records": {len(result.tape)}, "recovery": {_dumps(None if rec is None else dataclasses.asdict(rec))}, "lines": ['
    for k, line in enumerate(result.lines):
        yield ("," if k else "") + _dumps(line.as_dict())
    yield "]"


# ---- stats ----------------------------------------------------------------------------------

def _stats_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--values", action="store_true", help="add the health of every stored value, worst first")
    p.add_argument("--top", type=int, default=20, metavar="N", help="with --values: the N worst values (0: all; default 20)")
    p.add_argument("--max-plan-records", type=int, default=MAX_PLAN_RECORDS, metavar="N",
                   help="predict replay memory only for tapes of at most N records (0: any; default %(default)s)")
    p.add_argument("--recover", action="store_true", help="read the whole records of a cut-off or damaged file")


def _stats(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> inspect.TapeStats:
    tape = _load(paths[0], args.recover)
    _recovery_note(paths[0], tape)
    return inspect.stats(tape, values=args.values, top=args.top, max_plan_records=args.max_plan_records or None,
                         progress=progress)


def _bytes(n: int | None) -> str:
    return "?" if n is None else f"{n:,} bytes"


def _stats_text(s: inspect.TapeStats, args: argparse.Namespace) -> Iterator[str]:
    computed = s.variables - len(s.inputs) - s.constants
    yield f"records    {s.records:,}"
    yield f"variables  {s.variables:,}: {len(s.inputs):,} inputs, {s.constants:,} constants, {computed:,} computed"
    ops = ", ".join(f"{escape(op)} {count:,}" for op, count in s.ops.items())
    yield f"ops        {ops or 'none'}"
    by_dtype = ", ".join(f"{dtype} {row['values']:,} values {row['bytes']:,} bytes" for dtype, row in s.stored.items())
    yield f"stored     values={s.values_mode}: {s.stored_bytes:,} bytes" + (f" ({by_dtype})" if by_dtype else "")
    yield f"flops      {s.flops:,} (estimate)"
    if s.peak_note is None or any(v is not None for v in s.peak.values()):
        back = "" if s.peak["backward"] is None else f", backward {_bytes(s.peak['backward'])}"
        yield f"peak       forward {_bytes(s.peak['forward'])}{back} (predicted, replaying with new inputs)"
    if s.peak_note is not None:
        yield f"peak       {escape(s.peak_note, 300)}"
    yield f"inputs     {_names(s.inputs)}"
    yield f"outputs    {_names(s.outputs)}"
    files = ", ".join(escape(f) for f in s.sources[:10]) + (f", ... ({len(s.sources)} in all)" if len(s.sources) > 10 else "")
    yield f"sources    {files or 'none'}"
    for k, (key, value) in enumerate(s.metadata.items()):
        if k == 20:
            yield f"           ... ({len(s.metadata)} keys in all)"
            break
        yield f"{'metadata' if k == 0 else '':<10} {escape(key, 60)}: {escape(repr(value), 200)}"
    if s.recovery is not None:
        r = s.recovery
        yield (f"recovered  {r.records:,} records, {r.variables:,} variables; "
               f"{'complete tape' if r.complete else f'cut at byte {r.offset:,}'}, {r.dropped_bytes:,} bytes dropped")
    if s.health is not None:
        yield f"health     worst first, {len(s.health):,} of {s.health_count:,} stored values:"
        for h in s.health:
            v = h.values
            yield (f"  {h.var.label} {v.type} {escape(h.var.op)}  nan {v.nan} inf {v.inf} zero {v.zero}  "
                   f"{_span(v)}" + (f"  @ {_where(h.var.source)}" if h.var.source else ""))


# ---- grad -----------------------------------------------------------------------------------

def _grad_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--of", metavar="NAME", help="the variable to differentiate (default: the last recorded output)")
    p.add_argument("--wrt", metavar="NAME", action="extend", nargs="+",
                   help="the variables to differentiate with respect to (default: every floating-point input)")
    p.add_argument("--out", metavar="FILE", help="write the gradients to FILE with np.savez (one tape only)")


@dataclass
class _Grads:
    grads: inspect.Gradients
    out: str | None


def _grad(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> _Grads:
    grads = inspect.grad(_load(paths[0]), of=args.of, wrt=args.wrt)
    if args.out is not None:
        try:
            inspect.save_npz(args.out, grads.arrays())
        except OSError as exc:  # (the temporary file's name is ours: the user gave `args.out`)
            raise _Failure(args.out, exc.strerror or str(exc)) from None
    return _Grads(grads, args.out)


def _grad_text(result: _Grads, args: argparse.Namespace) -> Iterator[str]:
    g = result.grads
    yield f"gradients of {_var(g.of)}"
    for item in g.grads:
        v = item.values
        yield f"  {item.wrt.label} {v.type}  norm {item.norm:.6g}  nan {v.nan} inf {v.inf}  {_span(v)}"
    if result.out is not None:
        yield f"wrote {escape(result.out)}: {', '.join(escape(k) for k in g.arrays())}"


def _grad_json(result: _Grads, args: argparse.Namespace) -> dict[str, Any]:
    return {**result.grads.as_dict(), "out": result.out, "keys": list(result.grads.arrays()) if result.out else None}


# ---- check ----------------------------------------------------------------------------------

def _tolerance_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--rtol", type=float, default=None, help=f"relative tolerance {what} (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help=f"absolute tolerance {what} (default 1e-8)")


def _check_options(p: argparse.ArgumentParser) -> None:
    _tolerance_options(p, "between stored and recomputed values")
    p.add_argument("--grad", metavar="NAME", help="also check the gradient with respect to input NAME by finite differences")
    p.add_argument("--of", metavar="NAME", help="with --grad: the variable to differentiate (default: the last output)")
    p.add_argument("--grad-rtol", type=float, default=None, help="with --grad: relative tolerance (default by dtype)")
    p.add_argument("--grad-atol", type=float, default=None, help="with --grad: absolute tolerance (default by dtype)")


def _check(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> inspect.CheckReport:
    return inspect.check(_load(paths[0]), rtol=args.rtol, atol=args.atol, grad=args.grad, of=args.of,
                         grad_rtol=args.grad_rtol, grad_atol=args.grad_atol, progress=progress)


def _difference(d: Difference | None) -> str:
    if d is None:
        return "equal"
    if d.first is None:
        return "shape or dtype differ"
    at = f" (first at [{', '.join(map(str, d.first))}])" if d.first else ""
    return f"{d.count:,} elements differ{at}; largest difference {d.max_abs:.4g} (relative {d.max_rel:.4g})"


def _check_text(r: inspect.CheckReport, args: argparse.Namespace) -> Iterator[str]:
    verdict = "ok" if r.mismatch is None else "MISMATCH"
    yield (f"values: {r.records:,} records, {r.recomputed:,} recomputed, {r.compared:,} stored values compared "
           f"(rtol {r.rtol:g}, atol {r.atol:g}): {verdict}")
    if r.note is not None:
        yield f"  {escape(r.note, 300)}"
    m = r.mismatch
    if m is not None:
        what = {"value": _difference(m.difference), "guard": "the recomputed value takes another branch",
                "error": "the op fails on the recomputed inputs"}[m.kind]
        yield f"  record {m.var.record}: {_var(m.var)}: {what}"
        if m.kind != "value":
            yield f"    {escape(m.message, 300)}"
        yield f"    stored:     {_brief(m.stored)}"
        if m.kind == "value":
            yield f"    recomputed: {_brief(m.recomputed)}"
    if r.grad is not None:
        g = r.grad
        yield (f"gradient: d {g.of.label} / d {g.wrt.label} against finite differences (eps {g.eps:.3g}, rtol {g.rtol:g}, "
               f"atol {g.atol:g}): {'ok' if g.ok else 'MISMATCH'}")
        for k, d in enumerate(g.directions, 1):
            gap = abs(d.analytic - d.numeric) / max(abs(d.analytic), abs(d.numeric), 1e-300)
            yield (f"  direction {k}: replayed {d.analytic:.7g}, finite differences {d.numeric:.7g} "
                   f"(relative difference {gap:.0e}){'' if d.ok else '  <- beyond tolerance'}")


# ---- diff -----------------------------------------------------------------------------------

def _diff_options(p: argparse.ArgumentParser) -> None:
    _tolerance_options(p, "between the two tapes' values")
    p.add_argument("--of", metavar="NAME", help="also compare the gradients of NAME (a variable on both tapes)")


def _diff(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> inspect.DiffReport:
    a, b = _load(paths[0]), _load(paths[1])
    rtol = RTOL if args.rtol is None else args.rtol
    atol = ATOL if args.atol is None else args.atol
    return inspect.diff(a, b, rtol=rtol, atol=atol, of=args.of, progress=progress)


def _records(span: tuple[int, int] | None) -> str:
    if span is None:
        return ""
    return f"record {span[0]}" if span[1] - span[0] == 1 else f"records {span[0]}..{span[1] - 1}"


def _side(label: str, s: Side) -> str:
    rec = "" if s.var.record is None else f"record {s.var.record}: "
    return f"    {label}: {rec}{_var(s.var)}  {_brief(s.values)}"


def _diff_text(r: inspect.DiffReport, args: argparse.Namespace) -> Iterator[str]:
    yield (f"A: {escape(args.files[0])} ({r.records[0]:,} records)  B: {escape(args.files[1])} ({r.records[1]:,} records): "
           f"{r.alignment}, {r.pairs:,} pairs")
    if r.change_count:
        yield f"structural changes: {r.change_count:,}" + (f" (the first {len(r.changes)})" if r.change_count > len(r.changes) else "")
        for c in r.changes:
            sides = "; ".join(f"{side} {_records(span)}" + (f" @ {_where(src)}" if src else "")
                              for side, span, src in (("A", c.a, c.a_source), ("B", c.b, c.b_source)) if span)
            yield f"  {c.kind}: {sides}: {escape(c.detail, 300)}"
    if r.input_count:
        yield f"inputs that differ: {r.input_count:,}"
        for d in r.inputs:
            yield f"  {d.a.var.label} / {d.b.var.label}: {_difference(d.difference)}"
            yield _side("A", d.a)
            yield _side("B", d.b)
    if r.first_value is not None:
        d = r.first_value
        yield f"first value difference, after {r.compared - 1:,} equal pairs: {_difference(d.difference)}"
        yield _side("A", d.a)
        yield _side("B", d.b)
    elif r.compared:
        yield f"values: {r.compared:,} aligned records compared (rtol {r.rtol:g}, atol {r.atol:g}): equal"
    if r.of is not None:
        if r.first_gradient is None:
            yield f"gradients of {r.of[0].label}: equal"
        else:
            d = r.first_gradient
            yield f"first gradient difference of {r.of[0].label} (from the output back): {_difference(d.difference)}"
            yield _side("A", d.a)
            yield _side("B", d.b)
    if r.note is not None:
        yield f"note: {escape(r.note, 300)}"
    yield "same" if r.same else "different"


# ---- slice ----------------------------------------------------------------------------------

def _slice_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--var", metavar="NAME", required=True, help="the variable whose computation to keep")
    p.add_argument("--out", metavar="FILE", required=True, help="where to save the slice (a tape file, written atomically)")


@dataclass
class _Sliced:
    slice: inspect.Slice
    out: str
    records: int


def _slice(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> _Sliced:
    tape = _load(paths[0])
    result = inspect.slice(tape, args.var)
    try:
        result.tape.save(args.out)
    except OSError as exc:  # (the temporary file's name is ours: the user gave `args.out`)
        raise _Failure(args.out, exc.strerror or str(exc)) from None
    return _Sliced(result, args.out, len(tape))


def _slice_text(r: _Sliced, args: argparse.Namespace) -> Iterator[str]:
    s = r.slice
    info = s.as_dict()
    yield (f"wrote {escape(r.out)}: {info['records']:,} of {r.records:,} records ({info['guards']} guards), "
           f"{info['leaves']:,} leaves, computing {_var(s.var)}")


def _slice_json(r: _Sliced, args: argparse.Namespace) -> dict[str, Any]:
    return {**r.slice.as_dict(), "out": r.out}


# ---- nan ----------------------------------------------------------------------------------

def _nan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--of", metavar="NAME", help="the output whose reverse pass to check (default: the last recorded output)")
    p.add_argument("--inputs", metavar="FILE.npz",
                   help="input values (np.savez: by name, or v<N>) for tapes that store only inputs or no values")


def _nan(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> NanReport:
    tape = _load(paths[0], recover=True)  # the tape of a crashed run: its whole records (the report says so)
    inputs: dict[str, Any] | None = None
    if args.inputs is not None:
        try:
            with np.load(args.inputs, allow_pickle=False) as npz:
                inputs = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise _Failure(args.inputs, str(exc)) from None
    return inspect.nan(tape, inputs=inputs, of=args.of)


def _nan_text(report: NanReport, args: argparse.Namespace) -> list[str]:
    return format_report(report)


# ---- demo -----------------------------------------------------------------------------------

def _demo(args: argparse.Namespace, paths: tuple[str, ...], progress: Progress | None) -> tuple[int, str]:
    from .demo import run

    out = io.StringIO()
    return run(out), out.getvalue()


COMMANDS: tuple[Command, ...] = (
    Command("show", "the tape listing, one record per line with its source line", "many", _show_options, _show,
            _show_text, _show_json, streams=True),
    Command("stats", "op histogram, counts, bytes, FLOPs, replay memory, inputs, outputs, metadata", "many",
            _stats_options, _stats, _stats_text),
    Command("grad", "replay the reverse pass; each gradient's shape, norm and NaN/Inf counts", "many", _grad_options,
            _grad, _grad_text, _grad_json),
    Command("check", "validate, recompute and compare every stored value; --grad: a finite-difference check", "many",
            _check_options, _check, _check_text, failed=lambda r: not r.ok),
    Command("diff", "align two tapes; structural changes and the first value (or gradient) that differs", "two",
            _diff_options, _diff, _diff_text, failed=lambda r: not r.same),
    Command("nan", "where NaN or infinity is born: the first record making one, forward and in reverse", "many",
            _nan_options, _nan, _nan_text, failed=lambda r: r.forward is not None or r.reverse is not None),
    Command("slice", "save the minimal tape that computes one variable (a standalone reproducer)", "one",
            _slice_options, _slice, _slice_text, _slice_json),
    Command("demo", "record a small MLP training step, list its tape and replay its gradients", "none",
            lambda p: None, _demo, lambda r, args: [r[1].rstrip("\n")], failed=lambda r: r[0] != 0),
)


# ---- running --------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapegrad", description="Record, inspect and replay autodiff tapes.",
                                     epilog="Run `tapegrad COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"tapegrad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.summary, description=c.summary[0].upper() + c.summary[1:] + ".")
        if c.files == "many":
            p.add_argument("files", nargs="+", metavar="FILE", help="tape files (each reported on its own)")
        elif c.files == "one":
            p.add_argument("files", nargs=1, metavar="FILE", help="a tape file")
        elif c.files == "two":
            p.add_argument("files", nargs=2, metavar="FILE", help="the two tape files, A and B")
        c.options(p)
        if c.files != "none":
            p.add_argument("--json", action="store_true", help="print JSON (fields: docs/inspect.md)")
        p.set_defaults(json=False)
    return parser


class _Bar:
    """A progress bar on stderr that appears once the work has taken a second."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream, self.label = stream, label
        self.start = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < 1.0 or now - self.last < 0.1:
            return
        self.last, self.shown = now, True
        fraction = min(done / total, 1.0) if total else 0.0
        filled = int(fraction * 30)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {done:,}/{total:,}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_pipe(stream: TextIO) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return False


def _progress(command: Command, label: str) -> _Bar | None:
    if not _is_tty(sys.stderr) or _is_pipe(sys.stdout) or (command.streams and _is_tty(sys.stdout)):
        return None
    return _Bar(sys.stderr, escape(label, 40))


def _write(out: TextIO, chunks: Iterable[str], sep: str = "\n", end: str = "\n") -> None:
    """Write `chunks` joined by `sep`, then `end` (nothing at all without chunks), a few hundred
    at a time, so output flows as it is made."""
    batch: list[str] = []
    started = False
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) >= 256:
            out.write((sep if started else "") + sep.join(batch))
            started = True
            batch.clear()
    if batch:
        out.write((sep if started else "") + sep.join(batch))
        started = True
    if started:
        out.write(end)


def _dumps(doc: Any) -> str:
    return json.dumps(inspect.jsonable(doc), allow_nan=False)


def _run_one(command: Command, args: argparse.Namespace, paths: tuple[str, ...], header: bool) -> bool:
    """Compute and print one unit; True if it failed (its error already reported)."""
    out = sys.stdout
    label = " ".join(paths)
    bar = _progress(command, label)
    try:
        result = command.compute(args, paths, bar)
        if args.json:
            doc = command.json(result, args) if command.json is not None else result.as_dict()
            named: dict[str, Any] = {"files": list(paths)} if len(paths) > 1 else {"file": paths[0]} if paths else {}
            if isinstance(doc, dict):
                out.write(_dumps({**named, **doc}) + "\n")
            else:
                head = _dumps(named)[:-1]
                _write(out, [head + (", " if named else ""), *doc, "}"], sep="", end="\n")
        else:
            if header:
                out.write(f"==> {escape(label)} <==\n")
            _write(out, command.text(result, args))
        return bool(command.failed(result))
    except _Failure as exc:
        where, message = exc.where, exc.message
    except TapegradError as exc:
        where, message = label, str(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:
        where, message = label, exc.strerror or str(exc)
    finally:
        if bar is not None:
            bar.close()
    line = f"tapegrad: {escape(where, 300)}: {escape(message, 2000)}"
    if args.json:
        out.write(_dumps({"file" if len(paths) == 1 else "files": paths[0] if len(paths) == 1 else list(paths),
                          "error": message}) + "\n")
    out.flush()
    print(line, file=sys.stderr)
    return True


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2): argparse has printed why
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    command = next(c for c in COMMANDS if c.name == args.command)
    files: list[str] = getattr(args, "files", [])
    if command.name == "grad" and args.out is not None and len(files) > 1:
        parser.print_usage(sys.stderr)
        print("tapegrad grad: error: --out takes one tape file", file=sys.stderr)
        return 2
    units = [(f,) for f in files] if command.files == "many" else [tuple(files)]
    try:
        failed = [_run_one(command, args, paths, header=len(units) > 1 and not args.json) for paths in units]
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    return 1 if any(failed) else 0
