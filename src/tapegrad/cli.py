"""The `tapegrad` command line.

Contract: `main(argv) -> int` never raises for user errors: 0 on success, 1 on a bad tape (one
line on stderr, no traceback), 2 on usage errors (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import TapegradError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapegrad", description="Record, inspect and replay autodiff tapes.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="record a small MLP training step, list its tape and replay its gradients",
                   description="Record one training step of a small MLP, print the tape listing and the "
                               "gradient norms obtained by replaying the tape.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            return run(sys.stdout)
    except TapegradError as exc:
        print(f"tapegrad: error: {exc}", file=sys.stderr)
        return 1
    return 2  # unreachable: argparse rejects unknown commands
