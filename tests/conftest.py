"""Shared fixtures: a seeded random generator, the collector off, tiny recorded tapes, and the hypothesis profile."""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import tapegrad as tg

# Small example counts keep the whole suite fast; no deadline because the first call of a test
# pays for numpy warm-up.
settings.register_profile(
    "tapegrad", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("tapegrad")

# A shell starts a background job (`cmd &`, as some CI runners do) with SIGINT ignored, and Python
# then never turns Ctrl-C into KeyboardInterrupt, nor do the child processes it starts (an
# ignored signal stays ignored across exec).  The interrupt tests need Python's own handling.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic garbage collector off (after a collection): what is freed is freed by reference counting."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def record_readme_step() -> SimpleNamespace:
    """The README example: one named input pair, `loss = sum(tanh(x @ w))`."""
    with tg.record() as tape:
        w = tg.Variable(np.linspace(-1.0, 1.0, 6).reshape(3, 2), name="w")
        x = tg.Variable(np.arange(6.0).reshape(2, 3) / 6.0, name="x")
        loss = tg.sum(tg.tanh(x @ w))
        loss.name = "loss"
    return SimpleNamespace(tape=tape, w=w, x=x, loss=loss)


@pytest.fixture
def record_readme() -> Callable[[], SimpleNamespace]:
    """The function that records the README step (call it twice to compare recordings)."""
    return record_readme_step


@pytest.fixture
def readme_tape() -> SimpleNamespace:
    """A three-record tape (matmul, tanh, sum) with variables named w, x and loss."""
    return record_readme_step()


@pytest.fixture
def mixed_tape() -> SimpleNamespace:
    """A tape with a float input `a`, an integer input `k` and a float output."""
    with tg.record() as tape:
        a = tg.Variable(np.array([0.5, -1.0, 2.0]), name="a")
        k = tg.Variable(np.array([1, 2, 3]), name="k")
        out = tg.sum(a * k)
        out.name = "out"
    return SimpleNamespace(tape=tape, a=a, k=k, out=out)
