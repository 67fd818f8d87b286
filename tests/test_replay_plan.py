"""Replay plans: cached per request, reused across replays, and honest about peak memory.

The memory tests replay one step of a 20-layer tanh MLP (width 256, batch 128, float64), where
array bytes dominate, and compare the peak that `tracemalloc` measures with `Plan.peak_bytes`
(within 10%), and with eager tracing of the same step (record + `loss.backward()`).  Long
chains of 4 KiB values (left in their registers when they die) and 8 KiB values (released by
steps of their own) check that registers are reused and that the model counts dead values.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.replay as replay_module
from op_cases import roundtrip

LAYERS, WIDTH, BATCH = 20, 256, 128
WRT = [f"w{k}" for k in range(LAYERS)]
RNG = np.random.default_rng(11)
WEIGHTS = [RNG.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH) for _ in range(LAYERS)]
X0 = RNG.standard_normal((BATCH, WIDTH))
X1 = RNG.standard_normal((BATCH, WIDTH))


def mlp_step(weights: list[Any], x: Any) -> Any:
    h = x
    for w in weights:
        h = tg.tanh(h @ w)
    loss = tg.sum(h * h)
    loss.name = "loss"
    return loss


def record_deep(values: str = "all") -> tg.Tape:
    with tg.record(values=values) as tape:
        mlp_step([tg.Variable(w, name=f"w{k}") for k, w in enumerate(WEIGHTS)], tg.Variable(X0, name="x"))
    return tape


def measured_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated while `fn` runs (its result is kept until the peak is read)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


@pytest.fixture(scope="module")
def deep() -> tg.Tape:
    return record_deep()


@pytest.fixture(scope="module")
def deep_lean() -> tg.Tape:
    """The same step from a values="inputs" file: replay must recompute every activation."""
    return roundtrip(record_deep("inputs"))


def grad_bytes() -> int:
    return sum(w.nbytes for w in WEIGHTS)


# ---- caching and reuse ------------------------------------------------------------------------


def small_tape(values: str = "all") -> tg.Tape:
    with tg.record(values=values) as tape:
        w = tg.Variable(np.array([[0.5, -1.0], [2.0, 0.1]]), name="w")
        x = tg.Variable(np.array([[0.3, -0.7]]), name="x")
        loss = tg.sum(tg.tanh(x @ w))
        loss.name = "loss"
    return tape


def test_plan_has_peak_bytes_and_is_cached() -> None:
    tape = small_tape()
    p = tg.replay.plan(tape, of="loss", wrt=["w"])
    assert isinstance(p, tg.replay.Plan)
    assert isinstance(p.peak_bytes, int) and p.peak_bytes > 0
    assert tg.replay.plan(tape, of="loss", wrt=["w"]) is p
    assert tg.replay.plan(tape, of="loss", wrt="w") is p
    assert tg.replay.plan(tape) is tg.replay.plan(tape)
    assert tg.replay.plan(tape) is not p
    assert tg.replay.plan(tape, of="loss", wrt=["x"]) is not p


class CompileCounter:
    """Counts plan compilations made through `tapegrad.replay`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = replay_module.compile_plan

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(replay_module, "compile_plan", counting)


def test_repeated_replays_compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    tape = small_tape()
    counter = CompileCounter(monkeypatch)
    rng = np.random.default_rng(0)
    results = []
    for _ in range(5):
        x = rng.standard_normal((1, 2))
        results.append(tg.replay.backward(tape, of="loss", wrt=["w"], inputs={"x": x})["w"])
    assert counter.calls == 1
    assert not np.array_equal(results[0], results[1])  # new inputs, same plan
    for _ in range(3):
        tg.replay.forward(tape, inputs={"x": rng.standard_normal((1, 2))})
    assert counter.calls == 2


def test_plan_then_backward_reuses_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan(tape, of, wrt)` compiles what `backward(tape, of, wrt)` runs: no second compile."""
    tape = small_tape()
    counter = CompileCounter(monkeypatch)
    p = tg.replay.plan(tape, of="loss", wrt=["w"])
    assert counter.calls == 1
    tg.replay.backward(tape, of="loss", wrt=["w"])
    tg.replay.backward(tape, of="loss", wrt=["w"])
    assert counter.calls == 1, "backward compiled a plan of its own instead of reusing plan()'s"
    assert tg.replay.plan(tape, of="loss", wrt=["w"]) is p


def test_plan_then_forward_reuses_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    tape = small_tape()
    counter = CompileCounter(monkeypatch)
    p = tg.replay.plan(tape, inputs=["x"])
    tg.replay.forward(tape, inputs={"x": np.zeros((1, 2))})
    assert counter.calls == 1
    assert tg.replay.plan(tape, inputs=["x"]) is p


def test_plan_survives_replays() -> None:
    tape = small_tape()
    p = tg.replay.plan(tape, of="loss", wrt=["w"])
    first = tg.replay.backward(tape, of="loss", wrt=["w"])["w"]
    np.testing.assert_array_equal(tg.replay.backward(tape, of="loss", wrt=["w"])["w"], first)
    assert tg.replay.plan(tape, of="loss", wrt=["w"]) is p


def test_plan_counts_steps() -> None:
    tape = small_tape()
    backward_only = tg.replay.plan(tape, of="loss", wrt=["w"])
    assert backward_only.n_forward == 0  # every value is stored: nothing to recompute
    assert backward_only.n_backward > 0
    recompute = tg.replay.plan(tape, of="loss", wrt=["w"], inputs=["x"])
    assert recompute.n_forward == len(tape)
    lean = roundtrip(small_tape("inputs"))
    assert tg.replay.plan(lean).n_forward == len(lean)


# ---- memory -----------------------------------------------------------------------------------


def check_within(peak: int, predicted: int, what: str) -> None:
    assert abs(peak - predicted) <= 0.10 * predicted, (
        f"{what}: measured peak {peak} bytes, plan predicts {predicted} ({peak / predicted:.3f}x)")


def test_backward_replay_peak_is_within_10_percent_of_the_plan(deep: tg.Tape) -> None:
    p = tg.replay.plan(deep, of="loss", wrt=WRT)  # compiled and cached before tracing starts
    assert p.peak_bytes >= grad_bytes()  # the gradients are results, alive at the end
    peak = measured_peak(lambda: tg.replay.backward(deep, of="loss", wrt=WRT))
    check_within(peak, p.peak_bytes, "backward replay after plan()")
    peak = measured_peak(lambda: tg.replay.backward(deep, of="loss", wrt=WRT))
    check_within(peak, p.peak_bytes, "second backward replay")


def test_backward_replay_with_new_inputs_peak_is_within_10_percent(deep: tg.Tape) -> None:
    tg.replay.backward(deep, of="loss", wrt=WRT, inputs={"x": X1})  # warm the cache
    p = tg.replay.plan(deep, of="loss", wrt=WRT, inputs=["x"])
    assert p.n_forward == 2 * LAYERS + 2  # matmul + tanh per layer, then mul and sum
    peak = measured_peak(lambda: tg.replay.backward(deep, of="loss", wrt=WRT, inputs={"x": X1}))
    check_within(peak, p.peak_bytes, "backward replay with a new x")


def test_replay_from_a_values_inputs_file_peak_is_within_10_percent(deep_lean: tg.Tape) -> None:
    tg.replay.backward(deep_lean, of="loss", wrt=WRT)
    p = tg.replay.plan(deep_lean, of="loss", wrt=WRT)
    peak = measured_peak(lambda: tg.replay.backward(deep_lean, of="loss", wrt=WRT))
    check_within(peak, p.peak_bytes, "backward replay from a values='inputs' file")


def test_forward_replay_frees_activations_and_matches_the_plan(deep_lean: tg.Tape) -> None:
    tg.replay.forward(deep_lean, inputs={"x": X1})
    p = tg.replay.plan(deep_lean, inputs=["x"])
    peak = measured_peak(lambda: tg.replay.forward(deep_lean, inputs={"x": X1}))
    check_within(peak, p.peak_bytes, "forward replay")
    # liveness: far less than holding all 40 activations of (128, 256) float64
    assert peak < 10 * X0.nbytes


def eager_step() -> Any:
    with tg.record():
        ws = [tg.Variable(w) for w in WEIGHTS]
        loss = mlp_step(ws, tg.Variable(X1))
    loss.backward()
    return [w.grad for w in ws]


def test_replay_peaks_below_eager_tracing_of_the_same_step(deep: tg.Tape, deep_lean: tg.Tape) -> None:
    eager = measured_peak(eager_step)
    for tape in (deep, deep_lean):
        tg.replay.backward(tape, of="loss", wrt=WRT, inputs={"x": X1})
        replayed = measured_peak(lambda tape=tape: tg.replay.backward(tape, of="loss", wrt=WRT, inputs={"x": X1}))
        assert replayed < eager, f"replay peaked at {replayed} bytes, eager record + backward at {eager}"


def test_replayed_gradients_equal_eager_ones(deep_lean: tg.Tape) -> None:
    ws = [tg.Variable(w) for w in WEIGHTS]
    mlp_step(ws, tg.Variable(X1)).backward()
    got = tg.replay.backward(deep_lean, of="loss", wrt=WRT, inputs={"x": X1})
    for k, w in enumerate(ws):
        np.testing.assert_array_equal(got[f"w{k}"], w.grad)


# ---- registers: reuse, lingering small values, released big ones ------------------------------


def chain_tape(n: int, size: int) -> tg.Tape:
    """The chain of benchmarks/overhead.py (add, mul, sin, exp with a parameter c) on `size`
    float64 elements, from a values="inputs" file."""
    with tg.record(values="inputs") as tape:
        y = tg.Variable(np.linspace(0.1, 0.4, size), name="x")
        c = tg.Variable(np.full(size, 0.9), name="c")
        for i in range(n):
            y = y + c if i % 4 == 0 else y * c if i % 4 == 1 else tg.sin(y) if i % 4 == 2 else tg.exp(y)
        y.name = "y"
    return roundtrip(tape)


def eager_chain(n: int, x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xv, cv = tg.Variable(x), tg.Variable(c)
    y = xv
    for i in range(n):
        y = y + cv if i % 4 == 0 else y * cv if i % 4 == 1 else tg.sin(y) if i % 4 == 2 else tg.exp(y)
    y.backward()
    return xv.grad, cv.grad


@pytest.mark.parametrize("size", [512, 1024], ids=["4KiB-values-linger", "8KiB-values-are-released"])
def test_forward_replay_of_a_long_chain_holds_a_few_values(size: int) -> None:
    tape = chain_tape(400, size)
    x = np.linspace(-0.2, 0.3, size)
    tg.replay.forward(tape, inputs={"x": x})
    p = tg.replay.plan(tape, inputs=["x"])
    peak = measured_peak(lambda: tg.replay.forward(tape, inputs={"x": x}))
    # Each step's result takes its input's register, so nothing piles up: two values of the
    # chain (and some objects of a few hundred bytes that the model leaves out) at any time.
    assert p.peak_bytes <= 2 * x.nbytes + 64
    assert peak < 3 * x.nbytes


@pytest.mark.parametrize("size", [512, 1024], ids=["4KiB-values-linger", "8KiB-values-are-released"])
def test_backward_replay_of_a_long_chain_matches_eager_and_the_plan(size: int) -> None:
    n = 400
    tape = chain_tape(n, size)
    rng = np.random.default_rng(5)
    x, c = rng.uniform(-0.5, 0.5, size), rng.uniform(0.5, 1.0, size)
    gx, gc_ = eager_chain(n, x, c)
    got = tg.replay.backward(tape, of="y", wrt=["x", "c"], inputs={"x": x, "c": c})
    np.testing.assert_array_equal(got["x"], gx)
    np.testing.assert_array_equal(got["c"], gc_)
    p = tg.replay.plan(tape, of="y", wrt=["x", "c"], inputs=["x", "c"])
    peak = measured_peak(lambda: tg.replay.backward(tape, of="y", wrt=["x", "c"], inputs={"x": x, "c": c}))
    check_within(peak, p.peak_bytes, "backward replay of a chain")
    saved = 3 * n // 4 * x.nbytes  # the forward values the reverse pass reads: all alive when it starts
    assert saved <= peak < 1.1 * saved  # dead values left in their registers do not add to the peak


def test_a_failing_step_names_its_record_although_registers_are_reused() -> None:
    with tg.record() as tape:
        y = tg.Variable(np.array([0.5, 1.0]), name="x")
        for _ in range(50):
            y = tg.sin(y) * 1.5
        if tg.sum(y) > 0:
            y = y * 2.0
        y.name = "y"
    guard = [n for n, rec in enumerate(tape.records) if rec.op == "guard"]
    assert guard == [102]
    tg.replay.forward(tape, inputs={"x": np.array([0.2, 0.3])})  # same branch
    with pytest.raises(tg.GuardError, match=r"record 102 \(guard\)"):
        tg.replay.forward(tape, inputs={"x": np.array([-0.5, -1.0])})


def test_small_dead_values_left_in_registers_count_in_the_peak() -> None:
    """50 values of 4 KiB die at the stack that reads them; none is released by a step of its
    own, so they stay in their registers while the next results are allocated, and the model
    must count them (forgetting them would predict a third less than what is measured)."""
    with tg.record(values="inputs") as tape:
        x = tg.Variable(np.linspace(0.0, 1.0, 512), name="x")
        s = tg.stack([x * k for k in range(50)])
        loss = tg.sum(s * s + s)
        loss.name = "loss"
    tape = roundtrip(tape)
    x1 = np.linspace(-1.0, 0.0, 512)
    tg.replay.forward(tape, inputs={"x": x1})
    p = tg.replay.plan(tape, inputs=["x"])
    peak = measured_peak(lambda: tg.replay.forward(tape, inputs={"x": x1}))
    check_within(peak, p.peak_bytes, "forward replay with dead values in registers")
