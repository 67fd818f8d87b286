"""Inspector benchmark: `tapegrad show`, `stats` and `nan` on a long tape of tiny values.

A tape of --records records (default 1,000,000: a chain cycling mul/tanh/add on shape-(2,)
float64 values, every value stored, every record with its source line) is recorded and saved.
Then each measured command runs in a child process of its own, through `tapegrad.cli.main()`,
with stdout going to /dev/null:
- `load`: `tg.load(path)` alone, the part of every command that is the loader's;
- `show FILE`: the whole listing;
- `stats FILE`: counts, histogram, bytes, FLOPs (replay plans are skipped above 50,000 records);
- `nan FILE`: the forward scan of the stored values and a checked reverse pass.
For each: wall time (the median of --repeat runs), and the child's peak resident memory
(VmHWM, else `ru_maxrss`) above what it held after importing tapegrad and numpy, against the
file size.  Then `load` once more under tracemalloc: the peak of the Python and numpy
allocations alone (what tests/test_format_stored.py bounds), against the same file size.
Targets: show and stats under 10 s, nan under 20 s; memory under 3x the file size (the loader's
own share shows in `load`).

Run: python benchmarks/inspect_cli.py [--records N] [--repeat 1] [--values all|inputs]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc


def build(path: str, records: int, values: str) -> None:
    import numpy as np

    import tapegrad as tg

    with tg.record(values=values) as tape:
        x = tg.Variable(np.ones(2), name="x")
        c = tg.Variable(np.full(2, 0.5), name="c")
        for k in range(records):
            x = x * c if k % 3 == 0 else tg.tanh(x) if k % 3 == 1 else x + c
        x.name = "out"
    tape.save(path)


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM where /proc has it (ru_maxrss on Linux
    counts from before exec, so a child would inherit its parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(command: str, path: str) -> None:
    """Run one command and print its time and memory as JSON (the parent reads it)."""
    import numpy  # noqa: F401  (imported before the baseline, as main() would)

    import tapegrad as tg
    from tapegrad.cli import main

    base = peak_rss()
    traced = 0
    out = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (kept open until the process ends)
    start = time.perf_counter()
    if command == "build":
        records, values = path.split(",", 1)[0], path.split(",")[1]
        build(path.split(",", 2)[2], int(records), values)
        code = 0
    elif command == "load":
        tg.load(path)
        code = 0
    elif command == "traced":
        tracemalloc.start()
        tg.load(path)
        traced = tracemalloc.get_traced_memory()[1]
        code = 0
    else:
        code = main([command, path])
    sys.stdout.flush()
    seconds = time.perf_counter() - start
    memory = traced if command == "traced" else peak_rss() - base  # (traced: the allocations alone)
    out.write(json.dumps({"seconds": seconds, "rss_bytes": memory, "code": code}) + "\n")


def measure(command: str, path: str, repeat: int) -> tuple[float, int]:
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, __file__, "--child", command, path], capture_output=True, text=True,
                              check=True)
        result = json.loads(done.stdout.splitlines()[-1])
        if result["code"] != 0:
            raise SystemExit(f"{command} exited with {result['code']}: {done.stderr}")
        runs.append(result)
    return statistics.median(r["seconds"] for r in runs), max(r["rss_bytes"] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--values", default="all", choices=["all", "inputs"])
    parser.add_argument("--child", nargs=2, metavar=("COMMAND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "long.tape")
        start = time.perf_counter()  # recorded in a child, so that this process stays small
        subprocess.run([sys.executable, __file__, "--child", "build", f"{args.records},{args.values},{path}"], check=True,
                       stdout=subprocess.DEVNULL)
        size = os.path.getsize(path)
        print(f"tape: {args.records:,} records, values={args.values}, {size / 1e6:.1f} MB "
              f"(recorded and saved in {time.perf_counter() - start:.1f} s)")
        for command in ("load", "show", "stats", "nan"):
            seconds, rss = measure(command, path, args.repeat)
            print(f"{command:5s}  {seconds:6.2f} s   peak memory +{rss / 1e6:7.1f} MB = {rss / size:4.1f}x the file")
        seconds, traced = measure("traced", path, 1)
        print(f"load under tracemalloc: {seconds:6.2f} s, traced peak {traced / 1e6:7.1f} MB = {traced / size:4.2f}x the file")


if __name__ == "__main__":
    main()
