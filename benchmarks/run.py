"""tapegrad's benchmarks in one run: tapegrad, hand-written numpy and the installed peers, side by side.

    python benchmarks/run.py            # the full run (several minutes): writes docs/BENCHMARKS.md
                                        # and docs/benchmarks.json (every raw sample)
    python benchmarks/run.py --quick    # smoke run (seconds): numpy and tapegrad only, small sizes

Install the peers with `pip install -e ".[bench]"` (PyTorch: `pip install torch==2.13.0` takes the
CPU build).  A peer that is not installed is reported as missing, never replaced by something else.
Every implementation's gradients are checked against the hand-written numpy baseline before any time
is taken; a mismatch stops the run.

Threads: `--threads 1` (the default) gives every library's pool one thread (numpy's BLAS, PyTorch,
XLA); `--threads 0` keeps each library's default.  On a small shared machine the pools of several
libraries, all in one process, spin against each other and medians swing by 10x.

Sections (each round-robin: every repeat runs every implementation once, in turn, after a warm-up,
so that slow drift of a shared machine hits all alike, each sample after an untimed collection
(objects that exist when measuring starts frozen out of it), with the collector on while it runs;
tables give the median and min-max):
- tiny: a chain of 10,000 ops on shape (4,) float64 cycling `y + a`, `y * c`, `sin(y)`, `exp(y)`,
  forward and backward, in every tapegrad mode: eager (no `record()`) or inside `record()`, with
  `a` and `c` Python floats (only `x` differentiated) or differentiated Variables; plus `np.sin(y)`
  style calls once Variables take numpy's dispatch, and a replay of the loaded tape.  The numpy
  baseline computes the same gradients (with Variable constants, theirs too).  Target: <= 2.0x.
  Also `backward()` alone (the forward run untimed before each sample), eager against over a
  recorded tape (target: eager <= 1.0x recorded), and the first replay of a freshly loaded tape
  (which compiles its plan) against a later one (target: <= 5x).
- mlp: one training step, batch 256, 784-512-10, tanh, softmax cross-entropy, float32 and float64:
  eager, and replayed from a loaded tape with a new batch.  Targets: eager <= 1.2x, replay <= 1.1x.
- memory: peak traced memory (tracemalloc) of that step, float64: inside `record()` (plus its
  backward) against eager.  Target: record <= 1.25x eager.
- large: the chain's four ops twice on 10^7 float64 elements, forward and backward.  Target: <= 1.15x.
- lookup: `tape.value(name)` on a 10,000-variable tape (O(1): it should not grow with the tape).
- serial: one 100 MB float64 array and 100,000 small records: tapegrad `dumps`/`loads` against
  `np.save`/`np.load`, pickle protocol 5 and safetensors (in memory, no disk).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import pickle
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


def _threads_from_argv(argv: list[str]) -> int:
    """--threads N (default 1), read before numpy is imported: thread pools are sized at import."""
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return int(argv[k + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv[1:]) if __name__ == "__main__" else 0
if THREADS > 0:  # one size for every library's pool (numpy's BLAS, PyTorch's OpenMP, XLA)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(THREADS)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                               f" intra_op_parallelism_threads={THREADS}").strip()

import numpy as np  # noqa: E402  (after the thread settings above)

import tapegrad as tg  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import chain, numpy_chain  # noqa: E402  (the tiny chain and its hand-written baseline)

ROOT = Path(__file__).resolve().parents[1]
A, C = 0.3, 0.9  # the chain's constants
X_TINY = np.linspace(0.1, 0.4, 4)


# ---- options and sizes ----------------------------------------------------------------------

@dataclass
class Sizes:
    chain: int = 10_000
    batch: int = 256
    hidden: int = 512
    large: int = 10**7
    lookup_vars: int = 10_000
    big_bytes: int = 100 * 10**6
    small_records: int = 100_000
    repeat: int = 11
    warmup: int = 2
    serial_repeat: int = 5


QUICK = Sizes(chain=200, batch=16, hidden=32, large=10**4, lookup_vars=200, big_bytes=10**6, small_records=500,
              repeat=3, warmup=1, serial_repeat=2)


# ---- peers ------------------------------------------------------------------------------------

@dataclass
class Peer:
    name: str
    module: Any = None
    version: str | None = None
    missing: str | None = None


def load_peers(wanted: list[str]) -> dict[str, Peer]:
    """The peers asked for, imported if installed; a missing one says why."""
    peers: dict[str, Peer] = {}
    for name in wanted:
        peer = Peer(name)
        try:
            if name == "torch":
                import torch
                if THREADS > 0:
                    torch.set_num_threads(THREADS)
                peer.module, peer.version = torch, torch.__version__
            elif name == "autograd":
                import autograd
                import autograd.numpy as anp
                peer.module, peer.version = (autograd, anp), metadata.version("autograd")
            elif name == "dezero":
                np.int = int  # type: ignore[attr-defined]  # DeZero still uses np.int, gone in numpy 2
                import dezero
                import dezero.functions as dzf
                peer.module, peer.version = (dezero, dzf), metadata.version("dezero")
            elif name == "jax":
                import jax
                jax.config.update("jax_enable_x64", True)  # float64 as float64, not silently float32
                import jax.numpy as jnp
                peer.module, peer.version = (jax, jnp), jax.__version__
            elif name == "safetensors":
                import safetensors.numpy as stn
                peer.module, peer.version = stn, metadata.version("safetensors")
            else:
                raise ImportError(f"unknown peer {name!r}")
        except Exception as exc:  # ImportError, or a peer that fails at import on this numpy
            peer.missing = f"{type(exc).__name__}: {exc}"
        peers[name] = peer
    return peers


# ---- a case: one implementation of one workload ----------------------------------------------

@dataclass
class Case:
    section: str
    workload: str
    impl: str
    run: Callable[..., Any]
    baseline: str = "numpy"  # the impl of the same workload this one is compared with
    samples: list[float] = field(default_factory=list)
    note: str = ""
    setup: Callable[[], Any] | None = None  # if given, run untimed before each run; run gets its result

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def check(name: str, got: Any, want: Any, rtol: float) -> None:
    """Gradients of `name` against the numpy baseline's (stops the run on a mismatch)."""
    got_list = got if isinstance(got, (list, tuple)) else [got]
    want_list = want if isinstance(want, (list, tuple)) else [want]
    for k, (g, w) in enumerate(zip(got_list, want_list, strict=True)):
        g = np.asarray(g)
        if g.shape != np.shape(w) or not np.allclose(g, w, rtol=rtol, atol=rtol * 1e-2):
            raise SystemExit(f"{name}: gradient {k} differs from the numpy baseline (max abs diff "
                             f"{np.max(np.abs(g - w)) if g.shape == np.shape(w) else 'shape ' + str(g.shape)})")


def measure(cases: list[Case], repeat: int, warmup: int) -> None:
    """Round-robin: every repeat runs each case once, in turn, after `warmup` untimed rounds.

    The collector stays on while a sample runs, but no sample pays for garbage that the one
    before it or its own setup left: a collection runs, untimed, right before each sample (after
    its setup).  A plan compile leaves some 20,000 new tuples and a 10,000-op forward 10,000
    records, whose first collection would otherwise land in the next timed code; and objects
    promoted to the oldest generation add up until a full collection, which traverses every
    object of the process (the peers' modules included: tens of milliseconds), fires inside
    some sample.  So the objects that exist when measuring starts (modules, the cases' tapes and
    plans) are frozen out of the collector (`gc.freeze`), and each collection before a sample is
    a full one over the rest: cheap, and it leaves no debt."""
    gc.collect()
    gc.freeze()
    try:
        for _ in range(warmup):
            for case in cases:
                case.run() if case.setup is None else case.run(case.setup())
        for _ in range(repeat):
            for case in cases:
                prepared = None  # (the last sample's state is freed before this one's setup runs)
                if case.setup is not None:
                    prepared = case.setup()
                gc.collect()
                t0 = time.perf_counter()
                case.run() if case.setup is None else case.run(prepared)
                case.samples.append(time.perf_counter() - t0)
    finally:
        gc.unfreeze()


# ---- the tiny-op chain and the large elementwise chain ----------------------------------------

def tapegrad_forward(x0: np.ndarray, n: int, recording: bool, variables: bool = False,
                     numpy_calls: bool = False) -> tuple[list[Any], Any]:
    """([x, a, c] or [x], y): the chain's forward in one tapegrad mode, eager or recorded,
    constants as Python floats or (`variables`) differentiated Variables."""
    sin, exp = (np.sin, np.exp) if numpy_calls else (tg.sin, tg.exp)
    with tg.record() if recording else contextlib.nullcontext():
        x = tg.Variable(x0)
        if variables:
            a, c = tg.Variable(np.full_like(x0, A)), tg.Variable(np.full_like(x0, C))
            return [x, a, c], chain(x, a, c, n, sin, exp)
        return [x], chain(x, A, C, n, sin, exp)


def tapegrad_chain(x0: np.ndarray, n: int, recording: bool, variables: bool, numpy_calls: bool = False) -> list[Any]:
    """The chain in one tapegrad mode (`tapegrad_forward`), then `backward()`: the leaves' gradients."""
    leaves, y = tapegrad_forward(x0, n, recording, variables, numpy_calls)
    y.backward()
    return [v.grad for v in leaves]


def chain_peers(peers: dict[str, Peer], x0: np.ndarray, n: int) -> dict[str, Callable[[], Any]]:
    """The chain in each installed peer (x differentiated, a and c Python floats)."""
    out: dict[str, Callable[[], Any]] = {}
    torch = peers.get("torch", Peer("torch")).module
    if torch is not None:
        def run_torch() -> Any:
            x = torch.tensor(x0, requires_grad=True)
            y = chain(x, A, C, n, torch.sin, torch.exp)
            y.backward(torch.ones_like(y))
            return x.grad.numpy()
        out["PyTorch eager"] = run_torch
    if peers.get("autograd", Peer("")).module is not None:
        autograd, anp = peers["autograd"].module

        def run_autograd() -> Any:
            vjp, y = autograd.make_vjp(lambda x: chain(x, A, C, n, anp.sin, anp.exp))(x0)
            return vjp(np.ones_like(y))
        out["HIPS autograd"] = run_autograd
    if peers.get("dezero", Peer("")).module is not None:
        dezero, dzf = peers["dezero"].module

        def run_dezero() -> Any:
            x = dezero.Variable(x0.copy())
            y = chain(x, A, C, n, dzf.sin, dzf.exp)
            y.backward()
            return x.grad.data
        out["DeZero"] = run_dezero
    if peers.get("jax", Peer("")).module is not None:
        jax, jnp = peers["jax"].module

        def run_jax() -> Any:
            y, vjp = jax.vjp(lambda x: chain(x, A, C, n, jnp.sin, jnp.exp), jnp.asarray(x0))
            return np.asarray(vjp(jnp.ones_like(y))[0])
        out["JAX eager"] = run_jax
    return out


def tiny_cases(sizes: Sizes, peers: dict[str, Peer]) -> list[Case]:
    n = sizes.chain
    want_f = numpy_chain(X_TINY, A, C, n, False)
    want_v = numpy_chain(X_TINY, A, C, n, True)
    cases = [Case("tiny", "chain", "numpy", lambda: numpy_chain(X_TINY, A, C, n, False), baseline="numpy",
                  note="hand-written forward + backward, d/dx only"),
             Case("tiny", "chain", "numpy, constants differentiated", lambda: numpy_chain(X_TINY, A, C, n, True),
                  baseline="numpy, constants differentiated", note="also d/da and d/dc")]
    modes = [("tapegrad eager, constants Python floats", False, False),
             ("tapegrad record(), constants Python floats", True, False),
             ("tapegrad eager, constants Variables", False, True),
             ("tapegrad record(), constants Variables", True, True)]
    for label, recording, variables in modes:
        def run(recording: bool = recording, variables: bool = variables) -> Any:
            return tapegrad_chain(X_TINY, n, recording, variables)
        check(label, run(), want_v if variables else want_f, 1e-10)
        cases.append(Case("tiny", "chain", label, run,
                          baseline="numpy, constants differentiated" if variables else "numpy"))
    if getattr(tg.Variable, "__array_ufunc__", None) is not None:  # numpy dispatch (issue 14)
        def run_np() -> Any:
            return tapegrad_chain(X_TINY, n, False, False, numpy_calls=True)
        check("np.sin style", run_np(), want_f, 1e-10)
        cases.append(Case("tiny", "chain", "tapegrad eager, np.sin(y) style calls", run_np))
    for label, recording in (("tapegrad record()", True), ("tapegrad eager", False)):
        def forward(recording: bool = recording) -> tuple[list[Any], Any]:
            return tapegrad_forward(X_TINY, n, recording)

        def backward(leaves_y: tuple[list[Any], Any]) -> Any:
            leaves_y[1].backward()
            return leaves_y[0][0].grad
        check(f"{label}, backward() only", backward(forward()), want_f, 1e-10)
        cases.append(Case("tiny", "chain, backward() only", label, backward, baseline="tapegrad record()", setup=forward,
                          note="constants Python floats; the forward is run untimed before each sample"))
    for variables in (False, True):
        cases += replay_cases(n, variables, want_v if variables else want_f)
    for label, fn in chain_peers(peers, X_TINY, n).items():
        check(label, fn(), want_f, 1e-10)
        cases.append(Case("tiny", "chain", label, fn))
    return cases


def replay_cases(n: int, variables: bool, want: list[np.ndarray]) -> list[Case]:
    """The chain recorded once, saved and loaded: replayed (forward + backward, new inputs) from
    the loaded tape, and replayed once from a freshly loaded one (which compiles the plan first)."""
    wrt = ["x", "a", "c"] if variables else ["x"]
    with tg.record() as tape:
        x = tg.Variable(X_TINY, name="x")
        if variables:
            a, c = tg.Variable(np.full_like(X_TINY, A), name="a"), tg.Variable(np.full_like(X_TINY, C), name="c")
        y = chain(x, a if variables else A, c if variables else C, n, tg.sin, tg.exp)
        y.name = "y"
    blob = tg.dumps(tape)
    inputs = {"x": X_TINY, **({"a": np.full_like(X_TINY, A), "c": np.full_like(X_TINY, C)} if variables else {})}

    def replay(loaded: Any) -> Any:
        grads = tg.replay.backward(loaded, of="y", wrt=wrt, inputs=dict(inputs))
        return [grads[name] for name in wrt]
    loaded = tg.loads(blob)
    check("replay", replay(loaded), want, 1e-10)
    check("first replay", replay(tg.loads(blob)), want, 1e-10)
    kind = "constants Variables" if variables else "constants Python floats"
    later = f"tapegrad replay of the loaded tape, {kind}"
    return [Case("tiny", "chain", later, lambda: replay(loaded),
                 baseline="numpy, constants differentiated" if variables else "numpy"),
            Case("tiny", "chain", f"tapegrad first replay of a freshly loaded tape, {kind}", replay, baseline=later,
                 setup=lambda: tg.loads(blob), note="the load is run untimed before each sample")]


def large_cases(sizes: Sizes, peers: dict[str, Peer]) -> list[Case]:
    x0 = np.linspace(0.1, 0.4, sizes.large)
    n = 8
    want = numpy_chain(x0, A, C, n, False)
    cases = [Case("large", "chain", "numpy", lambda: numpy_chain(x0, A, C, n, False), note="hand-written")]
    for label, recording in (("tapegrad eager", False), ("tapegrad record()", True)):
        def run(recording: bool = recording) -> Any:
            return tapegrad_chain(x0, n, recording, False)
        check(label, run(), want, 1e-10)
        cases.append(Case("large", "chain", label, run))
    for label, fn in chain_peers(peers, x0, n).items():
        check(label, fn(), want, 1e-10)
        cases.append(Case("large", "chain", label, fn))
    return cases


# ---- the MLP step ------------------------------------------------------------------------------

def mlp_data(sizes: Sizes, dtype: Any, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d_in, d_out = 784, 10
    params = {"w1": (rng.standard_normal((d_in, sizes.hidden)) / np.sqrt(d_in)).astype(dtype),
              "b1": np.zeros(sizes.hidden, dtype),
              "w2": (rng.standard_normal((sizes.hidden, d_out)) / np.sqrt(sizes.hidden)).astype(dtype),
              "b2": np.zeros(d_out, dtype)}
    return params, rng.standard_normal((sizes.batch, d_in)).astype(dtype), rng.integers(0, d_out, sizes.batch)


NAMES = ("w1", "b1", "w2", "b2")


def numpy_mlp(p: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Hand-written forward and backward (weight gradients of the mean cross-entropy)."""
    rows = np.arange(len(labels))
    h = np.tanh(x @ p["w1"] + p["b1"])
    z = h @ p["w2"] + p["b2"]
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    gz = e / s
    gz[rows, labels] -= 1
    gz *= x.dtype.type(1.0 / len(labels))
    gh = (gz @ p["w2"].T) * (1 - h * h)
    return [x.T @ gh, gh.sum(axis=0), h.T @ gz, gz.sum(axis=0)]


def tapegrad_mlp_loss(p: dict[str, Any], x: Any, labels: Any) -> Any:
    rows = np.arange(len(labels.data if isinstance(labels, tg.Variable) else labels))
    h = tg.tanh(x @ p["w1"] + p["b1"])
    logp = tg.log_softmax(h @ p["w2"] + p["b2"], axis=-1)
    return -tg.mean(logp[rows, labels])


def tapegrad_mlp_eager(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> list[Any]:
    p = {k: tg.Variable(v) for k, v in params.items()}
    tapegrad_mlp_loss(p, x, labels).backward()
    return [p[k].grad for k in NAMES]


def tapegrad_mlp_recorded(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> list[Any]:
    with tg.record():
        p = {k: tg.Variable(v, name=k) for k, v in params.items()}
        loss = tapegrad_mlp_loss(p, tg.Variable(x, name="x"), tg.Variable(labels, name="labels"))
    loss.backward()
    return [p[k].grad for k in NAMES]


def mlp_peers(peers: dict[str, Peer], params: dict[str, np.ndarray], x: np.ndarray,
              labels: np.ndarray) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    rows = np.arange(len(labels))
    torch = peers.get("torch", Peer("")).module
    if torch is not None:
        tp = {k: torch.tensor(v) for k, v in params.items()}
        tx, tl = torch.tensor(x), torch.tensor(labels)

        def run_torch() -> Any:
            p = {k: v.detach().requires_grad_(True) for k, v in tp.items()}
            h = torch.tanh(tx @ p["w1"] + p["b1"])
            loss = torch.nn.functional.cross_entropy(h @ p["w2"] + p["b2"], tl)
            loss.backward()
            return [p[k].grad.numpy() for k in NAMES]
        out["PyTorch eager"] = run_torch
    if peers.get("autograd", Peer("")).module is not None:
        autograd, anp = peers["autograd"].module

        def loss_ag(p: dict[str, Any]) -> Any:
            h = anp.tanh(anp.dot(x, p["w1"]) + p["b1"])
            z = anp.dot(h, p["w2"]) + p["b2"]
            m = anp.max(z, axis=1, keepdims=True)
            logp = z - m - anp.log(anp.sum(anp.exp(z - m), axis=1, keepdims=True))
            return -anp.mean(logp[rows, labels])
        grad_ag = autograd.grad(loss_ag)

        def run_autograd() -> Any:
            g = grad_ag(params)
            return [g[k] for k in NAMES]
        out["HIPS autograd"] = run_autograd
    if peers.get("dezero", Peer("")).module is not None:
        dezero, dzf = peers["dezero"].module

        def run_dezero() -> Any:
            p = {k: dezero.Parameter(v.copy()) for k, v in params.items()}
            h = dzf.tanh(dzf.linear(x, p["w1"], p["b1"]))
            loss = dzf.softmax_cross_entropy(dzf.linear(h, p["w2"], p["b2"]), labels)
            loss.backward()
            return [p[k].grad.data for k in NAMES]
        out["DeZero"] = run_dezero
    if peers.get("jax", Peer("")).module is not None:
        jax, jnp = peers["jax"].module
        jp = {k: jnp.asarray(v) for k, v in params.items()}
        jx, jl = jnp.asarray(x), jnp.asarray(labels)

        def loss_jax(p: dict[str, Any], x: Any, labels: Any) -> Any:
            h = jnp.tanh(x @ p["w1"] + p["b1"])
            logp = jax.nn.log_softmax(h @ p["w2"] + p["b2"], axis=-1)
            return -jnp.mean(logp[jnp.arange(labels.shape[0]), labels])
        grad_eager, grad_jit = jax.grad(loss_jax), jax.jit(jax.grad(loss_jax))

        def run_jax(fn: Any = grad_eager) -> Any:
            g = fn(jp, jx, jl)
            return [np.asarray(jax.block_until_ready(g[k])) for k in NAMES]
        out["JAX eager"] = run_jax
        out["JAX jit"] = lambda: run_jax(grad_jit)
    return out


def mlp_cases(sizes: Sizes, peers: dict[str, Peer]) -> list[Case]:
    cases: list[Case] = []
    for dtype, rtol in ((np.float32, 1e-3), (np.float64, 1e-9)):
        name = f"MLP step {np.dtype(dtype).name}"
        params, x, labels = mlp_data(sizes, dtype)
        want = numpy_mlp(params, x, labels)
        cases.append(Case("mlp", name, "numpy", lambda p=params, x=x, y=labels: numpy_mlp(p, x, y), note="hand-written"))

        def eager(p: dict[str, np.ndarray] = params, x: np.ndarray = x, y: np.ndarray = labels) -> Any:
            return tapegrad_mlp_eager(p, x, y)
        check(f"{name} tapegrad eager", eager(), want, rtol)
        cases.append(Case("mlp", name, "tapegrad eager", eager))
        with tg.record(values="inputs") as tape:
            p = {k: tg.Variable(v, name=k) for k, v in params.items()}
            loss = tapegrad_mlp_loss(p, tg.Variable(x, name="x"), tg.Variable(labels, name="labels"))
            loss.name = "loss"
        loaded = tg.loads(tg.dumps(tape))
        inputs = {"x": x, "labels": labels, **params}

        def replay(t: tg.Tape = loaded, inputs: dict[str, np.ndarray] = inputs) -> Any:
            g = tg.replay.backward(t, of="loss", wrt=list(NAMES), inputs=inputs)
            return [g[k] for k in NAMES]
        check(f"{name} tapegrad replay", replay(), want, rtol)
        cases.append(Case("mlp", name, "tapegrad replay of the loaded tape", replay, note="new inputs each step"))
        for label, fn in mlp_peers(peers, params, x, labels).items():
            check(f"{name} {label}", fn(), want, rtol)
            cases.append(Case("mlp", name, label, fn))
    return cases


# ---- memory, lookups, serialization -------------------------------------------------------------

def traced_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes traced by tracemalloc while `fn` runs (its result dropped inside)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def memory_rows(sizes: Sizes) -> list[dict[str, Any]]:
    params, x, labels = mlp_data(sizes, np.float64)
    # the arrays the step starts from exist before and after: count what the step adds
    peaks = {"numpy": traced_peak(lambda: numpy_mlp(params, x, labels)),
             "tapegrad eager": traced_peak(lambda: tapegrad_mlp_eager(params, x, labels)),
             "tapegrad record() + backward": traced_peak(lambda: tapegrad_mlp_recorded(params, x, labels))}
    held = sum(v.nbytes for v in params.values()) + x.nbytes + labels.nbytes
    rows = []
    for impl, peak in peaks.items():
        rows.append({"impl": impl, "peak_bytes": peak + held,
                     "ratio_to_eager": (peak + held) / (peaks["tapegrad eager"] + held),
                     "ratio_to_numpy": (peak + held) / (peaks["numpy"] + held)})
    return rows


def lookup_cases(sizes: Sizes) -> list[Case]:
    cases = []
    for count in (sizes.lookup_vars // 10, sizes.lookup_vars):
        with tg.record() as tape:
            y = tg.Variable(np.ones(2), name="x")
            for k in range(count):
                y = tg.sin(y)
                y.name = f"h{k}"
        names = [f"h{k}" for k in range(0, count, max(1, count // 100))][:100]
        tape.value(names[0])

        def run(tape: tg.Tape = tape, names: list[str] = names) -> Any:
            for name in names:
                tape.value(name)
        cases.append(Case("lookup", f"tape.value(name) x{len(names)}, {count + 1:,}-variable tape", "tapegrad", run,
                          baseline=""))
    return cases


def serial_cases(sizes: Sizes, peers: dict[str, Peer]) -> list[Case]:
    stn = peers.get("safetensors", Peer("")).module
    cases: list[Case] = []
    big = np.linspace(0, 1, sizes.big_bytes // 8)
    with tg.record(values="inputs") as tape:
        tg.sum(tg.Variable(big, name="a"))
    blob = tg.dumps(tape)
    npy = io.BytesIO()
    np.save(npy, big)
    pick = pickle.dumps(big, protocol=5)
    label = f"one {big.nbytes / 1e6:,.0f} MB array"
    cases += [Case("serial", f"{label}: save", "numpy (np.save)", lambda: np.save(io.BytesIO(), big)),
              Case("serial", f"{label}: save", "tapegrad dumps", lambda: tg.dumps(tape)),
              Case("serial", f"{label}: save", "pickle protocol 5", lambda: pickle.dumps(big, protocol=5)),
              Case("serial", f"{label}: load", "numpy (np.load)", lambda: np.load(io.BytesIO(npy.getvalue()))),
              Case("serial", f"{label}: load", "tapegrad loads", lambda: tg.loads(blob).value("a")),
              Case("serial", f"{label}: load", "pickle protocol 5", lambda: pickle.loads(pick))]
    if stn is not None:
        st_blob = stn.save({"a": big})
        cases += [Case("serial", f"{label}: save", "safetensors", lambda: stn.save({"a": big})),
                  Case("serial", f"{label}: load", "safetensors", lambda: stn.load(st_blob)["a"])]
    # many small records: a recorded chain (op records and their (4,) values)
    n = sizes.small_records
    with tg.record() as small:
        y = tg.Variable(X_TINY, name="x")
        for k in range(n):
            y = tg.sin(y) if k % 2 else y * C
    parts = small.parts()
    values = {str(k): v for k, v in parts.values.items()}
    records = list(parts.records)
    small_blob = tg.dumps(small)
    small_pick = pickle.dumps((records, values), protocol=5)
    npz = io.BytesIO()
    np.savez(npz, **values)
    label = f"{n:,} small records"
    cases += [Case("serial", f"{label}: save", "numpy (np.savez of the values)", lambda: np.savez(io.BytesIO(), **values)),
              Case("serial", f"{label}: save", "tapegrad dumps", lambda: tg.dumps(small)),
              Case("serial", f"{label}: save", "pickle protocol 5", lambda: pickle.dumps((records, values), protocol=5)),
              Case("serial", f"{label}: load", "numpy (np.load of the values)",
                   lambda: dict(np.load(io.BytesIO(npz.getvalue())))),
              Case("serial", f"{label}: load", "tapegrad loads", lambda: tg.loads(small_blob)),
              Case("serial", f"{label}: load", "pickle protocol 5", lambda: pickle.loads(small_pick))]
    if stn is not None:
        small_st = stn.save(values)
        cases += [Case("serial", f"{label}: save", "safetensors (values only)", lambda: stn.save(values)),
                  Case("serial", f"{label}: load", "safetensors (values only)", lambda: stn.load(small_st))]
    for case in cases:
        if "save" in case.workload:
            case.baseline = "numpy (np.save)" if "MB" in case.workload else "numpy (np.savez of the values)"
        else:
            case.baseline = "numpy (np.load)" if "MB" in case.workload else "numpy (np.load of the values)"
    return cases


# ---- report -------------------------------------------------------------------------------------

def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
        return f"threadpoolctl not installed; environment: {env or 'no thread variables set (BLAS default)'}"
    pools = [f"{p.get('internal_api')} {p.get('num_threads')} threads ({p.get('prefix')})" for p in threadpool_info()]
    return ", ".join(pools) or "none found"


def ratio(case: Case, by_impl: dict[str, Case], impl: str) -> str:
    ref = by_impl.get(impl)
    if ref is None or not ref.samples or not case.samples:
        return ""
    return f"{case.median / ref.median:.2f}"


def fmt_time(t: float, per: int = 1) -> str:
    t /= per
    return f"{t * 1e6:.2f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"


def tables(cases: list[Case], per_op: dict[str, int]) -> list[str]:
    lines: list[str] = []
    workloads: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        workloads.setdefault((case.section, case.workload), []).append(case)
    for (section, workload), group in workloads.items():
        by_impl = {c.impl: c for c in group}
        per = per_op.get(section, 1)
        unit = " per op" if per > 1 else ""
        lines += [f"### {section}: {workload}", "",
                  f"| implementation | median{unit} | min-max{unit} | ratio to numpy | ratio to PyTorch | note |",
                  "|---|---|---|---|---|---|"]
        for c in group:
            lo, hi = min(c.samples), max(c.samples)
            lines.append(f"| {c.impl} | {fmt_time(c.median, per)} | {fmt_time(lo, per)} - {fmt_time(hi, per)} | "
                         f"{ratio(c, by_impl, c.baseline) if c.baseline else ''} | {ratio(c, by_impl, 'PyTorch eager')} | "
                         f"{c.note}{' (vs ' + c.baseline + ')' if c.baseline not in ('numpy', '') and c.baseline != c.impl else ''} |")
        lines.append("")
    return lines


TARGETS = [  # (section, workload prefix, impl, limit): ratio of the median to the baseline's
    ("tiny", "chain", "tapegrad eager, constants Python floats", 2.0),
    ("tiny", "chain", "tapegrad record(), constants Python floats", 2.0),
    ("tiny", "chain", "tapegrad eager, constants Variables", 2.0),
    ("tiny", "chain", "tapegrad record(), constants Variables", 2.0),
    ("tiny", "chain, backward() only", "tapegrad eager", 1.0),
    ("tiny", "chain", "tapegrad first replay of a freshly loaded tape, constants Variables", 5.0),
    ("tiny", "chain", "tapegrad first replay of a freshly loaded tape, constants Python floats", 5.0),
    ("mlp", "MLP step float32", "tapegrad eager", 1.2),
    ("mlp", "MLP step float64", "tapegrad eager", 1.2),
    ("mlp", "MLP step float32", "tapegrad replay of the loaded tape", 1.1),
    ("mlp", "MLP step float64", "tapegrad replay of the loaded tape", 1.1),
    ("large", "chain", "tapegrad eager", 1.15),
]


def targets(cases: list[Case], memory: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(what, measured ratio, limit) for each target of issue 12 that this run measured."""
    found = {(c.section, c.workload, c.impl): c for c in cases}
    out = []
    for section, workload, impl, limit in TARGETS:
        case = found.get((section, workload, impl))
        base = found.get((section, workload, case.baseline)) if case else None
        if case and base and case.samples and base.samples:
            out.append((f"{section}: {workload}, {impl} / {base.impl}", case.median / base.median, limit))
    rows = {r["impl"]: r for r in memory}
    if "tapegrad record() + backward" in rows:
        out.append(("memory: MLP step float64, record() + backward / eager", rows["tapegrad record() + backward"]["ratio_to_eager"], 1.25))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: numpy and tapegrad only, small sizes, seconds")
    parser.add_argument("--repeat", type=int, help="timed rounds per section (default 11; --quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every library's pool: numpy's BLAS, PyTorch, XLA (default 1: on a small shared "
                             "machine, the spinning pools of several libraries in one process slow each other down "
                             "by 10x and more; 0 keeps each library's default)")
    parser.add_argument("--no-hugepage-advice", action="store_true",
                        help="turn off numpy's advice to the kernel to back arrays of 4 MB and more with huge pages, "
                             "for every implementation: where the kernel's THP defrag setting is 'madvise', that advice "
                             "makes fresh allocations stall at random while memory is compacted, and the large chain's "
                             "medians then measure those stalls more than the arithmetic")
    parser.add_argument("--only", default="tiny,mlp,memory,large,lookup,serial", help="sections to run, comma-separated")
    parser.add_argument("--peers", default="torch,autograd,dezero,jax,safetensors",
                        help="peers to try (ignored with --quick)")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="where the tables go")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json", help="where the raw samples go")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.no_hugepage_advice:
        np._core.multiarray._set_madvise_hugepage(False)
    if args.repeat:
        sizes.repeat = args.repeat
    wanted = [] if args.quick else [p for p in args.peers.split(",") if p]
    peers = load_peers(wanted)
    sections = args.only.split(",")
    started = time.time()
    cases: list[Case] = []
    memory: list[dict[str, Any]] = []
    builders: dict[str, Callable[[], list[Case]]] = {
        "tiny": lambda: tiny_cases(sizes, peers), "mlp": lambda: mlp_cases(sizes, peers),
        "large": lambda: large_cases(sizes, peers), "lookup": lambda: lookup_cases(sizes),
        "serial": lambda: serial_cases(sizes, peers)}
    for section in sections:
        if section == "memory":
            memory = memory_rows(sizes)
            print(f"memory: {len(memory)} rows", file=sys.stderr)
            continue
        built = builders[section]()
        repeat = min(sizes.repeat, sizes.serial_repeat) if section == "serial" else sizes.repeat
        measure(built, repeat, 1 if section in ("serial", "large") else sizes.warmup)
        cases += built
        print(f"{section}: {len(built)} cases, {time.time() - started:.0f} s", file=sys.stderr)
    versions = {"python": platform.python_version(), "numpy": np.__version__, "tapegrad": metadata.version("tapegrad")}
    versions.update({p.name: p.version or f"missing ({p.missing})" for p in peers.values()})
    machine = {"cores": os.cpu_count(), "blas": blas_info(), "threads": args.threads, "platform": platform.platform(),
               "quick": args.quick, "repeat": sizes.repeat, "warmup": sizes.warmup, "huge pages": huge_pages(args)}
    per_op = {"tiny": sizes.chain}
    write_json(args.json, cases, memory, versions, machine, sizes)
    write_markdown(args.markdown, cases, memory, versions, machine, sizes, per_op, peers)
    print(f"wrote {args.markdown} and {args.json} in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


def write_json(path: Path, cases: list[Case], memory: list[dict[str, Any]], versions: dict[str, str],
               machine: dict[str, Any], sizes: Sizes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"versions": versions, "machine": machine, "sizes": sizes.__dict__, "memory": memory,
            "cases": [{"section": c.section, "workload": c.workload, "impl": c.impl, "baseline": c.baseline,
                       "median_s": c.median, "samples_s": c.samples} for c in cases]}
    path.write_text(json.dumps(data, indent=1) + "\n")


def huge_pages(args: argparse.Namespace) -> str:
    """The kernel's transparent huge page settings and whether numpy advises them (see --no-hugepage-advice)."""
    found = []
    for name in ("enabled", "defrag"):
        try:
            text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text().strip()
        except OSError:
            continue
        found.append(f"THP {name}: {text}")
    found.append("numpy's advice " + ("off (--no-hugepage-advice)" if args.no_hugepage_advice else "on (numpy's default)"))
    return "; ".join(found)


def write_markdown(path: Path, cases: list[Case], memory: list[dict[str, Any]], versions: dict[str, str],
                   machine: dict[str, Any], sizes: Sizes, per_op: dict[str, int], peers: dict[str, Peer]) -> None:
    lines = ["# Benchmarks", "",
             "Written by `python benchmarks/run.py`" + (" --quick (smoke sizes: not for comparison)" if machine["quick"] else "")
             + f"; raw samples in `{Path(path).with_name('benchmarks.json').name}`.  Medians and min-max over "
             f"{sizes.repeat} round-robin repeats after {sizes.warmup} warm-up rounds (serialization: "
             f"{min(sizes.repeat, sizes.serial_repeat)} after 1), each sample after an untimed garbage collection, "
             "with what existed before measuring frozen out of it (the collector is on while samples run).  "
             "Ratios are medians over the numpy baseline of the "
             "same workload (computing the same gradients) and over PyTorch eager.", "",
             "## Machine and versions", "",
             f"- cores: {machine['cores']}; BLAS: {machine['blas']}; --threads {machine['threads']}"
             + (" (every library's pool: numpy's BLAS, PyTorch, XLA)" if machine["threads"] else " (libraries' defaults)"),
             f"- platform: {machine['platform']}",
             f"- huge pages: {machine['huge pages']}", ""]
    lines += [f"- {name}: {version}" for name, version in versions.items()]
    missing = [p.name for p in peers.values() if p.missing]
    if missing:
        lines += ["", f"Missing peers (not measured): {', '.join(missing)}."]
    lines += ["", "## Targets (issue 12)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {got:.2f} | {'yes' if got <= limit else 'NO'} |" for what, got, limit in targets(cases, memory)]
    lines += ["", "## Timings", "",
              "JAX jit runs on the MLP step only: jit-compiling the 10,000 unrolled ops of the tiny chain takes minutes.", ""]
    lines += tables(cases, per_op)
    if memory:
        lines += ["## Memory: one MLP training step, float64 (tracemalloc peak, inputs and parameters included)", "",
                  "| implementation | peak | ratio to tapegrad eager | ratio to numpy |", "|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['peak_bytes'] / 1e6:.1f} MB | {r['ratio_to_eager']:.2f} | {r['ratio_to_numpy']:.2f} |"
                  for r in memory]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
