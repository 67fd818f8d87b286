"""The benchmark scripts stay runnable: none shadows a standard-library module (a script's folder
leads sys.path, so `benchmarks/inspect.py` once broke numpy's import in every sibling script),
and each one parses its options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_no_benchmark_shadows_a_standard_library_module() -> None:
    assert BENCHMARKS
    shadowing = [p.name for p in BENCHMARKS if p.stem in sys.stdlib_module_names]
    assert shadowing == []


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_every_benchmark_imports_and_answers_help(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
