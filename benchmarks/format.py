"""Tape file format speed, as ratios against baselines measured in the same run.

Targets (issue "Tape file format"):
- one 100 MB float32 array: `save` within 1.3x of `np.save` (+ fsync, as `save` fsyncs);
  `load_path` + `.sum()` within 1.5x of `np.load` + `.sum()` with checksums verified, and no
  slower than `np.load` + `.sum()` with `verify=False`; `load_path(mmap=True)` under 1% of `np.load`
  (a mapped load checks the structure only: it never reads the payload pages, so `verify` makes
  no difference there).  For reference, the cost of opening and mapping the file and touching
  its first and last page, with no parsing, is printed too.
- 100,000 small records without values: `dumps` + `loads` <= 3 us and <= 48 bytes per record.
- `replay.backward` of a loaded tape <= 1.25x that of the in-memory tape.
- streaming a recording to a file <= 1.25x recording in memory (chain of 10,000 tiny ops, shape
  (4,), add/mul/sin/exp).

Every sample writes a fresh file; samples of a measurement and its baseline alternate, and the
median is reported.  Run: python benchmarks/format.py [--repeat 7] [--mb 100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

import tapegrad as tg
from tapegrad import tape_format as tf
from tapegrad.tape import Tape
from tapegrad.tape_format.frames import MAGIC

X0 = np.linspace(0.1, 0.4, 4)
C = np.full(4, 0.9)


def median_pair(ours: Callable[[int], object], base: Callable[[int], object], repeat: int,
                setup: Callable[[int], object] | None = None) -> tuple[float, float]:
    """Median seconds of `ours(k)` and `base(k)`, alternating, `setup(k)` untimed before each."""
    a: list[float] = []
    b: list[float] = []
    for k in range(repeat):
        for fn, times in ((ours, a), (base, b)) if k % 2 else ((base, b), (ours, a)):
            if setup is not None:
                setup(k)
            t0 = time.perf_counter()
            result = fn(k)
            times.append(time.perf_counter() - t0)
            del result  # freeing (unmapping) a result is not part of producing it
    return statistics.median(a), statistics.median(b)


def report(label: str, ours: float, base: float, target: str, ok: bool, unit: str = "ms") -> None:
    scale = 1e3 if unit == "ms" else 1e6
    print(f"  {label:46s} {ours * scale:9.2f} {unit} vs {base * scale:9.2f} {unit}  ratio {ours / base:6.3f}  "
          f"(target {target}) {'ok' if ok else 'MISSED'}")


def big_array(folder: str, mb: int, repeat: int) -> None:
    a = np.random.default_rng(0).standard_normal(mb * 250_000).astype(np.float32)
    tape = Tape("all")
    tape._add_leaf(0, a, "a", False)
    print(f"one {a.nbytes / 1e6:.0f} MB float32 array, median of {repeat}")
    path = os.path.join(folder, "big")

    def np_save(k: int) -> None:
        with open(f"{path}{k}.npy", "wb") as f:
            np.save(f, a)
            f.flush()
            os.fsync(f.fileno())

    def clean(k: int) -> None:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))

    ours, base = median_pair(lambda k: tf.save(tape, f"{path}{k}.tape"), np_save, repeat, clean)
    report("save (fsync) vs np.save + fsync", ours, base, "<= 1.3", ours <= 1.3 * base)

    def fresh(k: int) -> None:  # files written anew for each sample (then read from the page cache)
        clean(k)
        tf.save(tape, f"{path}{k}.tape", fsync=False)
        np.save(f"{path}{k}.npy", a)

    expected = float(a.sum())
    for verify, factor, target in ((True, 1.5, "<= 1.5"), (False, 1.0, "<= 1.0")):
        def load_sum(k: int, verify: bool = verify) -> None:
            assert float(tf.load_path(f"{path}{k}.tape", verify=verify).value("a").sum()) == expected

        ours, base = median_pair(load_sum, lambda k: np.load(f"{path}{k}.npy").sum(), repeat, fresh)
        report(f"load_path(verify={verify}) + sum vs np.load + sum", ours, base, target, ours <= factor * base)
    ours, base = median_pair(lambda k: tf.load_path(f"{path}{k}.tape", mmap=True, verify=False),
                             lambda k: np.load(f"{path}{k}.npy"), repeat, fresh)
    report("load_path(mmap=True, verify=False) vs np.load", ours, base, "<= 0.01", ours <= 0.01 * base)
    ours, base = median_pair(lambda k: tf.load_path(f"{path}{k}.tape", mmap=True),
                             lambda k: np.load(f"{path}{k}.npy"), repeat, fresh)
    report("load_path(mmap=True, verify=True) vs np.load", ours, base, "(payload CRCs unread)", True)

    def bare_map(k: int) -> mmap.mmap:  # what any mapped open must do, with no parsing at all
        with open(f"{path}{k}.tape", "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        head, tail = mapped[:64], mapped[-64:]  # the first and the last page: header and footer
        assert head.startswith(MAGIC) and len(tail) == 64
        return mapped

    ours, base = median_pair(bare_map, lambda k: np.load(f"{path}{k}.npy"), repeat, fresh)
    report("open + mmap + first and last page vs np.load", ours, base, "(floor of a mapped open)", True)
    clean(0)


def chain(n: int, values: str = "all", path: str | None = None) -> Tape:
    with tg.record(values=values, path=path) as tape:
        x = tg.Variable(X0, name="x")
        c = tg.Variable(C, name="c")
        y = x
        for i in range(n):
            k = i % 4
            y = y + c if k == 0 else y * c if k == 1 else tg.sin(y) if k == 2 else tg.exp(y)
        y.name = "y"
    return tape


def small_records(n: int, repeat: int) -> None:
    tape = chain(n, values="none")
    data = tf.dumps(tape)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        tf.loads(tf.dumps(tape))
        times.append(time.perf_counter() - t0)
    per = statistics.median(times) / n
    print(f"{n:,} small records without values, median of {repeat}")
    print(f"  dumps + loads per record {per * 1e6:6.2f} us (target <= 3)  {'ok' if per <= 3e-6 else 'MISSED'}")
    size = len(data) / n
    print(f"  bytes per record         {size:6.1f}    (target <= 48) {'ok' if size <= 48 else 'MISSED'}")


def replay(n: int, folder: str, repeat: int) -> None:
    tape = chain(n)
    path = os.path.join(folder, "replay.tape")
    tf.save(tape, path, fsync=False)
    loaded = tf.load_path(path)
    want = tg.replay.backward(tape, of="y", wrt=["x", "c"])
    got = tg.replay.backward(loaded, of="y", wrt=["x", "c"])
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)
    ours, base = median_pair(lambda k: tg.replay.backward(loaded, of="y", wrt=["x", "c"]),
                             lambda k: tg.replay.backward(tape, of="y", wrt=["x", "c"]), repeat)
    print(f"replay.backward of a {n:,}-op chain, median of {repeat}")
    report("loaded tape vs in-memory tape", ours, base, "<= 1.25", ours <= 1.25 * base)


def streaming(n: int, folder: str, repeat: int) -> None:
    ours, base = median_pair(lambda k: chain(n, path=os.path.join(folder, f"stream{k}.tape")), lambda k: chain(n),
                             repeat)
    print(f"recording a chain of {n:,} tiny ops (shape (4,), add/mul/sin/exp), median of {repeat}")
    report("record(path=...) vs record()", ours, base, "<= 1.25", ours <= 1.25 * base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--mb", type=int, default=100, help="size of the big array in MB")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--chain", type=int, default=10_000)
    parser.add_argument("--dir", default=None, help="where to write files (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        big_array(folder, args.mb, args.repeat)
        small_records(args.records, args.repeat)
        replay(args.chain, folder, args.repeat * 3)
        streaming(args.chain, folder, args.repeat * 3)


if __name__ == "__main__":
    main()
