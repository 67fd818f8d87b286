"""Encoding tapes: columns of definitions -> HEAD, DATA, VARS, RECS, NAME and FOOT frames.

Contract:
- `Encoder(out, mode, metadata)` writes the preamble and the HEAD frame; each `batch(leaves,
  records, names)` call writes one batch of definitions (the DATA frames holding its arrays, then
  VARS frames for its leaves, RECS frames for its records and NAME frames for late names);
  `footer()` ends the tape.  Ids passed in are the dense ids the file stores.
- A batch is encoded in bulk: its attribute maps (told apart by `validate.attrs_key`, so `True`
  is never stored for `1`) and types are interned once into batch-wide tables and code columns
  (types by runs: only where a value's type differs from the one before is it looked up), op
  names into an encoder-wide table; each frame stores the entries it uses, renumbered, in
  table order.  Columns become bytes through `array` or numpy, both checking their range.
  Frames are sized from the column widths, so no frame is encoded twice, except when huge tables
  overflow the estimate.
- Arrays are written as raw C-order little-endian bytes at 64-byte-aligned offsets inside DATA
  frames, straight from the arrays' memory (a frame of values up to `PACK_BYTES` is copied into
  one buffer instead); an array larger than `CHUNK_BYTES` (or a batch whose arrays do not fit
  one frame) is split over several DATA frames.
- Raises `TapegradError` for what the format cannot represent (dtypes outside `DTYPES`, ids
  beyond 2**32 - 1, attributes or metadata that are not plain data); `OSError` from the file.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import chain
from math import prod
from operator import attrgetter, ne
from typing import IO, Any, NamedTuple

import msgpack  # type: ignore[import-untyped]
import numpy as np

from .dtypes import dtype_name
from .errors import TapegradError
from .tape_format_frames import (
    ALIGN,
    CHUNKED,
    DATA,
    FOOT,
    FRAME_HEAD,
    FRAME_TAIL,
    HEAD,
    NAME,
    PREAMBLE,
    RECS,
    VARS,
    FrameWriter,
)
from .tape_format_limits import DEFAULT_LIMITS
from .tape_format_reader import check_plain
from .validate import Ints, Reject, attr_codes

CHUNK_BYTES = 1 << 30
"""Largest DATA frame payload; bigger arrays are split into chunks of at most this size.

Frame lengths are u32, so this must stay below 4 GiB; tests lower it to exercise chunking.
"""

PACK_BYTES = 4096  # DATA frames hold values up to this size as one copied buffer (`_packed`)
ROWS_PER_FRAME = 1 << 16  # definitions per VARS/RECS frame at most
FRAME_TARGET = 1 << 20  # structure frames are split below this size when they have several rows
_ESTIMATE = 7 * FRAME_TARGET // 8  # frames are first cut when their columns reach this size


class _TooBig(Exception):
    """A structure frame would exceed `FRAME_TARGET` (raised before anything is written)."""


_PADS = [bytes(k) for k in range(ALIGN)]
_SHAPE_DTYPE = attrgetter("shape", "dtype")
_DTYPE_NAMES: dict[Any, str] = {}
_U32 = next(code for code in "ILH" if array(code).itemsize == 4)
_SWAP = sys.byteorder == "big"  # columns are little-endian
_LITTLE = {"H": "<u2", _U32: "<u4"}

Sources = tuple[list[str], list[int], list[int]]
"""Source locations of records: (file table, each record's index into it, each record's line)."""


class LeafRows(NamedTuple):
    """A batch of leaves, one entry per leaf: dense id, constant or not, name, and value (an
    ndarray, or a (shape, dtype) pair when the mode stores no value for it)."""

    ids: list[int]
    const: list[bool]
    names: list[str | None]
    values: list[Any]


class RecordRows(NamedTuple):
    """A batch of records as columns: op name, attributes (None or a map), number of inputs,
    all input ids concatenated, output id, output value (as in `LeafRows`), source locations."""

    ops: list[str]
    attrs: list[Any]
    nin: Ints
    inputs: list[int]
    outs: list[int]
    values: list[Any]
    sources: Sources | None


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


def column(values: Sequence[int] | Ints, code: str, what: str) -> bytes:
    """Little-endian bytes of `values` (a list or an int64 array) as items of type `code` ("H":
    u16, `_U32`: u32); TapegradError if a value does not fit (the conversion checks the range)."""
    if isinstance(values, np.ndarray):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >> (8 * array(code).itemsize)):
            raise TapegradError(f"cannot store {what}: values must be integers in [0, 2**{8 * array(code).itemsize})")
        return values.astype(_LITTLE[code]).tobytes()
    try:
        items = array(code, values)
    except (OverflowError, TypeError):
        raise TapegradError(f"cannot store {what}: values must be integers in [0, 2**{8 * array(code).itemsize})") from None
    if _SWAP:
        items.byteswap()
    return items.tobytes()


def runs(keys: list[Any]) -> tuple[list[Any], Ints]:
    """(the distinct keys in order of first use, each key's index among them).

    Neighbours are compared first and only the first key of each run of equal keys is looked
    up, so a batch whose values mostly share one type (a chain of elementwise ops) interns
    once: hashing a shape tuple costs more than comparing it with the one before.
    """
    n = len(keys)
    if n < 2:
        return list(keys), np.zeros(n, dtype=np.int64)
    heads = np.flatnonzero(np.fromiter(map(ne, keys[1:], keys), dtype=bool, count=n - 1)) + 1
    if not len(heads):
        return [keys[0]], np.zeros(n, dtype=np.int64)
    starts = [0, *heads.tolist()]
    index: dict[Any, int] = {}
    head_codes = [index.setdefault(keys[k], len(index)) for k in starts]
    return list(index), np.repeat(np.array(head_codes, dtype=np.int64), np.diff(starts + [n]))


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


class Typed(NamedTuple):
    """The values of a batch ready to write, their types as a table of distinct [dtype name,
    shape] and each value's index into it, and each value's size in bytes (when storing)."""

    values: list[Any]
    table: list[Any]
    codes: Ints
    nbytes: Ints


def _typed(values: list[Any], store: bool) -> Typed:
    """The `Typed` of `values`, each an ndarray or a (shape, dtype) pair (non-ndarrays are
    refused when storing)."""
    if store and not set(map(type, values)) <= {np.ndarray}:
        values = storable(values)  # raises for what is not an array
    try:
        keys = list(map(_SHAPE_DTYPE, values))
    except AttributeError:  # (shape, dtype) pairs among the arrays
        keys = [(v.shape, v.dtype) if type(v) is np.ndarray else v for v in values]
    distinct, codes = runs(keys)
    table = []
    sizes = []
    swapped = False
    for shape, dtype in distinct:
        table.append((stored_dtype_name(dtype), tuple(map(int, shape))))
        sizes.append(prod(table[-1][1]) * dtype.itemsize)
        swapped = swapped or getattr(dtype, "byteorder", "=") == ">"
    if store and swapped:
        values = storable(values)
    nbytes = np.array(sizes, dtype=np.int64)[codes] if store else np.zeros(0, np.int64)
    return Typed(values, table, codes, nbytes)


def _subtable(codes: Ints, table: list[Any], first: int = 0) -> tuple[list[Any], Ints]:
    """The entries of `table` that `codes` use, in table order (codes below `first` mean "no
    entry" and stay as they are), and `codes` renumbered into them."""
    used = np.zeros(len(table), dtype=bool)
    used[codes] = True
    used[:first] = False
    if used[first:].all():  # (a batch written as one frame)
        return table[first:], codes
    kept = np.flatnonzero(used)
    renumber = np.arange(len(table))
    renumber[kept] = np.arange(first, first + len(kept))
    return [table[k] for k in kept.tolist()], renumber[codes]


class DataLayout:
    """Places arrays in DATA frames starting at tape offset `start`: 64-aligned, chunked."""

    def __init__(self, start: int) -> None:
        self.chunk = max(int(CHUNK_BYTES), 2 * ALIGN)
        self.frames: list[tuple[list[Any], int]] = []
        self._start = start
        self._parts: list[Any] = []
        self._used = 0

    def column(self, values: list[Any], nbytes: Ints) -> tuple[bytes, list[Any]]:
        """Lay out `values` of `nbytes` bytes each; return the i64 data column and the "chunks" list."""
        padded = (nbytes + (ALIGN - 1)) & ~(ALIGN - 1)
        head = self._start + FRAME_HEAD + self._used
        lead = -head % ALIGN
        total = int(padded.sum())
        if not total:
            return bytes(8 * len(values)), []
        if self._used + lead + total <= self.chunk:  # the common case: one frame, vectorised
            at = np.concatenate(([0], np.cumsum(padded)[:-1]))  # from the first value's start
            offsets = head + lead + at
            offsets[nbytes == 0] = 0
            if lead:
                self._parts.append(_PADS[lead])
            self._parts += _packed(values, nbytes, at, total)
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


def _packed(values: list[Any], nbytes: Ints, at: Ints, total: int) -> list[Any]:
    """Buffers holding `values` (of `nbytes` bytes each) at offsets `at`, padded to `total` bytes.

    Values up to `PACK_BYTES` are copied into one buffer (one part per value, each needing its
    own padding, would cost more to write than their bytes); bigger ones are written from their
    own memory, with a padding part after each.
    """
    if int(nbytes.max()) <= PACK_BYTES:
        try:
            raw = np.frombuffer(b"".join(values), dtype=np.uint8)
        except (TypeError, ValueError, BufferError):  # a value that is not C-contiguous
            raw = np.concatenate([np.ascontiguousarray(v).reshape(-1).view(np.uint8) for v in values])
        out = np.zeros(total, dtype=np.uint8)
        size = int(nbytes[0])
        if not np.any(nbytes != size):  # values of one size: rows of a matrix
            out.reshape(len(values), -1)[:, :size] = raw.reshape(len(values), size)
        else:  # each byte goes to its value's offset plus its place within the value
            starts = np.cumsum(nbytes) - nbytes
            out[np.repeat(at - starts, nbytes) + np.arange(len(raw))] = raw
        return [out]
    pads = list(map(_PADS.__getitem__, ((-nbytes) % ALIGN).tolist()))
    return list(chain.from_iterable(zip(values, pads, strict=True)))


def _in_frames(size: Ints, write: Callable[[int, int], None]) -> None:
    """Call `write(a, b)` on consecutive row ranges covering all rows, each small enough for one
    frame.  `size[k]` is the estimated size of rows 0..k-1 (so `len(size)` is rows + 1); a range
    holds at most `ROWS_PER_FRAME` rows and is halved while its frame would exceed `FRAME_TARGET`."""
    count = len(size) - 1
    a = 0
    while a < count:
        b = count
        if b - a > ROWS_PER_FRAME or size[b] - size[a] > _ESTIMATE:
            fit = int(np.searchsorted(size, size[a] + _ESTIMATE, side="right")) - 1
            b = min(max(fit, a + 1), a + ROWS_PER_FRAME)
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
        self._ops: list[Any] = []  # every op name written so far, in order of first use
        self._op_index: dict[Any, int] = {}
        try:
            check_plain(metadata, DEFAULT_LIMITS)
        except TapegradError as exc:
            raise TapegradError(f"cannot store the tape's metadata: {exc}") from None
        head = pack({"values": mode, "metadata": metadata}, "the tape's metadata")
        if len(head) > DEFAULT_LIMITS.max_frame_bytes:
            raise TapegradError(f"cannot store the tape's metadata: {len(head):,} bytes, over the frame limit")
        self.w.preamble(PREAMBLE)
        self.w.frame(HEAD, [head], len(head))

    def batch(self, leaves: LeafRows, records: RecordRows, names: list[tuple[int, str | None]]) -> None:
        """Write one batch of leaves, records and late names (see the module docstring).

        All leaves are written before all records (leaves depend on nothing), then the names.
        """
        if leaves.ids:
            self._leaves(leaves)
        if records.ops:
            self._records(records)
        if names:
            _in_frames(np.arange(len(names) + 1) * 16, lambda a, b: self._frame(NAME, names[a:b], None))

    def _leaves(self, rows: LeafRows) -> None:
        store = self.mode != "none"
        typed = _typed(rows.values, store)
        table, types = typed.table, typed.codes
        named = [(row, name) for row, name in enumerate(rows.names) if name is not None]
        size = np.arange(len(types) + 1) * (13 + 8 * store)
        for row, name in named:
            size[row + 1:] += len(name) + 8

        def write(a: int, b: int) -> None:
            cols: dict[str, Any] = {"count": b - a, "id": column(rows.ids[a:b], _U32, "a variable id"),
                                    "const": bytes(rows.const[a:b])}
            cols["types"], local = _subtable(types[a:b], table)
            cols["type"] = column(local, _U32, "a type index")
            layout = DataLayout(self.w.pos)
            if store:
                cols["data"], chunks = layout.column(typed.values[a:b], typed.nbytes[a:b])
                if chunks:
                    cols["chunks"] = chunks
            cols["names"] = [(row - a, name) for row, name in named if a <= row < b]
            self._frame(VARS, cols, layout)
            self.variables += b - a

        _in_frames(size, write)

    def _records(self, rows: RecordRows) -> None:
        n = len(rows.ops)
        store = self.mode == "all"
        ops = self._op_codes(rows.ops)
        try:
            attr_table, attr_list = attr_codes(rows.attrs)
        except Reject as bad:
            raise TapegradError(f"cannot store the attributes of record {self.records + bad.args[0]}: attributes must be plain "
                                f"data") from None
        attr_table[1:] = [a if type(a) is dict else dict(a) for a in attr_table[1:]]
        attrs = np.array(attr_list, dtype=np.int64)
        file_codes = np.array(rows.sources[1] if rows.sources is not None else (), dtype=np.int64)
        typed = _typed(rows.values, store)
        type_table, types = typed.table, typed.codes
        nin = rows.nin
        ends = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nin, out=ends[1:])
        size = np.arange(n + 1) * (22 + 8 * store + 8 * (rows.sources is not None)) + 4 * ends

        def write(a: int, b: int) -> None:
            cols: dict[str, Any] = {"count": b - a}
            cols["ops"], local = _subtable(ops[a:b], self._ops)
            cols["op"] = column(local, "H", "an op index (over 65,536 distinct op names in one frame?)")
            cols["nin"] = nin[a:b].astype("<u4").tobytes()  # (0 <= nin < 2**32: counted)
            cols["inputs"] = column(rows.inputs[int(ends[a]):int(ends[b])], _U32, "an input id")
            cols["output"] = column(rows.outs[a:b], _U32, "an output id")
            cols["types"], local = _subtable(types[a:b], type_table)
            cols["type"] = column(local, _U32, "a type index")
            cols["attrs"], local = _subtable(attrs[a:b], attr_table, first=1)
            cols["attr"] = column(local, _U32, "an attribute index")
            if rows.sources is not None:
                files, _, lines = rows.sources
                cols["files"], local = _subtable(file_codes[a:b], files)
                cols["file"] = column(local, _U32, "a file index")
                cols["line"] = column(lines[a:b], _U32, "a line number")
            layout = DataLayout(self.w.pos)
            if store:
                cols["data"], chunks = layout.column(typed.values[a:b], typed.nbytes[a:b])
                if chunks:
                    cols["chunks"] = chunks
            self._frame(RECS, cols, layout)
            self.records += b - a
            self.variables += b - a

        _in_frames(size, write)

    def _op_codes(self, ops: list[Any]) -> Ints:
        """Each op name's index into `self._ops` (the tables of frames are subsets of it)."""
        index = self._op_index
        try:
            return np.fromiter(map(index.__getitem__, ops), dtype=np.int64, count=len(ops))
        except KeyError:
            for op in dict.fromkeys(ops):
                if op not in index:
                    index[op] = len(self._ops)
                    self._ops.append(op)
            return np.fromiter(map(index.__getitem__, ops), dtype=np.int64, count=len(ops))

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


def _rows(obj: Any) -> int:
    return int(obj["count"]) if isinstance(obj, dict) else len(obj)
