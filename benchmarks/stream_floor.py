"""The least a streaming flush can cost in pure Python: why record(path=...) misses 1.25x.

Issue "Tape file format" asks that streaming a recording cost at most 1.25x recording in memory
on the tiny-op chain of benchmarks/format.py (10,000 ops on shape (4,) float64, flushed every
256 records).  This script records that chain in memory, then encodes its records the way the
least demanding writer could: batches of 256 taken from the tape, transposed in C, ids packed
in one `struct` call, values joined into 64-byte slots, source lines looked up, one msgpack map
per batch, one CRC, one write to memory.  It checks nothing (no types, no attribute tables, no
dense-id mapping, no limits), knows the chain has one value type and one source line, and
writes no file.  The printed ratio, (recording + that encoding) / recording, is a floor for any
streaming writer built on the tracer's records with numpy and msgpack.

Run: python benchmarks/stream_floor.py [--chain 10000] [--repeat 21]
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import time
import zlib
from itertools import chain as chained
from itertools import zip_longest
from operator import itemgetter
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

from format import chain
from tapegrad.tape import Tape


def bare_flush(tape: Tape, start: int, stop: int, out: io.BytesIO, packer: Any, codes: dict[str, int],
               line_of: dict[int, int]) -> None:
    """Encode records start..stop-1 of a chain tape as one RECS-like frame, checking nothing."""
    records = tape._records[start:stop]
    n = len(records)
    lens = bytes(map(len, records))
    cols = list(zip_longest(*records, fillvalue=-1))
    ids = np.frombuffer(struct.pack(f"={n * (len(cols) - 2)}q", *chained.from_iterable(cols[2:])),
                        dtype=np.int64).reshape(-1, n)
    nin = np.frombuffer(lens, dtype=np.uint8).astype(np.int64) - 3
    table = ids[1:].T
    inputs = table[np.arange(table.shape[1]) < nin[:, None]]
    values = itemgetter(*cols[2])(tape._values)
    data = np.zeros((n, 64), dtype=np.uint8)
    data[:, :32] = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(n, 32)
    lines = struct.pack(f"<{n}I", *itemgetter(*tape._source_pos[start:stop])(line_of))
    frame = {"count": n, "ops": list(codes), "op": np.array(itemgetter(*cols[0])(codes), dtype="<u2").tobytes(),
             "nin": nin.astype("<u4").tobytes(), "inputs": inputs.astype("<u4").tobytes(),
             "output": ids[0].astype("<u4").tobytes(), "types": [["float64", [4]]], "type": bytes(4 * n),
             "attrs": [], "attr": bytes(4 * n), "data": np.arange(0, 64 * n, 64, dtype="<i8").tobytes(),
             "files": ["chain.py"], "file": bytes(4 * n), "line": lines}
    payload = packer.pack(frame)
    out.write(data)
    out.write(payload)
    out.write(struct.pack("<I", zlib.crc32(payload, zlib.crc32(data))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--flush-every", type=int, default=256)
    args = parser.parse_args()
    recording: list[float] = []
    encoding: list[float] = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        tape = chain(args.chain)
        t1 = time.perf_counter()
        codes = {op: k for k, op in enumerate(dict.fromkeys(r[0] for r in tape._records))}
        line_of = dict.fromkeys(tape._source_pos, 1)
        packer = msgpack.Packer(use_bin_type=True)
        out = io.BytesIO()
        t2 = time.perf_counter()
        for start in range(0, len(tape._records), args.flush_every):
            bare_flush(tape, start, min(start + args.flush_every, len(tape._records)), out, packer, codes, line_of)
        encoding.append(time.perf_counter() - t2)
        recording.append(t1 - t0)
    rec, enc = statistics.median(recording), statistics.median(encoding)
    print(f"a chain of {args.chain:,} tiny ops, batches of {args.flush_every}, median of {args.repeat}")
    print(f"  recording in memory          {rec * 1e3:8.2f} ms")
    print(f"  encoding that checks nothing {enc * 1e3:8.2f} ms  ({enc / args.chain * 1e9:.0f} ns per record)")
    print(f"  floor of record(path=...) vs record(): {(rec + enc) / rec:.3f}  (issue target <= 1.25)")


if __name__ == "__main__":
    main()
