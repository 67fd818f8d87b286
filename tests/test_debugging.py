"""The claims of docs/debugging.md hold: the example run fails where the page says, and nan,
slice and diff find what the page says they find (its printed output is checked separately,
by tests/test_inspect_docs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import inspect

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_nan.py"
LOG_LINE = next(n for n, line in enumerate(EXAMPLE.read_text().splitlines(), 1) if "tg.log(tg.softmax(" in line)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("runs")
    broken = subprocess.run([sys.executable, str(EXAMPLE), str(folder / "run")], capture_output=True, text=True)
    assert broken.returncode == 1 and broken.stdout == "stopped: step 6: loss is nan\n", broken.stderr
    healthy = subprocess.run([sys.executable, str(EXAMPLE), str(folder / "healthy"), "--stable"], capture_output=True,
                             text=True)
    assert healthy.returncode == 0, healthy.stderr
    return folder / "run" / "step-006.tape", folder / "healthy" / "step-006.tape"


def test_the_failing_step_says_how_it_ended_and_earlier_steps_are_finite(runs: tuple[Path, Path]) -> None:
    broken, _ = runs
    tape = tg.load(broken)
    assert tape.error == ("FloatingPointError", "step 6: loss is nan")
    previous = tg.load(broken.with_name("step-005.tape"))
    assert previous.error is None and np.isfinite(previous.value("loss"))


def test_nan_finds_the_log_of_the_underflowed_softmax_in_both_passes(runs: tuple[Path, Path]) -> None:
    report = inspect.nan(tg.load(runs[0]))
    for finding in (report.forward, report.reverse):
        assert finding is not None
        assert (finding.record, finding.op) == (2, "log")
        assert finding.source is not None and finding.source[1] == LOG_LINE and finding.source[0].endswith("train_nan.py")
        (operand,) = finding.inputs
        assert operand.stats is not None and operand.stats.min == 0.0  # a probability that underflowed
    assert report.forward is not None and report.forward.output.stats is not None
    assert report.forward.output.stats.inf >= 1 and report.forward.output.stats.nan == 0
    assert report.reverse is not None and report.reverse.cotangent is not None


def test_the_slice_is_three_records_that_recompute_the_same_values(runs: tuple[Path, Path], tmp_path: Path) -> None:
    full = tg.load(runs[0])
    cut = inspect.slice(full, "v4")
    assert [r.op for r in cut.tape.records] == ["matmul", "softmax", "log"] and cut.records == [0, 1, 2]
    path = tmp_path / "repro.tape"
    cut.tape.save(path)
    repro = tg.load(path)
    with np.errstate(divide="ignore"):
        again = tg.replay.forward(repro, outputs=[4])  # v4: two leaves, then records 0..2
    assert np.array_equal(again[4], full.value(4))


def test_diff_against_the_healthy_run_shows_the_replaced_op(runs: tuple[Path, Path]) -> None:
    broken, healthy = runs
    report = inspect.diff(tg.load(healthy), tg.load(broken))
    kinds = [(c.kind, c.detail) for c in report.changes]
    assert kinds[0][0] == "op changed" and "log_softmax" in kinds[0][1] and "softmax" in kinds[0][1]
    assert kinds[1][0] == "inserted" and "log" in kinds[1][1]
    assert not report.same
