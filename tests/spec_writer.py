"""A tape writer written from docs/FORMAT.md alone, for hostile-file tests (this module holds no tests).

It imports nothing of tapegrad: it frames, aligns, encodes and checksums exactly as the spec
says, and it writes whatever it is told to, including what the library's writer never would
(a leaf in a later VARS frame, unused table entries, huge dimensions, control characters in op
names, bool payload bytes of 2).  `SpecTape.bytes()` always gives valid framing and CRCs, so a
test reaches the loader's validation and replay, not its checksum check.

Use:
    t = SpecTape(values="all")
    x = t.data(np.array([1.0, 2.0]))             # one DATA frame; returns the arrays' offsets
    t.vars([Leaf(0, "float64", [2], data=x[0])], names=[(0, "x")])
    t.recs([Rec("sin", 1, [0], "float64", [2], data=...)])
    t.foot()
    blob = t.bytes()
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

MAGIC = b"\x89TAPE\r\n\x1a"
ALIGN = 64


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def ints(values: list[int], code: str) -> bytes:
    """A fixed-width little-endian integer column (code: "<u1", "<u2", "<u4" or "<i8")."""
    return np.array(values, dtype=code).tobytes()


@dataclass
class Leaf:
    id: int
    dtype: str
    shape: list[int]
    const: int = 0
    data: int | None = None  # the data reference (None: no data column entry)


@dataclass
class Rec:
    op: str
    out: int
    ins: list[int]
    dtype: str
    shape: list[int]
    attrs: dict[str, Any] | None = None
    data: int | None = None
    file: str | None = None
    line: int = 1


@dataclass
class SpecTape:
    values: str = "all"
    metadata: Any = field(default_factory=dict)
    minor: int = 0
    frames: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.frames.append((b"HEAD", packb({"values": self.values, "metadata": self.metadata})))

    def end(self) -> int:
        """The tape offset just after the frames so far."""
        return 12 + sum(12 + len(p) for _, p in self.frames)

    def frame(self, tag: bytes, payload: bytes) -> None:
        self.frames.append((tag, payload))

    def data(self, *arrays: Any) -> list[int]:
        """One DATA frame holding `arrays` (ndarrays or raw bytes) at 64-aligned tape offsets."""
        start = self.end() + 8
        payload = bytearray()
        offsets = []
        for a in arrays:
            raw = a if isinstance(a, bytes) else np.ascontiguousarray(a).tobytes()
            pos = start + len(payload)
            pad = -pos % ALIGN
            payload += bytes(pad)
            offsets.append(start + len(payload))
            payload += raw
        payload += bytes(-(start + len(payload)) % ALIGN)
        self.frame(b"DATA", bytes(payload))
        return offsets

    @staticmethod
    def _types(rows: list[Any], extra: list[Any]) -> tuple[list[Any], bytes]:
        table: list[Any] = list(extra)
        index = []
        for r in rows:
            t = [r.dtype, list(r.shape)]
            if t not in table:
                table.append(t)
            index.append(table.index(t))
        return table, ints(index, "<u4")

    def vars(self, leaves: list[Leaf], names: list[Any] = (), extra_types: list[Any] = (),  # type: ignore[assignment]
             with_data: bool | None = None) -> None:
        """A VARS frame, keys in the spec's order."""
        types, type_col = self._types(leaves, list(extra_types))
        cols: dict[str, Any] = {"count": len(leaves), "id": ints([r.id for r in leaves], "<u4"),
                                "const": bytes(r.const for r in leaves), "types": types, "type": type_col}
        if with_data if with_data is not None else self.values != "none":
            cols["data"] = ints([r.data or 0 for r in leaves], "<i8")
        cols["names"] = [list(n) for n in names]
        self.frame(b"VARS", packb(cols))

    def recs(self, recs: list[Rec], extra_ops: list[Any] = (), extra_attrs: list[Any] = (),  # type: ignore[assignment]
             extra_files: list[Any] = ()) -> None:  # type: ignore[assignment]
        """A RECS frame, keys in the spec's order; `extra_*` are table entries no row uses."""
        ops: list[Any] = []
        for r in recs:
            if r.op not in ops:
                ops.append(r.op)
        ops += list(extra_ops)
        attrs: list[Any] = []
        codes = []
        for r in recs:
            if not r.attrs:
                codes.append(0)
                continue
            if r.attrs not in attrs:
                attrs.append(r.attrs)
            codes.append(attrs.index(r.attrs) + 1)
        attrs += list(extra_attrs)
        types, type_col = self._types(recs, [])
        cols: dict[str, Any] = {
            "count": len(recs), "ops": ops, "op": ints([ops.index(r.op) for r in recs], "<u2"),
            "nin": ints([len(r.ins) for r in recs], "<u4"),
            "inputs": ints([i for r in recs for i in r.ins], "<u4"),
            "output": ints([r.out for r in recs], "<u4"), "types": types, "type": type_col,
            "attrs": attrs, "attr": ints(codes, "<u4")}
        if self.values == "all":
            cols["data"] = ints([r.data or 0 for r in recs], "<i8")
        if any(r.file is not None for r in recs) or extra_files:
            files: list[Any] = []
            for r in recs:
                if r.file not in files:
                    files.append(r.file)
            files += list(extra_files)
            cols["files"] = files
            cols["file"] = ints([files.index(r.file) for r in recs], "<u4")
            cols["line"] = ints([r.line for r in recs], "<u4")
        self.frame(b"RECS", packb(cols))

    def name(self, pairs: list[Any]) -> None:
        self.frame(b"NAME", packb([list(p) for p in pairs]))

    def foot(self, records: int | None = None, variables: int | None = None, error: Any = None) -> None:
        """The FOOT frame; counts default to what the frames so far hold."""
        n_recs = n_vars = 0
        for tag, payload in self.frames:
            if tag in (b"VARS", b"RECS"):
                count = msgpack.unpackb(payload, raw=False, strict_map_key=False)["count"]
                n_vars += count
                n_recs += count if tag == b"RECS" else 0
        foot: dict[str, Any] = {"frames": len(self.frames), "records": n_recs if records is None else records,
                                "variables": n_vars if variables is None else variables}
        if error is not None:
            foot["error"] = error
        self.frame(b"FOOT", packb(foot))

    def bytes(self) -> bytes:
        """The tape: preamble, then every frame with its length and chained CRC-32."""
        preamble = MAGIC + struct.pack("<HH", 1, self.minor)
        out = bytearray(preamble)
        crc = zlib.crc32(preamble)
        for tag, payload in self.frames:
            head = tag + struct.pack("<I", len(payload))
            crc = zlib.crc32(head + payload, crc)
            out += head + payload + struct.pack("<I", crc)
        return bytes(out)


def one_leaf(dtype: str = "float64", shape: list[int] = (), value: Any = None, values: str = "all",  # type: ignore[assignment]
             metadata: Any = None) -> tuple[SpecTape, int]:
    """A tape started with one input v0 (stored when `values` stores leaves); returns it and
    v0's data reference."""
    t = SpecTape(values=values, metadata={} if metadata is None else metadata)
    ref = 0
    if values != "none" and (value is not None or 0 not in shape):  # (an empty value has no bytes: reference 0)
        arr = np.zeros(shape, dtype=dtype) if value is None else value
        if arr.nbytes:
            ref = t.data(arr)[0]
    t.vars([Leaf(0, dtype, list(shape), data=ref)], names=[(0, "x")])
    return t, ref
