"""The speed tricks of issue 12, each guarded by a test that counts or inspects, never times.

- Constants (Python and numpy scalars, 0-d and other ndarrays) take the two-argument fast path
  (`tracer._binary_op`), not `_apply`, and give the dtypes numpy 2 promotion gives.
- Constants are not copied: an eager segment holds the user's array itself.
- The engine's two-input step takes an input of the output's shape and dtype without the
  general step (no `sum_to`/`astype` call for it), also beside a broadcast constant.
- Eager `backward()` walks the links once and hands the engine the same records, values and
  constants a recorded tape gives it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import engine, segment, tracer
from tapegrad.ops import NUMPY

CONSTANTS: list[tuple[str, Any]] = [
    ("python float", 0.5),
    ("python int", 3),
    ("numpy float64 scalar", np.float64(0.25)),
    ("numpy float32 scalar", np.float32(2.0)),
    ("0-d array", np.array(1.5)),
    ("array", np.full(3, 0.75)),
    ("float32 array", np.full(3, 0.75, dtype=np.float32)),
]
OPS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b), ("pow", lambda a, b: a ** b),
]


@pytest.fixture
def apply_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the ops that went through the general path, `tracer._apply`."""
    calls: list[str] = []
    general = tracer._apply

    def counted(spec: Any, args: Any, attrs: Any) -> Any:
        calls.append(spec.name)
        return general(spec, args, attrs)

    monkeypatch.setattr(tracer, "_apply", counted)
    return calls


@pytest.mark.parametrize("recording", [False, True], ids=["eager", "recorded"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("kind", "c"), CONSTANTS, ids=[k for k, _ in CONSTANTS])
@pytest.mark.parametrize(("op", "f"), OPS, ids=[o for o, _ in OPS])
def test_constants_take_the_fast_path_with_numpys_promotion(apply_calls: list[str], recording: bool, dtype: Any, kind: str,
                                                            c: Any, op: str, f: Callable[[Any, Any], Any]) -> None:
    data = np.array([0.5, 1.0, 2.0], dtype=dtype)
    if recording:
        with tg.record() as tape:
            x = tg.Variable(data.copy())
            left, right = f(x, c), f(c, x)
    else:
        x = tg.Variable(data.copy())
        left, right = f(x, c), f(c, x)
    assert apply_calls == [], f"{op} with a {kind} went through _apply"
    for got, want in ((left, f(data, c)), (right, f(c, data))):
        assert got.dtype == want.dtype  # numpy 2 promotion: a Python scalar takes the array's dtype
        np.testing.assert_array_equal(got.data, want)
    if recording:
        assert [r.op for r in tape.records] == [op, op]
        consts = [tape.value(i) for r in tape.records for i in r.inputs if tape.var(i).kind == "const"]
        # a Python scalar is recorded in the dtype it took, anything else in its own
        expected = np.asarray(c, dtype=data.dtype) if type(c) in (int, float) else np.asarray(c)
        assert len(consts) == 2
        for k in consts:
            assert k.dtype == expected.dtype
            np.testing.assert_array_equal(k, expected)


@pytest.mark.parametrize(("kind", "c"), [("bool", True), ("list", [1.0, 2.0, 3.0]), ("int beside int", 2)])
def test_other_constants_take_the_general_path(apply_calls: list[str], kind: str, c: Any) -> None:
    x = tg.Variable(np.array([1, 2, 3]) if kind == "int beside int" else np.array([1.0, 2.0, 3.0]))
    y = x * c
    assert apply_calls == ["mul"]
    np.testing.assert_array_equal(y.data, x.data * np.asarray(c))


def test_a_python_int_too_large_for_the_array_raises_the_librarys_error() -> None:
    with pytest.raises(tg.TapegradError):
        tg.Variable(np.ones(2)) * 2**2000


def test_complex_constants_are_refused_on_every_path() -> None:
    x = tg.Variable(np.ones(2))
    for c in (1j, np.complex64(1), np.ones(2, dtype=complex), np.array(1j)):
        with pytest.raises(tg.DTypeError, match="complex"):
            x * c


def test_eager_segments_hold_constant_arrays_themselves() -> None:
    c = np.full(3, 2.0)
    x = tg.Variable(np.ones(3))
    y = x * c
    assert y._link is not None
    (rec,) = y._link.records
    assert y._link.values[rec[4]] is c  # not a copy
    z = x * 2.0
    w = x * 2.0
    held = [z._link.values[z._link.records[0][4]], w._link.values[w._link.records[0][4]]]
    # A Python number is one read-only 0-d array of the operand's dtype, shared by its uses.
    assert held[0] is held[1] and held[0].shape == () and held[0].dtype == np.float64
    assert not held[0].flags.writeable
    (z + y).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 4.0))


class _Counting:
    """A backend counting the calls of some ops (around NUMPY)."""

    def __init__(self, *names: str) -> None:
        self.calls: dict[str, int] = dict.fromkeys(names, 0)

    def backend(self) -> Any:
        def counted(name: str) -> Callable[..., Any]:
            fn = getattr(NUMPY, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls[name] += 1
                return fn(*args, **kwargs)
            return call

        module = types.ModuleType("counting")
        module.__dict__.update(NUMPY.__dict__)
        module.__dict__.update({name: counted(name) for name in self.calls})
        return module


@pytest.mark.parametrize("c", [2.0, np.array(2.0), np.full((2, 1), 2.0)], ids=["python float", "0-d", "broadcast array"])
def test_the_engine_checks_no_shape_for_an_input_of_the_outputs_shape(c: Any) -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((2, 3)), name="x")
        y = tg.sin(x * c) + c
    counter = _Counting("sum_to", "astype")
    parts = tape.parts()
    xid, yid = tape.resolve("x"), tape.resolve(y)
    found = engine.reverse(parts.records, parts.values, {yid: np.ones((2, 3))}, set(parts.consts), {xid}, counter.backend())
    assert counter.calls == {"sum_to": 0, "astype": 0}
    np.testing.assert_allclose(found[xid], np.cos(2.0 * np.ones((2, 3))) * 2.0)


def test_the_engine_sums_back_an_input_that_was_broadcast() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((2, 1)), name="x")
        y = x * np.full((2, 3), 2.0)
    counter = _Counting("sum_to", "astype")
    parts = tape.parts()
    xid = tape.resolve("x")
    found = engine.reverse(parts.records, parts.values, {tape.resolve(y): np.ones((2, 3))}, set(parts.consts), {xid},
                           counter.backend())
    assert counter.calls == {"sum_to": 1, "astype": 0}
    np.testing.assert_array_equal(found[xid], np.full((2, 1), 6.0))


def _chain(y: Any, c: Any, n: int) -> Any:
    for i in range(n):
        k = i % 4
        if k == 0:
            y = y + c
        elif k == 1:
            y = y * c
        elif k == 2:
            y = tg.sin(y)
        else:
            y = tg.exp(y)
    return y


@pytest.mark.parametrize("c", [0.5, "variable"], ids=["python float", "variable"])
def test_eager_backward_hands_the_engine_what_a_recorded_tape_does(monkeypatch: pytest.MonkeyPatch, c: Any) -> None:
    seen: list[tuple[int, int]] = []
    reverse = engine.reverse

    def counted(records: Any, values: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((len(records), len(values)))
        return reverse(records, values, *args, **kwargs)

    monkeypatch.setattr(engine, "reverse", counted)
    x0 = np.linspace(0.1, 0.4, 4)
    grads = []
    for recording in (False, True):
        x = tg.Variable(x0.copy())
        cc = tg.Variable(np.full(4, 0.9)) if c == "variable" else c
        if recording:
            with tg.record():
                x = tg.Variable(x0.copy())
                cc = tg.Variable(np.full(4, 0.9)) if c == "variable" else c
                y = _chain(x, cc, 40)
        else:
            y = _chain(x, cc, 40)
        y.backward()
        grads.append(x.grad)
    # one pass each, every value once; one constant per Python number, eager
    # (tracer._EAGER_SCALARS) as recorded (tracer._recorded_constant)
    assert seen == [(40, 40 + 1 + 1), (40, 40 + 1 + 1)]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_the_eager_history_holds_each_record_and_value_once() -> None:
    x = tg.Variable(np.ones(2))
    y = x * x
    z = y + y
    found = segment.history(z, set())
    ((records, values),) = found.stretches  # one segment
    assert [r[0] for r in records] == ["mul", "add"]
    assert set(values) == {x._tapegrad_serial, y._tapegrad_serial, z._tapegrad_serial}
    assert list(found.edge) == [x._tapegrad_serial] and found.consts == set() and found.crossing == set()


def test_a_recording_keeps_one_constant_per_python_number_and_dtype() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones(2))
        x32 = tg.Variable(np.ones(2, dtype=np.float32))
        ys = [x * 0.9, 0.9 * x, x + 0.9, x32 * 0.9, x * 2, x * 2.0, x * 0.0, x * -0.0, x * float("nan"), x * float("nan")]
    consts = [tape.value(i) for i in range(len(tape.ids_in_order())) if tape.var(i).kind == "const"]
    # 0.9 (f64), 0.9 (f32), 2 == 2.0 (f64), 0.0, -0.0, nan, nan
    assert [(float(k), k.dtype.name) for k in consts[:3]] == [(0.9, "float64"), (float(np.float32(0.9)), "float32"), (2.0, "float64")]
    assert len(consts) == 7
    assert [np.signbit(k) for k in consts[3:5]] == [False, True]
    np.testing.assert_array_equal(ys[7].data, np.ones(2) * -0.0)
    (g,) = tg.replay.backward(tape, of=ys[0], wrt=[x]).values()
    np.testing.assert_array_equal(g, np.full(2, 0.9))


def test_a_python_float_seen_before_is_found_without_the_general_constant_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_binary_op` looks a float constant up itself (`_fast_constant`'s first lookup, inlined:
    ~80 ns of a ~1 us op): once a number is known, eager or on the tape, `_fast_constant` is not
    called for it again."""
    calls: list[Any] = []
    fast_constant = tracer._fast_constant

    def counted(c: Any, other: Any, tape: Any) -> Any:
        calls.append(c)
        return fast_constant(c, other, tape)

    monkeypatch.setattr(tracer, "_fast_constant", counted)
    monkeypatch.setattr(tracer, "_EAGER_SCALARS", {})  # (no number known eagerly yet)
    x = tg.Variable(np.ones(3))
    eager = [x * 0.7125, x * 0.7125, x + 0.7125]
    with tg.record():
        recorded = [x * 0.7125, x * 0.7125, x - 0.7125]
    assert calls == [0.7125, 0.7125]  # the first eager use, the first recorded use
    np.testing.assert_array_equal(eager[1].data, np.full(3, 0.7125))
    np.testing.assert_array_equal(recorded[2].data, np.full(3, 1 - 0.7125))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 99), st.integers(0, 99)), min_size=1, max_size=40),
       st.booleans())
def test_the_engines_fast_steps_agree_bit_for_bit_with_its_general_step(steps: list[tuple[int, int, int]],
                                                                       intermediates: bool) -> None:
    """`engine.reverse` (one-input steps, constant second inputs, the cotangent carried to the
    next record, both-like-the-output steps) against `engine.reverse_checked`, which takes the
    general step for every record: chains, reuse, x * x and broadcast constants included."""
    with tg.record() as tape:
        x = tg.Variable(np.array([0.3, -0.6, 1.2]), name="x")
        w = tg.Variable(np.array([[0.5], [-1.5]]), name="w")  # broadcasts against x
        vals = [x, w]
        for op, i, j in steps:
            a, b = vals[i % len(vals)], vals[j % len(vals)]
            vals.append([tg.sin(a), a * b, a + 0.5, tg.exp(a * 0.25), a * a, tg.tanh(a) - b, tg.cos(a)][op])
        out = tg.sum(vals[-1] * vals[len(vals) // 2])
    parts = tape.parts()
    want = {tape.resolve("x"), tape.resolve("w")}
    if intermediates:  # also cotangents of results (outputs_wanted)
        want |= {v._tapegrad_serial for v in vals[2::3]}
    seed = {out._tapegrad_serial: np.ones(())}
    fast = engine.reverse(parts.records, parts.values, seed, set(parts.consts), want)
    general = engine.reverse_checked(parts.records, parts.values, seed, set(parts.consts), want, NUMPY,
                                     lambda k, i, cot: None)
    assert fast.keys() == general.keys()
    for i in fast:
        np.testing.assert_array_equal(fast[i], general[i])
