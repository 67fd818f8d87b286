"""Plan compilation stays cheap per record: the speed tricks of `plan.py` keep working.

`benchmarks/replay.py` (d) measures compile time; these tests fail when the tricks it relies on
stop applying (not on timings, which a busy machine makes noisy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import plan, replay


def chain_tape(n: int) -> tg.Tape:
    with tg.record() as tape:
        y = x = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        for k in range(n):
            y = tg.sin(y) * x if k % 2 else tg.exp(y) + x
        y.name = "y"
    return tg.loads(tg.dumps(tape))


def test_shape_inference_is_remembered_across_the_steps_of_a_compile() -> None:
    tape = chain_tape(400)
    before = plan._infer_cached.cache_info()
    p = tg.replay.plan(tape, of="y", wrt="x", inputs=["x"])
    after = plan._infer_cached.cache_info()
    calls = (after.hits - before.hits) + (after.misses - before.misses)
    assert calls >= p.n_backward  # every step of the reverse pass asks
    assert after.misses - before.misses <= 10  # a handful of distinct (op, shapes, dtypes, attributes)


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
