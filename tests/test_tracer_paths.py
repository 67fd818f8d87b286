"""The tracer's three ways of building a result agree, fact by fact.

`tracer._emit` (every op), and the inlined copies of its body in the fast paths of `_unary_op`
(one Variable) and `_binary_op` (two Variables, or a Variable and a constant), must do the same things: store the record and
its value, keep the user's source line, link eager results for `backward()`, and call the
streaming sink when a batch is due.  Each test drives all three paths so that a copy that
drifts fails here, deterministically, not only in the kill -9 crash test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg

# Each path: (name, the op it records, a function of one Variable that takes that path).
PATHS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("unary fast path", "sin", lambda x: tg.sin(x)),
    ("binary fast path", "mul", lambda x: x * x),
    ("binary fast path, constant", "sub", lambda x: x - 1.5),
    ("general path (_emit)", "add", lambda x: x + [1.5, 1.5]),  # (a list: not a fast-path constant)
]
IDS = [name for name, _, _ in PATHS]


@pytest.mark.parametrize(("name", "op", "step"), PATHS, ids=IDS)
def test_each_path_streams_a_batch_as_soon_as_it_is_due(tmp_path: Any, name: str, op: str, step: Callable[[Any], Any]) -> None:
    path = tmp_path / "run.tape"
    with tg.record(path=str(path), flush_every=4):
        y = tg.Variable(np.array([0.1, 0.2]), name="x")
        for _ in range(9):
            y = step(y)
        with pytest.warns(tg.TapeRecoveryWarning):
            flushed = tg.load(str(path), recover=True)  # read while the block is still open
        ops = [r.op for r in flushed.records]
        assert len(ops) >= 8 and set(ops) == {op}, f"{name}: {len(ops)} records flushed after 9 ops at flush_every=4"
    assert len(tg.load(str(path))) >= 9


@pytest.mark.parametrize(("name", "op", "step"), PATHS, ids=IDS)
def test_each_path_records_its_value_and_the_callers_line(name: str, op: str, step: Callable[[Any], Any]) -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([0.1, 0.2]), name="x")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        y = step(x)
    (record,) = [r for r in tape.records if r.op == op]
    n = tape.records.index(record)
    np.testing.assert_array_equal(tape.value(record.outputs[0]), y.data)
    file, at = tape.source_of(n)  # type: ignore[misc]
    assert file == __file__
    assert at in (line, step.__code__.co_firstlineno), f"{name}: source line {at}"


@pytest.mark.parametrize(("name", "op", "step"), PATHS, ids=IDS)
def test_each_path_links_eager_results_and_records_none_without_a_tape(name: str, op: str, step: Callable[[Any], Any]) -> None:
    x = tg.Variable(np.array([0.1, 0.2]))
    y = step(x)
    tg.sum(y).backward()
    assert x.grad is not None and np.all(x.grad != 0), f"{name}: no gradient through an eager result"
    with tg.record() as tape:
        z = step(x)  # x came from outside: it enters the tape as an input
    assert [r.op for r in tape.records] == [op]
    np.testing.assert_array_equal(z.data, y.data)
