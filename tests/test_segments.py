"""Eager segments (`tapegrad.segment`): the implicit tapes that ops outside `record()` append to.

What the module's contract promises, each checked: an op joins the newest segment of its inputs
(or the follower of a full one), edges point only to older segments, so segments are freed by
reference counting alone; memory a live Variable keeps beyond its history is bounded by `ROOM`;
and gradients do not depend on where segment boundaries fall.
"""

from __future__ import annotations

import threading
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import segment
from tapegrad.segment import Segment


def _segments_of(y: tg.Variable) -> list[Segment]:
    return segment.history(y, set()).segments


def test_a_chain_stays_on_one_segment_and_an_op_joins_the_newest_of_its_inputs() -> None:
    x = tg.Variable(np.array([0.5, 1.5]))
    a = tg.sin(x) * 2.0  # only a leaf as input: a new segment, which the chain stays on
    b = tg.exp(x)  # another new one, newer
    assert a._link is not None and b._link is not None and a._link is not b._link
    assert len(a._link.records) == 2 and b._link.seq > a._link.seq
    c = a + b
    d = b * a
    assert c._link is b._link and d._link is b._link  # whichever input comes first
    assert a._tapegrad_serial in b._link.edge  # a entered the newer segment from outside
    assert x._link is None  # leaves have no segment


def test_ops_on_a_full_segment_go_on_in_its_follower(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment, "ROOM", 4 * segment.RECORD_BYTES)
    x = tg.Variable(np.ones(3))
    y = x
    for _ in range(4):  # (each record costs its 24 bytes and RECORD_BYTES: the 4th fills it)
        y = y * 1.5
    full = y._link
    assert full is not None and full.room <= 0
    uses = [y + float(k) for k in range(3)]  # each use of y would otherwise start a segment
    assert len({id(u._link) for u in uses}) == 1 and uses[0]._link is not full
    assert uses[0]._link.seq > full.seq and y._tapegrad_serial in uses[0]._link.edge
    tg.sum(uses[0] + uses[1] + uses[2]).backward()
    np.testing.assert_allclose(x.grad, np.full(3, 3 * 1.5**4))


def _random_program(draw: Any) -> Callable[[Any, Any], Any]:
    steps = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 64), st.integers(0, 64)), min_size=1, max_size=30))

    def program(x: Any, w: Any) -> Any:
        vals = [x, w]
        for op, i, j in steps:
            a, b = vals[i % len(vals)], vals[j % len(vals)]
            vals.append([lambda: a + b, lambda: a * b, lambda: tg.sin(a), lambda: a * 0.75, lambda: tg.tanh(a - b),
                         lambda: a + 1.25][op]())
        return tg.sum(vals[-1] * vals[len(vals) // 2])

    return program


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from([0, 3 * segment.RECORD_BYTES, segment.ROOM]))
def test_gradients_do_not_depend_on_where_segments_end(data: Any, room: int) -> None:
    program = _random_program(data.draw)
    x0, w0 = np.array([0.3, -0.7, 1.1]), np.array([0.9, 0.2, -0.4])
    with tg.record() as tape:  # the reference: the same program recorded, then replayed
        out = program(tg.Variable(x0, name="x"), tg.Variable(w0, name="w"))
        out.name = "out"
    want = tg.replay.backward(tape, of="out", wrt=["x", "w"])
    saved = segment.ROOM
    segment.ROOM = room
    try:
        x, w = tg.Variable(x0), tg.Variable(w0)
        y = program(x, w)
        y.backward()
        for seg in _segments_of(y):  # edges point only to older segments
            for u in seg.edge.values():
                assert u._link is None or u._link.seq < seg.seq
    finally:
        segment.ROOM = saved
    np.testing.assert_allclose(x.grad if x.grad is not None else 0 * x0, want["x"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(w.grad if w.grad is not None else 0 * w0, want["w"], rtol=1e-12, atol=1e-15)


def test_segments_are_freed_by_reference_counting_alone(collector_off: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment, "ROOM", 5 * segment.RECORD_BYTES)  # several segments, several edges
    x = tg.Variable(np.array([0.1, 0.2, 0.3]))
    h = x
    for _ in range(20):
        h = tg.tanh(h * 0.9 + x)
    with tg.record():  # a recorded stretch in the middle of the eager history
        r = h * h
    z = tg.sum(r + h)
    segs = _segments_of(z)
    assert len(segs) > 3
    refs = [weakref.ref(s) for s in segs]
    z.backward()
    del h, r, z, segs
    assert [ref() for ref in refs] == [None] * len(refs)
    assert x.grad is not None


def test_backward_from_an_early_result_skips_what_came_after_it() -> None:
    x = tg.Variable(np.array([0.4, 0.8]))
    early = tg.sin(x) * 3.0
    late = tg.exp(early) + early  # on the same segment, after `early`
    assert late._link is early._link
    early.backward()
    np.testing.assert_allclose(x.grad, 3.0 * np.cos(x.data))
    x.cleargrad()
    late.backward()
    e = 3.0 * np.sin(x.data)
    np.testing.assert_allclose(x.grad, (np.exp(e) + 1) * 3.0 * np.cos(x.data))


def test_a_live_variable_keeps_at_most_a_segment_of_garbage() -> None:
    x = tg.Variable(np.ones(1000))
    y = tg.sin(x)  # kept alive throughout: its segment, and what joins it, stay
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):  # 16 MB of results (8 KB each), each dropped at once
            z = y * 2.0
            del z
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2 * segment.ROOM, f"{kept:,} bytes kept for 16 MB computed and dropped"
    y.backward()
    np.testing.assert_allclose(x.grad, np.cos(1.0))


def test_a_segment_shared_by_threads_keeps_a_topological_order() -> None:
    x = tg.Variable(np.linspace(0.1, 0.9, 5))
    base = tg.sin(x)
    results: list[tg.Variable] = []
    lock = threading.Lock()

    def work() -> None:
        y = base
        for _ in range(300):
            y = tg.tanh(y * 0.5 + base)
        with lock:
            results.append(y)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = results[0] + results[1] + results[2] + results[3]
    tg.sum(total).backward()
    with tg.record() as tape:  # the same computation recorded in one thread
        xr = tg.Variable(x.data, name="x")
        br = tg.sin(xr)
        y = br
        for _ in range(300):
            y = tg.tanh(y * 0.5 + br)
        out = tg.sum(y * 4.0)
        out.name = "out"
    np.testing.assert_allclose(x.grad, tg.replay.backward(tape, of="out", wrt=["x"])["x"], rtol=1e-12)
