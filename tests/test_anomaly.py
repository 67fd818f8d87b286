"""Anomaly mode: `check_finite=True` in replay.forward/backward and eager `y.backward()`.

It stops at the first non-finite value with a `tg.NonFiniteError` naming the pass, record, op and
source line; switched off, nothing is checked and results are unchanged (bit for bit).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.anomaly as anomaly_module
from nan_tapes import HERE as TAPES
from nan_tapes import underflow
from op_cases import CASES, SEED, arg_names, op_cases, record_case, roundtrip
from tapegrad.ops import REGISTRY
from tapegrad.plan import compile_plan
from tapegrad.tape import Tape

HERE = __file__
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # numpy on the NaNs made here
NEW = op_cases(SEED + 1)


def line_after() -> int:
    """The line number of the caller's next line."""
    return sys._getframe(1).f_lineno + 1


def root() -> tuple[Tape, tg.Variable, tg.Variable, int]:
    """sum(2 sqrt(x)) at x = [4, 0, 1]: finite forward, infinite gradient at 0 (record 0, sqrt)."""
    with tg.record() as tape:
        x = tg.Variable(np.array([4.0, 0.0, 1.0]), name="x")
        line = line_after()
        s = tg.sqrt(x)
        y = tg.sum(s * 2.0)
        y.name = "y"
    return tape, x, y, line


# ---- the error ------------------------------------------------------------------------------

def test_non_finite_error_is_in_the_error_family_and_an_arithmetic_error() -> None:
    assert issubclass(tg.NonFiniteError, tg.TapegradError)
    assert issubclass(tg.NonFiniteError, FloatingPointError)
    assert issubclass(tg.NonFiniteError, ArithmeticError)
    assert "NonFiniteError" in tg.__all__
    bare = tg.NonFiniteError("message only")  # (code that re-raises `type(exc)(message)` keeps working)
    assert bare.pass_ is None and bare.record is None and str(bare) == "message only"


# ---- forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("through_file", [False, True])
def test_forward_replay_stops_at_the_record_that_makes_the_first_non_finite_value(through_file: bool) -> None:
    tape, line = underflow()
    if through_file:
        tape = roundtrip(tape)
    logits = np.array([[1000.0, 0.0, -5.0]])
    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError) as info:
        tg.replay.forward(tape, inputs={"logits": logits}, check_finite=True)
    err = info.value
    assert (err.pass_, err.record, err.op, err.variable) == ("forward", 1, "log", 2)
    assert err.source == (TAPES, line)
    assert np.isneginf(err.value).sum() == 2
    assert f"record 1 (log) at {TAPES}:{line}" in str(err) and "forward pass" in str(err)
    assert "from finite inputs" in str(err) and "2 infinite" in str(err)


def test_backward_replay_checks_the_forward_values_it_recomputes_first() -> None:
    tape, _ = underflow()
    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError) as info:
        tg.replay.backward(tape, inputs={"logits": np.array([[1000.0, 0.0, -5.0]])}, check_finite=True)
    assert (info.value.pass_, info.value.record, info.value.op) == ("forward", 1, "log")
    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError) as info:  # only the reverse pass checked
        tg.replay.backward(tape, inputs={"logits": np.array([[1000.0, 0.0, -5.0]])}, check_finite="reverse")
    assert (info.value.pass_, info.value.record, info.value.op) == ("reverse", 1, "log")
    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError, match="forward pass"):  # the forward pass alone
        tg.replay.backward(tape, inputs={"logits": np.array([[1000.0, 0.0, -5.0]])}, check_finite="forward")


def test_stored_values_are_not_checked_only_what_the_replay_computes() -> None:
    tape, _ = underflow()  # every value stored: a forward replay recomputes nothing
    out = tg.replay.forward(tape, check_finite=True)
    assert np.isinf(out["loss"])


def test_a_non_finite_replaced_input_is_named() -> None:
    tape, _ = underflow()
    with pytest.raises(tg.NonFiniteError, match=r"replayed input v0 \('logits'\)") as info:
        tg.replay.forward(tape, inputs={"logits": np.array([[np.nan, 0.0, 1.0]])}, check_finite=True)
    assert (info.value.pass_, info.value.record, info.value.op, info.value.variable) == ("forward", None, None, 0)


def test_a_record_whose_input_already_was_non_finite_says_so() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        c = np.array([np.inf, 1.0])
        y = tg.exp(x * c)
    with pytest.raises(tg.NonFiniteError, match=r"its input v1 already was non-finite") as info:
        tg.replay.forward(tape, inputs={"x": np.array([1.0, 3.0])}, check_finite=True)
    assert info.value.record == 0 and info.value.op == "mul"
    assert y.data[0] == np.inf


# ---- reverse ----------------------------------------------------------------------------------

@pytest.mark.parametrize("check", [True, "reverse"])
def test_backward_replay_stops_at_the_vjp_that_makes_a_cotangent_non_finite(check: bool | str) -> None:
    tape, _, _, line = root()
    with pytest.raises(tg.NonFiniteError) as info:
        tg.replay.backward(tape, check_finite=check)
    err = info.value
    assert (err.pass_, err.record, err.op, err.variable, err.source) == ("reverse", 0, "sqrt", 0, (HERE, line))
    assert np.isposinf(err.value).sum() == 1
    assert "the cotangent of v0 ('x')" in str(err) and "from a finite cotangent" in str(err)
    assert tg.replay.backward(tape, check_finite="forward")["x"][1] == np.inf  # the forward pass is fine


def test_eager_backward_on_a_recorded_tape_names_the_record_and_changes_no_grad() -> None:
    _, x, y, line = root()
    with pytest.raises(tg.NonFiniteError) as info:
        y.backward(check_finite=True)
    err = info.value
    assert (err.pass_, err.record, err.op, err.variable, err.source) == ("reverse", 0, "sqrt", 0, (HERE, line))
    assert x.grad is None
    y.backward()  # switched off: no check, the infinite gradient is the answer
    assert x.grad[1] == np.inf


def test_eager_backward_without_a_tape_names_the_op_and_says_why_there_is_no_record() -> None:
    x = tg.Variable(np.array([0.0, 1.0]))
    y = tg.sum(tg.log(x) * 3.0)
    with pytest.raises(tg.NonFiniteError, match=r"eager op log .*tg\.record\(\)") as info:
        y.backward(check_finite=True)
    assert (info.value.pass_, info.value.record, info.value.op, info.value.source) == ("reverse", None, "log", None)
    assert x.grad is None


def test_a_non_finite_seed_is_an_error() -> None:
    tape, _, y, _ = root()
    with pytest.raises(tg.NonFiniteError, match="seed") as info:
        tg.replay.backward(tape, of="y", wrt="x", seed=np.array(np.nan), check_finite=True)
    assert info.value.pass_ == "reverse" and info.value.record is None
    y.grad = np.array(np.inf)
    with pytest.raises(tg.NonFiniteError, match=r"seed \(the cotangent of v4 \('y'\)\)"):
        y.backward(check_finite=True)


def test_an_overflowing_sum_of_finite_cotangents_is_found_where_it_is_made() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1e308]), name="x")
        y = tg.sum(x * 1e308 + x * 1e308)  # forward: inf; gradient 1e308 + 1e308 overflows in the sum
    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError) as info:
        tg.replay.backward(tape, wrt="x", check_finite="reverse")
    assert info.value.pass_ == "reverse" and info.value.variable == 0
    assert info.value.op in ("mul", "add")
    assert np.isinf(y.data)


def test_checks_run_on_variables_inside_a_recording_too() -> None:
    tape, line = underflow()
    sqrt_tape, _, _, sqrt_line = root()
    with tg.record(), np.errstate(all="ignore"):
        with pytest.raises(tg.NonFiniteError) as info:
            tg.replay.forward(tape, inputs={"logits": np.array([[1000.0, 0.0, -5.0]])}, check_finite=True)
        assert (info.value.pass_, info.value.record, info.value.source) == ("forward", 1, (TAPES, line))
        with pytest.raises(tg.NonFiniteError) as info:
            tg.replay.backward(sqrt_tape, check_finite=True)
        assert (info.value.pass_, info.value.record, info.value.source) == ("reverse", 0, (HERE, sqrt_line))
        with pytest.raises(tg.NonFiniteError, match="replayed input"):
            tg.replay.forward(tape, inputs={"logits": np.array([[np.inf, 0.0, 1.0]])}, check_finite=True)
        fine = {"logits": np.array([[1.0, 0.0, -5.0]])}
        checked = tg.replay.backward(tape, inputs=fine, check_finite=True)["logits"]
        assert isinstance(checked, tg.Variable)
        assert np.array_equal(checked.data, tg.replay.backward(tape, inputs=fine)["logits"].data)


def test_a_traced_backward_inside_grad_checks_variables() -> None:
    def f(x: Any) -> Any:
        y = tg.sum(tg.sqrt(x * x))  # d/dx sqrt(x^2) at 0: 0 * inf
        y.backward(check_finite=True)
        return y

    with np.errstate(all="ignore"), pytest.raises(tg.NonFiniteError, match="reverse pass"):
        tg.grad(f)(np.array([0.0, 1.0]))


def test_check_finite_takes_booleans_or_a_pass_name() -> None:
    tape, *_ = root()
    with pytest.raises(tg.TapegradError, match="check_finite"):
        tg.replay.backward(tape, check_finite="both")
    with pytest.raises(tg.TapegradError, match="check_finite"):
        tg.replay.forward(tape, check_finite="forward")  # type: ignore[arg-type]
    with pytest.raises(tg.TapegradError, match="check_finite"):
        tg.replay.backward(tape, check_finite=1)  # type: ignore[arg-type]


def test_a_plan_compiled_without_checks_cannot_check() -> None:
    tape, *_ = root()
    plan = tg.replay.plan(tape, of="y", wrt="x")
    assert plan.checks is None
    with pytest.raises(tg.TapegradError, match="without finiteness checks"):
        plan.run({}, np.ones(()), check=("reverse",))


def test_strings_from_a_file_are_escaped_in_the_message() -> None:
    tape = Tape.from_parts("all", {}, leaves=[0], consts=set(), records=[("sqrt", None, 1, 0)],
                           values={0: np.array([0.0]), 1: np.array([0.0])}, avals={},
                           names={0: "\x1b[2Jx\n" + "n" * 5000}, sources=(["evil\x1b[31m.py\r"], [7]))
    with pytest.raises(tg.NonFiniteError) as info:
        tg.replay.backward(tape, check_finite=True)
    text = str(info.value)
    assert "\x1b" not in text and "\r" not in text and "\n" not in text
    assert "\\x1b[31m" in text and len(text) < 1000
    assert info.value.source == ("evil\x1b[31m.py\r", 7)  # the attribute holds the data as it is


# ---- switched off: nothing checked, nothing different -------------------------------------------

def test_without_check_finite_no_check_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(value: Any) -> bool:
        raise AssertionError("a finiteness check ran although check_finite is off")

    monkeypatch.setattr(anomaly_module, "finite", refuse)
    tape, _, y, _ = root()
    with np.errstate(all="ignore"):
        tg.replay.forward(tape, inputs={"x": np.array([1.0, 0.0, 2.0])})
        tg.replay.backward(tape, inputs={"x": np.array([1.0, 0.0, 2.0])})
        tg.replay.backward(tape, check_finite=False)
        y.backward()
        x2 = tg.Variable(np.array([0.0]))
        tg.sum(tg.sqrt(x2)).backward()
        with tg.record():
            tg.replay.backward(tape)


def _step_structure(plan: tg.replay.Plan) -> list[Any]:
    return [(getattr(fn, "func", fn), getattr(fn, "keywords", None), a, b, out) for fn, a, b, out in plan.steps]


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_checked_plans_make_the_same_numpy_calls_and_results_for_every_op(op: str) -> None:
    for case, again in zip(CASES[op], NEW[op], strict=True):
        tape, out = record_case(case)
        names = arg_names(case.args)
        inputs = dict(zip(names, again.args, strict=True))
        if out.dtype.kind != "f":
            plain = tg.replay.forward(tape, inputs=inputs)["out"]
            assert np.array_equal(tg.replay.forward(tape, inputs=inputs, check_finite=True)["out"], plain)
            continue
        wrt = [n for n, a in zip(names, case.args, strict=True) if a.dtype.kind == "f"]
        ids = [tape.resolve(n) for n in wrt]
        replaced = [tape.resolve(n) for n in names]
        of = tape.resolve("out")
        fast = compile_plan(tape, [], ids, of, replaced)
        checked = compile_plan(tape, [], ids, of, replaced, checked=True)
        assert _step_structure(checked) == _step_structure(fast), case.label
        assert checked.step_records == fast.step_records and checked.peak_bytes == fast.peak_bytes
        assert checked.checks is not None and len(checked.checks) == len(checked.steps)
        plain = tg.replay.backward(tape, of="out", wrt=wrt, inputs=inputs)
        for check in (True, "forward", "reverse", False):
            got = tg.replay.backward(tape, of="out", wrt=wrt, inputs=inputs, check_finite=check)
            for n in wrt:
                assert got[n].dtype == plain[n].dtype and np.array_equal(got[n], plain[n]), (case.label, check)
        # eager, with and without checks
        vs = [tg.Variable(np.array(a)) for a in again.args]
        ws = [tg.Variable(np.array(a)) for a in again.args]
        case.f(*vs).backward()
        case.f(*ws).backward(check_finite=True)
        for v, w in zip(vs, ws, strict=True):
            assert (v.grad is None) == (w.grad is None) and (v.grad is None or np.array_equal(v.grad, w.grad))


def test_checked_results_equal_eager_ones_on_a_network() -> None:
    rng = np.random.default_rng(0)
    with tg.record() as tape:
        w = tg.Variable(rng.standard_normal((4, 3)), name="w")
        b = tg.Variable(np.zeros(3), name="b")
        x = tg.Variable(rng.standard_normal((8, 4)), name="x")
        labels = rng.integers(0, 3, 8)
        loss = -tg.mean(tg.log_softmax(tg.tanh(x @ w) + b, axis=-1)[np.arange(8), labels])
        loss.name = "loss"
    loss.backward(check_finite=True)
    new_x = rng.standard_normal((8, 4))
    checked = tg.replay.backward(roundtrip(tape), of="loss", wrt=["w", "b"], inputs={"x": new_x}, check_finite=True)
    plain = tg.replay.backward(tape, of="loss", wrt=["w", "b"], inputs={"x": new_x})
    assert all(np.array_equal(checked[k], plain[k]) for k in plain)
    assert np.array_equal(tg.replay.backward(tape, of="loss", wrt=["w"], check_finite=True)["w"], w.grad)
