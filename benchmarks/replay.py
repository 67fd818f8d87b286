"""Replay engine benchmarks: replayed steps against hand-written numpy, measured in the same run.

(a) MLP step.  One training step of a 784-512-10 tanh classifier (batch 256, float32, softmax
    cross-entropy via log_softmax) is recorded once, saved and loaded; then each repeat replays
    forward + backward from the loaded tape with a new batch, new labels and new weights
    (`tg.replay.backward`, gradients only for the weights).  Baseline: the same step written by
    hand in numpy (loss and gradients).  Target: replay / numpy <= 1.10.
(b) Tiny-op chain.  The chain of benchmarks/overhead.py (10,000 records on shape (4,), cycling
    add/mul/sin/exp with a parameter c) is recorded once, saved and loaded, then replayed forward
    + backward with new x and c.  Baseline: `numpy_chain_fair` from benchmarks/overhead.py, the
    hand-written forward + backward loop.  Target: replay / numpy <= 1.0.
(d) Plan compilation.  The chain of (b), loaded afresh from bytes for each repeat: the first
    backward replay (which compiles the plan) against a later one, and the compile time per record
    ((first - later) / records).  Targets: first / later <= 5, compile <= 5 us per record.  Then the
    same request at new input shapes (x and c of shape (7,) instead of (4,)): the plan build at the
    new shape against the build at the recorded shape (target < 2x), and a replay at an
    already-seen new shape against one at the recorded shape (target about 1.0).
(c) Liveness.  Peak traced memory (tracemalloc) of a backward replay of one step of a 20-layer
    tanh MLP (width 256, batch 128, float64), against the plan's prediction `Plan.peak_bytes` and
    against eager tracing of the same step (record + loss.backward()).

Times are medians of --repeat runs (each run of (a) is one step; each run of (b) is the whole
chain).  BLAS threads: `--single-thread` sets OPENBLAS_NUM_THREADS=1 (and the OMP/MKL
equivalents) before numpy is imported; without it numpy uses its default thread count.

Run: python benchmarks/replay.py [--single-thread] [--repeat 15] [--only a,b,c,d]
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__" and "--single-thread" in sys.argv[1:]:  # must precede the numpy import
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import tapegrad as tg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import X0, C, chain, numpy_chain_fair


def _file_functions() -> tuple[Callable[[tg.Tape], bytes], Callable[[bytes], tg.Tape], str]:
    """tg.dumps/tg.loads when exported, else tapegrad.tape_format's, else none (in-memory)."""
    if hasattr(tg, "dumps") and hasattr(tg, "loads"):
        return tg.dumps, tg.loads, "tg.dumps/tg.loads"
    try:
        from tapegrad import tape_format
    except ImportError:
        return (lambda t: b""), (lambda b: None), "in memory (no tape file format available)"  # type: ignore[return-value]
    return tape_format.dumps, tape_format.loads, "tapegrad.tape_format.dumps/loads"


DUMPS, LOADS, FILE_VIA = _file_functions()


def from_file(tape: tg.Tape) -> tg.Tape:
    """The tape as a replaying process sees it: through bytes when the format is available."""
    data = DUMPS(tape)
    loaded = LOADS(data) if data else None
    return tape if loaded is None else loaded


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median time of each function, run alternately so that machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


# ---- (a) MLP step -------------------------------------------------------------------------------

BATCH, D_IN, D_HID, D_OUT = 256, 784, 512, 10
F32 = np.float32


def mlp_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w1": (rng.standard_normal((D_IN, D_HID)) / np.sqrt(D_IN)).astype(F32),
        "b1": np.zeros(D_HID, F32),
        "w2": (rng.standard_normal((D_HID, D_OUT)) / np.sqrt(D_HID)).astype(F32),
        "b2": np.zeros(D_OUT, F32),
    }


def mlp_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal((BATCH, D_IN)).astype(F32), rng.integers(0, D_OUT, BATCH)


ROWS = np.arange(BATCH)


def record_mlp(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> tg.Tape:
    with tg.record(values="inputs") as tape:
        p = {k: tg.Variable(v, name=k) for k, v in params.items()}
        xv = tg.Variable(x, name="x")
        yv = tg.Variable(labels, name="labels")
        h = tg.tanh(xv @ p["w1"] + p["b1"])
        logp = tg.log_softmax(h @ p["w2"] + p["b2"], axis=-1)
        loss = -tg.mean(logp[ROWS, yv])
        loss.name = "loss"
    return tape


def numpy_mlp_step(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
    """Hand-written forward and backward of the same step (loss and weight gradients)."""
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    h = np.tanh(x @ w1 + b1)
    z = h @ w2 + b2
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    logp = shifted - np.log(s)
    loss = -logp[ROWS, labels].mean()
    gz = e / s
    gz[ROWS, labels] -= 1
    gz *= F32(1.0 / BATCH)
    gh = (gz @ w2.T) * (1 - h * h)
    return loss, {"w1": x.T @ gh, "b1": gh.sum(axis=0), "w2": h.T @ gz, "b2": gz.sum(axis=0)}


def bench_mlp(repeat: int) -> None:
    rng = np.random.default_rng(0)
    params = mlp_params(rng)
    tape = from_file(record_mlp(params, *mlp_batch(rng)))
    wrt = list(params)
    steps = [({k: v + F32(0.01) * rng.standard_normal(v.shape).astype(F32) for k, v in params.items()}, *mlp_batch(rng))
             for _ in range(4)]

    def replay_step(k: int) -> dict[str, np.ndarray]:
        p, x, labels = steps[k % len(steps)]
        out: dict[str, np.ndarray] = tg.replay.backward(tape, of="loss", wrt=wrt, inputs={**p, "x": x, "labels": labels})
        return out

    for k in range(len(steps)):  # correctness first, and warm the plan cache
        got = replay_step(k)
        _, want = numpy_mlp_step(*steps[k])
        for name in wrt:
            assert got[name].dtype == F32
            np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=2e-5, err_msg=name)
    counter = iter(range(10**9))
    times = interleaved({"numpy": lambda: numpy_mlp_step(*steps[next(counter) % len(steps)]),
                         "replay": lambda: replay_step(next(counter))}, repeat)
    ratio = times["replay"] / times["numpy"]
    print(f"(a) MLP step {D_IN}-{D_HID}-{D_OUT} tanh, batch {BATCH}, float32, replayed from {FILE_VIA}")
    print(f"    numpy fwd+bwd {times['numpy'] * 1e3:8.2f} ms   replay fwd+bwd {times['replay'] * 1e3:8.2f} ms   "
          f"ratio {ratio:5.2f}x (target <= 1.10)")


# ---- (b) tiny-op chain --------------------------------------------------------------------------

CHAIN = 10_000


def record_chain(n: int) -> tg.Tape:
    with tg.record(values="inputs") as tape:
        c = tg.Variable(C, name="c")
        y = chain(tg.Variable(X0, name="x"), c, c, n)
        y.name = "y"
    return tape


def bench_chain(repeat: int) -> None:
    tape = from_file(record_chain(CHAIN))
    assert len(tape) == CHAIN
    gx, gc_ = numpy_chain_fair(CHAIN)

    def replay_chain() -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = tg.replay.backward(tape, of="y", wrt=["x", "c"], inputs={"x": X0.copy(), "c": C.copy()})
        return out

    got = replay_chain()  # new input arrays (same values, so the results can be checked)
    np.testing.assert_allclose(got["x"], gx, rtol=1e-12)
    np.testing.assert_allclose(got["c"], gc_, rtol=1e-12)
    times = interleaved({"numpy": lambda: numpy_chain_fair(CHAIN), "replay": replay_chain}, repeat)
    ratio = times["replay"] / times["numpy"]
    print(f"(b) chain of {CHAIN} tiny records (shape (4,), add/mul/sin/exp), replayed from {FILE_VIA}")
    print(f"    numpy fwd+bwd {times['numpy'] * 1e3:8.2f} ms   replay fwd+bwd {times['replay'] * 1e3:8.2f} ms   "
          f"ratio {ratio:5.2f}x (target <= 1.00)")


# ---- (d) plan compilation ----------------------------------------------------------------------

def bench_compile(repeat: int) -> None:
    data = DUMPS(record_chain(CHAIN))
    fresh: Callable[[], tg.Tape] = (lambda: LOADS(data)) if data else (lambda: record_chain(CHAIN))
    wrt = ["x", "c"]
    seen = {"x": X0.copy(), "c": C.copy()}
    wider = {"x": np.linspace(0.1, 0.4, 7), "c": np.full(7, 0.9)}
    firsts, laters, builds, wide_builds = [], [], [], []
    for _ in range(repeat):
        tape = fresh()
        t0 = time.perf_counter()
        tg.replay.backward(tape, of="y", wrt=wrt, inputs=dict(seen))
        t1 = time.perf_counter()
        tg.replay.backward(tape, of="y", wrt=wrt, inputs=dict(seen))
        t2 = time.perf_counter()
        firsts.append(t1 - t0)
        laters.append(t2 - t1)
        tape = fresh()  # plan builds alone, recorded shape and new shape alternately, on fresh tapes
        t0 = time.perf_counter()
        tg.replay.plan(tape, of="y", wrt=wrt, inputs=seen)
        t1 = time.perf_counter()
        tg.replay.plan(tape, of="y", wrt=wrt, inputs=wider)
        t2 = time.perf_counter()
        builds.append(t1 - t0)
        wide_builds.append(t2 - t1)
    first, later = statistics.median(firsts), statistics.median(laters)
    build, wide_build = statistics.median(builds), statistics.median(wide_builds)
    tape = fresh()
    times = interleaved({"recorded": lambda: tg.replay.backward(tape, of="y", wrt=wrt, inputs=dict(seen)),
                         "new": lambda: tg.replay.backward(tape, of="y", wrt=wrt, inputs=dict(wider))}, repeat)
    print(f"(d) plan compilation: chain of {CHAIN} records, loaded from {FILE_VIA}")
    print(f"    first replay {first * 1e3:8.2f} ms   later replay {later * 1e3:8.2f} ms   "
          f"first/later {first / later:5.2f}x (target <= 5)   compile {(first - later) / CHAIN * 1e6:5.2f} us/record "
          "(target <= 5)")
    print(f"    plan build at the recorded shape {build * 1e3:8.2f} ms   at a new shape {wide_build * 1e3:8.2f} ms   "
          f"ratio {wide_build / build:5.2f}x (target < 2)")
    print(f"    replay at a seen new shape / at the recorded shape {times['new'] / times['recorded']:5.2f}x "
          "(target about 1.0)")


# ---- (c) liveness -------------------------------------------------------------------------------

LAYERS, WIDTH, ROWS_DEEP = 20, 256, 128


def deep_step(weights: list[Any], x: Any) -> Any:
    h = x
    for w in weights:
        h = tg.tanh(h @ w)
    loss = tg.sum(h * h)
    loss.name = "loss"
    return loss


def traced_peak(fn: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak


def bench_liveness(repeat: int) -> None:
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH) for _ in range(LAYERS)]
    x0, x1 = rng.standard_normal((ROWS_DEEP, WIDTH)), rng.standard_normal((ROWS_DEEP, WIDTH))
    wrt = [f"w{k}" for k in range(LAYERS)]
    with tg.record(values="inputs") as recorded:
        deep_step([tg.Variable(w, name=f"w{k}") for k, w in enumerate(weights)], tg.Variable(x0, name="x"))
    tape = from_file(recorded)
    del recorded

    def eager() -> Any:
        with tg.record():
            ws = [tg.Variable(w) for w in weights]
            loss = deep_step(ws, tg.Variable(x1))
        loss.backward()
        return [w.grad for w in ws]

    def replay() -> Any:
        return tg.replay.backward(tape, of="loss", wrt=wrt, inputs={"x": x1})

    replay()  # compile and cache the plan outside the measurement
    plan = tg.replay.plan(tape, of="loss", wrt=wrt, inputs=["x"])
    replayed = statistics.median(traced_peak(replay) for _ in range(max(3, repeat // 3)))
    eager_peak = statistics.median(traced_peak(eager) for _ in range(max(3, repeat // 3)))
    mib = 1 << 20
    print(f"(c) liveness: backward replay of a {LAYERS}-layer tanh MLP step (width {WIDTH}, batch {ROWS_DEEP}, float64)")
    print(f"    replay peak {replayed / mib:7.2f} MiB   plan.peak_bytes {plan.peak_bytes / mib:7.2f} MiB   "
          f"measured/predicted {replayed / plan.peak_bytes:5.3f}")
    print(f"    eager record + backward peak {eager_peak / mib:7.2f} MiB   replay/eager {replayed / eager_peak:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-thread", action="store_true",
                        help="set OPENBLAS_NUM_THREADS=1 (and OMP/MKL) before importing numpy")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"tapegrad replay benchmarks: median of {args.repeat}, OPENBLAS_NUM_THREADS={threads}, cpus={os.cpu_count()}")
    if "a" in parts:
        bench_mlp(args.repeat)
    if "b" in parts:
        bench_chain(args.repeat)
    if "c" in parts:
        bench_liveness(args.repeat)
    if "d" in parts:
        bench_compile(args.repeat)


if __name__ == "__main__":
    main()
