"""The benchmark scripts stay runnable: none shadows a standard-library module (a script's folder
leads sys.path, so `benchmarks/inspect.py` once broke numpy's import in every sibling script),
and each one parses its options."""

from __future__ import annotations

import json
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


def test_the_quick_run_writes_its_tables_and_raw_samples(tmp_path: Path) -> None:
    """`benchmarks/run.py --quick` (numpy and tapegrad only, small sizes) runs every section and
    writes its Markdown tables and JSON samples; what the numbers are is not checked here."""
    script = BENCHMARKS[0].parent / "run.py"
    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "samples.json"
    done = subprocess.run([sys.executable, str(script), "--quick", "--markdown", str(md), "--json", str(js)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(js.read_text())
    sections = {case["section"] for case in data["cases"]}
    assert sections == {"tiny", "mlp", "large", "lookup", "serial"}
    assert all(len(case["samples_s"]) == data["machine"]["repeat"] or case["section"] == "serial" for case in data["cases"])
    impls = {case["impl"] for case in data["cases"] if case["section"] == "tiny"}
    assert {"numpy", "tapegrad eager, constants Python floats", "tapegrad record(), constants Python floats",
            "tapegrad eager, constants Variables", "tapegrad record(), constants Variables"} <= impls
    assert not any("PyTorch" in impl for impl in impls)  # --quick runs no peers
    assert [row["impl"] for row in data["memory"]] == ["numpy", "tapegrad eager", "tapegrad record() + backward"]
    text = md.read_text()
    for heading in ("### tiny: chain", "### mlp: MLP step float32", "### mlp: MLP step float64", "### large: chain",
                    "## Memory", "## Targets", "cores:", "BLAS:", "numpy:"):
        assert heading in text
    assert "| ratio to numpy |" in text
