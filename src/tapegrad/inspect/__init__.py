"""Inspecting tapes and debugging runs offline, from the tape alone.

Every command of the `tapegrad` CLI is a plain function here that returns data (the CLI only
formats it), for notebooks and scripts.  Modules:
- `health`: `summarize(array) -> ValueStats`, the value summary every command prints.
"""

from .health import ValueStats, summarize

__all__ = ["ValueStats", "summarize"]
