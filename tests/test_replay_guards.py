"""Guards: Python control flow on recorded values is checked again on replay.

`if v:`, `bool(v)`, `int(v)`, `v.item()` and `float(v)` of a non-float Variable inside `record()` each append a record
with op "guard"; a replay whose inputs would take another branch raises `tg.GuardError` naming
the record index and the user's source line.  Source lines are on by default and switched off
with `record(source=False)`.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import roundtrip

HERE = os.path.abspath(__file__)


def line_of(marker: str) -> int:
    """Line number of the unique source line of this file that contains `marker`."""
    lines = inspect.getsource(inspect.getmodule(line_of)).splitlines()  # type: ignore[arg-type]
    hits = [n + 1 for n, text in enumerate(lines) if f"# {marker}" in text]
    assert len(hits) == 1, f"marker {marker!r} found on lines {hits}"
    return hits[0]


def branchy(x: Any) -> Any:
    if x > 0:  # marker: if-branch
        return x * 2.0  # marker: then
    return -x


def record_branchy(x0: float, **options: Any) -> tg.Tape:
    with tg.record(**options) as tape:
        x = tg.Variable(np.array(x0), name="x")
        y = branchy(x)
        y.name = "y"
    return tape


def sources(tape: tg.Tape) -> dict[int, tuple[str, int]]:
    """Record index -> (file, line) for every record that has a source line."""
    found = {n: tape.source_of(n) for n in range(len(tape))}
    return {n: src for n, src in found.items() if src is not None}


def guard_indices(tape: tg.Tape) -> list[int]:
    return [n for n, r in enumerate(tape.records) if r.op == "guard"]


def test_if_on_a_variable_records_a_guard() -> None:
    tape = record_branchy(0.5)
    ops = [r.op for r in tape.records]
    assert ops == ["greater", "guard", "mul"]
    guard = tape.records[1]
    assert dict(guard.attrs) == {"value": True, "kind": "bool"}
    assert guard.inputs == tape.records[0].outputs


def test_same_branch_replays_other_branch_raises_guard_error() -> None:
    tape = record_branchy(0.5)
    out = tg.replay.forward(tape, inputs={"x": np.array(3.0)})
    assert float(out["y"]) == 6.0
    g = tg.replay.backward(tape, of="y", wrt="x", inputs={"x": np.array(3.0)})
    assert float(g["x"]) == 2.0
    line = line_of("marker: if-branch")
    for replay in (lambda: tg.replay.forward(tape, inputs={"x": np.array(-3.0)}),
                   lambda: tg.replay.backward(tape, of="y", wrt="x", inputs={"x": np.array(-3.0)}),
                   lambda: tg.replay.jvp(tape, {"x": np.array(1.0)}, inputs={"x": np.array(-3.0)})):
        with pytest.raises(tg.GuardError) as info:
            replay()
        message = str(info.value)
        assert "record 1" in message
        assert f"{HERE}:{line}" in message


def test_guard_error_is_a_tapegrad_error() -> None:
    assert issubclass(tg.GuardError, tg.TapegradError)
    tape = record_branchy(-0.5)
    with pytest.raises(tg.TapegradError):
        tg.replay.forward(tape, inputs={"x": np.array(0.5)})
    assert float(tg.replay.forward(tape, inputs={"x": np.array(-2.0)})["y"]) == 2.0


def conversions(x: Any) -> Any:
    """Every way a value leaves the tape as a Python scalar."""
    n = int(tg.sum(x))  # marker: int
    f = x[0].item()  # marker: float (float() of a float Variable is an error: it would lose the gradient)
    i = x[1].item()  # marker: item
    b = bool(x[0] < 1.0)  # marker: bool
    return x * (n + f + i + b)


def record_conversions(values: str = "all") -> tg.Tape:
    with tg.record(values=values) as tape:
        x = tg.Variable(np.array([0.5, 2.0]), name="x")
        y = conversions(x)
        y.name = "y"
    return tape


def test_int_float_item_and_bool_each_add_a_guard() -> None:
    tape = record_conversions()
    guards = [tape.records[n] for n in guard_indices(tape)]
    assert [dict(g.attrs) for g in guards] == [
        {"value": 2, "kind": "int"},
        {"value": 0.5, "kind": "float"},
        {"value": 2.0, "kind": "float"},
        {"value": True, "kind": "bool"},
    ]
    assert [type(g.attrs["value"]) for g in guards] == [int, float, float, bool]


@pytest.mark.parametrize(("new", "marker"), [
    ([0.5, 2.9], "marker: int"),  # int(sum) 3 != 2; the first guard to fail
    ([0.6, 2.0], "marker: float"),
    ([0.5, 2.1], "marker: item"),
])
def test_each_conversion_guard_names_its_own_line(new: list[float], marker: str) -> None:
    tape = record_conversions()
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(tape, inputs={"x": np.array(new)})
    message = str(info.value)
    index = next(n for n in guard_indices(tape) if sources(tape)[n][1] == line_of(marker))
    assert f"record {index} " in message
    assert f"{HERE}:{line_of(marker)}" in message


def test_bool_guard_fails_when_only_the_comparison_flips() -> None:
    # 0.5 -> 1.5 also changes x[0].item(); use a tape without the float guard to isolate bool().
    with tg.record() as tape:
        x = tg.Variable(np.array([0.5, 2.0]), name="x")
        flag = bool(x[0] < 1.0)  # marker: isolated bool
        y = x * 2.0 if flag else x * 3.0
        y.name = "y"
    np.testing.assert_array_equal(tg.replay.forward(tape, inputs={"x": np.array([0.9, 7.0])})["y"], [1.8, 14.0])
    with pytest.raises(tg.GuardError, match=f"{HERE}:{line_of('marker: isolated bool')}"):
        tg.replay.forward(tape, inputs={"x": np.array([1.5, 7.0])})


def test_int_guard_passes_while_the_truncated_value_is_unchanged() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([0.5, 2.0]), name="x")
        y = x * int(tg.sum(x))
        y.name = "y"
    # sum 2.5 -> int 2; a new input summing to 2.9 keeps the branch, 3.1 does not.
    np.testing.assert_array_equal(tg.replay.forward(tape, inputs={"x": np.array([0.9, 2.0])})["y"], [1.8, 4.0])
    with pytest.raises(tg.GuardError, match="recorded"):
        tg.replay.forward(tape, inputs={"x": np.array([1.1, 2.0])})


def test_same_inputs_replay_through_every_guard() -> None:
    tape = record_conversions()
    x = np.array([0.5, 2.0])
    n = 2 + 0.5 + 2.0 + 1
    np.testing.assert_array_equal(tg.replay.forward(tape)["y"], x * n)
    np.testing.assert_array_equal(tg.replay.forward(tape, inputs={"x": x.copy()})["y"], x * n)
    g = tg.replay.backward(tape, of="y", wrt="x", inputs={"x": x.copy()})
    np.testing.assert_array_equal(g["x"], np.full(2, n))


def test_guards_are_rechecked_even_when_the_output_does_not_depend_on_them() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array(1.0), name="x")
        z = tg.Variable(np.array(2.0), name="z")
        if x > 0:
            pass
        y = z * z
        y.name = "y"
    assert float(tg.replay.forward(tape, inputs={"x": np.array(5.0)}, outputs=["y"])["y"]) == 4.0
    with pytest.raises(tg.GuardError):
        tg.replay.forward(tape, inputs={"x": np.array(-5.0)}, outputs=["y"])
    with pytest.raises(tg.GuardError):
        tg.replay.backward(tape, of="y", wrt="z", inputs={"x": np.array(-5.0)})


def test_no_guard_outside_record() -> None:
    x = tg.Variable(np.array(0.5))
    assert bool(x > 0) is True
    assert x.item() == 0.5
    with tg.record() as tape:
        y = tg.Variable(np.array(1.0)) * 2.0
        with tg.no_record():
            assert y.item() == 2.0
    assert [r.op for r in tape.records] == ["mul"]


# ---- guards from a file -------------------------------------------------------------------


def test_guard_from_a_loaded_tape() -> None:
    loaded = roundtrip(record_branchy(0.5))
    assert [r.op for r in loaded.records] == ["greater", "guard", "mul"]
    assert float(tg.replay.forward(loaded, inputs={"x": np.array(4.0)})["y"]) == 8.0
    with pytest.raises(tg.GuardError, match="record 1"):
        tg.replay.forward(loaded, inputs={"x": np.array(-4.0)})


def test_source_lines_survive_a_file_round_trip() -> None:
    """A tape replayed from a file alone still names the user's line in a guard error."""
    tape = record_branchy(0.5)
    loaded = roundtrip(tape)
    assert sources(loaded) == sources(tape)
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(loaded, inputs={"x": np.array(-4.0)})
    assert f"{HERE}:{line_of('marker: if-branch')}" in str(info.value)


def test_guards_from_a_values_inputs_file_are_recomputed_and_checked() -> None:
    loaded = roundtrip(record_conversions("inputs"))
    np.testing.assert_array_equal(tg.replay.forward(loaded, inputs={"x": np.array([0.5, 2.0])})["y"],
                                  np.array([0.5, 2.0]) * 5.5)
    with pytest.raises(tg.GuardError):
        tg.replay.forward(loaded, inputs={"x": np.array([0.5, 2.5])})


# ---- source lines -------------------------------------------------------------------------


def test_every_record_carries_the_user_file_and_line() -> None:
    first = inspect.currentframe().f_lineno + 3  # type: ignore[union-attr]
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        y = tg.sin(x)
        z = y * x + 1.0
        w = tg.sum(z)
    assert w is not None
    assert len(tape) == 4
    assert sources(tape) == {0: (HERE, first), 1: (HERE, first + 1), 2: (HERE, first + 1), 3: (HERE, first + 2)}


def scaled(v: Any) -> Any:
    return tg.exp(v) * 2.0  # marker: scaled


def test_source_lines_follow_the_calls_between_functions() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        for _ in range(3):
            x = tg.sin(x)  # marker: loop
            x = scaled(x)
        x = x + x  # marker: after
    loop, helper, after = line_of("marker: loop"), line_of("marker: scaled"), line_of("marker: after")
    assert sources(tape) == dict(enumerate([(HERE, line) for line in [loop, helper, helper] * 3 + [after]]))


def test_source_line_is_the_callers_not_tapegrads() -> None:
    tape = record_branchy(0.5)
    found = sources(tape)
    assert sorted(found) == [0, 1, 2]
    assert {f for f, _ in found.values()} == {HERE}
    assert found[0][1] == found[1][1] == line_of("marker: if-branch")
    assert found[2][1] == line_of("marker: then")


def test_source_false_switches_source_lines_off() -> None:
    tape = record_branchy(0.5, source=False)
    assert len(tape) == 3
    assert sources(tape) == {}
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(tape, inputs={"x": np.array(-1.0)})
    assert "record 1" in str(info.value)
    assert HERE not in str(info.value)
