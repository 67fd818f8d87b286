"""Forward mode: `tg.replay.jvp` agrees with `tg.replay.backward` through `<J v, u> == <v, J^T u>`.

For every registry op (the cases of `op_cases.py`), and for every record of that op
in the case's tape as well as the case's final output: random tangents `v` for the floating
inputs, a random cotangent `u` for the output.  Outputs that are not floating point (comparisons,
guards) must get zero tangents; so must the output of `sign`, whose derivative is zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, SEED, arg_names, op_cases, record_case, roundtrip
from tapegrad.ops import REGISTRY

NEW = op_cases(SEED + 1)


def adjoint_gap(tape: tg.Tape, out: Any, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[float, float]:
    """`<J v, u>` and `<v, J^T u>` for output `out` (a name or dense id) at `inputs`."""
    wrt = [n for n, a in inputs.items() if a.dtype.kind == "f"]
    tangents = {n: rng.standard_normal(inputs[n].shape).astype(inputs[n].dtype) for n in wrt}
    info = tape.var(out)
    u = np.asarray(rng.standard_normal(info.shape)).astype(info.dtype)
    jv = tg.replay.jvp(tape, tangents, inputs=inputs, outputs=[out])
    assert list(jv) == [out]
    assert jv[out].shape == info.shape and jv[out].dtype == info.dtype
    jtu = tg.replay.backward(tape, of=out, wrt=wrt, inputs=inputs, seed=u)
    lhs = float(np.vdot(jv[out].astype(np.float64), u.astype(np.float64)))
    rhs = float(sum(np.vdot(tangents[n].astype(np.float64), jtu[n].astype(np.float64)) for n in wrt))
    return lhs, rhs


def assert_adjoint(lhs: float, rhs: float, dtypes: list[np.dtype[Any]], what: str) -> None:
    """Tight: 1e-12 relative in float64; 1e-5 when any value on the way is float32."""
    rtol = 1e-12 if all(d == np.float64 for d in dtypes) else 1e-5
    assert np.isfinite(lhs) and np.isfinite(rhs), what
    assert abs(lhs - rhs) <= rtol * max(1.0, abs(lhs), abs(rhs)), f"{what}: <Jv,u> = {lhs!r} but <v,J^T u> = {rhs!r}"


ZERO_DERIVATIVE = {"sign"}


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_jvp_is_the_transpose_of_backward_for_every_op(op: str) -> None:
    rng = np.random.default_rng(sorted(REGISTRY).index(op))
    for case, again in zip(CASES[op], NEW[op], strict=True):
        old, new = case.args, again.args
        tape, _ = record_case(case, old)
        inputs = dict(zip(arg_names(new), new, strict=True))
        outputs: list[Any] = [n for n, r in enumerate(tape.records) if r.op == op]
        assert outputs, f"{case.label} records no {op!r}"
        outputs = [tape.records[n].outputs[0] for n in outputs] + ["out"]
        for out in outputs:
            info = tape.var(out)
            what = f"{case.label} output {out!r}"
            if info.dtype.kind != "f":  # comparisons, guards: not differentiable
                wrt = {n: np.ones_like(a) for n, a in inputs.items() if a.dtype.kind == "f"}
                jv = tg.replay.jvp(tape, wrt, inputs=inputs, outputs=[out])
                assert jv[out].shape == info.shape and jv[out].dtype == info.dtype, what
                assert not np.any(jv[out]), f"{what}: non-differentiable output got a nonzero tangent"
                continue
            lhs, rhs = adjoint_gap(tape, out, inputs, rng)
            computed = [d for r in tape.records if (d := tape.var(r.outputs[0]).dtype).kind == "f"]  # float32 loosens it
            assert_adjoint(lhs, rhs, [info.dtype, *computed, *(a.dtype for a in new if a.dtype.kind == "f")], what)
            if op in ZERO_DERIVATIVE and out != "out":
                assert lhs == 0.0 and rhs == 0.0, f"{what}: derivative should be zero"


def test_jvp_matches_finite_differences() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([0.3, -0.7, 1.1]), name="x")
        w = tg.Variable(np.array([[0.5, -1.0], [2.0, 0.1], [-0.3, 0.4]]), name="w")
        y = tg.tanh(x @ w) * tg.sum(tg.exp(x))
        y.name = "y"
    rng = np.random.default_rng(0)
    v = {"x": rng.standard_normal(3), "w": rng.standard_normal((3, 2))}
    jv = tg.replay.jvp(tape, v)["y"]
    eps = 1e-6

    def at(t: float) -> np.ndarray:
        new = {"x": x.data + t * v["x"], "w": w.data + t * v["w"]}
        out: np.ndarray = tg.replay.forward(tape, inputs=new)["y"]
        return out

    np.testing.assert_allclose(jv, (at(eps) - at(-eps)) / (2 * eps), rtol=1e-7, atol=1e-9)


def test_jvp_returns_a_tangent_for_each_default_output_and_ignores_untangented_inputs() -> None:
    with tg.record() as tape:
        a = tg.Variable(np.array([1.0, 2.0]), name="a")
        b = tg.Variable(np.array([3.0, -1.0]), name="b")
        p = a * b
        p.name = "p"
        s = tg.sum(p * p)
        s.name = "s"
    va = np.array([1.0, 0.0])
    jv = tg.replay.jvp(tape, {"a": va})
    assert sorted(jv) == ["p", "s"]
    np.testing.assert_array_equal(jv["p"], va * b.data)
    np.testing.assert_array_equal(jv["s"], np.sum(2 * p.data * va * b.data))
    # with new inputs the tangents follow them
    jv2 = tg.replay.jvp(tape, {"a": va}, inputs={"b": np.array([5.0, 5.0])})
    np.testing.assert_array_equal(jv2["p"], [5.0, 0.0])


def test_jvp_from_a_loaded_tape() -> None:
    case = CASES["log_softmax"][0]
    args = case.args
    tape, _ = record_case(case, args, values="inputs")
    loaded = roundtrip(tape)
    v = {"a0": np.random.default_rng(1).standard_normal(args[0].shape)}
    np.testing.assert_array_equal(tg.replay.jvp(loaded, v)["out"], tg.replay.jvp(tape, v)["out"])
    lhs, rhs = adjoint_gap(loaded, "out", {"a0": args[0] + 1.0}, np.random.default_rng(2))
    assert_adjoint(lhs, rhs, [np.dtype(np.float64)], "loaded log_softmax")


def test_jvp_rejects_bad_tangents() -> None:
    with tg.record() as tape:
        a = tg.Variable(np.array([1.0, 2.0]), name="a")
        k = tg.Variable(np.array([1, 2]), name="k")
        y = a * k
        y.name = "y"
    with pytest.raises(tg.TapegradError, match="'a'"):
        tg.replay.jvp(tape, {"a": np.ones(3)})
    with pytest.raises(tg.TapegradError, match="'a'"):
        tg.replay.jvp(tape, {"a": np.ones(2, np.float32)})
    with pytest.raises(tg.TapegradError, match="'k'"):
        tg.replay.jvp(tape, {"k": np.ones(2, np.int64)})
