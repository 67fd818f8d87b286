"""Every ```python block of docs/replay.md runs, in order, in one namespace, in a scratch folder.

Blocks are compiled with the Markdown file as their file name and their own line numbers, so a
failure (and every source line tapegrad records) points into the document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "replay.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block."""
    text = DOC.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_page_has_the_promised_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 6
    code = "\n".join(c for _, c in blocks)
    for needle in ("tg.save(", "tg.load(", "tg.replay.forward(", "tg.replay.backward(", "tg.replay.jvp(",
                   "tg.GuardError", "tg.replay.plan(", "peak_bytes", 'name = "dydx"', "values=\"inputs\""):
        assert needle in code, f"docs/replay.md has no example using {needle}"


def test_every_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the examples write step.tape and friends
    namespace: dict[str, Any] = {"__name__": "docs_replay"}
    for line, code in python_blocks():
        compiled = compile("\n" * (line - 1) + code, str(DOC), "exec")
        exec(compiled, namespace)
    printed = capsys.readouterr().out
    # The guard example's error names the record and the `if` line of the document.
    if_line = next(n for n, text in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1)
                   if "if tg.sum(x) > 0:" in text)
    assert f"record 2 (guard) at {DOC}:{if_line}" in printed
    assert (tmp_path / "df.tape").is_file() and (tmp_path / "hvp.tape").is_file()
