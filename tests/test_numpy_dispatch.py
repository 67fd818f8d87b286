"""Plain numpy on Variables: every supported numpy name records ops whose gradients are right.

`NUMPY_CASES` is the table of this layer, like `op_cases.py` is the registry's: one or more cases
for every name `tapegrad.numpy` offers (a test fails while one has none).  Each case is a
function written with plain `np.*`: on Variables it must compute what numpy computes on the
arrays, and its derivatives are checked against central finite differences (reverse mode,
`check_grads`) and, recorded and reloaded, for forward mode:
`tg.replay.jvp` along a random tangent against central differences of `tg.replay.forward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.numpy as tnp
from tapegrad.numpy_dispatch import PLAIN, public_functions
from tapegrad.testing import check_grads

RNG = np.random.default_rng(7)


def normal(*shape: int) -> np.ndarray:
    return np.asarray(RNG.standard_normal(shape))


def positive(*shape: int) -> np.ndarray:
    return np.asarray(RNG.uniform(0.5, 2.0, shape))


def distinct(*shape: int) -> np.ndarray:
    n = int(np.prod(shape))
    return np.asarray((RNG.permutation(n) * 0.5 - n * 0.25 + RNG.uniform(-0.1, 0.1, n)).reshape(shape))


Case = tuple[str, Callable[..., Any], tuple[np.ndarray, ...]]


def cases() -> dict[str, list[Case]]:
    """numpy name -> (label, function written with plain `np.*`, arguments)."""
    a23, a34, a234 = normal(2, 3), normal(3, 4), normal(2, 3, 4)
    return {
        # ufuncs that are compositions
        "positive": [("+x", lambda x: np.positive(x) * x, (normal(3),))],
        "reciprocal": [("1/x", lambda x: np.reciprocal(x), (positive(3),))],
        "deg2rad": [("", lambda x: np.deg2rad(x), (normal(3),))],
        "radians": [("", lambda x: np.radians(x), (normal(3),))],
        "rad2deg": [("", lambda x: np.rad2deg(x), (normal(3),))],
        "degrees": [("", lambda x: np.degrees(x), (normal(3),))],
        "hypot": [("", lambda x, y: np.hypot(x, y), (positive(2, 3), positive(3)))],
        "fabs": [("", lambda x: np.fabs(x), (positive(3) * np.array([1, -1, 1]),))],
        "remainder": [("", lambda x, y: np.remainder(x, y), (np.array([2.3, -1.7, 5.2]), np.array([1.5, 2.5, -2.0])))],
        "mod": [("times x", lambda x: np.mod(x, 1.5) * x, (np.array([2.3, -1.7]),))],
        "fmod": [("", lambda x, y: np.fmod(x, y), (np.array([2.3, -1.7, 5.2]), np.array([1.5, 2.5, -2.0])))],
        "floor_divide": [("times x", lambda x: np.floor_divide(x, 1.5) * x, (np.array([2.3, -1.7]),))],
        "cbrt": [("", lambda x: np.cbrt(x), (np.array([2.3, -1.7, 0.5]),))],
        "fix": [("times x", lambda x: np.fix(x) * x, (np.array([2.3, -1.7]),))],
        "rot90": [("k=1", lambda x: np.rot90(x), (normal(2, 3),)), ("k=2", lambda x: np.rot90(x, 2), (normal(2, 3),)),
                  ("k=3 axes", lambda x: np.rot90(x, 3, axes=(2, 0)), (normal(2, 3, 4),))],
        "rollaxis": [("", lambda x: np.rollaxis(x, 2), (normal(2, 3, 4),)), ("start", lambda x: np.rollaxis(x, 0, 3), (normal(2, 3, 4),))],
        "fmax": [("nan loses", lambda x, y: np.fmax(x, y), (np.array([0.3, 1.2, np.nan]), np.array([1.1, np.nan, 0.4])))],
        "fmin": [("", lambda x, y: np.fmin(x, y), (np.array([0.3, 1.2]), np.array([1.1, -0.4])))],
        "sinc": [("", lambda x: np.sinc(x), (np.array([0.3, -1.2, 2.5]),))],
        "nan_to_num": [("", lambda x: np.nan_to_num(x, posinf=3.0, neginf=-3.0), (np.array([0.3, np.nan, np.inf, -np.inf]),))],
        "kron": [("", lambda a, b: np.kron(a, b), (a23, normal(2, 2))), ("1-D and 2-D", lambda a, b: np.kron(a, b),
                                                                         (normal(3), normal(2, 2)))],
        "cross": [("", lambda a, b: np.cross(a, b), (normal(2, 3), normal(3)))],
        "linspace": [("", lambda a, b: np.linspace(a, b, 5), (normal(), normal())),
                     ("no endpoint", lambda a: np.linspace(a, 2.0, 4, endpoint=False), (normal(),))],
        "real": [("", lambda x: np.real(x) * x, (normal(3),))],
        "real_if_close": [("", lambda x: np.real_if_close(x) * x, (normal(3),))],
        "conjugate": [("", lambda x: np.conjugate(x) * x, (normal(3),))],
        "conj": [("", lambda x: np.conj(x) * 2.0, (normal(2),))],
        "dsplit": [("", lambda x: np.dsplit(x, 2)[1], (a234,))],
        "dstack": [("", lambda a, b: np.dstack([a, b]), (normal(2, 3), normal(2, 3)))],
        # reductions
        "sum": [("axis", lambda x: np.sum(x, axis=1), (a23,)), ("all", lambda x: np.sum(x), (a23,)),
                ("add.reduce", lambda x: np.add.reduce(x, axis=0, keepdims=True), (a23,))],
        "mean": [("keepdims", lambda x: np.mean(x, axis=(0, 2), keepdims=True), (a234,)), ("method", lambda x: x.mean(), (a23,))],
        "max": [("axis", lambda x: np.max(x, axis=0), (distinct(3, 4),)),
                ("maximum.reduce", lambda x: np.maximum.reduce(x, axis=1), (distinct(3, 4),))],
        "amax": [("", lambda x: np.amax(x), (distinct(5),))],
        "min": [("method", lambda x: x.min(axis=1, keepdims=True), (distinct(3, 4),)),
                ("minimum.reduce", lambda x: np.minimum.reduce(x), (distinct(3, 4),))],
        "amin": [("", lambda x: np.amin(x, 0), (distinct(3, 2),))],
        "prod": [("multiply.reduce", lambda x: np.multiply.reduce(x, axis=1), (positive(2, 3),)),
                 ("method-free keepdims", lambda x: np.prod(x, axis=0, keepdims=True), (normal(3, 2),))],
        "var": [("", lambda x: np.var(x), (a23,)), ("ddof axis", lambda x: np.var(x, axis=1, ddof=1), (a34,))],
        "std": [("", lambda x: np.std(x, axis=0, keepdims=True), (a34,)), ("method", lambda x: x.std(), (a23,))],
        "cumsum": [("accumulate", lambda x: np.add.accumulate(x, axis=1), (a23,)), ("method", lambda x: x.cumsum(0), (a23,))],
        "diff": [("", lambda x: np.diff(x), (a34,)), ("n=2 axis 0", lambda x: np.diff(x, n=2, axis=0), (normal(4, 2),)),
                 ("prepend", lambda x: np.diff(x, prepend=0.0), (normal(4),))],
        "norm": [("2", lambda x: np.linalg.norm(x), (a23,)), ("axis", lambda x: np.linalg.norm(x, axis=1), (a23,)),
                 ("ord 1", lambda x: np.linalg.norm(x, 1), (positive(4),)),
                 ("ord inf", lambda x: np.linalg.norm(x, np.inf), (distinct(4),))],
        # products
        "dot": [("2-D", lambda a, b: np.dot(a, b), (a23, a34)), ("1-D", lambda a, b: np.dot(a, b), (normal(3), normal(3))),
                ("3-D", lambda a, b: np.dot(a, b), (normal(2, 2, 3), normal(2, 3, 2))),
                ("scalar", lambda a: np.dot(a, 2.0), (normal(3),)), ("method", lambda a, b: a.dot(b), (a23, normal(3)))],
        "vdot": [("", lambda a, b: np.vdot(a, b), (a23, normal(2, 3)))],
        "inner": [("", lambda a, b: np.inner(a, b), (a23, normal(4, 3)))],
        "outer": [("", lambda a, b: np.outer(a, b), (normal(3), normal(2, 2))),
                  ("multiply.outer", lambda a, b: np.multiply.outer(a, b), (normal(3), normal(2)))],
        "tensordot": [("axes=1", lambda a, b: np.tensordot(a, b, 1), (a23, a34)),
                      ("pairs", lambda a, b: np.tensordot(a, b, axes=([0, 2], [1, 0])), (a234, normal(4, 2, 5)))],
        "einsum": [("ij,jk->ik", lambda a, b: np.einsum("ij,jk->ik", a, b), (a23, a34)),
                   ("implicit", lambda a, b: np.einsum("ij,kj", a, b), (a23, normal(4, 3))),
                   ("bij,bjk->bik", lambda a, b: np.einsum("bij,bjk->bik", a, b), (a234, normal(2, 4, 2))),
                   ("i,i->", lambda a: np.einsum("i,i->", a, a), (normal(3),)),
                   ("ij->j", lambda a: np.einsum("ij->j", a), (a23,)),
                   ("...ij,...jk->...ik", lambda a, b: np.einsum("...ij,...jk->...ik", a, b), (a234, normal(4, 2))),
                   ("implicit ellipsis", lambda a, b: np.einsum("...j,j", a, b), (a234, normal(4))),
                   ("trace ii", lambda a: np.einsum("ii", a), (normal(3, 3),)),
                   ("diagonal ii->i", lambda a: np.einsum("ii->i", a), (normal(3, 3),)),
                   ("iij,jk->ik", lambda a, b: np.einsum("iij,jk->ik", a, b), (normal(2, 2, 3), a34)),
                   ("broadcast ...", lambda a, b: np.einsum("...i,...i->...", a, b), (normal(2, 1, 3), normal(4, 3)))],
        "trace": [("", lambda x: np.trace(x), (normal(3, 3),)), ("offset", lambda x: np.trace(x, 1), (a34,))],
        "diagonal": [("", lambda x: np.diagonal(x), (a34,)), ("3-D", lambda x: np.diagonal(x, -1, 1, 2), (a234,))],
        "diag": [("matrix", lambda x: np.diag(x), (a34,)), ("vector k=1", lambda v: np.diag(v, 1), (normal(3),))],
        "triu": [("", lambda x: np.triu(x), (a34,))],
        "tril": [("k=-1", lambda x: np.tril(x, -1), (a34,))],
        # shapes
        "reshape": [("", lambda x: np.reshape(x, (3, 2)), (a23,))],
        "ravel": [("", lambda x: np.ravel(x), (a23,)), ("method", lambda x: x.flatten(), (a23,))],
        "squeeze": [("", lambda x: np.squeeze(x), (normal(2, 1, 3, 1),)), ("axis", lambda x: x.squeeze(1), (normal(2, 1, 3),))],
        "expand_dims": [("", lambda x: np.expand_dims(x, (0, -1)), (a23,))],
        "transpose": [("", lambda x: np.transpose(x, (2, 0, 1)), (a234,))],
        "swapaxes": [("", lambda x: np.swapaxes(x, 0, 2), (a234,))],
        "moveaxis": [("", lambda x: np.moveaxis(x, 0, -1), (a234,))],
        "atleast_1d": [("", lambda x: np.atleast_1d(x), (normal(),))],
        "atleast_2d": [("", lambda x: np.atleast_2d(x), (normal(3),))],
        "atleast_3d": [("", lambda x: np.atleast_3d(x), (a23,))],
        "broadcast_to": [("", lambda x: np.broadcast_to(x, (2, 3)), (normal(3),))],
        "broadcast_arrays": [("", lambda x, y: np.broadcast_arrays(x, y)[0] * np.broadcast_arrays(x, y)[1],
                              (normal(3), normal(2, 1)))],
        "flip": [("", lambda x: np.flip(x, 1), (a23,)), ("all", lambda x: np.flip(x), (a23,))],
        "fliplr": [("", lambda x: np.fliplr(x), (a23,))],
        "flipud": [("", lambda x: np.flipud(x), (a23,))],
        "roll": [("", lambda x: np.roll(x, 1, axis=1), (a23,)), ("flat", lambda x: np.roll(x, -2), (a23,))],
        "tile": [("", lambda x: np.tile(x, (2, 1, 2)), (a23,))],
        "repeat": [("", lambda x: np.repeat(x, 2, axis=0), (a23,)), ("counts", lambda x: np.repeat(x, [1, 0, 2]), (normal(3),))],
        "concatenate": [("", lambda a, b: np.concatenate([a, b], axis=1), (a23, normal(2, 2))),
                        ("axis None", lambda a: np.concatenate([a, np.ones(2)], axis=None), (a23,))],
        "stack": [("", lambda a, b: np.stack((a, b), axis=-1), (a23, normal(2, 3)))],
        "hstack": [("", lambda a, b: np.hstack([a, b]), (normal(3), normal(2)))],
        "vstack": [("", lambda a, b: np.vstack([a, b]), (normal(3), normal(3)))],
        "column_stack": [("", lambda a, b: np.column_stack([a, b]), (normal(3), normal(3, 2)))],
        "split": [("", lambda x: np.split(x, 2, axis=1)[1], (a34,)), ("points", lambda x: np.split(x, [1, 3])[1], (normal(5),))],
        "array_split": [("", lambda x: np.array_split(x, 3)[0], (normal(5),))],
        "hsplit": [("", lambda x: np.hsplit(x, 2)[0], (a34,))],
        "vsplit": [("", lambda x: np.vsplit(x, [1])[1], (a34,))],
        "pad": [("", lambda x: np.pad(x, ((1, 0), (2, 1))), (a23,)), ("value", lambda x: np.pad(x, 1, constant_values=0.5), (normal(3),))],
        # elementwise with arguments
        "where": [("scalar branch", lambda c, x: np.where(c, x, 0.5), (normal(4) > 0, normal(4))),
                  ("", lambda c, x: np.where(c, x, -x), (normal(4) > 0, normal(4)))],
        "clip": [("", lambda x: np.clip(x, -0.5, 0.5), (np.array([-1.3, -0.2, 0.1, 0.7]),)),
                 ("method", lambda x: x.clip(max=0.5), (np.array([-1.3, 0.1, 0.7]),))],
        "round": [("times x", lambda x: np.round(x) * x, (np.array([0.3, 1.2, -2.3]),)),
                  ("decimals", lambda x: np.round(x, 1) * x, (np.array([0.32, 1.21]),))],
        "around": [("", lambda x: np.around(x) * x, (np.array([0.3, 1.2]),))],
        "copy": [("", lambda x: np.copy(x) * x, (normal(3),))],
        "any": [("branch", lambda x: x * 2.0 if np.any(x > 0) else -x, (normal(3),)),
                ("method", lambda x: x * 3.0 if bool(x.any(axis=0).all()) else -x, (positive(2, 2),))],
        "all": [("branch", lambda x: x * 2.0 if np.all(x > 0) else -x, (positive(3),))],
    }


NUMPY_CASES = cases()
PLAIN_NAMES = {f.__name__ for f in PLAIN} | {"isnan", "isinf", "isfinite", "signbit", "logical_and", "logical_or",
                                              "logical_xor", "logical_not"}
ALIASES = {"absolute": "abs", "subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div",
           "power": "pow", "negative": "neg"}


def test_every_supported_numpy_name_has_cases() -> None:
    names = set(public_functions())
    covered = set(NUMPY_CASES) | PLAIN_NAMES | {n for n in names if ALIASES.get(n, n) in tg.__all__}
    assert sorted(names - covered) == [], "add cases for these numpy names to NUMPY_CASES"
    assert sorted(set(NUMPY_CASES) - names) == []


ALL_CASES = [(name, *case) for name, group in NUMPY_CASES.items() for case in group]


@pytest.mark.parametrize(("name", "label", "f", "args"), ALL_CASES, ids=[f"{c[0]}[{c[1]}]" for c in ALL_CASES])
def test_numpy_value_and_gradient(name: str, label: str, f: Callable[..., Any], args: tuple[np.ndarray, ...]) -> None:
    """The same code on Variables computes what numpy computes, and its gradient matches
    central differences."""
    out = f(*[tg.Variable(a) for a in args])
    assert isinstance(out, tg.Variable)
    expected = np.asarray(f(*args))
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_allclose(out.data, expected, rtol=1e-13, atol=1e-13)
    check_grads(f, *args)


def _record(f: Callable[..., Any], args: tuple[np.ndarray, ...]) -> tg.Tape:
    with tg.record() as tape:
        out = f(*[tg.Variable(a, name=f"a{k}") for k, a in enumerate(args)])
        out.name = "out"
    return tape


@pytest.mark.parametrize(("name", "label", "f", "args"), ALL_CASES, ids=[f"{c[0]}[{c[1]}]" for c in ALL_CASES])
def test_numpy_jvp_against_finite_differences(name: str, label: str, f: Callable[..., Any],
                                              args: tuple[np.ndarray, ...]) -> None:
    tape = roundtrip(_record(f, args))
    inputs = {f"a{k}": a for k, a in enumerate(args)}
    rng = np.random.default_rng(1)
    tangents = {n: rng.standard_normal(a.shape) for n, a in inputs.items() if a.dtype.kind == "f"}
    jv = tg.replay.jvp(tape, tangents, inputs=inputs, outputs=["out"])["out"]
    eps = 1e-6

    def at(t: float) -> np.ndarray:
        moved = {n: a + t * tangents[n] if n in tangents else a for n, a in inputs.items()}
        return np.asarray(tg.replay.forward(tape, inputs=moved, outputs=["out"])["out"], dtype=np.float64)

    numeric = (at(eps) - at(-eps)) / (2 * eps)
    np.testing.assert_allclose(jv, numeric, rtol=1e-5, atol=1e-7)


def roundtrip(tape: tg.Tape) -> tg.Tape:
    return tg.loads(tg.dumps(tape))


# ---- unmodified numpy models ------------------------------------------------------------------


def logistic_loss(w: Any, x: np.ndarray, y: np.ndarray) -> Any:
    z = np.dot(x, w)
    return np.mean(np.logaddexp(0.0, z) - y * z)


def softmax_cross_entropy(logits: Any, labels: np.ndarray) -> Any:
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return -np.mean(np.sum(labels * log_p, axis=1))


def mlp_loss(w1: Any, b1: Any, w2: Any, x: np.ndarray, y: np.ndarray) -> Any:
    h = np.tanh(x @ w1 + b1)
    return 0.5 * np.sum(np.square(h @ w2 - y))


def logsumexp(x: Any) -> Any:
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


X = normal(6, 3)
Y01 = (normal(6) > 0).astype(np.float64)
LABELS = np.eye(4)[[0, 3, 1, 2, 2]]
TARGET = normal(6, 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


def test_logistic_regression_gradient_is_analytic() -> None:
    w = normal(3)
    g = tg.grad(logistic_loss)(w, X, Y01)
    np.testing.assert_allclose(g, X.T @ (_sigmoid(X @ w) - Y01) / len(X), rtol=1e-12)


def test_softmax_cross_entropy_gradient_is_analytic() -> None:
    logits = normal(5, 4)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(tg.grad(softmax_cross_entropy)(logits, LABELS), (p - LABELS) / 5, rtol=1e-12)


def test_mlp_gradient_is_analytic() -> None:
    w1, b1, w2 = normal(3, 4), normal(4), normal(4, 2)
    g1, gb, g2 = tg.grad(mlp_loss, argnums=(0, 1, 2))(w1, b1, w2, X, TARGET)
    h = np.tanh(X @ w1 + b1)
    r = h @ w2 - TARGET
    dh = (r @ w2.T) * (1 - h**2)
    np.testing.assert_allclose(g2, h.T @ r, rtol=1e-12)
    np.testing.assert_allclose(g1, X.T @ dh, rtol=1e-12)
    np.testing.assert_allclose(gb, dh.sum(axis=0), rtol=1e-12)


def test_careful_logsumexp_gradient_is_softmax_also_for_large_values() -> None:
    x = normal(5) + 800.0
    g = tg.grad(logsumexp)(x)
    np.testing.assert_allclose(g, np.exp(x - x.max()) / np.exp(x - x.max()).sum(), rtol=1e-12)


@pytest.mark.parametrize("model", ["logistic", "softmax", "mlp", "logsumexp"])
def test_numpy_model_tapes_save_load_and_replay_to_the_same_gradients(model: str) -> None:
    with tg.record() as tape:
        if model == "logistic":
            params = [tg.Variable(normal(3), name="w")]
            loss = logistic_loss(params[0], X, Y01)
        elif model == "softmax":
            params = [tg.Variable(normal(5, 4), name="logits")]
            loss = softmax_cross_entropy(params[0], LABELS)
        elif model == "mlp":
            params = [tg.Variable(normal(3, 4), name="w1"), tg.Variable(normal(4), name="b1"),
                      tg.Variable(normal(4, 2), name="w2")]
            loss = mlp_loss(*params, X, TARGET)
        else:
            params = [tg.Variable(normal(5) + 30.0, name="x")]
            loss = logsumexp(params[0])
        loss.name = "loss"
    loss.backward()
    names = [p.name for p in params]
    loaded = roundtrip(tape)
    for t in (tape, loaded):
        g = tg.replay.backward(t, of="loss", wrt=names)
        for p in params:
            np.testing.assert_array_equal(g[p.name], p.grad)
    assert [r.op for r in loaded.records] == [r.op for r in tape.records]


# ---- behaving like an array, and failing clearly ----------------------------------------------


def test_array_idioms_behave_as_on_arrays() -> None:
    x = tg.Variable(np.arange(6.0).reshape(2, 3))
    w = np.ones((3, 2))
    assert (len(x), x.shape, x.ndim) == (2, (2, 3), 2)
    np.testing.assert_array_equal((x @ w).data, x.data @ w)
    np.testing.assert_array_equal(x.T.data, x.data.T)
    np.testing.assert_array_equal(x[1, [0, 2]].data, [3.0, 5.0])
    y = x
    y += 1  # rebinds: a new Variable, x unchanged
    assert y is not x and isinstance(y, tg.Variable)
    np.testing.assert_array_equal(x.data, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal((np.ones(3) + x).data, x.data + 1)
    assert isinstance(np.ones(3) * x, tg.Variable) and isinstance(2.0 ** x, tg.Variable)
    for got, want in (((x + 0.5) % 2.0, (x.data + 0.5) % 2.0), (round(x / 3, 1), np.round(x.data / 3, 1)),
                      (7.5 // (x + 1), 7.5 // (x.data + 1)),
                      (5.0 % (x + 1), 5.0 % (x.data + 1)), ((x + 0.5) // 2, (x.data + 0.5) // 2), (+x, x.data)):
        assert isinstance(got, tg.Variable)
        np.testing.assert_array_equal(got.data, want)


def test_asarray_and_iteration() -> None:
    x = tg.Variable(np.arange(4.0))
    with tg.record() as tape:
        a = np.asarray(x)
        assert type(a) is np.ndarray and np.shares_memory(a, x.data)
        np.testing.assert_array_equal(x.__array__(), x.data)
        assert len(tape) == 0  # leaving the graph records nothing
        items = list(x)
    assert all(isinstance(v, tg.Variable) for v in items) and [v.item() for v in items] == [0.0, 1.0, 2.0, 3.0]
    # iterating unrolls over the length: a shape guard pins it, then one getitem per item
    assert [r.op for r in tape.records if r.op != "guard"] == ["shape_guard"] + ["getitem"] * 4
    assert np.asarray(x, dtype=np.float32).dtype == np.float32
    with pytest.raises(tg.TapegradError):
        np.asarray(x, dtype=np.float32, copy=False)


def test_sum_and_mean_through_numpy() -> None:
    x = tg.Variable(np.arange(4.0))
    assert np.sum(x).item() == 6.0 and np.mean(x).item() == 1.5
    np.sum(x).backward()
    np.testing.assert_array_equal(x.grad, np.ones(4))


def test_math_functions_read_a_pinned_value() -> None:
    # math.exp(x) calls float(x): a Python float leaves the graph, and inside a recording a guard
    # pins the value, so a replay with another value refuses and says what made the guard
    import math

    with tg.record() as tape:
        x = tg.Variable(np.array([0.5]), name="x")
        y = x * math.exp(x)
        y.name = "y"
    assert [r.op for r in tape.records] == ["guard", "mul"]
    assert tape.records[0].attrs["kind"] == "float"
    np.testing.assert_array_equal(tg.replay.forward(tape, {"x": np.array([0.5])})["y"], 0.5 * np.exp([0.5]))
    with pytest.raises(tg.GuardError, match=r"float\(v\)"):
        tg.replay.forward(tape, {"x": np.array([0.7])})


def test_truth_value_of_many_elements_points_to_any_and_all() -> None:
    x = tg.Variable(np.array([1.0, 0.0]))
    with pytest.raises(tg.ArgumentError, match=r"x\.any\(\) or x\.all\(\)"):
        bool(x)
    assert bool(x.any()) and not bool(x.all()) and bool((x > -2).all())
    assert x.any().dtype == np.bool_


def test_constructor_and_len_errors_are_tapegrad_errors() -> None:
    for make in (lambda: tg.Variable(3.0), lambda: tg.Variable(np.ones(2), name=3), lambda: len(tg.Variable(np.array(1.0))),
                 lambda: list(tg.Variable(np.array(1.0)))):
        with pytest.raises(tg.TapegradError) as info:
            make()
        assert isinstance(info.value, TypeError)


UNSUPPORTED: list[tuple[str, Callable[[Any], Any]]] = [
    ("np.sort", lambda x: np.sort(x)),
    ("np.add.reduceat", lambda x: np.add.reduceat(x, [0, 2])),
    ("np.linalg.eig", lambda x: np.linalg.eig(x)),
    ("np.multiply.accumulate", lambda x: np.multiply.accumulate(x)),
    ("np.median", lambda x: np.median(x)),
    ("np.gcd", lambda x: np.gcd(x, 2)),
    ("np.unique", lambda x: np.unique(x)),
    ("np.einsum in the interleaved", lambda x: np.einsum(x, [0, 1], [1])),
    ("np.pad with mode='edge'", lambda x: np.pad(x, 1, mode="edge")),
    ("tnp.sort", lambda x: tnp.sort(x)),
]


@pytest.mark.parametrize(("what", "call"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_numpy_names_raise_a_clear_error_and_record_nothing(what: str, call: Callable[[Any], Any]) -> None:
    with tg.record() as tape:
        x = tg.Variable(np.eye(2) + 0.5, name="x")
        with pytest.raises(tg.UnsupportedError) as info:
            call(x)
    assert str(info.value).startswith(what) and "tg.defop" in str(info.value)
    assert isinstance(info.value, TypeError) and len(tape) == 0


BAD_CALLS: list[tuple[str, Callable[[Any], Any]]] = [
    ("out=", lambda x: np.sin(x, out=np.empty(3))),
    ("in-place on an ndarray", lambda x: np.ones(3).__iadd__(x)),
    ("sum initial=", lambda x: np.sum(x, initial=1.0)),
    ("sum bad axis", lambda x: np.sum(x, axis=3)),
    ("var bad axis", lambda x: np.var(x, axis=(0, 5))),
    ("mean where=", lambda x: np.mean(x, where=np.array([True, False, True]))),
    ("tensordot mismatch", lambda x: np.tensordot(x, np.ones((2, 2)), 1)),
    ("split unequal", lambda x: np.split(x, 2)),
    ("diff n=-1", lambda x: np.diff(x, n=-1)),
    ("einsum bad", lambda x: np.einsum("ij->i", x)),
    ("einsum sizes", lambda x: np.einsum("i,i", x, np.ones(2))),
    ("linspace endpoints", lambda x: np.linspace(x, np.ones(2), 4)),
    ("broadcast_arrays", lambda x: np.broadcast_arrays(x, np.ones(2))),
    ("einsum diagonal sizes", lambda x: np.einsum("ii", tg.Variable(np.ones((2, 3))))),
    ("reshape", lambda x: np.reshape(x, (2, 2))),
    ("cumsum bad axis", lambda x: np.cumsum(x, axis=2)),
    ("vstack mismatch", lambda x: np.vstack([x, np.ones(2)])),
    ("column_stack mismatch", lambda x: np.column_stack([x, np.ones(2)])),
    ("dstack mismatch", lambda x: np.dstack([x, np.ones(2)])),
    ("hstack mismatch", lambda x: np.hstack([np.ones((2, 1)), x])),
]


@pytest.mark.parametrize(("what", "call"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_calls_raise_tapegrad_errors_and_leave_the_tape_unchanged(what: str, call: Callable[[Any], Any]) -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([0.5, 1.0, 2.0]), name="x")
        with pytest.raises(tg.TapegradError):
            call(x)
    assert len(tape) == 0


def test_integer_valued_results_are_plain_arrays_and_comparisons_carry_no_gradient() -> None:
    x = tg.Variable(np.array([0.5, 3.0, -1.0]))
    for result in (np.argmax(x), np.argsort(x), np.nonzero(x > 0)[0], np.isnan(x), np.shape(x), np.where(x > 0)[0]):
        assert not isinstance(result, tg.Variable)
    assert np.argmax(x) == 1 and np.shape(x) == (3,)
    c = np.greater(x, 0.0)
    assert isinstance(c, tg.Variable) and c.dtype == np.bool_
    np.sum(x * c).backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 0.0])


def test_numpy_call_records_the_users_source_line() -> None:
    import inspect

    with tg.record() as tape:
        x = tg.Variable(np.ones(2))
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        y = np.sin(x) + np.mean(x)
    assert y.shape == (2,)
    assert all(tape.source_of(n) == (__file__, line) for n in range(len(tape)))


def test_tnp_records_on_plain_arrays() -> None:
    with tg.record() as tape:
        y = tnp.sum(tnp.sin(np.ones(3)))
    assert isinstance(y, tg.Variable) and [r.op for r in tape.records] == ["sin", "sum"]
    assert tnp.linalg.norm is public_functions()["norm"] and tnp.pi == np.pi and tnp.sin is tg.sin
    with pytest.raises(tg.UnsupportedError, match=r"tnp\.linalg\.inv"):
        tnp.linalg.inv(np.eye(2))


ODD_SHAPES = [(), (5, 7), (2, 1, 3, 1)]


@pytest.mark.parametrize("name", sorted(NUMPY_CASES))
def test_odd_shapes_either_work_or_fail_cleanly_leaving_the_tape_unchanged(name: str) -> None:
    """Each name's first case (one numpy call) with its float arguments replaced by arrays of
    other shapes: it computes what numpy computes, or raises a TapegradError (never a bare numpy
    error) and leaves no record behind."""
    _, f, args = NUMPY_CASES[name][0]
    for shape in ODD_SHAPES:
        odd = tuple(np.linspace(0.1, 0.9, int(np.prod(shape))).reshape(shape) if a.dtype.kind == "f" else a
                    for a in args)
        try:
            with np.errstate(all="ignore"):
                expected: Any = f(*odd)
        except Exception:  # numpy refuses too: tapegrad must refuse with its own error
            expected = None
        with tg.record() as tape:
            xs = [tg.Variable(a) for a in odd]
            try:
                with np.errstate(all="ignore"):
                    out = f(*xs)
            except tg.TapegradError as exc:
                assert len(tape) == 0, f"{name}{shape}: a failed call left {len(tape)} record(s)"
                assert expected is None, f"{name}{shape}: numpy computes it, tapegrad raised {exc}"
                continue
        assert expected is not None, f"{name}{shape}: numpy refuses, tapegrad computed {out!r}"
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12, err_msg=f"{name}{shape}")


# (method cases are left out: `arr.dot(x)` is ndarray's own method, see the test after this one)
MULTI_ARG = [(f"{name}[{label}]", f, args) for name, group in NUMPY_CASES.items() for label, f, args in group
             if len(args) >= 2 and "method" not in label]


@pytest.mark.parametrize(("label", "f", "args"), MULTI_ARG, ids=[m[0] for m in MULTI_ARG])
def test_variables_mix_with_arrays_in_any_position(label: str, f: Callable[..., Any], args: tuple[np.ndarray, ...]) -> None:
    """Every case with several arguments, with each one alone a Variable (the others plain
    arrays): a Variable result equal to numpy's, whose gradient reaches that Variable."""
    expected = np.asarray(f(*args))
    for k, a in enumerate(args):
        if a.dtype.kind != "f":
            continue
        v = tg.Variable(a)
        out = f(*[v if j == k else b for j, b in enumerate(args)])
        assert isinstance(out, tg.Variable), f"{label}: Variable at {k} gave {type(out).__name__}"
        np.testing.assert_allclose(out.data, expected, rtol=1e-13, atol=1e-13)
        np.sum(out * 1.0).backward()
        assert v.grad is not None and v.grad.shape == a.shape


def test_ndarray_methods_convert_a_variable_argument_as_documented() -> None:
    """numpy calls no protocol for an ndarray's own methods: `arr.dot(x)` converts `x` with
    `__array__`, like `np.asarray(x)` (docs/numpy.md says so, and to write `np.dot(arr, x)`)."""
    a, x = np.ones((2, 3)), tg.Variable(np.arange(3.0))
    assert type(a.dot(x)) is np.ndarray
    assert isinstance(np.dot(a, x), tg.Variable) and isinstance(a @ x, tg.Variable)


METHODS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("mean", (), {"axis": 0}), ("max", (), {"axis": 1, "keepdims": True}), ("min", (), {}), ("var", (), {"ddof": 1}),
    ("std", (), {"axis": 0}), ("any", (), {"axis": 0}), ("all", (), {}), ("prod", (), {"axis": 1}), ("cumsum", (1,), {}),
    ("ravel", (), {}), ("flatten", (), {}), ("squeeze", (), {}), ("dot", (np.ones(3),), {}), ("clip", (0.2, 0.6), {}),
    ("swapaxes", (0, 1), {}), ("repeat", (2,), {"axis": 0}), ("diagonal", (), {}), ("trace", (), {}),
    ("round", (1,), {}), ("copy", (), {}), ("argmax", (), {"axis": 1}), ("argmin", (), {}), ("nonzero", (), {}),
    ("tolist", (), {}), ("sum", (), {"axis": 1}), ("reshape", (3, 2), {}), ("transpose", (), {}), ("astype", ("float32",), {}),
]


@pytest.mark.parametrize(("method", "args", "kwargs"), METHODS, ids=[m[0] for m in METHODS])
def test_array_methods_give_what_ndarray_methods_give(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    data = np.array([[0.1, 0.75, 0.0], [0.5, 0.25, 0.9]])
    got = getattr(tg.Variable(data), method)(*args, **kwargs)
    want = getattr(data, method)(*args, **kwargs)
    if method in ("argmax", "argmin", "nonzero", "tolist"):  # not differentiable: plain results
        assert not isinstance(got, tg.Variable)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        return
    assert isinstance(got, tg.Variable)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.data, want, rtol=1e-14)


PLAIN_CALLS: dict[str, Callable[[Any], Any]] = {
    "shape": np.shape, "ndim": np.ndim, "size": np.size, "argmax": np.argmax, "argmin": np.argmin,
    "argsort": np.argsort, "nonzero": np.nonzero, "flatnonzero": np.flatnonzero, "argwhere": np.argwhere,
    "count_nonzero": np.count_nonzero, "isclose": lambda x: np.isclose(x, 0.5), "allclose": lambda x: np.allclose(x, x),
    "array_equal": lambda x: np.array_equal(x, x), "zeros_like": np.zeros_like, "ones_like": np.ones_like,
    "empty_like": lambda x: np.empty_like(x).shape, "full_like": lambda x: np.full_like(x, 2.0),
    "iscomplexobj": np.iscomplexobj, "isrealobj": np.isrealobj, "result_type": lambda x: np.result_type(x, 1.0),
    "can_cast": lambda x: np.can_cast(x, np.float32), "may_share_memory": lambda x: np.may_share_memory(x, x),
    "shares_memory": lambda x: np.shares_memory(x, x), "isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite,
    "signbit": np.signbit, "logical_and": lambda x: np.logical_and(x, 1), "logical_or": lambda x: np.logical_or(x, 0),
    "logical_xor": lambda x: np.logical_xor(x, 1), "logical_not": np.logical_not,
}


def test_every_plain_name_has_a_call() -> None:
    assert set(PLAIN_CALLS) == PLAIN_NAMES


@pytest.mark.parametrize("name", sorted(PLAIN_CALLS))
def test_plain_results_leave_the_graph_and_equal_numpys(name: str) -> None:
    data = np.array([[0.0, 0.5, -1.5], [2.0, 0.5, 0.0]])
    with tg.record() as tape:
        x = tg.Variable(data)
        got = PLAIN_CALLS[name](x)
    assert len(tape) == 0 and not isinstance(got, tg.Variable)
    assert not any(isinstance(g, tg.Variable) for g in (got if isinstance(got, tuple) else ()))
    want = PLAIN_CALLS[name](data)
    if name in ("can_cast", "result_type"):
        assert got == want
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
