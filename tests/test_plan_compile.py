"""Plan compilation stays cheap per record: the speed tricks of `plan.py` keep working.

`benchmarks/replay.py` (d) measures compile time; these tests fail when the tricks it relies on
stop applying (not on timings, which a busy machine makes noisy), and when a trick would change
what a plan computes: the templated reverse pass must append exactly the steps that the engine
appends when it runs on symbols over the whole tape.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, record_case, roundtrip
from tapegrad import engine, plan, replay
from tapegrad.tape import OUTPUT
from tapegrad.tape_format.stored import StoredValues


def recorded_chain(n: int, values: str = "all") -> tg.Tape:
    """A chain of n records as recorded: its ids are the tracer's serial numbers, not 0 .. n-1."""
    with tg.record(values=values) as tape:
        y = x = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        for k in range(n):
            y = tg.sin(y) * x if k % 2 else tg.exp(y) + x
        y.name = "y"
    return tape


def chain_tape(n: int, values: str = "all") -> tg.Tape:
    """`recorded_chain`, saved and loaded."""
    return tg.loads(tg.dumps(recorded_chain(n, values)))


def test_reverse_steps_are_stamped_from_one_template_per_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    tape = chain_tape(400)
    built = []
    original = plan.Compiler._template

    def counting(self: plan.Compiler, *args: Any) -> plan.Template:
        template = original(self, *args)
        built.append(template)
        return template

    monkeypatch.setattr(plan.Compiler, "_template", counting)
    p = tg.replay.plan(tape, of="y", wrt="x", inputs=["x"])
    assert p.n_backward > 600
    # exp, sin, add and mul, with x's cotangent already started or not (the last record visited
    # first starts it): a handful of signatures, each compiled once however long the chain.
    assert 4 <= len(built) <= 8


def test_shape_inference_is_remembered_when_reshaping() -> None:
    tape = chain_tape(400)
    before = plan._infer_cached.cache_info()
    tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.linspace(0.1, 0.4, 9)})
    after = plan._infer_cached.cache_info()
    calls = (after.hits - before.hits) + (after.misses - before.misses)
    assert calls >= len(tape)  # every record the new shape reaches is re-inferred
    assert after.misses - before.misses <= 10  # a handful of distinct (op, shapes, dtypes, attributes)


def engine_steps(tape: tg.Tape, of: int, wrt: list[int], checked: bool) -> tuple[Any, ...]:
    """The reverse pass compiled the plain way: the engine run once over every record, on symbols
    (a loaded tape's ids are dense, so its records are in slot form)."""
    records = tape.parts().records
    comp = plan.Compiler([tape.shape_dtype(v) for v in tape.ids_in_order()])
    seed = comp.new(*tape.shape_dtype(of))
    values = {s: comp.sym(s) for s in range(seed.slot)}
    active = engine.active_set(records, wrt)
    skip = {s for s in range(seed.slot) if s not in active}
    notes: list[tuple[int, int, int]] = []
    if checked:
        found = engine.reverse_checked(records, values, {of: seed}, skip, set(wrt), comp.ops,
                                       lambda k, i, c: notes.append((k, i, c.slot)))
    else:
        found = engine.reverse(records, values, {of: seed}, skip, set(wrt), comp.ops)
    return comp.steps, comp.avals, comp.consts, {i: s.slot for i, s in found.items()}, notes


def templated_steps(tape: tg.Tape, of: int, wrt: list[int], checked: bool) -> tuple[Any, ...]:
    """The same through `Compiler.reverse` (templates stamped out per record)."""
    records = tape.parts().records
    comp = plan.Compiler([tape.shape_dtype(v) for v in tape.ids_in_order()])
    seed = comp.new(*tape.shape_dtype(of)).slot
    active = engine.active_set(records, wrt)
    skip = {s for s in range(seed) if s not in active}
    notes: list[tuple[int, int, int]] = []
    found = comp.reverse(records, {of: seed}, skip, set(wrt), (lambda k, i, c: notes.append((k, i, c))) if checked else None)
    return comp.steps, comp.avals, comp.consts, found, notes


def reused_inputs_tape() -> tg.Tape:
    """Inputs repeated within one record (x * x, add(x, x), stack([x, y, x])), Python-float
    constants, broadcasting and a cotangent that reaches one variable many times."""
    with tg.record() as tape:
        x = tg.Variable(np.linspace(0.1, 0.9, 6).reshape(2, 3), name="x")
        y = tg.Variable(np.linspace(-1.0, 1.0, 3), name="y")
        h = x * x + tg.add(y, y) * 2.0
        s = tg.stack([h, x + y, h])
        z = tg.sum(tg.tanh(s) * x - y, axis=0)
        loss = tg.sum(tg.log_softmax(z * x, axis=-1))
        loss.name = "loss"
    return roundtrip(tape)


def look_alikes_tape() -> tg.Tape:
    """Pairs of records that differ in one part of their signature only (the other inputs in the
    same state, a later record using them too): whether an input is a constant (no cotangent:
    `a * y`, `k * y`), an input's shape (`b1 * n`, `b2 * n`), the attributes (sums over either
    axis of a square), whether the inputs are one variable (`x * x`, `x * z`)."""
    v = np.linspace  # (short: many small inputs)
    with tg.record() as tape:
        a, x, y, z = (tg.Variable(v(0.5 + k, 1.0 + k, 3), name=name) for k, name in enumerate("axyz"))
        b1, b2 = tg.Variable(v(0.1, 0.3, 3).reshape(1, 3), name="b1"), tg.Variable(v(0.1, 0.6, 6).reshape(2, 3), name="b2")
        n, sq = tg.Variable(v(-1.0, 1.0, 6).reshape(2, 3), name="n"), tg.Variable(v(0.1, 0.9, 9).reshape(3, 3), name="sq")
        k = v(2.0, 3.0, 3)  # a constant: its cotangent is skipped
        p1, p2, p3, p4 = a * y, k * y, x * x, x * z
        u1, u2 = b1 * n, b2 * n
        s0, s1 = tg.sum(sq, axis=0), tg.sum(sq, axis=1)
        late = tg.sin(y) * z + tg.sum(n, axis=0) + tg.sum(sq, axis=0) + x
        loss = tg.sum(p1 + p2 + p3 + p4 + late + s0 * s1) + tg.sum(u1 + u2)
        loss.name = "loss"
    return roundtrip(tape)


def differentiable_tapes() -> list[Any]:
    """The tapes above and every op case with a floating-point result (comparisons have none)."""
    tapes = [pytest.param(chain_tape(12), id="chain"), pytest.param(reused_inputs_tape(), id="reused-inputs"),
             pytest.param(look_alikes_tape(), id="look-alikes")]
    for op, cases in CASES.items():
        for case in cases:
            tape = roundtrip(record_case(case)[0])
            if tape.shape_dtype(tape.parts().records[-1][OUTPUT])[1].kind == "f":
                tapes.append(pytest.param(tape, id=f"{op}-{case.label}"))
    return tapes


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "checked"])
@pytest.mark.parametrize("tape", differentiable_tapes())
def test_templated_reverse_appends_what_the_engine_appends(tape: tg.Tape, checked: bool) -> None:
    parts = tape.parts()
    wrt = [v for v in parts.leaves if v not in parts.consts and tape.shape_dtype(v)[1].kind == "f"]
    of = parts.records[-1][OUTPUT]
    steps, avals, consts, found, notes = engine_steps(tape, of, wrt, checked)
    got_steps, got_avals, got_consts, got_found, got_notes = templated_steps(tape, of, wrt, checked)
    assert got_steps == steps
    assert got_avals == avals
    assert got_found == found
    assert got_notes == notes
    assert list(got_consts) == list(consts)
    for slot, value in consts.items():
        assert got_consts[slot].dtype == value.dtype
        np.testing.assert_array_equal(got_consts[slot], value)


@pytest.mark.parametrize("checked", [False, True], ids=["plain", "checked"])
@pytest.mark.parametrize("make", [lambda: chain_tape(12), reused_inputs_tape, look_alikes_tape],
                         ids=["chain", "reused-inputs", "look-alikes"])
def test_wanted_intermediates_get_the_cotangents_the_engine_gives_them(make: Any, checked: bool) -> None:
    """A record's cotangent stays where the reverse pass keeps it after the record is done (no
    earlier record looks there), so wanting a record's output finds its complete cotangent."""
    tape = make()
    parts = tape.parts()
    of = parts.records[-1][OUTPUT]
    middle = [rec[OUTPUT] for rec in parts.records[:-1] if tape.shape_dtype(rec[OUTPUT])[1].kind == "f"]
    wrt = [v for v in parts.leaves if v not in parts.consts][:1] + middle[::3]
    steps, _, _, found, notes = engine_steps(tape, of, wrt, checked)
    got_steps, _, _, got_found, got_notes = templated_steps(tape, of, wrt, checked)
    assert len(found) > 2 and got_found == found
    assert got_steps == steps and got_notes == notes


def test_the_plan_for_a_new_shape_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    tape = chain_tape(50)
    calls = []
    original = plan.compile_plan

    def counting(*args: Any, **kwargs: Any) -> plan.Plan:
        calls.append(kwargs.get("shapes"))
        return original(*args, **kwargs)

    monkeypatch.setattr(replay, "compile_plan", counting)
    for _ in range(3):
        for n in (4, 9):
            tg.replay.backward(tape, of="y", wrt="x", inputs={"x": np.linspace(0.1, 0.4, n)})
    assert calls == [{}, {tape.resolve("x"): (9,)}]


def test_plans_for_new_shapes_are_bounded_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    tape = chain_tape(6)
    monkeypatch.setattr(replay, "SHAPE_PLANS_KEPT", 3)
    plans = {n: tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(n)}) for n in (5, 6, 7)}
    assert tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(5)}) is plans[5]  # (now the most recent)
    tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(8)})  # evicts 6, the least recently used
    assert tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(5)}) is plans[5]
    assert tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(7)}) is plans[7]
    assert tg.replay.plan(tape, of="y", wrt="x", inputs={"x": np.ones(6)}) is not plans[6]
    assert tg.replay.plan(tape, of="y", wrt="x", inputs=["x"]) is tg.replay.plan(tape, of="y", wrt="x", inputs=["x"])


@pytest.mark.parametrize("compile_", ["plan", "jvp"])
def test_the_collector_is_paused_while_a_plan_compiles(compile_: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    tape = chain_tape(30)
    x, y = tape.resolve("x"), tape.resolve("y")
    enabled: list[bool] = []
    for name in ("_program", "_jvp_program", "_lower"):  # the parts that build the plan's many tuples
        part = getattr(plan, name)

        def noting(*args: Any, part: Any = part, **kwargs: Any) -> Any:
            enabled.append(gc.isenabled())
            return part(*args, **kwargs)

        monkeypatch.setattr(plan, name, noting)
    if compile_ == "plan":
        plan.compile_plan(tape, [], [x], y)
    else:
        plan.compile_jvp(tape, y, [x], [])
    assert enabled and not any(enabled)
    assert gc.isenabled()  # and resumed afterwards


# ---- the first replay of a loaded tape: no per-record calls into the tape ------------------




def test_a_loaded_tape_replays_without_sorting_its_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded tape numbers its ids 0 .. n-1: the first replay recognises that (`plan._dense`)
    instead of sorting every id (`Tape.ids_in_order`, `Tape.dense_ids`), and names a replaced
    input by its dense id only in an error.  Its gradients are those of the recorded tape,
    whose ids are not dense (the other way through `_program`)."""
    recorded = recorded_chain(200, "inputs")
    assert not plan._dense(recorded)
    x = np.linspace(0.2, 0.5, 4)
    want = tg.replay.backward(recorded, of="y", wrt="x", inputs={"x": x})["x"]
    loaded = roundtrip(recorded)

    def refuse(self: tg.Tape) -> Any:
        raise AssertionError("the replay sorted the tape's ids")

    monkeypatch.setattr(tg.Tape, "ids_in_order", refuse)
    monkeypatch.setattr(tg.Tape, "dense_ids", refuse)
    got = tg.replay.backward(loaded, of="y", wrt="x", inputs={"x": x})["x"]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(AssertionError, match="sorted"):  # (an error message may ask for them)
        tg.replay.backward(loaded, of="y", wrt="x", inputs={"x": np.ones(4, np.float32)})


def dense_cases() -> list[Any]:
    """Tapes whose ids are 0 .. n-1 (loaded ones) and tapes whose ids are not (recorded ones)."""
    with tg.record() as empty:
        pass
    with tg.record() as leaves_only:
        tg.Variable(np.ones(3), name="a")  # (an input and no record)
    tapes = {"recorded": recorded_chain(5), "loaded": roundtrip(recorded_chain(5)),
             "loaded-inputs": roundtrip(recorded_chain(5, "inputs")), "reused-inputs": roundtrip(reused_inputs_tape()),
             "empty": empty, "leaves-only": leaves_only, "loaded-leaves-only": roundtrip(leaves_only)}
    return [pytest.param(tape, id=label) for label, tape in tapes.items()]


@pytest.mark.parametrize("tape", dense_cases())
def test_dense_ids_are_recognised_as_sorting_them_would(tape: tg.Tape) -> None:
    ids = tape.ids_in_order()
    assert plan._dense(tape) == (ids == list(range(len(ids))))


@pytest.mark.parametrize("values", ["inputs", "all"])
def test_compiling_a_loaded_tape_asks_it_about_a_few_ids(monkeypatch: pytest.MonkeyPatch, values: str) -> None:
    """Shapes come from the loaded tape's tables (`plan._avals`: the ids without a value, and the
    stored values in bulk, `StoredValues.typed_items`; `reshaped` is given them), and what to
    recompute is decided against a set (`plan._recomputed`): neither `Tape.shape_dtype` nor the
    stored values' `in` runs per record, however long the tape and whatever it stores."""
    calls: Counter[str] = Counter()
    shape_dtype, contains = tg.Tape.shape_dtype, StoredValues.__contains__

    def counted_shape_dtype(self: tg.Tape, vid: int) -> Any:
        calls["shape_dtype"] += 1
        return shape_dtype(self, vid)

    def counted_contains(self: StoredValues, vid: object) -> bool:
        calls["in"] += 1
        return contains(self, vid)

    monkeypatch.setattr(tg.Tape, "shape_dtype", counted_shape_dtype)
    monkeypatch.setattr(StoredValues, "__contains__", counted_contains)
    for n in (100, 400):
        tape = chain_tape(n, values)
        calls.clear()
        tg.replay.backward(tape, of="y", wrt="x", inputs={"x": np.linspace(0.1, 0.4, 4)})
        tg.replay.backward(tape, of="y", wrt="x", inputs={"x": np.linspace(0.1, 0.4, 9)})  # (a new shape)
        assert calls["shape_dtype"] <= 30 and calls["in"] <= 10, (n, calls)


@pytest.mark.parametrize("loop", [plan._lower, plan.Compiler.reverse, plan._recomputed],
                         ids=["_lower", "Compiler.reverse", "_recomputed"])
def test_the_compile_loops_keep_their_variables_local(loop: Any) -> None:
    """The loops that run once per record or step read their variables as fast locals: a closure
    or (Python 3.11) a comprehension in the same function would make every variable it reads a
    cell, slower to read at every step (`benchmarks/replay.py` (d))."""
    assert loop.__code__.co_cellvars == ()


def test_slot_sizes_are_kept_as_the_slots_are_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiler keeps the bytes of each slot's value as it makes the slot (templates carry
    their slots' sizes), so lowering computes none; the tape's own slots are sized once."""
    tape = chain_tape(300)
    x, y = tape.resolve("x"), tape.resolve("y")
    sized: list[int] = []
    slot_bytes = plan._slot_bytes
    monkeypatch.setattr(plan, "_slot_bytes", lambda avals: sized.append(len(avals)) or slot_bytes(avals))
    programs = [plan._program(tape, [], [x], y, [x]), plan._program(tape, [], [x], y, [x], checked=True),
                plan._program(tape, [], [x], y, [x], shapes={x: (7,)}), plan._jvp_program(tape, y, [x], [x], None)]
    assert max(sized) <= len(tape.ids_in_order()) < len(programs[0].avals) / 2
    for prog in programs:
        assert prog.sizes == [plan._nbytes(aval) for aval in prog.avals]
    sized.clear()
    plan._lower(programs[0])
    assert not sized


def test_only_the_records_a_request_needs_are_compiled() -> None:
    """Every record is live when every variable is needed (`_program` then skips the filter);
    otherwise only those the request reads."""
    with tg.record(values="inputs") as recorded:
        x = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        y = tg.sin(x)
        y.name = "y"
        z = tg.exp(x) * 2.0  # (not needed for y)
        z.name = "z"
    tape = roundtrip(recorded)
    sin = next(n for n, rec in enumerate(tape.parts().records) if rec[0] == "sin")
    just_y = tg.replay.plan(tape, of="y", wrt="x", inputs=["x"])
    assert [r for r in just_y.step_records if r >= 0] == [sin]
    both = tg.replay.plan(tape, outputs=["y", "z"], inputs=["x"])
    assert [r for r in both.step_records if r >= 0] == list(range(len(tape)))
    np.testing.assert_array_equal(tg.replay.backward(tape, of="y", wrt="x")["x"], np.cos(np.linspace(0.1, 0.4, 4)))
