"""Shared builders for the tape-format tests (this module holds no tests).

- `tiny_tape()`: a four-variable tape built by hand (independent of the tracer), the one whose
  bytes `test_format.py` pins and docs/FORMAT.md dissects.
- `split_frames(data)` / `join_frames(frames)`: take a tape apart into (tag, payload) frames and
  put frames back together with a valid CRC chain, so tests can reach the layers behind the
  checksums (msgpack, columns, graph) with exactly the damage they want.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from tapegrad.tape import Tape
from tapegrad.tape_format.frames import MAGIC, PREAMBLE

Frames = list[tuple[bytes, bytes]]


def tiny_tape() -> Tape:
    """x = [1, 2] (input "x"), the constant 3, v2 = x * 3, v3 = sum(v2) named "y"."""
    return Tape.from_parts(
        "all", {"note": "tiny"}, leaves=[0, 1], consts={1},
        records=[("mul", {}, 2, 0, 1), ("sum", {"axis": None, "keepdims": False}, 3, 2)],  # (op, attrs, output, *inputs)
        values={0: np.array([1.0, 2.0]), 1: np.array(3.0), 2: np.array([3.0, 6.0]), 3: np.array(9.0)},
        avals={}, names={0: "x", 3: "y"})


def split_frames(data: bytes) -> tuple[bytes, Frames]:
    """(preamble, [(tag, payload), ...]) of a well-formed tape."""
    pos = len(PREAMBLE)
    frames: Frames = []
    while pos < len(data):
        tag, length = struct.unpack_from("<4sI", data, pos)
        frames.append((tag, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return data[:len(PREAMBLE)], frames


def join_frames(frames: Frames, preamble: bytes = PREAMBLE) -> bytes:
    """A tape made of `frames` with a valid CRC chain (whatever the payloads hold)."""
    out = bytearray(preamble)
    crc = zlib.crc32(preamble)
    for tag, payload in frames:
        head = struct.pack("<4sI", tag, len(payload))
        crc = zlib.crc32(head + payload, crc)
        out += head + payload + struct.pack("<I", crc)
    return bytes(out)


def payload_of(data: bytes, tag: bytes) -> bytes:
    """The payload of the first frame tagged `tag`."""
    return next(p for t, p in split_frames(data)[1] if t == tag)


def preamble(major: int = 1, minor: int = 0) -> bytes:
    return MAGIC + struct.pack("<HH", major, minor)


def unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, use_list=False, strict_map_key=False)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def edit_frame(data: bytes, tag: bytes, edit: Callable[[Any], Any], nth: int = 0) -> bytes:
    """The tape with the `nth` frame tagged `tag` decoded, edited by `edit`, re-encoded."""
    pre, frames = split_frames(data)
    seen = 0
    for k, (t, payload) in enumerate(frames):
        if t == tag:
            if seen == nth:
                obj = unpack(payload)
                if isinstance(obj, dict):
                    obj = dict(obj)
                frames[k] = (t, pack(edit(obj)))
                return join_frames(frames, pre)
            seen += 1
    raise LookupError(f"no frame {tag!r} #{nth}")


def replace_payload(data: bytes, tag: bytes, payload: bytes, nth: int = 0) -> bytes:
    """The tape with the raw payload of a frame replaced (CRCs recomputed)."""
    pre, frames = split_frames(data)
    seen = 0
    for k, (t, _) in enumerate(frames):
        if t == tag:
            if seen == nth:
                frames[k] = (t, payload)
                return join_frames(frames, pre)
            seen += 1
    raise LookupError(f"no frame {tag!r} #{nth}")


def u32(*values: int) -> bytes:
    return np.array(values, dtype="<u4").tobytes()
