"""`tapegrad.inspect` as a library: the functions behind the commands, on in-memory tapes.

The registry walks (every op has a FLOP estimate; every op recomputes bit for bit), the
helpers (escaping, short source paths, nearest-name errors, JSON conversion) and the cases the
CLI tests do not reach (an unalignable diff, a failing guard, slices of inputs-only tapes).
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, op_tape, record_case
from tapegrad import inspect
from tapegrad.errors import escape
from tapegrad.inspect.flops import ELEMENTWISE_DEFAULT, RULES, flops, missing_rules
from tapegrad.ops import REGISTRY
from tapegrad.tape import short_paths


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_registry_op_has_a_finite_non_negative_flop_estimate(op: str) -> None:
    tape = op_tape(op)
    seen = 0
    for rec in tape.records:
        ins = [tape.var(i).shape for i in rec.inputs]
        estimate = flops(rec.op, ins, tape.var(rec.outputs[0]).shape, rec.attrs)
        assert isinstance(estimate, int) and 0 <= estimate < math.inf
        seen += rec.op == op
    assert seen, f"the {op} case records no {op}"
    assert inspect.stats(tape).flops >= 0


def test_every_op_that_is_not_elementwise_has_its_own_flop_rule() -> None:
    assert missing_rules() == []
    assert set(RULES) <= set(REGISTRY)
    assert flops("matmul", [(4, 3), (3, 5)], (4, 5)) == 2 * 3 * 20
    assert flops("exp", [(7,)], (7,)) == ELEMENTWISE_DEFAULT([(7,)], (7,), {}) == 7
    assert flops("reshape", [(7,)], (7, 1)) == 0 and flops("sum", [(4, 5)], ()) == 20


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_check_recomputes_every_op_bit_for_bit(op: str) -> None:
    for case in CASES[op]:
        tape, _ = record_case(case)
        report = inspect.check(tape, rtol=0.0, atol=0.0)
        assert report.ok and report.compared == report.recomputed == len(tape), (case.label, report.mismatch)


def test_check_reports_a_guard_that_the_stored_inputs_fail() -> None:
    with tg.record(values="inputs") as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        if tg.sum(x) > 0:
            tg.exp(x * 2.0)
    loaded = tg.loads(tg.dumps(tape))  # stores the input only: nothing to compare before the guard
    parts = loaded.parts()
    values = dict(parts.values)
    values[loaded.resolve("x")] = -values[loaded.resolve("x")]  # an input that takes the other branch
    bad = tg.Tape.from_parts("inputs", {}, leaves=list(parts.leaves), consts=set(parts.consts), records=list(parts.records),
                             values=values, avals=dict(parts.avals), names=dict(parts.names))
    report = inspect.check(bad)
    assert not report.ok and report.mismatch is not None and report.recomputed == 2
    assert report.mismatch.kind == "guard" and report.mismatch.var.op == "guard" and report.mismatch.var.record == 2
    assert "recorded bool(True), now bool(False)" in report.mismatch.message


def test_check_of_a_structure_only_tape_says_why_nothing_was_recomputed() -> None:
    with tg.record(values="none") as tape:
        tg.exp(tg.Variable(np.ones(2), name="x"))
    loaded = tg.loads(tg.dumps(tape))
    report = inspect.check(loaded)
    assert report.ok and report.recomputed == 0 and report.note is not None and "no value" in report.note


def test_show_lines_are_the_listing_and_filters_compose(readme_tape) -> None:  # type: ignore[no-untyped-def]
    tape = readme_tape.tape
    assert [line.text for line in inspect.show(tape)] == tape.listing()
    lines = list(inspect.show(tape, records=(1, None), grep="tanh", values=True, details=True))
    assert [(ln.record, ln.var.op if ln.var else None) for ln in lines] == [(1, "tanh")]
    assert lines[0].values is not None and lines[0].values.type == "f64[2,2]" and lines[0].inputs == (2,)
    assert json.loads(json.dumps(lines[0].as_dict()))["values"]["size"] == 4
    calls: list[tuple[int, int]] = []
    list(inspect.show(tape, progress=lambda done, total: calls.append((done, total))))
    assert calls and all(total == 3 for _, total in calls)


def test_find_accepts_names_ids_and_v_ids_and_lists_nearest_names() -> None:
    with tg.record() as tape:
        a = tg.Variable(np.ones(2), name="alpha")
        b = tg.Variable(np.ones(2), name="v0")  # a name that looks like an id wins over the id
        c = a + b
        c.name = "alpine"
    assert inspect.find(tape, "alpha") == tape.resolve("alpha")
    assert inspect.find(tape, "v0") == tape.resolve("v0") == tape.resolve(1)
    assert inspect.find(tape, "v2") == inspect.find(tape, 2) == tape.resolve("alpine")
    with pytest.raises(tg.TapegradError, match=r"nearest first: 'alpha', 'alpine', 'v0'"):
        inspect.find(tape, "alpa")
    with pytest.raises(tg.TapegradError, match="no variable v7"):
        inspect.find(tape, "v7")


def test_diff_of_tapes_too_different_to_align_reports_one_unaligned_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    def chain(op: str, n: int) -> tg.Tape:
        with tg.record() as tape:
            x = tg.Variable(np.ones(2), name="x")
            for _ in range(n):
                x = getattr(tg, op)(x)
        return tape

    diff_module = sys.modules["tapegrad.inspect.diff"]  # (the package's `diff` is the function)
    monkeypatch.setattr(diff_module, "ALIGN_LIMIT", 10)
    report = inspect.diff(chain("sin", 5), chain("cos", 6))
    assert report.alignment == "partly aligned" and report.pairs == 0
    assert [(c.kind, c.a, c.b) for c in report.changes] == [("unaligned", (0, 5), (0, 6))]
    monkeypatch.setattr(diff_module, "ALIGN_LIMIT", 10**6)
    report = inspect.diff(chain("sin", 5), chain("cos", 6))
    assert [c.kind for c in report.changes] == ["op changed"] * 5 + ["inserted"]


def test_diff_recomputes_values_an_inputs_only_tape_does_not_store() -> None:
    def run(scale: float) -> tg.Tape:
        with tg.record(values="inputs") as tape:
            x = tg.Variable(np.arange(3.0), name="x")
            y = tg.exp(x * scale)
            y.name = "y"
        return tg.loads(tg.dumps(tape))

    report = inspect.diff(run(1.0), run(1.0 + 1e-3))
    assert report.first_value is not None and report.first_value.a.var.record == 0 and report.compared == 1
    assert inspect.diff(run(1.0), run(1.0)).same


def test_slice_of_an_inputs_only_tape_replays_like_the_tape(rng: np.random.Generator) -> None:
    with tg.record(values="inputs") as tape:
        x = tg.Variable(rng.standard_normal(4), name="x")
        w = tg.Variable(rng.standard_normal(4), name="w")
        u = tg.sum(tg.sin(x) * w)
        u.name = "u"
        v = tg.sum(tg.exp(w))
        v.name = "v"
    loaded = tg.loads(tg.dumps(tape))
    sliced = inspect.slice(loaded, "u")
    assert sliced.tape.values_mode == "inputs" and [r.op for r in sliced.tape.records] == ["sin", "mul", "sum"]
    again = tg.loads(tg.dumps(sliced.tape))
    want = tg.replay.backward(loaded, of="u", wrt=["x", "w"])
    got = tg.replay.backward(again, of="u", wrt=["x", "w"])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert sliced.as_dict()["from_records"] == [0, 1, 2]


def test_grad_norms_ignore_non_finite_elements_and_keys_are_file_names() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([0.0, 1.0, 4.0]), name="../../etc/x")
        y = tg.Variable(np.array([3.0, 4.0, 0.0]), name="y")
        with np.errstate(all="ignore"):
            loss = tg.sum(tg.sqrt(x) + y)
    g = inspect.grad(tape, of=loss, wrt=["../../etc/x", "y"])
    assert g.grads[0].values.inf == 1 and g.grads[0].norm == pytest.approx(math.hypot(0.5, 0.25))
    assert list(g.arrays()) == ["v0", "y"]
    json.dumps(g.as_dict(), allow_nan=False)


def test_escape_caps_and_shows_every_unprintable_character() -> None:
    assert escape("plain name") == "plain name"
    assert escape("a\x1b[31m\nb\u202e\udcff") == "a\\x1b[31m\\nb\\u202e\\udcff"
    long = escape("x" * 1000)
    assert long.startswith("x" * 200) and long.endswith("...[1,000 characters]") and len(long) < 230


def test_short_paths_are_the_shortest_unique_suffixes() -> None:
    files = ["/a/model/train.py", "/b/data/train.py", "/a/util.py", "util.py", "<stdin>"]
    assert short_paths(files) == {"/a/model/train.py": "model/train.py", "/b/data/train.py": "data/train.py",
                                  "/a/util.py": "a/util.py", "util.py": "util.py", "<stdin>": "<stdin>"}


def test_jsonable_makes_any_plain_data_valid_json() -> None:
    data = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "b": b"\x00\x01", 3: (1, 2), "np": np.float32(2.5)}
    assert json.loads(json.dumps(inspect.jsonable(data), allow_nan=False)) == {
        "nan": "nan", "inf": ["inf", "-inf"], "b": "b'\\x00\\x01'", "3": [1, 2], "np": 2.5}
