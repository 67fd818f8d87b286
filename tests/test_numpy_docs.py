"""Every ```python block of docs/numpy.md runs, in order, in one namespace; its custom ops are
unregistered afterwards (other tests walk the whole registry)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tapegrad.ops import BUILTIN, REGISTRY
from tapegrad.ops.registry import unregister

DOC = Path(__file__).resolve().parent.parent / "docs" / "numpy.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_every_python_block_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {"__name__": "docs_numpy"}
    try:
        for line, code in blocks:
            exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)
    finally:
        for name in set(REGISTRY) - BUILTIN:
            unregister(name)
    printed = capsys.readouterr().out
    assert "np.sort has no tapegrad op" in printed and "np.add.reduceat has no tapegrad op" in printed
    assert "logaddexp" in printed and "[12.]" in printed
