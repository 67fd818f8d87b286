"""`tapegrad.inspect.nan`: where NaN and infinity start, forward and in reverse, from the tape alone.

Also `load_for_debugging`, which opens the file of a crashed streaming run with recovery.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from nan_tapes import CRASH, HERE, LOGITS, root, underflow
from op_cases import roundtrip
from tapegrad.inspect.loading import error_lines, load_for_debugging, recovery_lines
from tapegrad.inspect.nan import NanReport, format_report, nan
from tapegrad.tape import ERROR_MESSAGE_BYTES, Tape

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # numpy on the NaNs made here


def text(report: NanReport) -> str:
    return "\n".join(format_report(report))


# ---- the two findings -------------------------------------------------------------------------

def test_a_forward_nan_is_found_at_the_record_that_makes_it_with_its_source_line() -> None:
    tape, line = underflow()
    report = nan(tape)
    f = report.forward
    assert f is not None
    assert (f.record, f.op, f.source) == (1, "log", (HERE, line))
    assert f.output.id == 2 and f.output.stats is not None and f.output.stats.inf == 2
    assert [i.id for i in f.inputs] == [1] and f.inputs[0].stats is not None and f.inputs[0].stats.finite
    assert f.cotangent is None and f.incoming is None
    assert not report.replayed and report.of is not None and report.of.name == "loss"
    assert report.reverse is not None and report.reverse.record == 1  # d log(p) = g / p, infinite at p = 0
    shown = text(report)
    assert f"the first record to make a non-finite value from finite inputs is record 1 at {HERE}:{line}" in shown
    assert "      1 v2:f64[1,3] = log v1" in shown
    assert "  input  v1: f64[1,3] min 0 max 1" in shown


def test_a_nan_only_in_the_reverse_pass_is_found_at_the_vjp_that_makes_it() -> None:
    tape, line = root()
    report = nan(tape)
    assert report.forward is None
    r = report.reverse
    assert r is not None
    assert (r.record, r.op, r.source) == (0, "sqrt", (HERE, line))
    assert r.cotangent is not None and (r.cotangent.id, r.cotangent.name, r.cotangent.kind) == (0, "x", "input")
    assert r.cotangent.stats is not None and r.cotangent.stats.inf == 1
    assert r.incoming is not None and r.incoming.finite and r.incoming.min == r.incoming.max == 2.0
    assert r.inputs[0].stats is not None and r.inputs[0].stats.zero == 1
    shown = text(report)
    assert "forward pass: no record makes a non-finite value from finite inputs" in shown
    assert f"reverse pass of v4 'y': the first VJP to make a cotangent non-finite from a finite one is that of record 0 " \
           f"at {HERE}:{line}" in shown
    assert "cotangent of v0 'x' (input), made non-finite here: f64[3]" in shown


def test_a_clean_tape_has_no_findings() -> None:
    tape, _ = underflow(logits=np.array([[1.0, 0.0, -5.0]]))
    report = nan(tape)
    assert report.forward is None and report.reverse is None and report.reverse_note is None
    assert "no cotangent becomes non-finite" in text(report)


def test_values_that_are_non_finite_by_design_are_not_where_nans_start() -> None:
    mask = np.array([True, False, True])
    with tg.record() as tape:
        x = tg.Variable(np.array([0.5, 2.0, -1.0]), name="x")
        masked = tg.where(mask, x, np.array([-np.inf] * 3))  # a -inf constant: non-finite on purpose
        loss = tg.sum(tg.softmax(masked) * x)
    report = nan(tape)
    assert report.forward is None  # `where` passes the constant's -inf on; softmax makes finite values
    assert [(leaf.kind, leaf.stats.inf if leaf.stats else None) for leaf in report.nonfinite_leaves] == [("const", 3)]
    assert report.reverse is None
    assert np.isfinite(loss.data)
    assert "non-finite leaves:" in text(report)


# ---- what values the search sees ------------------------------------------------------------------

@pytest.mark.parametrize("values", ["inputs", "none"])
def test_tapes_without_stored_values_are_replayed_with_the_given_inputs(values: str) -> None:
    tape, line = underflow(values)
    loaded = roundtrip(tape)
    inputs = None if values == "inputs" else {"logits": LOGITS}
    report = nan(loaded, inputs=inputs)
    assert report.replayed and report.values_mode == values
    assert report.forward is not None and (report.forward.record, report.forward.source) == (1, (HERE, line))
    assert report.reverse is not None and report.reverse.record == 1
    assert report.forward.output.stats is not None and report.forward.output.stats.inf == 2
    clean = nan(loaded, inputs={"v0": np.array([[1.0, 0.0, -5.0]])})  # .npz style key of an input
    assert clean.forward is None and clean.reverse is None and clean.replaced == (0,)
    assert "values recomputed with the given inputs (v0)" in text(clean)


def test_a_tape_without_values_needs_its_inputs() -> None:
    tape, _ = underflow("none")
    with pytest.raises(tg.TapegradError, match=r"no value for input.*v0.*pass (it|them) in `inputs`"):
        nan(roundtrip(tape))


def test_given_inputs_are_checked_against_the_recording() -> None:
    tape, _ = underflow()
    with pytest.raises(tg.TapegradError, match="recorded with shape"):
        nan(tape, inputs={"logits": np.zeros((2, 3))})
    with pytest.raises(tg.TapegradError, match="not an input"):
        nan(tape, inputs={"loss": np.zeros(())})
    with pytest.raises(tg.TapegradError, match="no variable named"):
        nan(tape, inputs={"nope": np.zeros(())})


def test_new_inputs_replace_the_stored_values() -> None:
    tape, _ = underflow(logits=np.array([[1.0, 0.0, -5.0]]))  # recorded clean, every value stored
    assert nan(tape).forward is None
    report = nan(tape, inputs={"logits": LOGITS})
    assert report.replayed and report.forward is not None and report.forward.record == 1


def test_a_replay_that_takes_another_branch_is_a_guard_error() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        y = tg.log(x) if tg.sum(x) > 0 else x
    assert y is not None
    with pytest.raises(tg.GuardError, match="record 2"):
        nan(tape, inputs={"x": np.array([-1.0, -2.0])})


def test_an_integer_output_and_an_empty_tape_have_no_reverse_pass() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        tg.log(x - 1.0) > 0  # the last record is a comparison
    report = nan(tape)
    assert report.forward is not None and report.forward.op == "log"
    assert report.reverse is None and "bool" in (report.reverse_note or "")
    assert "reverse pass of v5: not checked: v5 has dtype bool" in text(report)
    empty = nan(Tape())
    assert empty.forward is None and empty.of is None and empty.reverse_note == "the tape has no records"


# ---- how the recording ended ----------------------------------------------------------------

def test_a_crashed_streaming_run_loads_with_recovery_and_still_reports(tmp_path) -> None:
    path = tmp_path / "crashed.tape"
    child = subprocess.Popen([sys.executable, "-c", CRASH, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if int(line) >= 40:
                break
    finally:
        child.kill()  # SIGKILL: no footer, possibly a partial frame at the end
        child.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recovery warning is captured, not issued
        tape, recovery = load_for_debugging(path)
    assert recovery is not None and tape.recovery is recovery and not recovery.complete
    assert recovery.records == len(tape) >= 40
    with pytest.raises(tg.TruncatedTapeError):
        tg.load(path)
    report = nan(tape)
    assert report.recovery is recovery and report.error is None
    assert report.forward is not None and (report.forward.record, report.forward.op) == (1, "log")
    assert report.forward.source is not None and report.forward.source[0] == "<string>"
    shown = text(report)
    assert f"recovered: {recovery.records:,} records" in shown and f"cut off at byte {recovery.offset:,}" in shown
    assert recovery_lines(None) == []


def test_a_complete_file_loads_for_debugging_without_recovery(tmp_path) -> None:
    tape, _ = root()
    tape.save(tmp_path / "t.tape")
    loaded, recovery = load_for_debugging(tmp_path / "t.tape")
    assert recovery is None and len(loaded) == len(tape)
    with pytest.raises(OSError):
        load_for_debugging(tmp_path / "missing.tape")


def test_a_recording_that_raised_is_reported_with_its_exception(tmp_path) -> None:
    path = tmp_path / "raised.tape"
    with pytest.raises(FloatingPointError), tg.record(path=path):
        z = tg.Variable(LOGITS, name="logits")
        with np.errstate(all="ignore"):
            loss = -tg.sum(tg.log(tg.softmax(z, axis=-1)))
        if not np.isfinite(loss.data):
            raise FloatingPointError("loss is not finite\x1b[31m at step 12")
    tape, recovery = load_for_debugging(path)
    report = nan(tape)
    assert recovery is None and report.error == ("FloatingPointError", "loss is not finite\x1b[31m at step 12")
    assert report.forward is not None and report.forward.op == "log"
    shown = text(report)
    assert "recording ended with an exception: FloatingPointError: loss is not finite\\x1b[31m at step 12" in shown


# ---- output -------------------------------------------------------------------------------------

def test_the_report_is_json_data() -> None:
    tape, _ = root()
    report = nan(tape)
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["reverse"]["record"] == 0 and data["reverse"]["cotangent"]["name"] == "x"
    assert data["forward"] is None and data["recovery"] is None and data["exception"] is None
    assert set(data) == {"records", "values_mode", "replayed", "replaced", "of", "forward", "reverse", "reverse_note",
                         "nonfinite_leaves", "recovery", "exception"}


def hostile_tape() -> Tape:
    """A loaded tape whose names and source path are escape sequences (as a stranger's file may hold)."""
    evil = "\x1b]0;pwned\x07\x1b[2J"
    tape = Tape.from_parts("all", {}, leaves=[0], consts=set(), records=[("log", None, 1, 0), ("sum", {"axis": None,
                           "keepdims": False}, 2, 1)],
                           values={0: np.array([0.0, 1.0]), 1: np.array([-np.inf, 0.0]), 2: np.array(-np.inf)},
                           avals={}, names={0: evil + "x" * 100_000, 1: evil},
                           sources=([evil + "/" + "d" * 10_000 + ".py"] * 2, [3, 4]))
    tape.error = (evil, evil + "\n" * 5000 + "m" * 4000)
    return tape


def test_every_string_from_the_file_is_escaped_and_capped() -> None:
    report = nan(hostile_tape())
    assert report.forward is not None and report.forward.record == 0
    lines = format_report(report)
    for line in lines:
        assert line.isprintable(), repr(line)
        assert len(line) < 6000
    assert sum(map(len, lines)) < 20_000
    assert "\\x1b]0;pwned\\x07" in "\n".join(lines)
    assert report.as_dict()["forward"]["inputs"][0]["name"].startswith("\x1b]0;pwned")  # data, capped, unescaped
    assert len(report.as_dict()["forward"]["inputs"][0]["name"]) <= 1024


def test_it_records_nothing_inside_a_recording() -> None:
    tape, _ = root()
    with tg.record() as outer:
        report: Any = nan(tape)
    assert len(outer) == 0 and report.reverse is not None


def test_printing_the_error_escapes_and_caps_it() -> None:
    lines = error_lines(("Evil\x1b[2J", "\x1b]0;title\x07 first\nsecond\r\n" + "z" * 10_000))
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert lines[0].startswith("recording ended with an exception: Evil\\x1b[2J: \\x1b]0;title\\x07 first")
    assert lines[1] == "  second" and len(text) < 2 * ERROR_MESSAGE_BYTES
    assert error_lines(None) == []


@pytest.mark.parametrize("build", [underflow, root], ids=["forward nan", "reverse nan"])
def test_the_pass_over_stored_values_finds_what_a_replay_finds(build: Any) -> None:
    """A tape that stores every value is walked in reverse straight over them (no replay plan);
    giving its inputs again forces the replay: both must report the same."""
    tape, _ = build()
    direct = nan(tape)
    replayed = nan(tape, inputs={name: tape.value(name) for name in tape.names if tape.var(name).kind == "input"})
    assert replayed.replayed and not direct.replayed
    assert direct.reverse is not None and replayed.reverse is not None
    assert direct.reverse == replayed.reverse
