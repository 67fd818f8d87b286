"""`tg.replay.backward` with new inputs equals eager differentiation on those inputs, bit for bit.

Every registry op is covered by `CASES`: each case is recorded on one set of inputs, then
replayed with a different set (and a random output cotangent as `seed`), and compared with
`np.array_equal` against eager `y.backward()` of the same function on the new inputs.  The
same cases drive the forward-mode test in `test_replay_jvp.py`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import tape_format
from tapegrad.ops import REGISTRY
from tapegrad.ops.spec import encode_index
from test_op_gradients import away_from_zero, normal, positive

RNG = np.random.default_rng(7)


# ---- file round trips (tg.dumps/tg.loads once exported; tape_format until then) ------------


def dumps(tape: tg.Tape) -> bytes:
    fn = getattr(tg, "dumps", None) or tape_format.dumps
    return bytes(fn(tape))


def loads(data: bytes) -> tg.Tape:
    fn = getattr(tg, "loads", None) or tape_format.loads
    tape: tg.Tape = fn(data)
    return tape


def roundtrip(tape: tg.Tape) -> tg.Tape:
    """The tape as another process would see it: written to bytes and read back."""
    return loads(dumps(tape))


# ---- inputs that keep each op away from its kinks, ties and domain edges -------------------


# normal, positive and away_from_zero come from the gradient sweep (imported above).


def grid(*shape: int, offset: float = 0.25) -> np.ndarray:
    """Integers + offset + small jitter: grids with offsets 0.25 and 0.75 never tie."""
    return np.asarray(RNG.integers(-3, 4, shape) + offset + RNG.uniform(-0.1, 0.1, shape))


def distinct(*shape: int) -> np.ndarray:
    n = int(np.prod(shape))
    return np.asarray((RNG.permutation(n) * 0.5 - n * 0.25 + RNG.uniform(-0.1, 0.1, n)).reshape(shape))


def bool_mask(*shape: int) -> np.ndarray:
    m = RNG.random(shape) > 0.5
    m.flat[0], m.flat[-1] = True, False
    return m


def small_angles(*shape: int) -> np.ndarray:
    return np.asarray(RNG.uniform(-1.2, 1.2, shape))


@dataclass(frozen=True)
class Case:
    """`f(*args)` recorded on `make()`, replayed on another `make()` (same shapes and dtypes)."""

    op: str
    label: str
    f: Callable[..., Any]
    make: Callable[[], tuple[np.ndarray, ...]]

    @property
    def id(self) -> str:
        return f"{self.op}[{self.label}]"


def _scatter(shape: tuple[int, ...], index: Any) -> Callable[..., Any]:
    stored, arrays = encode_index("getitem", index, lambda a: isinstance(a, np.ndarray))
    return lambda g: tg.scatter_add(g, *arrays, shape=shape, index=stored)


def _branchy(a: Any) -> Any:
    """Python control flow on a value: records a `greater` and a `guard`."""
    if tg.sum(a) > 0:
        return a * a
    return -a


CASES: list[Case] = [
    Case("add", "(2,3)+(3,)", lambda a, b: a + b, lambda: (normal(2, 3), normal(3))),
    Case("add", "x+2.5", lambda a: a + 2.5, lambda: (normal(2, 3),)),
    Case("sub", "(2,3)-(2,1)", lambda a, b: a - b, lambda: (normal(2, 3), normal(2, 1))),
    Case("sub", "1.5-x", lambda a: 1.5 - a, lambda: (normal(3),)),
    Case("mul", "(2,3)*(3,)", lambda a, b: a * b, lambda: (normal(2, 3), normal(3))),
    Case("mul", "x*x", lambda a: a * a, lambda: (normal(4),)),
    Case("div", "(2,3)/(3,)", lambda a, b: a / b, lambda: (normal(2, 3), away_from_zero(3))),
    Case("div", "1/x", lambda a: 1 / a, lambda: (away_from_zero(2, 2),)),
    Case("pow", "x**y", lambda a, b: a**b, lambda: (positive(2, 3), normal(2, 3))),
    Case("pow", "x**3", lambda a: a**3, lambda: (normal(5),)),
    Case("maximum", "(2,3),(3,)", tg.maximum, lambda: (grid(2, 3), grid(3, offset=0.75))),
    Case("minimum", "(2,3),(3,)", tg.minimum, lambda: (grid(2, 3), grid(3, offset=0.75))),
    Case("where", "cond,x,y", tg.where, lambda: (bool_mask(2, 3), normal(2, 3), normal(3))),
    Case("clip", "-0.5,0.5", lambda a: tg.clip(a, -0.5, 0.5), lambda: (grid(3, 4) / 2,)),
    Case("clip", "array bounds", tg.clip, lambda: (grid(2, 3), grid(3, offset=0.75) - 1.0, grid(2, 1, offset=0.75) + 1.0)),
    Case("neg", "(2,3)", tg.neg, lambda: (normal(2, 3),)),
    Case("exp", "(2,3)", tg.exp, lambda: (normal(2, 3),)),
    Case("log", "(2,3)", tg.log, lambda: (positive(2, 3),)),
    Case("sin", "(2,3)", tg.sin, lambda: (normal(2, 3),)),
    Case("cos", "(2,3)", tg.cos, lambda: (normal(2, 3),)),
    Case("tan", "(2,3)", tg.tan, lambda: (small_angles(2, 3),)),
    Case("tanh", "(2,3)", tg.tanh, lambda: (normal(2, 3),)),
    Case("sqrt", "(2,3)", tg.sqrt, lambda: (positive(2, 3),)),
    Case("abs", "(2,3)", tg.abs, lambda: (away_from_zero(2, 3),)),
    Case("sign", "sign(x)*x", lambda a: tg.sign(a) * a, lambda: (away_from_zero(5),)),
    Case("sigmoid", "(2,3)", tg.sigmoid, lambda: (normal(2, 3),)),
    Case("relu", "(2,3)", tg.relu, lambda: (away_from_zero(2, 3),)),
    Case("astype", "f64->f32", lambda a: tg.astype(a, np.float32) * 2.0, lambda: (normal(2, 3),)),
    Case("astype", "f32->f64", lambda a: tg.astype(a, np.float64) * 3.0, lambda: (normal(4).astype(np.float32),)),
    *(Case(name, "where(cmp, 2x, y)", lambda a, b, fn=getattr(tg, name): tg.where(fn(a, b), a * 2.0, b),
           lambda: (grid(2, 3), grid(3, offset=0.75)))
      for name in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")),
    Case("sum", "axis=1,keepdims", lambda a: tg.sum(a, axis=1, keepdims=True), lambda: (normal(2, 3, 4),)),
    Case("sum", "all", tg.sum, lambda: (normal(2, 3),)),
    Case("mean", "axis=(0,2)", lambda a: tg.mean(a, axis=(0, 2)), lambda: (normal(2, 3, 4),)),
    Case("max", "axis=1", lambda a: tg.max(a, axis=1), lambda: (distinct(3, 4),)),
    Case("min", "axis=0,keepdims", lambda a: tg.min(a, axis=0, keepdims=True), lambda: (distinct(3, 4),)),
    Case("logsumexp", "axis=-1", lambda a: tg.logsumexp(a, axis=-1), lambda: (normal(3, 4),)),
    Case("softmax", "axis=-1", tg.softmax, lambda: (normal(3, 4),)),
    Case("log_softmax", "axis=0", lambda a: tg.log_softmax(a, axis=0), lambda: (normal(3, 4),)),
    Case("reshape", "(2,3)->(3,2)", lambda a: tg.reshape(a, (3, 2)), lambda: (normal(2, 3),)),
    Case("transpose", "(2,0,1)", lambda a: tg.transpose(a, (2, 0, 1)), lambda: (normal(2, 3, 4),)),
    Case("broadcast_to", "(3,)->(2,3)", lambda a: tg.broadcast_to(a, (2, 3)), lambda: (normal(3),)),
    Case("sum_to", "(4,2,3)->(1,3)", lambda a: tg.sum_to(a, (1, 3)), lambda: (normal(4, 2, 3),)),
    Case("matmul", "(2,3)@(3,4)", tg.matmul, lambda: (normal(2, 3), normal(3, 4))),
    Case("matmul", "batched (5,2,3)@(3,)", tg.matmul, lambda: (normal(5, 2, 3), normal(3))),
    Case("getitem", "stepped slices", lambda a: a[::2, 1:4], lambda: (normal(4, 5),)),
    Case("getitem", "repeated int array", lambda a: a[np.array([0, 0, 3, 1])], lambda: (normal(4, 5),)),
    Case("getitem", "traced int index", lambda a, i: a[i], lambda: (normal(5), RNG.integers(0, 5, 4))),
    Case("scatter_add", "repeated int array", _scatter((5,), np.array([0, 0, 3])), lambda: (normal(3),)),
    Case("scatter_add", "column", _scatter((3, 4), (slice(None), 1)), lambda: (normal(3),)),
    Case("concatenate", "axis 1", lambda a, b: tg.concatenate([a, b, a], axis=1), lambda: (normal(2, 3), normal(2, 1))),
    Case("stack", "axis -1", lambda a, b: tg.stack([a, b], axis=-1), lambda: (normal(2, 3), normal(2, 3))),
    Case("guard", "if sum(x) > 0", _branchy, lambda: (positive(2, 3),)),
]

CASES_BY_OP: dict[str, list[Case]] = {}
for _case in CASES:
    CASES_BY_OP.setdefault(_case.op, []).append(_case)


def arg_names(args: tuple[np.ndarray, ...]) -> list[str]:
    return [f"a{k}" for k in range(len(args))]


def record_case(case: Case, args: tuple[np.ndarray, ...], values: str = "all") -> tuple[tg.Tape, Any]:
    """Record `case.f` on named input Variables `a0, a1, ...`; the result is named `out`."""
    with tg.record(values=values) as tape:
        out = case.f(*[tg.Variable(a, name=n) for a, n in zip(args, arg_names(args), strict=True)])
        out.name = "out"
    return tape, out


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


def test_cases_cover_the_whole_registry() -> None:
    assert sorted(set(REGISTRY) - set(CASES_BY_OP)) == [], "registry ops without a replay case"
    assert sorted(set(CASES_BY_OP) - set(REGISTRY)) == []


@pytest.mark.parametrize("source", ["memory", "file"])
@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_backward_with_new_inputs_matches_eager_for_every_op(op: str, source: str) -> None:
    cases = CASES_BY_OP.get(op)
    assert cases, f"no replay case for registry op {op!r}"
    for case in cases:
        old, new = case.make(), case.make()
        tape, out = record_case(case, old)
        assert op in {r.op for r in tape.records}, f"{case.id} does not record a {op!r} record"
        if source == "file":
            tape = roundtrip(tape)
        names = arg_names(old)
        wrt = [n for n, a in zip(names, old, strict=True) if a.dtype.kind == "f"]
        seed = np.asarray(RNG.standard_normal(out.shape)).astype(out.dtype)
        want_out, want = eager_grads(case, new, seed)
        inputs = dict(zip(names, new, strict=True))
        got = tg.replay.backward(tape, of="out", wrt=wrt, inputs=inputs, seed=seed)
        assert list(got) == wrt
        for n in wrt:
            assert_same(got[n], want[n], f"{case.id} d out/d {n}")
        assert_same(tg.replay.forward(tape, inputs=inputs)["out"], want_out, f"{case.id} forward")
        # The replay really used the new inputs: the recording's own gradients differ.
        _, at_old = eager_grads(case, old, seed)
        if any(not np.array_equal(at_old[n], want[n]) for n in wrt):
            assert any(not np.array_equal(got[n], at_old[n]) for n in wrt)


def test_default_seed_is_ones() -> None:
    case = CASES_BY_OP["tanh"][0]
    old, (new,) = case.make(), case.make()
    tape, out = record_case(case, old)
    _, want = eager_grads(case, (new,), np.ones(out.shape))
    got = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new})
    assert_same(got["a0"], want["a0"], "default seed")
    explicit = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new}, seed=np.ones(out.shape))
    assert_same(got["a0"], explicit["a0"], "seed=ones")
    doubled = tg.replay.backward(tape, of="out", wrt="a0", inputs={"a0": new}, seed=np.full(out.shape, 2.0))
    assert_same(doubled["a0"], 2.0 * want["a0"], "seed=2")


def test_seed_with_wrong_shape_or_dtype_is_an_error() -> None:
    case = CASES_BY_OP["tanh"][0]
    tape, out = record_case(case, case.make())
    with pytest.raises(tg.TapegradError, match="seed"):
        tg.replay.backward(tape, of="out", wrt="a0", seed=np.ones(out.size))
    with pytest.raises(tg.TapegradError, match="seed"):
        tg.replay.backward(tape, of="out", wrt="a0", seed=np.ones(out.shape, np.float32))


def test_backward_inputs_not_given_keep_recorded_values() -> None:
    a, b = normal(2, 3), normal(3)
    tape, _ = record_case(CASES_BY_OP["mul"][0], (a, b))
    b2 = normal(3)
    got = tg.replay.backward(tape, of="out", wrt=["a0", "a1"], inputs={"a1": b2})
    assert_same(got["a0"], np.broadcast_to(b2, (2, 3)).copy(), "d(a*b)/da with new b")
    assert_same(got["a1"], a.sum(axis=0), "d(a*b)/db with recorded a")


def test_backward_results_are_fresh_writable_arrays() -> None:
    tape, _ = record_case(CASES_BY_OP["add"][0], (normal(2, 3), normal(3)))
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
    save = getattr(tg, "save", None) or tape_format.save
    load = getattr(tg, "load", None) or tape_format.load_path
    save(tape, str(path))
    loaded = load(str(path))
    new = {k: v + 0.25 for k, v in params.items()}
    a = tg.replay.backward(tape, of="loss", wrt=list(params), inputs=new)
    b = tg.replay.backward(loaded, of="loss", wrt=list(params), inputs=new)
    for k in params:
        assert_same(b[k], a[k], k)


def test_roundtrip_helper_really_goes_through_bytes() -> None:
    tape, _, _ = record_mlp("inputs", np.random.default_rng(5))
    data = dumps(tape)
    assert isinstance(data, bytes) and len(data) > 0
    loaded = loads(io.BytesIO(data).getvalue())
    assert loaded is not tape and len(loaded) == len(tape)
    assert [r.op for r in loaded.records] == [r.op for r in tape.records]
