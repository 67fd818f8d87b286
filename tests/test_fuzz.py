"""Fuzzing the loader: mutated valid tapes through load -> validate -> inspect -> replay.

"inspect" is the listing, every variable's description, and the inspector's `show`, `stats`,
`check` and `slice` (`tapegrad.inspect`), whose JSON must stay valid.

Only `TapegradError` subclasses may escape, whatever the bytes, and every message they carry is
safe to print (no control characters, capped length).  Mutations are applied both to raw bytes
(bit flips, truncation, splices, insertions: mostly stopped by the checksums) and behind valid
checksums (frames re-chained after the damage, msgpack payloads decoded, changed and re-encoded,
or replaced by random msgpack), so every layer gets exercised.  Structural mutations (frames
dropped, duplicated, moved, ancillary frames added, the minor version changed) are re-framed with
the footer's counts recomputed and the CRCs re-chained, so they reach validation and replay
rather than the checksum or footer checks; table mutations include the values of issue 13
(empty shapes with huge dimensions, op names with control characters, shape attributes of huge
dimensions).

Each example is bounded: tight `Limits` and a replay `budget` cap what a tape may make replay
allocate, and hypothesis' deadline caps its time.  The default run is short; for a long one set
`TAPEGRAD_FUZZ_EXAMPLES` (for example `TAPEGRAD_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py`).
Inputs that once broke the loader live in tests/corpus/ and are replayed by `test_corpus`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tapegrad as tg
from op_cases import op_tape
from tape_bytes import join_frames, split_frames, tiny_tape
from tapegrad import inspect
from tapegrad import tape_format as tf
from tapegrad.errors import MESSAGE_LIMIT
from tapegrad.tape import Tape
from tapegrad.tape_format import writer
from tapegrad.tape_format.frames import MINOR
from tapegrad.tape_format.validate import _fast, explain

EXAMPLES = int(os.environ.get("TAPEGRAD_FUZZ_EXAMPLES", "150"))
CORPUS = Path(__file__).parent / "corpus"
LIMITS = tf.Limits(max_total_bytes=1 << 20, max_frame_bytes=1 << 18, max_array_bytes=1 << 18, max_records=5000,
                   max_variables=10_000, max_elements=1 << 15, max_total_elements=1 << 18, max_ndim=8,
                   max_string_bytes=1 << 12)
BUDGET = 1 << 26  # bytes a replay may plan to use
CONTROL = re.compile(r"[\x00-\x1f\x7f\x9b]")


def _safe(exc: BaseException) -> None:
    """A library error's message is safe to print: no control characters, capped."""
    message = str(exc)
    assert not CONTROL.search(message), message[:300]
    assert len(message) <= MESSAGE_LIMIT + 100, len(message)


def _seeds() -> list[bytes]:
    tapes: list[Tape] = [tiny_tape()]
    for name in ("getitem", "scatter_add", "concatenate", "sum", "reshape", "transpose", "guard", "astype"):
        tapes.append(op_tape(name))
    with tg.record(values="inputs", metadata={"k": [1, "two", {"three": 3.0}]}) as t:
        x = tg.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="x")
        tg.softmax(tg.log(x + 1.0) @ tg.transpose(x), axis=0).name = "p"
    tapes.append(t)
    none = op_tape("matmul")
    none.values_mode = "none"
    tapes.append(none)
    seeds = [tf.dumps(t) for t in tapes]
    chunk = writer.CHUNK_BYTES
    try:
        writer.CHUNK_BYTES = 128  # arrays split over several DATA frames
        seeds.append(tf.dumps(op_tape("stack")))
    finally:
        writer.CHUNK_BYTES = chunk
    return seeds


SEEDS = _seeds()


def exercise(data: bytes) -> None:
    """load -> validate -> inspect -> replay; only library errors may escape."""
    for recover in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tape = tf.loads(data, recover=recover, limits=LIMITS)
        except tg.TapegradError as exc:
            _safe(exc)
            continue
        explain(tape, LIMITS)  # the reference and the vectorised validators agree
        _fast(tape, LIMITS)
        str(tape)
        for vid in tape.ids_in_order():
            tape.var(tape.dense_ids()[vid])
        with np.errstate(all="ignore"):  # the inspector reads anything that loads
            for line in inspect.show(tape, values=True, details=True):
                json.dumps(line.as_dict(), allow_nan=False)
            json.dumps(inspect.jsonable(inspect.stats(tape, values=True, max_plan_records=0).as_dict()), allow_nan=False)
            inspect.check(tape)
            if len(tape):
                inspect.slice(tape, tape.dense_ids()[tape.last_output()])
        if tape.values_mode == "all" and len(tape):
            _replay(lambda: tg.replay.backward(tape, budget=BUDGET))
        if len(tape):
            _replay(lambda: tg.replay.forward(tape, budget=BUDGET))


def _replay(run: Any) -> None:
    """Run a replay: it succeeds or raises a library error whose message is safe to print."""
    with np.errstate(all="ignore"):
        try:
            run()
        except tg.TapegradError as exc:
            _safe(exc)


# ---- mutations -------------------------------------------------------------------------------

def _plain(draw: st.DrawFn) -> Any:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                     st.text(max_size=8), st.binary(max_size=16), st.sampled_from(["float64", "add", "...", "array"]))
    return draw(st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                             max_leaves=12))


def _edit(obj: Any, draw: st.DrawFn, depth: int = 0) -> Any:
    """Replace one value somewhere inside a decoded msgpack object."""
    if isinstance(obj, dict) and obj and depth < 4:
        key = draw(st.sampled_from(sorted(obj, key=repr)))
        out = dict(obj)
        if draw(st.integers(0, 9)) == 0:
            del out[key]
        else:
            out[key] = _edit(obj[key], draw, depth + 1)
        return out
    if isinstance(obj, (list, tuple)) and obj and depth < 4:
        k = draw(st.integers(0, len(obj) - 1))
        out_list = list(obj)
        out_list[k] = _edit(obj[k], draw, depth + 1)
        return out_list
    if isinstance(obj, bytes) and obj and draw(st.booleans()):
        k = draw(st.integers(0, len(obj) - 1))
        return obj[:k] + bytes([draw(st.integers(0, 255))]) + obj[k + 1:]
    if isinstance(obj, int) and not isinstance(obj, bool) and draw(st.booleans()):
        return obj + draw(st.sampled_from([-1, 1, -64, 64, 2**32, -2**31, 1 << 40]))
    return _plain(draw)


INTERESTING = [0, 1, 2, 3, -1, -2, 63, 64, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1]
WIDTH = {"id": "<u4", "output": "<u4", "inputs": "<u4", "nin": "<u4", "type": "<u4", "attr": "<u4", "op": "<u2",
         "data": "<i8", "const": "u1"}


def _column(cols: dict[Any, Any], draw: st.DrawFn) -> dict[Any, Any]:
    """Change one element of one fixed-width column (reaches the graph checks)."""
    keys = [k for k in cols if k in WIDTH and isinstance(cols[k], bytes) and cols[k]]
    if not keys:
        return cols
    key = draw(st.sampled_from(sorted(keys)))
    arr = np.frombuffer(cols[key], dtype=WIDTH[key]).copy()
    k = draw(st.integers(0, len(arr) - 1))
    info = np.iinfo(arr.dtype)
    value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(-3, 12), st.just(int(arr[k]) + 1),
                           st.just(int(arr[(k + 1) % len(arr)]))))
    arr[k] = min(max(value, info.min), info.max)
    return {**cols, key: arr.tobytes()}


def _table(cols: dict[Any, Any], draw: st.DrawFn) -> dict[Any, Any]:
    """Change an entry of a table: an op name, a type, an attribute value."""
    choices = [k for k in ("ops", "types", "attrs", "names") if cols.get(k)]
    if not choices:
        return cols
    key = draw(st.sampled_from(choices))
    table = list(cols[key])
    k = draw(st.integers(0, len(table) - 1))
    if key == "ops":
        table[k] = draw(st.sampled_from(["add", "mul", "sum", "getitem", "reshape", "stack", "guard", "matmul",
                                         "where", "astype", "scatter_add", "", "os.system", "\x1b[31msin\x1b[0m",
                                         "s\x00\r\n", "x" * 5000]))
    elif key == "types":
        dtype, shape = table[k]
        shape = list(shape)
        if shape and draw(st.booleans()):
            shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from([0, 1, 2, 3, 7, 2**20, 2**62, 2**64 - 1]))
            if draw(st.integers(0, 3)) == 0:
                shape.append(0)  # empty, with whatever dimensions it has: issue 13's [2**62, 0]
        else:
            shape = shape + [draw(st.sampled_from([1, 2]))] if draw(st.booleans()) else shape[:-1]
        table[k] = (draw(st.sampled_from([dtype, "float32", "int64", "bool", "float16"])), shape)
    elif key == "attrs" and isinstance(table[k], dict) and table[k]:
        name = draw(st.sampled_from(sorted(table[k])))
        value = draw(st.one_of(st.none(), st.booleans(), st.integers(-2, 5),
                               st.lists(st.integers(-1, 4), max_size=4).map(tuple),
                               st.sampled_from([("slice", None, None, -1), ("array",), "...", (0, ("array",)),
                                                (2**62, 0), (2**32, 2**32, 0), (2**33,), tuple(range(40))]),
                               st.just(_plain(draw))))
        table[k] = {**table[k], name: value}
    else:
        table[k] = _plain(draw)
    return {**cols, key: table}


def _mutate_raw(data: bytes, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "delete"]))
    n = len(data)
    at = draw(st.integers(min(12, n), n)) if draw(st.integers(0, 9)) else draw(st.integers(0, n))
    if kind == "flip" and n:
        at = min(at, n - 1)
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    if kind == "truncate":
        return data[:at]
    if kind == "splice":
        other = draw(st.sampled_from(SEEDS))
        a = int(draw(st.floats(0, 1)) * len(other))
        return data[:at] + other[a:a + draw(st.integers(1, 200))] + data[at:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=24)) + data[at:]
    return data[:at] + data[at + draw(st.integers(1, 64)):]


def _restructure(data: bytes, draw: st.DrawFn) -> bytes:
    """A frame-level change, re-framed: the footer's counts recomputed for the frames now there
    and every CRC re-chained, so the change reaches the frame order and graph checks."""
    pre, frames = split_frames(data)
    inner = list(range(1, len(frames) - 1))  # neither HEAD nor FOOT
    kind = draw(st.sampled_from(["drop", "duplicate", "move", "ancillary", "minor"]))
    if kind == "drop" and inner:
        del frames[draw(st.sampled_from(inner))]
    elif kind == "duplicate" and inner:
        frame = frames[draw(st.sampled_from(inner))]
        frames.insert(draw(st.integers(1, len(frames) - 1)), frame)
    elif kind == "move" and inner:
        frame = frames.pop(draw(st.sampled_from(inner)))
        frames.insert(draw(st.integers(1, len(frames) - 1)), frame)
    elif kind == "ancillary":
        frames.insert(draw(st.integers(0, len(frames) - 1)), (b"tEXt", draw(st.binary(max_size=8))))
        pre = pre[:10] + struct.pack("<H", MINOR + 1)  # a newer minor version: its ancillary frames are skipped
    else:
        pre = pre[:10] + struct.pack("<H", draw(st.sampled_from([0, 1, MINOR, MINOR + 1, 9])))
    return join_frames(_recount(frames), pre)


def _recount(frames: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`frames` with the footer's counts made true of them (when the footer decodes as a map)."""
    if not frames or frames[-1][0] != b"FOOT":
        return frames
    try:
        foot = msgpack.unpackb(frames[-1][1], raw=False, strict_map_key=False)
        counts = [msgpack.unpackb(p, raw=False, strict_map_key=False)["count"] for t, p in frames if t in (b"VARS", b"RECS")]
        records = sum(msgpack.unpackb(p, raw=False, strict_map_key=False)["count"] for t, p in frames if t == b"RECS")
    except Exception:
        return frames
    if not isinstance(foot, dict) or not all(type(c) is int for c in counts) or type(records) is not int:
        return frames
    foot = {**foot, "frames": len(frames) - 1, "records": records, "variables": sum(counts)}
    return [*frames[:-1], (b"FOOT", msgpack.packb(foot, use_bin_type=True))]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        if _well_framed(data) and draw(st.integers(0, 4)) == 0:
            data = _restructure(data, draw)
            continue
        if not _well_framed(data) or draw(st.integers(0, 3)) == 0:
            data = _mutate_raw(data, draw)
            if draw(st.booleans()) and _well_framed(data):  # re-chain, so raw damage reaches the decoder
                pre, frames = split_frames(data)
                data = join_frames(frames, pre)
            continue
        pre, frames = split_frames(data)
        k = draw(st.integers(0, len(frames) - 1))
        tag, payload = frames[k]
        kind = draw(st.sampled_from(["column", "column", "table", "table", "edit", "random", "rows"]))
        if tag == b"DATA":
            cut = int(draw(st.floats(0, 1)) * len(payload))
            payload = payload[:cut] + draw(st.binary(min_size=1, max_size=16)) + payload[cut + 16:]
            payload = payload[:len(frames[k][1])].ljust(len(frames[k][1]), b"\x00")
        elif kind == "random":
            payload = msgpack.packb(_plain(draw), use_bin_type=True)
        else:
            try:
                obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            except Exception:
                obj = None
            if isinstance(obj, dict) and kind == "column":
                obj = _column(obj, draw)
            elif isinstance(obj, dict) and kind == "table":
                obj = _table(obj, draw)
            elif kind == "rows" and len(frames) > 2:  # swap two frames: order rules and the CRC chain
                j = draw(st.integers(1, len(frames) - 1))
                frames[k], frames[j] = frames[j], frames[k]
                data = join_frames(frames, pre)
                continue
            else:
                obj = _edit(obj, draw)
            payload = msgpack.packb(obj, use_bin_type=True)
        frames[k] = (tag, payload)
        data = join_frames(frames, pre)  # re-chained: the damage gets past the checksums
    return data


def _well_framed(data: bytes) -> bool:
    pos = 12
    while pos + 8 <= len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0]
        pos += 12 + length
    return pos == len(data) and len(data) > 12


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated())
def test_mutated_tapes_raise_only_library_errors(data: bytes) -> None:
    exercise(data)


def test_the_seeds_load_and_replay() -> None:
    for data in SEEDS:
        tape = tf.loads(data, limits=LIMITS)
        exercise(data)
        assert len(tape)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.tape")), ids=lambda p: p.name)
def test_corpus(path: Path) -> None:
    """Inputs that once broke the loader (or were crafted to): still only library errors."""
    exercise(path.read_bytes())
