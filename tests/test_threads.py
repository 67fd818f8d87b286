"""Recording state is per thread and per asyncio task (issue 17, item 1).

Threads are real and started together at a barrier, with `sys.setswitchinterval` lowered so the
interpreter switches between them inside ops; each test repeats its scenario `ROUNDS` times.
A recording made beside other threads must be byte for byte the file of the same recording made
alone.  `TAPEGRAD_THREAD_ROUNDS` (default 2) sets the rounds for a stress run:
`TAPEGRAD_THREAD_ROUNDS=200 python -m pytest tests/test_threads.py`.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import context
from tapegrad.tracer import recording

ROUNDS = int(os.environ.get("TAPEGRAD_THREAD_ROUNDS", "2"))
WAIT = 120.0  # seconds; only a hung test waits this long (other test runs share the machine)
STEPS = 150


@pytest.fixture(autouse=True)
def switch_often() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def run_threads(*targets: Callable[[], None]) -> None:
    """Run each target on a thread of its own, all released at once; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(WAIT)
                target()
            except BaseException as exc:  # re-raised on the test's thread below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def program(tag: float, steps: int = STEPS, pause: Callable[[], Any] = lambda: None) -> tg.Tape:
    """One recording; the same `tag` and `steps` give the same file wherever it is recorded.
    `pause` runs after every step (`time.sleep(0)` hands the interpreter to another thread)."""
    with tg.record(metadata={"tag": tag}) as tape:
        x = tg.Variable(np.linspace(0.1, 0.4, 4) * tag, name="x")
        y = x
        for k in range(steps):
            y = tg.sin(y) * 1.01 if k % 2 else tg.exp(-y) + tag
            pause()
        y.name = "y"
    return tape


def assert_alone(tape: tg.Tape, tag: float, steps: int = STEPS) -> None:
    """`tape` is exactly the recording `program(tag, steps)` makes on its own."""
    alone = program(tag, steps)
    assert len(tape) == len(alone) == (steps // 2) * 2 + (steps - steps // 2) * 3
    assert tg.dumps(tape) == tg.dumps(alone)


def test_threads_each_record_their_own_complete_tape() -> None:
    for _ in range(ROUNDS):
        tapes: dict[float, tg.Tape] = {}

        def recorder(tag: float) -> Callable[[], None]:
            def run() -> None:
                tapes[tag] = program(tag, pause=lambda: time.sleep(0))
            return run

        run_threads(*(recorder(tag) for tag in (1.0, 2.0, 3.0)))
        for tag, tape in tapes.items():
            assert_alone(tape, tag)
            loaded = tg.loads(tg.dumps(tape))
            got = tg.replay.backward(loaded, of="y", wrt=["x"])["x"]
            np.testing.assert_array_equal(got, tg.replay.backward(program(tag), of="y", wrt=["x"])["x"])


def test_blocks_ending_out_of_order_leave_no_finished_tape_recording() -> None:
    for _ in range(ROUNDS):
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        tapes: dict[str, tg.Tape] = {}

        def first() -> None:
            with tg.record() as tape:
                y = tg.sin(tg.Variable(np.ones(3)))
                first_in.set()
                assert second_in.wait(WAIT)
                tg.cos(y)
            tapes["first"] = tape
            first_out.set()  # ends while `second` is still recording

        def second() -> None:
            assert first_in.wait(WAIT)
            with tg.record() as tape:
                y = tg.exp(tg.Variable(np.ones(3)))
                second_in.set()
                assert first_out.wait(WAIT)
                for _ in range(50):
                    y = tg.tanh(y)
                assert recording() is tape
            assert recording() is None
            tapes["second"] = tape

        run_threads(first, second)
        assert [r.op for r in tapes["first"].records] == ["sin", "cos"]
        assert [r.op for r in tapes["second"].records] == ["exp"] + ["tanh"] * 50
        x = tg.Variable(np.ones(2))

        def eager() -> None:
            tg.sin(x)
            assert recording() is None

        run_threads(eager, eager)
        tg.exp(x)
        assert recording() is None
        assert len(tapes["first"]) == 2 and len(tapes["second"]) == 51


def test_a_thread_that_never_records_keeps_its_gradients() -> None:
    for _ in range(ROUNDS):
        done = threading.Event()
        missing: list[int] = []

        def train() -> None:
            try:
                data = np.linspace(-1.0, 1.0, 5)
                w = tg.Variable(np.array([0.5, -0.25, 1.0, 2.0, 0.0]))
                for step in range(300):
                    w.cleargrad()
                    loss = tg.sum((w * data - 1.0) ** 2)
                    loss.backward()
                    if w.grad is None or not np.allclose(w.grad, 2 * (w.data * data - 1.0) * data):
                        missing.append(step)
            finally:
                done.set()

        def record() -> None:
            while not done.is_set():
                assert_alone(program(1.5, 20), 1.5, 20)

        run_threads(train, record)
        assert not missing, f"steps without a correct gradient: {missing}"


def test_no_record_in_one_thread_leaves_another_thread_recording() -> None:
    for _ in range(ROUNDS):
        done = threading.Event()

        def quiet() -> None:
            x = tg.Variable(np.ones(4))
            while not done.is_set():
                with tg.no_record():
                    tg.sin(x)
                    assert recording() is None

        def record() -> None:
            try:
                for tag in (1.0, 2.0, 3.0):
                    assert_alone(program(tag), tag)
            finally:
                done.set()

        run_threads(quiet, record)


def test_grad_beside_a_recorder() -> None:
    def f(x: Any) -> Any:
        return tg.sum(tg.sin(x) * x)

    for _ in range(ROUNDS):
        done = threading.Event()
        x = np.linspace(0.0, 1.0, 6)

        def differentiate() -> None:
            try:
                for _ in range(100):
                    np.testing.assert_allclose(tg.grad(f)(x), np.cos(x) * x + np.sin(x), rtol=1e-12)
                    assert recording() is None
            finally:
                done.set()

        def record() -> None:
            while not done.is_set():
                assert_alone(program(2.5, 20), 2.5, 20)

        run_threads(differentiate, record)


def test_a_variable_recorded_on_one_thread_enters_another_threads_tape_as_an_input() -> None:
    for _ in range(ROUNDS):
        made, used = threading.Event(), threading.Event()
        shared: dict[str, Any] = {}

        def owner() -> None:
            with tg.record() as tape:
                w = tg.Variable(np.array([0.5, -1.0, 2.0]), name="w")
                h = tg.tanh(w * 2.0)
                h.name = "h"
                shared.update(w=w, h=h)
                made.set()
                assert used.wait(WAIT)  # still recording while the other thread uses h
                tg.exp(h)
            shared["owner"] = tape

        def user() -> None:
            assert made.wait(WAIT)
            h = shared["h"]
            with tg.record() as tape:
                loss = tg.sum(h * 3.0)
                loss.name = "loss"
            used.set()
            shared["user"], shared["loss"] = tape, loss

        run_threads(owner, user)
        mine, theirs, h = shared["user"], shared["owner"], shared["h"]
        assert [r.op for r in theirs.records] == ["mul", "tanh", "exp"]
        assert [r.op for r in mine.records] == ["mul", "sum"]
        assert mine.var("h").kind == "input"
        np.testing.assert_array_equal(mine.value("h"), h.data)
        assert "w" not in mine.names
        g = tg.replay.backward(tg.loads(tg.dumps(mine)), of="loss", wrt=["h"])
        np.testing.assert_array_equal(g["h"], np.full(3, 3.0))
        # Once the owner's block has ended, backward() goes on through its tape to w.
        shared["loss"].backward()
        w = shared["w"]
        np.testing.assert_allclose(w.grad, 3.0 * 2.0 * (1.0 - np.tanh(2.0 * w.data) ** 2), rtol=1e-14)


def test_generator_blocks_ending_out_of_order_in_one_thread() -> None:
    x = tg.Variable(np.ones(2))

    def steps() -> Iterator[tg.Tape]:
        with tg.record() as tape:
            yield tape
            tg.sin(x)
        yield tape

    gen = steps()
    theirs = next(gen)
    with tg.record() as mine:
        next(gen)  # the generator's block ends inside mine (its op ran in this context: mine)
        tg.cos(x)
        assert recording() is mine
    assert recording() is None
    tg.exp(x)
    assert [r.op for r in mine.records] == ["sin", "cos"]
    assert len(theirs) == 0
    g = tg.replay.backward(mine, wrt=[0])  # replays compute on numpy arrays again
    assert type(next(iter(g.values()))) is np.ndarray


# ---- asyncio ------------------------------------------------------------------------------

async def async_program(tag: float, steps: int = STEPS) -> tg.Tape:
    """`program`, giving way to other tasks after every op."""
    with tg.record(metadata={"tag": tag}) as tape:
        x = tg.Variable(np.linspace(0.1, 0.4, 4) * tag, name="x")
        y = x
        for k in range(steps):
            y = tg.sin(y) * 1.01 if k % 2 else tg.exp(-y) + tag
            await asyncio.sleep(0)
        y.name = "y"
    return tape


def test_asyncio_tasks_each_record_their_own_complete_tape() -> None:
    async def main() -> list[tg.Tape]:
        return list(await asyncio.gather(*(async_program(tag) for tag in (1.0, 2.0, 3.0))))

    for _ in range(ROUNDS):
        tapes = asyncio.run(main())
        for tag, tape in zip((1.0, 2.0, 3.0), tapes, strict=True):
            got = tg.loads(tg.dumps(tape))
            reference = program(tag)
            assert got.records == reference.records
            np.testing.assert_array_equal(got.value("y"), reference.value("y"))


def test_a_task_created_inside_a_block_records_onto_it_only_while_it_is_open() -> None:
    async def main() -> tuple[tg.Tape, list[int]]:
        x = tg.Variable(np.ones(3))
        ended = asyncio.Event()
        lengths: list[int] = []

        async def worker(tape_of_block: Callable[[], tg.Tape]) -> None:
            tg.sin(x)  # inside the block: recorded onto it (the task copied the block's context)
            lengths.append(len(tape_of_block()))
            await ended.wait()
            for _ in range(20):  # the block has ended: nothing more goes onto its tape
                tg.cos(x)
            assert recording() is None

        with tg.record() as tape:
            task = asyncio.create_task(worker(lambda: tape))
            await asyncio.sleep(0)
            tg.exp(x)
        ended.set()
        await task
        return tape, lengths

    tape, lengths = asyncio.run(main())
    assert [r.op for r in tape.records] == ["sin", "exp"] and lengths == [1]


def test_to_thread_inside_a_block_records_onto_it() -> None:
    async def main() -> tg.Tape:
        with tg.record() as tape:
            x = tg.Variable(np.ones(3), name="x")
            y = await asyncio.to_thread(lambda: tg.sin(x) * 2.0)  # runs in a copy of this context
            tg.exp(y)
        return tape

    tape = asyncio.run(main())
    assert [r.op for r in tape.records] == ["sin", "mul", "exp"]
    tg.loads(tg.dumps(tape))


# ---- the state itself ---------------------------------------------------------------------

def test_a_block_cut_short_before_or_after_entering_leaves_nothing_behind() -> None:
    tape = tg.Tape("all", {})
    never_entered = context.block(tape, True, None)
    context.end(never_entered)  # (an interrupt before `enter`)
    assert context.current() is context.TOP
    cut = context.block(tape, True, None)
    context.enter(cut)
    cut.token = None  # (an interrupt between setting the variable and keeping the token)
    assert recording() is tape
    context.end(cut)
    assert context.current() is context.TOP and recording() is None


def test_a_block_ended_in_another_context_leaves_its_own_context_at_top_level() -> None:
    tape = tg.Tape("all", {})
    state = context.block(tape, True, None)
    context.enter(state)
    contextvars.copy_context().run(context.end, state)  # (a generator's block, resumed elsewhere)
    assert context.current() is state and recording() is None  # the finished state records nothing
    tg.sin(tg.Variable(np.ones(2)))
    assert len(tape) == 0
    context.end(state)
    assert context.current() is context.TOP
