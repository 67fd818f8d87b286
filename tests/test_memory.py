"""Eager use never leaks: without record(), eager history (segments) lives only as long as the Variables."""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np

import tapegrad as tg
from tapegrad import Variable

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
Y = np.array([1.0, -1.0])


def step(w: Variable, b: Variable) -> tuple[Variable, Variable, Variable]:
    """One SGD step of a small model; returns the new parameters and the loss."""
    pred = tg.tanh(X @ w + b)
    loss = tg.mean((pred - Y) ** 2) + 1e-3 * tg.sum(w * w)
    loss.backward()
    return Variable(w.data - 0.05 * w.grad), Variable(b.data - 0.05 * b.grad), loss


def tiny_step(w: Variable) -> tuple[Variable, Variable]:
    """The smallest useful training step (three ops and a backward pass), cheap under tracemalloc."""
    loss = tg.sum((w - Y) ** 2)
    loss.backward()
    return Variable(w.data - 0.01 * w.grad), loss


def _growth_report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> str:
    """The allocation sites that grew most, for a failure message."""
    return "\n".join(str(stat) for stat in after.compare_to(before, "lineno")[:8])


def test_eager_training_loop_memory_stays_flat() -> None:
    w = Variable(np.zeros(2))
    tracemalloc.start()
    try:
        for _ in range(1_000):  # warm-up: caches, free lists and counters settle
            w, loss = tiny_step(w)
        # numpy's broadcasting helpers leave a little cyclic garbage that the collector frees on
        # its own schedule; collect it so that what is compared is what the loop *retains*.
        gc.collect()
        after_warmup, warmup_peak = tracemalloc.get_traced_memory()
        before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        for _ in range(9_000):
            w, loss = tiny_step(w)
        peak = tracemalloc.get_traced_memory()[1]
        gc.collect()
        current = tracemalloc.get_traced_memory()[0]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Retaining even one small record, tuple or array per step would add 9,000 x (>= 50 bytes).
    growth, peak_growth = current - after_warmup, peak - warmup_peak
    assert growth < 16 * 1024, f"memory grew by {growth} bytes over 9,000 steps:\n{_growth_report(before, after)}"
    # The peak may include garbage awaiting a collection, bounded by the collector's thresholds.
    assert peak_growth < 256 * 1024, f"peak grew by {peak_growth} bytes over 9,000 steps:\n{_growth_report(before, after)}"
    np.testing.assert_allclose(w.data, Y, atol=1e-6)  # the loop did real work and converged
    assert float(loss.data) < 1e-10


def test_graph_is_freed_with_its_variables() -> None:
    w = Variable(np.array([0.1, 0.2, 0.3]))
    h = tg.tanh(X @ w)
    loss = tg.sum(h * h)
    refs = [weakref.ref(h), weakref.ref(loss)]
    loss.backward()
    del h, loss
    # Freed by reference counting alone: the links form no cycles.
    assert [r() for r in refs] == [None, None]
    assert w.grad is not None


def test_leaves_are_not_kept_alive_by_results_of_finished_steps() -> None:
    w, b = Variable(np.zeros(3)), Variable(np.zeros(1))
    first = weakref.ref(w)
    for _ in range(5):
        w, b, _ = step(w, b)
    gc.collect()
    assert first() is None


def test_backward_leaves_no_state_behind_without_record() -> None:
    gc.collect()
    before = len(gc.get_objects())
    w, b = Variable(np.zeros(3)), Variable(np.zeros(1))
    for _ in range(500):
        w, b, _ = step(w, b)
    del w, b
    gc.collect()
    after = len(gc.get_objects())
    assert after - before < 50, f"{after - before} more tracked objects after 500 steps"
