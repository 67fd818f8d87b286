"""Encoding tapes: columns of definitions -> HEAD, DATA, VARS, RECS, NAME and FOOT frames.

Contract:
- `Encoder(out, mode, metadata)` writes the preamble and the HEAD frame; each `batch(...)` call
  writes one batch of definitions (the DATA frames holding its arrays, then a VARS frame for its
  leaves, a RECS frame for its records and a NAME frame for late names); `footer()` ends the
  tape.  Ids passed in are the dense ids the file stores.
- Definitions are encoded as columns (fixed-width little-endian integers in msgpack bins, with
  small tables of distinct op names, types and attribute maps), built with C-level `map`/`zip`
  and numpy so that the cost per record stays far below a microsecond.
- Arrays are written as raw C-order little-endian bytes at 64-byte-aligned offsets inside DATA
  frames, straight from the arrays' memory; an array larger than `CHUNK_BYTES` (or a batch whose
  arrays do not fit one frame) is split over several DATA frames.
- Raises `TapegradError` for what the format cannot represent (dtypes outside `DTYPES`, ids
  beyond 2**32 - 1, attributes or metadata that are not plain data); `OSError` from the file.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, chain, compress
from operator import attrgetter
from typing import IO, Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

from .dtypes import dtype_name
from .errors import TapegradError
from .tape_format_frames import ALIGN, DATA, FOOT, FRAME_HEAD, FRAME_TAIL, HEAD, NAME, PREAMBLE, RECS, VARS, FrameWriter
from .tape_format_limits import DEFAULT_LIMITS
from .tape_format_reader import check_plain

CHUNK_BYTES = 1 << 30
"""Largest DATA frame payload; bigger arrays are split into chunks of at most this size.

Frame lengths are u32, so this must stay below 4 GiB; tests lower it to exercise chunking.
"""

ROWS_PER_FRAME = 1 << 16  # definitions per VARS/RECS frame at most
FRAME_TARGET = 1 << 20  # structure frames are split below this size when they have several rows


class _TooBig(Exception):
    """A structure frame would exceed `FRAME_TARGET` (raised before anything is written)."""


def _rows(obj: Any) -> int:
    return int(obj["count"]) if isinstance(obj, dict) else len(obj)
NO_DATA = -1  # data column: the variable has no stored value
CHUNKED = -2  # data column: the value is split; its pieces are in the frame's "chunks" list

_PADS = [bytes(k) for k in range(ALIGN)]
_SHAPE_DTYPE = attrgetter("shape", "dtype")
_NBYTES = attrgetter("nbytes")
_SWAP = sys.byteorder == "big"  # columns are little-endian
_U32 = next(code for code in "ILH" if array(code).itemsize == 4)
_DTYPE_NAMES: dict[Any, str] = {}


def stored_dtype_name(dt: Any) -> str:
    """The file name of dtype `dt` (big-endian dtypes name their little-endian twin)."""
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        found = dtype_name(dt.newbyteorder("<") if getattr(dt, "byteorder", "=") == ">" else dt)
        if found is None:
            raise TapegradError(f"cannot store dtype {dt}: tapes hold only {', '.join(_allowed())}")
        _DTYPE_NAMES[dt] = name = found
    return name


def _allowed() -> list[str]:
    from .dtypes import DTYPES

    return sorted(DTYPES)


def u32(values: Sequence[int], what: str) -> bytes:
    """Little-endian u32 column bytes; TapegradError if a value does not fit."""
    try:
        column = array(_U32, values)  # checks the range as it converts, ~20 ns per value
    except (OverflowError, TypeError):
        raise TapegradError(f"cannot store {what}: values must be integers in [0, 2**32)") from None
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def pack(obj: Any, what: str) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True, use_single_float=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TapegradError(f"cannot store {what}: {exc} (attributes and metadata must be plain data)") from None


def storable(values: list[Any]) -> list[Any]:
    """`values` as C-contiguous little-endian ndarrays (copies only those that are not)."""
    out = []
    for v in values:
        if type(v) is not np.ndarray:
            raise TapegradError(f"cannot store a value of type {type(v).__name__}: values must be ndarrays")
        if v.dtype.byteorder == ">":
            v = v.astype(v.dtype.newbyteorder("<"))
        out.append(v if v.flags.c_contiguous else v.copy(order="C"))  # (ascontiguousarray makes 0-d arrays 1-d)
    return out


def type_column(values: list[Any]) -> tuple[list[Any], bytes, bool]:
    """(table of distinct [dtype name, shape], u32 column of table indices, any big-endian dtype).

    Each value is an ndarray or a (shape, dtype) pair.
    """
    if set(map(type, values)) <= {np.ndarray}:
        keys = list(map(_SHAPE_DTYPE, values))
    else:
        keys = [v if type(v) is tuple else (v.shape, v.dtype) for v in values]
    index: dict[Any, int] = {key: n for n, key in enumerate(dict.fromkeys(keys))}
    table = []
    swapped = False
    for shape, dtype in index:
        table.append((stored_dtype_name(dtype), tuple(map(int, shape))))
        swapped = swapped or getattr(dtype, "byteorder", "=") == ">"
    return table, u32(list(map(index.__getitem__, keys)), "a type index"), swapped


def _typed_values(values: list[Any], store: bool) -> tuple[list[Any], list[Any], bytes]:
    """(values ready to write, type table, type column); non-ndarrays are refused when storing."""
    if store and not set(map(type, values)) <= {np.ndarray}:
        values = storable(values)
    table, column, swapped = type_column(values)
    if store and swapped:
        values = storable(values)
    return values, table, column


class DataLayout:
    """Places arrays in DATA frames starting at tape offset `start`: 64-aligned, chunked."""

    def __init__(self, start: int) -> None:
        self.chunk = max(int(CHUNK_BYTES), 2 * ALIGN)
        self.frames: list[tuple[list[Any], int]] = []
        self._start = start
        self._parts: list[Any] = []
        self._used = 0

    def column(self, values: list[Any]) -> tuple[bytes, list[Any]]:
        """Lay out `values`; return the i64 data column and the "chunks" list."""
        nbytes = np.fromiter(map(_NBYTES, values), dtype=np.int64, count=len(values))
        padded = (nbytes + (ALIGN - 1)) & ~(ALIGN - 1)
        head = self._start + FRAME_HEAD + self._used
        lead = -head % ALIGN
        total = int(padded.sum())
        if not total:
            return bytes(8 * len(values)), []
        if self._used + lead + total <= self.chunk:  # the common case: one frame, vectorised
            offsets = head + lead + np.concatenate(([0], np.cumsum(padded)[:-1]))
            offsets[nbytes == 0] = 0
            if lead:
                self._parts.append(_PADS[lead])
            pads = list(map(_PADS.__getitem__, ((-nbytes) % ALIGN).tolist()))
            self._parts.extend(chain.from_iterable(zip(values, pads, strict=True)))
            self._used += lead + total
            return offsets.astype("<i8").tobytes(), []
        column: list[int] = []
        chunks: list[Any] = []
        for row, value in enumerate(values):
            ref = self._add(value)
            if len(ref) == 2:
                column.append(ref[0])
            elif not ref:
                column.append(0)
            else:
                column.append(CHUNKED)
                chunks.append((row, tuple(ref)))
        return np.array(column, dtype="<i8").tobytes(), chunks

    def _add(self, value: Any) -> list[int]:
        nbytes = value.nbytes
        ref: list[int] = []
        flat: Any = None
        done = 0
        while done < nbytes:
            at = self._start + FRAME_HEAD + self._used
            pad = -at % ALIGN
            room = self.chunk - self._used - pad
            if room <= 0:
                self._close()
                continue
            take = min(room, nbytes - done)
            if pad:
                self._parts.append(_PADS[pad])
            if take == nbytes:
                self._parts.append(value)
            else:
                if flat is None:
                    flat = value.reshape(-1).view(np.uint8)
                self._parts.append(flat[done:done + take])
            ref += (at + pad, take)
            self._used += pad + take
            done += take
            if self._used >= self.chunk:
                self._close()
        return ref

    def _close(self) -> None:
        self.frames.append((self._parts, self._used))
        self._start += FRAME_HEAD + self._used + FRAME_TAIL
        self._parts = []
        self._used = 0

    def finish(self) -> list[tuple[list[Any], int]]:
        if self._used:
            self._close()
        return self.frames


def _in_frames(count: int, write: Callable[[int, int], None]) -> None:
    """Call `write(a, b)` on consecutive row ranges covering 0..count, each small enough for one
    frame: at most `ROWS_PER_FRAME` rows, halved while the frame would exceed `FRAME_TARGET`."""
    a = 0
    while a < count:
        b = min(a + ROWS_PER_FRAME, count)
        while True:
            try:
                write(a, b)
                break
            except _TooBig:
                if b - a == 1:
                    raise TapegradError(f"cannot store row {a}: it alone exceeds the frame limit of "
                                        f"{DEFAULT_LIMITS.max_frame_bytes:,} bytes (a huge name or attribute?)") from None
                b = a + (b - a) // 2
        a = b


class Encoder:
    """Writes the frames of one tape: preamble and header, batches of definitions, footer."""

    def __init__(self, out: IO[bytes], mode: str, metadata: dict[str, Any]) -> None:
        self.w = FrameWriter(out)
        self.mode = mode
        self.records = 0
        self.variables = 0
        try:
            check_plain(metadata, DEFAULT_LIMITS)
        except TapegradError as exc:
            raise TapegradError(f"cannot store the tape's metadata: {exc}") from None
        head = pack({"values": mode, "metadata": metadata}, "the tape's metadata")
        if len(head) > DEFAULT_LIMITS.max_frame_bytes:
            raise TapegradError(f"cannot store the tape's metadata: {len(head):,} bytes, over the frame limit")
        self.w.preamble(PREAMBLE)
        self.w.frame(HEAD, [head], len(head))

    def batch(self, leaf_ids: list[int], leaf_const: list[bool], leaf_names: list[str | None],
              leaf_values: list[Any], ops: list[str], nin: list[int], inputs: list[int], outs: list[int],
              attrs: list[Any], rec_values: list[Any], sources: tuple[list[str], list[int], list[int]] | None,
              names: list[tuple[int, str | None]]) -> None:
        """Write one batch of leaves, records and late names (see the module docstring).

        Records are given as columns: `nin[k]` inputs of record k, all inputs flattened in
        `inputs`.  Values are ndarrays, or (shape, dtype) pairs where the mode stores no value.
        `sources` is (file table, each record's file index, each record's line), or None when
        the tape has no source locations.
        All leaves are written before all records (leaves depend on nothing), then the names.
        """
        ends = list(accumulate(nin, initial=0))
        _in_frames(len(leaf_ids), lambda a, b: self._leaves(leaf_ids[a:b], leaf_const[a:b], leaf_names[a:b],
                                                            leaf_values[a:b]))
        _in_frames(len(ops), lambda a, b: self._records(
            ops[a:b], nin[a:b], inputs[ends[a]:ends[b]], outs[a:b], attrs[a:b], rec_values[a:b],
            None if sources is None else (sources[0], sources[1][a:b], sources[2][a:b])))
        _in_frames(len(names), lambda a, b: self._frame(NAME, names[a:b], None))

    def _leaves(self, ids: list[int], const: list[bool], names: list[str | None], values: list[Any]) -> None:
        try:
            self._leaves_once(ids, const, names, values)
        except BufferError:  # a non-contiguous array (nothing was written): copy it and retry
            self._leaves_once(ids, const, names, storable(values))

    def _leaves_once(self, ids: list[int], const: list[bool], names: list[str | None], values: list[Any]) -> None:
        layout = DataLayout(self.w.pos)
        cols: dict[str, Any] = {"count": len(ids), "id": u32(ids, "a variable id"), "const": bytes(map(bool, const))}
        values, cols["types"], cols["type"] = _typed_values(values, self.mode != "none")
        if self.mode != "none":
            cols["data"], chunks = layout.column(values)
            if chunks:
                cols["chunks"] = chunks
        cols["names"] = [(row, name) for row, name in enumerate(names) if name is not None]
        self._frame(VARS, cols, layout)
        self.variables += len(ids)

    def _records(self, ops: list[str], nin: list[int], inputs: list[int], outs: list[int], attrs: list[Any],
                 values: list[Any], sources: tuple[list[str], list[int], list[int]] | None) -> None:
        try:
            self._records_once(ops, nin, inputs, outs, attrs, values, sources)
        except BufferError:  # a non-contiguous array (nothing was written): copy it and retry
            values = storable(values) if self.mode == "all" else values
            self._records_once(ops, nin, inputs, outs, attrs, values, sources)

    def _records_once(self, ops: list[str], nin: list[int], inputs: list[int], outs: list[int], attrs: list[Any],
                      values: list[Any], sources: tuple[list[str], list[int], list[int]] | None) -> None:
        layout = DataLayout(self.w.pos)
        cols: dict[str, Any] = {"count": len(ops)}
        op_index = {op: n for n, op in enumerate(dict.fromkeys(ops))}
        cols["ops"] = list(op_index)
        op_column = array("H", map(op_index.__getitem__, ops))
        if _SWAP:
            op_column.byteswap()
        cols["op"] = op_column.tobytes()
        cols["nin"] = u32(nin, "an input count")
        cols["inputs"] = u32(inputs, "an input id")
        cols["output"] = u32(outs, "an output id")
        values, cols["types"], cols["type"] = _typed_values(values, self.mode == "all")
        table: dict[Any, int] = {}
        column = [0] * len(ops)
        maps = []
        for row in compress(range(len(attrs)), attrs):  # only the records that have attributes
            a = attrs[row]
            key = tuple(a.items())
            k = table.get(key)
            if k is None:
                maps.append(a if type(a) is dict else dict(a))
                table[key] = k = len(maps)
            column[row] = k
        cols["attrs"] = maps
        cols["attr"] = u32(column, "an attribute index")
        if sources is not None:
            file_table, file_column, line_column = sources
            used = sorted(set(file_column))  # this frame's table holds only the files its rows use
            renumber = {old: new for new, old in enumerate(used)}
            cols["files"] = [file_table[k] for k in used]
            cols["file"] = u32(list(map(renumber.__getitem__, file_column)), "a file index")
            cols["line"] = u32(line_column, "a line number")
        if self.mode == "all":
            cols["data"], chunks = layout.column(values)
            if chunks:
                cols["chunks"] = chunks
        self._frame(RECS, cols, layout)
        self.records += len(ops)
        self.variables += len(ops)

    def _frame(self, tag: bytes, obj: Any, layout: DataLayout | None) -> None:
        """Pack `obj` as a `tag` frame, after the DATA frames of `layout`."""
        what = {VARS: "the tape's inputs", RECS: "a record", NAME: "the tape's names"}[tag]
        payload = pack(obj, what)
        if len(payload) > FRAME_TARGET and (len(payload) > DEFAULT_LIMITS.max_frame_bytes or _rows(obj) > 1):
            raise _TooBig  # nothing written yet: the caller retries with fewer rows
        if layout is not None:
            for parts, length in layout.finish():
                self.w.frame(DATA, parts, length)
        self.w.frame(tag, [payload], len(payload))

    def footer(self) -> None:
        foot = pack({"frames": self.w.frames, "records": self.records, "variables": self.variables}, "the footer")
        self.w.frame(FOOT, [foot], len(foot))
        self.w.commit()


