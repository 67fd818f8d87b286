"""Replay with new input shapes: one recorded step, any batch size (docs/replay.md, "New shapes").

A replay may give inputs of other shapes than the recording's: the records they reach are
re-inferred with the registry's shape rules, a plan is compiled once per input-shape signature,
and results are bit for bit those of eager differentiation at the new shapes.  A recorded
program that does not apply to the new shapes (a reshape to a fixed shape, a shape read in
Python) raises `GuardError` naming the record, the source line and the dimension.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, arg_names, record_case, roundtrip
from tapegrad.ops import REGISTRY

D_IN, D_HID, D_OUT = 6, 5, 4
RNG = np.random.default_rng(15)
PARAMS = {"w1": RNG.standard_normal((D_IN, D_HID)) * 0.5, "b1": RNG.standard_normal(D_HID) * 0.1,
          "w2": RNG.standard_normal((D_HID, D_OUT)) * 0.5, "b2": np.zeros(D_OUT)}


def mlp_loss(p: dict[str, Any], x: Any, labels: Any, rows: np.ndarray) -> Any:
    """A training step's loss: tanh MLP, softmax cross-entropy with integer labels."""
    h = tg.tanh(x @ p["w1"] + p["b1"])
    logp = tg.log_softmax(h @ p["w2"] + p["b2"], axis=-1)
    return -tg.mean(logp[rows, labels])


def batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D_IN)), rng.integers(0, D_OUT, n)


def record_mlp(n: int = 32) -> tg.Tape:
    x, labels = batch(n, 0)
    with tg.record() as tape:
        p = {k: tg.Variable(v, name=k) for k, v in PARAMS.items()}
        loss = mlp_loss(p, tg.Variable(x, name="x"), tg.Variable(labels, name="labels"), np.arange(n))
        loss.name = "loss"
    return roundtrip(tape)


def eager_mlp(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Loss and gradients of eager differentiation (no recording) of the same step."""
    p = {k: tg.Variable(v.copy()) for k, v in PARAMS.items()}
    loss = mlp_loss(p, tg.Variable(x), labels, np.arange(len(x)))
    loss.backward()
    return loss.data, {k: v.grad for k, v in p.items()}


@pytest.mark.parametrize("n", [1, 7, 32, 64, 1000])
def test_mlp_step_recorded_at_32_replays_at_any_batch_size_bit_for_bit(n: int) -> None:
    tape = record_mlp(32)
    x, labels = batch(n, n)
    want_loss, want = eager_mlp(x, labels)
    got = tg.replay.backward(tape, of="loss", wrt=list(PARAMS), inputs={"x": x, "labels": labels})
    for k in PARAMS:
        assert got[k].shape == PARAMS[k].shape and np.array_equal(got[k], want[k]), k
    assert np.array_equal(tg.replay.forward(tape, inputs={"x": x, "labels": labels})["loss"], want_loss)


def test_labels_are_a_named_input_of_the_cross_entropy() -> None:
    tape = record_mlp(8)
    x, labels = batch(8, 1)
    other = (labels + 1) % D_OUT
    got = tg.replay.forward(tape, inputs={"x": x, "labels": labels})["loss"]
    got_other = tg.replay.forward(tape, inputs={"x": x, "labels": other})["loss"]
    assert got == eager_mlp(x, labels)[0] and got_other == eager_mlp(x, other)[0] and got != got_other
    with pytest.raises(tg.TapegradError, match="'labels'"):  # the same batch size for x and labels, or nothing
        tg.replay.forward(tape, inputs={"x": x, "labels": labels[:5]})


def test_a_plan_is_built_once_per_shape_and_the_recorded_shape_keeps_its_plan() -> None:
    tape = record_mlp(32)
    req = {"of": "loss", "wrt": list(PARAMS)}
    at_32 = tg.replay.plan(tape, **req, inputs=["x", "labels"])
    assert tg.replay.plan(tape, **req, inputs=dict(zip(["x", "labels"], batch(32, 3), strict=True))) is at_32
    at_64 = tg.replay.plan(tape, **req, inputs=dict(zip(["x", "labels"], batch(64, 3), strict=True)))
    assert at_64 is not at_32
    assert tg.replay.plan(tape, **req, inputs=dict(zip(["x", "labels"], batch(64, 4), strict=True))) is at_64
    assert at_64.shape_dtype(tape.resolve("loss"))[0] == ()
    assert at_64.shape_dtype(tape.resolve("x"))[0] == (64, D_IN)
    assert at_64.peak_bytes > at_32.peak_bytes  # the memory model sees the new shapes


def test_a_fixed_reshape_refuses_another_batch_naming_record_line_and_dimension() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((32, 8, 8)), name="x")
        flat = tg.reshape(x, (32, 64)); line = flat_line = __import__("inspect").currentframe().f_lineno  # noqa: E702
        loss = tg.sum(tg.tanh(flat))
        loss.name = "loss"
    assert line == flat_line
    tape = roundtrip(tape)
    with pytest.raises(tg.GuardError) as info:
        tg.replay.backward(tape, of="loss", wrt="x", inputs={"x": np.ones((16, 8, 8))})
    message = str(info.value)
    assert "record 0 (reshape)" in message and f"test_replay_shapes.py:{flat_line}" in message
    assert "(32, 64)" in message and "dimension 0 is 16, recorded 32" in message and "'x'" in message
    assert "record the step again" in message


def test_a_change_in_the_number_of_dimensions_is_refused() -> None:
    tape = record_mlp(4)
    with pytest.raises(tg.GuardError, match=r"'x'.*number"):
        tg.replay.forward(tape, inputs={"x": np.ones((4, 2, 3))})


def test_broadcast_to_and_sum_to_keep_the_dimensions_they_pass_through() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((3, 1)), name="x")
        b = tg.broadcast_to(x, (3, 4))  # dim 0 passes through, dim 1 is broadcast (fixed)
        s = tg.sum_to(b * b, (3, 1))  # dim 0 passes through, dim 1 is summed
        s.name = "s"
    new = np.arange(5.0).reshape(5, 1)
    got = tg.replay.backward(tape, of="s", wrt="x", inputs={"x": new})["x"]
    xv = tg.Variable(new)
    tg.sum_to(tg.broadcast_to(xv, (5, 4)) ** 2, (5, 1)).backward()
    assert np.array_equal(got, xv.grad)
    assert np.array_equal(tg.replay.forward(tape, inputs={"x": new})["s"], 4 * new * new)


def test_jvp_at_a_new_shape() -> None:
    tape = record_mlp(8)
    x, labels = batch(3, 5)
    v = np.random.default_rng(2).standard_normal(PARAMS["w1"].shape)
    jv = tg.replay.jvp(tape, {"w1": v}, inputs={"x": x, "labels": labels}, outputs=["loss"])["loss"]
    g = tg.replay.backward(tape, of="loss", wrt="w1", inputs={"x": x, "labels": labels})["w1"]
    assert np.isclose(jv, np.sum(g * v), rtol=1e-12)


# ---- the registry sweep at a second shape -----------------------------------------------------

def grown(a: np.ndarray) -> np.ndarray:
    """`a` at a second shape: every dimension above 1 one larger, values cycled (same domain)."""
    return np.resize(a, tuple(d + 1 if d > 1 else d for d in a.shape)).astype(a.dtype)


GENERALISE = {name for name, spec in REGISTRY.items() if spec.elementwise} | {
    "sum", "mean", "max", "min", "logsumexp", "softmax", "log_softmax", "transpose", "matmul", "getitem",
    "concatenate", "stack", "astype"}
"""Ops whose every case replays at the grown shape when eager code runs there (others may refuse:
a fixed reshape, scatter_add's fixed shape, a value guard whose value changes with the shape)."""


PASS_THROUGH = {"broadcast_to", "sum_to"}
"""Ops whose recorded target shape follows the dimensions they pass through from their input: the
cases' code, which writes the target shape out, fails at the grown shape where replay does not."""


def eager(case: Any, args: tuple[np.ndarray, ...]) -> tuple[Any, dict[str, np.ndarray]]:
    vs = [tg.Variable(a.copy()) for a in args]
    out = case.f(*vs)
    if out.dtype.kind != "f":
        return out.data, {}
    out.backward()
    return out.data, {n: np.zeros_like(a) if v.grad is None else v.grad
                      for n, v, a in zip(arg_names(args), vs, args, strict=True) if a.dtype.kind == "f"}


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_op_replays_at_a_second_shape_where_its_rule_allows(op: str) -> None:
    replayed = 0
    for case in CASES[op]:
        args = case.args
        new = tuple(grown(np.asarray(a)) for a in args)
        if all(a.shape == b.shape for a, b in zip(args, new, strict=True)):
            continue
        tape = roundtrip(record_case(case, args)[0])
        inputs = dict(zip(arg_names(args), new, strict=True))
        try:
            want_out, want = eager(case, new)
        except (tg.TapegradError, ValueError, IndexError):  # the op's rule refuses the new shapes
            if op not in PASS_THROUGH:
                with pytest.raises(tg.TapegradError):
                    tg.replay.forward(tape, inputs=inputs)
            continue
        try:
            got_out = tg.replay.forward(tape, inputs=inputs)["out"]
        except tg.GuardError as exc:
            assert op not in GENERALISE, f"{case.label}: {exc}"
            assert "record" in str(exc)
            continue
        assert got_out.shape == np.shape(want_out) and np.array_equal(got_out, want_out, equal_nan=True), case.label
        if want:
            got = tg.replay.backward(tape, of="out", wrt=list(want), inputs=inputs)
            for n in want:
                assert np.array_equal(got[n], want[n]), f"{case.label} d out/d {n}"
        replayed += 1
    if op in GENERALISE:
        assert replayed > 0, f"no case of {op} replayed at a second shape"


def test_a_shape_read_in_python_becomes_a_shape_guard() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((8, 3)), name="x")
        n = len(x); here = __import__("inspect").currentframe().f_lineno  # noqa: E702
        mean = tg.sum(x) / n  # the divisor is a constant: right only at 8 rows
        mean.name = "mean"
        tg.sum(x * x.shape[1])  # reads right after the guard they made add nothing new
    assert [r.op for r in tape.records].count("shape_guard") == 1
    tape = roundtrip(tape)
    assert tg.replay.forward(tape, inputs={"x": np.full((8, 3), 2.0)})["mean"] == 6.0
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(tape, inputs={"x": np.ones((5, 3))})
    message = str(info.value)
    assert "record 0 (shape_guard)" in message and f"test_replay_shapes.py:{here}" in message
    assert "read the shape (8, 3) in Python" in message and "dimension 0 is 5, recorded 8" in message


def test_shapes_read_by_tapegrad_itself_make_no_guard() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones((4, 3)), name="x")
        y = tg.sum(tg.broadcast_to(tg.sum(x, axis=0), (2, 3)), axis=1)  # binders read shapes
        with tg.record() as back:
            tg.grad(lambda v: tg.sum(tg.mean(v, axis=0) ** 2))(x)  # VJP rules read shapes
    assert y.shape == (2,) and "shape_guard" not in {r.op for r in tape.records} | {r.op for r in back.records}


# ---- guard failures explain themselves ----------------------------------------------------------

def test_a_value_guard_names_its_call_and_suggests_logging_data_when_only_logged() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones(3), name="x")
        loss = tg.sum(x * x)
        logged = float(loss)  # only logged: nothing after uses `loss`
        y = x * 2.0
        y.name = "y"
    assert logged == 3.0
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(roundtrip(tape), inputs={"x": np.zeros(3)})
    message = str(info.value)
    assert "record 2 (guard)" in message and "float(v)" in message and "recorded float(3.0), now float(0.0)" in message
    assert "log `v.data`" in message and "tg.no_record()" in message


def test_a_branch_guard_does_not_suggest_logging() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones(3), name="x")
        s = tg.sum(x)
        y = s * x if s > 0 else -x  # `s` is used after the guard: a real branch
        y.name = "y"
    with pytest.raises(tg.GuardError) as info:
        tg.replay.forward(tape, inputs={"x": -np.ones(3)})
    message = str(info.value)
    assert "`if v:`" in message and "log `v.data`" not in message


def test_replay_inside_a_recording_at_a_new_shape() -> None:
    tape = record_mlp(32)
    x, labels = batch(10, 9)
    want = tg.replay.backward(tape, of="loss", wrt=["w1"], inputs={"x": x, "labels": labels})["w1"]
    with tg.record():
        got = tg.replay.backward(tape, of="loss", wrt=["w1"], inputs={"x": x, "labels": labels})["w1"]
    assert np.array_equal(got.data, want)


# ---- reshape keeps its -1, and the file says which version it needs -----------------------------

def test_reshape_keeps_its_minus_one_and_replays_at_a_new_batch() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.arange(24.0).reshape(4, 3, 2), name="x")
        flat = x.reshape(-1, 6)  # rows follow the batch
        loss = tg.sum(tg.tanh(flat) * np.arange(6.0))
        loss.name = "loss"
    assert tape.records[0].attrs["shape"] == (-1, 6) and tape.var(flat).shape == (4, 6)
    tape = roundtrip(tape)
    new = np.random.default_rng(3).standard_normal((9, 3, 2))
    xv = tg.Variable(new)
    tg.sum(tg.tanh(xv.reshape(9, 6)) * np.arange(6.0)).backward()
    assert np.array_equal(tg.replay.backward(tape, of="loss", wrt="x", inputs={"x": new})["x"], xv.grad)
    with pytest.raises(tg.GuardError, match=r"cannot reshape into \(-1, 6\)"):
        tg.replay.forward(tape, inputs={"x": np.ones((1, 1, 5))})


def version(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[8:10], "little"), int.from_bytes(data[10:12], "little")


def test_files_declare_version_1_2_only_when_they_hold_shape_guards_or_a_minus_one() -> None:
    def tape_of(f: Any) -> tg.Tape:
        with tg.record() as tape:
            f(tg.Variable(np.ones((2, 3)), name="x"))
        return tape

    assert version(tg.dumps(tape_of(lambda x: tg.reshape(x, (3, 2))))) == (1, 0)
    for f in (lambda x: tg.reshape(x, (3, -1)), lambda x: x * len(x)):
        data = tg.dumps(tape_of(f))
        assert version(data) == (1, 2)
        assert tg.dumps(tg.loads(data)) == data


def test_a_constant_cannot_be_replaced_and_the_error_says_how_to_make_it_an_input() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones(3), name="x")
        y = x * np.arange(3.0)  # a plain array: a constant
        y.name = "y"
    const = next(i for i in tape.records[0].inputs if i != tape.var("x").id)
    with pytest.raises(tg.TapegradError, match=r"constant.*named tg\.Variable"):
        tg.replay.forward(tape, inputs={const: np.ones(3)})


def test_a_slice_keeps_the_shape_guards_of_its_inputs() -> None:
    from tapegrad.inspect.slicing import slice as slice_of

    with tg.record() as tape:
        x = tg.Variable(np.ones((4, 2)), name="x")
        y = tg.sum(x) / len(x)
        y.name = "y"
    part = slice_of(tape, "y").tape
    assert "shape_guard" in [r.op for r in part.records]
    with pytest.raises(tg.GuardError, match="shape_guard"):
        tg.replay.forward(part, inputs={"x": np.ones((3, 2))})
