"""`tg.replay.backward` with new inputs equals eager differentiation on those inputs, bit for bit.

Every case of the one op-case table (`op_cases`) is recorded on its own inputs, then replayed
with the same case's inputs from another seed (and a random output cotangent as `seed`), and
compared with `np.array_equal` against eager `y.backward()` of the same function on the new
inputs.  The same cases drive the forward-mode test in `test_replay_jvp.py`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, SEED, Case, arg_names, normal, op_cases, record_case, roundtrip
from tapegrad.ops import REGISTRY

RNG = np.random.default_rng(7)
NEW = op_cases(SEED + 1)  # every case again: same shapes and dtypes, other values


def eager_grads(case: Case, args: tuple[np.ndarray, ...], seed: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Output and gradients of eager (unrecorded) `case.f` on `args`, seeded with `seed`."""
    vs = [tg.Variable(a.copy()) for a in args]
    out = case.f(*vs)
    out.grad = seed.copy()
    out.backward()
    grads = {}
    for n, v, a in zip(arg_names(args), vs, args, strict=True):
        if a.dtype.kind == "f":
            grads[n] = np.zeros_like(a) if v.grad is None else v.grad
    return out.data, grads


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert isinstance(got, np.ndarray), f"{what}: got {type(got).__name__}, not an ndarray"
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{what}: shape/dtype {got.shape} {got.dtype}, eager gives {want.shape} {want.dtype}")
    assert np.array_equal(got, want), f"{what}: replay differs from eager\nreplay {got!r}\neager  {want!r}"


# ---- the registry sweep -------------------------------------------------------------------


@pytest.mark.parametrize("source", ["memory", "file"])
@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_backward_with_new_inputs_matches_eager_for_every_op(op: str, source: str) -> None:
    for case, again in zip(CASES[op], NEW[op], strict=True):
        old, new = case.args, again.args
        tape, out = record_case(case, old)
        assert op in {r.op for r in tape.records}, f"{case.label} does not record a {op!r} record"
        if source == "file":
            tape = roundtrip(tape)
        names = arg_names(old)
        inputs = dict(zip(names, new, strict=True))
        if out.dtype.kind != "f":  # a comparison's result has no gradient: its forward replays
            want_value = case.f(*[tg.Variable(np.asarray(a)) for a in new]).data
            assert_same(tg.replay.forward(tape, inputs=inputs)["out"], want_value, f"{case.label} forward")
            continue
        wrt = [n for n, a in zip(names, old, strict=True) if a.dtype.kind == "f"]
        seed = np.asarray(RNG.standard_normal(out.shape)).astype(out.dtype)
        want_out, want = eager_grads(case, new, seed)
        got = tg.replay.backward(tape, of="out", wrt=wrt, inputs=inputs, seed=seed)
        assert list(got) == wrt
        for n in wrt:
            assert_same(got[n], want[n], f"{case.label} d out/d {n}")
        assert_same(tg.replay.forward(tape, inputs=inputs)["out"], want_out, f"{case.label} forward")
        # The replay really used the new inputs: the recording's own gradients differ.
        _, at_old = eager_grads(case, old, seed)
        if any(not np.array_equal(at_old[n], want[n]) for n in wrt):
            assert any(not np.array_equal(got[n], at_old[n]) for n in wrt)


def test_default_seed_is_ones() -> None:
    case = CASES["tanh"][0]
    old, (new,) = case.args, NEW["tanh"][0].args
    tape, out = record_case(case, old)
    _, want = eager_grads(case, (new,), np.ones(out.shape))
    got = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new})
    assert_same(got["a0"], want["a0"], "default seed")
    explicit = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new}, seed=np.ones(out.shape))
    assert_same(got["a0"], explicit["a0"], "seed=ones")
    doubled = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new}, seed=np.full(out.shape, 2.0))
    assert_same(doubled["a0"], 2.0 * want["a0"], "seed=2")


def test_seed_with_wrong_shape_or_dtype_is_an_error() -> None:
    tape, out = record_case(CASES["tanh"][0])
    with pytest.raises(tg.TapegradError, match="seed"):
        tg.replay.backward(tape, of="out", wrt="a0", seed=np.ones(out.size))
    with pytest.raises(tg.TapegradError, match="seed"):
        tg.replay.backward(tape, of="out", wrt="a0", seed=np.ones(out.shape, np.float32))


def test_backward_inputs_not_given_keep_recorded_values() -> None:
    a, b = normal(2, 3), normal(3)
    tape, _ = record_case(CASES["mul"][0], (a, b))
    b2 = normal(3)
    got = tg.replay.backward(tape, of="out", wrt=["a0", "a1"], inputs={"a1": b2})
    assert_same(got["a0"], np.broadcast_to(b2, (2, 3)).copy(), "d(a*b)/da with new b")
    assert_same(got["a1"], a.sum(axis=0), "d(a*b)/db with recorded a")


def test_backward_results_are_fresh_writable_arrays() -> None:
    tape, _ = record_case(CASES["add"][0], (normal(2, 3), normal(3)))
    got = tg.replay.backward(tape, of="out", wrt=["a0", "a1"])
    again = tg.replay.backward(tape, of="out", wrt=["a0", "a1"])
    for n in ("a0", "a1"):
        assert got[n].flags.writeable and got[n].flags.owndata
        got[n] += 100.0  # mutating one result must not change another replay or the tape
        assert not np.shares_memory(got[n], again[n])
    np.testing.assert_array_equal(again["a0"], np.ones((2, 3)))
    np.testing.assert_array_equal(again["a1"], np.full(3, 2.0))


# ---- an MLP training step ----------------------------------------------------------------


def mlp_params(rng: np.random.Generator, sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    params = {}
    for k, (m, n) in enumerate(itertools.pairwise(sizes)):
        params[f"w{k}"] = rng.standard_normal((m, n)) / np.sqrt(m)
        params[f"b{k}"] = rng.standard_normal(n) * 0.1
    return params


def mlp_loss(params: dict[str, Any], x: Any, labels: np.ndarray) -> Any:
    """tanh hidden layers, softmax cross-entropy via log_softmax and a one-hot gather."""
    n_layers = len(params) // 2
    h = x
    for k in range(n_layers):
        h = h @ params[f"w{k}"] + params[f"b{k}"]
        if k < n_layers - 1:
            h = tg.tanh(h)
    logp = tg.log_softmax(h, axis=-1)
    return -tg.mean(logp[np.arange(len(labels)), labels])


SIZES = (6, 8, 8, 3)


def record_mlp(values: str, rng: np.random.Generator) -> tuple[tg.Tape, dict[str, np.ndarray], np.ndarray]:
    params = mlp_params(rng, SIZES)
    x = rng.standard_normal((5, SIZES[0]))
    labels = rng.integers(0, SIZES[-1], 5)
    with tg.record(values=values) as tape:
        vs = {k: tg.Variable(v, name=k) for k, v in params.items()}
        loss = mlp_loss(vs, tg.Variable(x, name="x"), labels)
        loss.name = "loss"
    return tape, params, labels


@pytest.mark.parametrize("source", ["memory", "file:all", "file:inputs"])
def test_mlp_backward_with_new_inputs_is_bit_for_bit_eager(source: str) -> None:
    rng = np.random.default_rng(3)
    values = source.split(":")[-1] if ":" in source else "all"
    tape, params, labels = record_mlp(values, rng)
    if source.startswith("file"):
        tape = roundtrip(tape)
    for _ in range(3):  # several replays of one tape, each with new weights and data
        new = {k: rng.standard_normal(v.shape) / 2 for k, v in params.items()}
        x = rng.standard_normal((5, SIZES[0]))
        vs = {k: tg.Variable(v.copy()) for k, v in new.items()}
        loss = mlp_loss(vs, tg.Variable(x.copy()), labels)
        loss.backward()
        got = tg.replay.backward(tape, of="loss", wrt=list(new), inputs={**new, "x": x})
        for k in new:
            assert_same(got[k], vs[k].grad, f"{source} d loss/d {k}")
        fwd = tg.replay.forward(tape, inputs={**new, "x": x})
        assert_same(fwd["loss"], loss.data, f"{source} loss")


def test_mlp_backward_in_memory_and_from_a_file_path_agree(tmp_path: Any) -> None:
    tape, params, _ = record_mlp("all", np.random.default_rng(4))
    path = tmp_path / "step.tape"
    tg.save(tape, str(path))
    loaded = tg.load(str(path))
    new = {k: v + 0.25 for k, v in params.items()}
    a = tg.replay.backward(tape, of="loss", wrt=list(params), inputs=new)
    b = tg.replay.backward(loaded, of="loss", wrt=list(params), inputs=new)
    for k in params:
        assert_same(b[k], a[k], k)


def test_roundtrip_helper_really_goes_through_bytes() -> None:
    tape, _, _ = record_mlp("inputs", np.random.default_rng(5))
    data = bytes(tg.dumps(tape))
    assert isinstance(data, bytes) and len(data) > 0
    loaded = tg.loads(data)
    assert loaded is not tape and len(loaded) == len(tape)
    assert [r.op for r in loaded.records] == [r.op for r in tape.records]
