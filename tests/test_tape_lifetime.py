"""Dropping a tape frees it at once, with the garbage collector off: its values, its compiled
replay plans and the file a mapped tape keeps open (no reference cycles: a plan holds its tape
weakly, and nothing of a loaded tape refers back to it)."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import tape_format as tf

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def owner(arr: np.ndarray) -> Any:
    """The object owning `arr`'s memory: a numpy buffer, or the mmap of a mapped tape."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr if arr.base is None else arr.base




@pytest.fixture
def saved(tmp_path) -> str:
    with tg.record() as tape:
        x = tg.Variable(np.linspace(0.0, 1.0, 4096), name="x")
        w = tg.Variable(np.full(4096, 0.5), name="w")
        y = tg.sum(tg.sin(x * w) * x)
        y.name = "y"
    path = str(tmp_path / "t.tape")
    tf.save(tape, path)
    return path


def replay_every_way(tape: tg.Tape) -> None:
    """Compile and cache plans of every kind on `tape` (each is kept in the tape's plan cache)."""
    x = np.linspace(1.0, 2.0, 4096)
    tg.replay.backward(tape, of="y", wrt=["x", "w"])
    tg.replay.backward(tape, of="y", wrt=["x"], inputs={"x": x}, check_finite=True)
    tg.replay.forward(tape, inputs={"x": x})
    tg.replay.forward(tape, check_finite=True)
    tg.replay.jvp(tape, {"x": np.ones(4096)})


@linux_only
@pytest.mark.parametrize("mmap", [False, True])
def test_a_dropped_tape_frees_its_values_and_closes_its_file(saved: str, collector_off: None, mmap: bool) -> None:
    files = open_files()
    tape = tf.load_path(saved, mmap=mmap)
    buffer = owner(tape.value("x"))
    assert isinstance(buffer, np.ndarray) != mmap  # (read into a numpy buffer, or mapped)
    refs = [weakref.ref(tape), weakref.ref(buffer)]
    del buffer
    assert open_files() == files + mmap  # a mapping keeps a descriptor of its own
    replay_every_way(tape)
    plans = [weakref.ref(p) for _, p in tape._plans.values()]
    assert len(plans) == 5
    del tape
    assert [r() for r in refs + plans] == [None] * (2 + len(plans))
    assert open_files() == files


@pytest.mark.parametrize("mmap", [False, True])
def test_a_replayed_tape_is_in_no_reference_cycle(saved: str, collector_off: None, mmap: bool) -> None:
    tape = tf.load_path(saved, mmap=mmap)
    replay_every_way(tape)
    ref = weakref.ref(tape)
    del tape
    assert ref() is None
    assert gc.collect() == 0  # nothing of it was left for the collector


@linux_only
def test_a_mapped_load_loop_keeps_open_files_bounded(saved: str, collector_off: None) -> None:
    files = open_files()
    most = 0
    for _ in range(40):
        tape = tf.load_path(saved, mmap=True)
        tg.replay.backward(tape, of="y", wrt=["x"])
        most = max(most, open_files() - files)
    del tape
    assert most == 1
    assert open_files() == files


def test_a_plan_runs_after_its_tape_is_dropped_and_says_so_when_asked_for_it(saved: str,
                                                                           collector_off: None) -> None:
    tape = tf.load_path(saved)
    x = np.linspace(1.0, 2.0, 4096)
    want = tg.replay.backward(tape, of="y", wrt=["x"], inputs={"x": x})["x"]
    plan = tg.replay.plan(tape, of="y", wrt=["x"], inputs=["x"])
    assert plan.tape is tape
    x_id = tape.resolve("x")
    del tape
    regs = plan.run({x_id: x}, seed=np.ones(()))
    assert regs[plan.grads[x_id]].tobytes() == want.tobytes()  # its registers hold the stored values it needs
    with pytest.raises(tg.TapegradError, match="tape of this plan was freed"):
        _ = plan.tape
    with pytest.raises(tg.TapegradError, match=r"^record 0: ValueError"):  # (only the index: the tape is gone)
        plan.run({x_id: np.ones(3)}, seed=np.ones(()))


def test_a_dropped_recording_and_its_variables_are_freed_at_once(collector_off: None) -> None:
    # a recorded tape refers to the Variables that entered it as inputs only weakly (they refer to
    # it): dropping the tape and the Variables frees all of them without the collector
    with tg.record() as tape:
        x = tg.Variable(np.linspace(0.0, 1.0, 64), name="x")
        y = tg.sum(tg.sin(x) * x)
        y.name = "y"
    y.backward()
    tg.replay.backward(tape, of="y", wrt=["x"])
    freed = weakref.ref(tape), weakref.ref(x), weakref.ref(y)
    del tape, x, y
    assert [r() for r in freed] == [None, None, None]
    assert gc.collect() == 0

