"""Encoding tapes: columns of definitions -> HEAD, DATA, VARS, RECS, NAME and FOOT frames.

Contract:
- `Encoder(out, mode, metadata)` writes the preamble and the HEAD frame; each `batch(leaves,
  records, names)` call writes one batch of definitions (the DATA frames holding its arrays, then
  VARS frames for its leaves, RECS frames for its records and NAME frames for late names);
  `footer()` ends the tape.  Ids passed in are the dense ids the file stores.
- A batch is encoded in bulk: its attribute maps (told apart by `common.attrs_key`, so `True`
  is never stored for `1`) and types are interned once into batch-wide tables and code columns
  (types by runs: only where a value's type differs from the one before is it looked up), op
  names into an encoder-wide table; each frame stores the entries it uses, renumbered, in
  table order.  Columns become bytes once per batch (integers from Python through `struct`,
  which checks their range, the rest through numpy) and each frame takes its slice of them.
  Values of one type (the usual batch) are recognised and laid out without per-value numpy
  work beyond reading their dtype, dimensions and bytes.  Frames are sized from the column
  widths, so no frame is encoded twice, except when huge tables overflow the estimate.
- Arrays are written as raw C-order little-endian bytes at 64-byte-aligned offsets inside DATA
  frames, straight from the arrays' memory (a frame of values up to `PACK_BYTES` is copied into
  one buffer instead).  An array is never split while one frame can hold it: a DATA frame holds
  arrays up to `CHUNK_BYTES` in all, an array that does not fit in what remains of it starts a
  new frame, and an array larger than `CHUNK_BYTES` gets a frame of its own.  Only an array
  larger than `DATA_FRAME_LIMIT` (what a u32 frame length can state) is split over several
  frames; a reader must copy such an array to make it contiguous, every other one it can map.
- Raises `TapegradError` for what the format cannot represent (dtypes outside `DTYPES`, ids
  beyond 2**32 - 1, attributes or metadata that are not plain data); `OSError` from the file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import chain
from math import prod
from operator import attrgetter, itemgetter, ne
from typing import IO, Any, NamedTuple

import msgpack  # type: ignore[import-untyped]
import numpy as np

from ..dtypes import DTYPES
from ..errors import TapegradError
from ..tape import stored_error
from .common import Ints, Reject, allowed_dtype_name, attr_codes, check_plain
from .frames import (
    ALIGN,
    CHUNKED,
    DATA,
    ERROR_MINOR,
    FOOT,
    FRAME_HEAD,
    FRAME_TAIL,
    HEAD,
    NAME,
    RECS,
    VARS,
    FrameWriter,
    preamble_of,
)
from .limits import DEFAULT_LIMITS

CHUNK_BYTES = 1 << 30
"""Size at which a DATA frame of several arrays is closed: an array that does not fit in what
remains of a frame starts the next one, and an array larger than this gets a frame of its own
(up to `DATA_FRAME_LIMIT`).  Tests lower it to exercise frame boundaries.
"""

DATA_FRAME_LIMIT = (1 << 32) - 1
"""Largest DATA frame payload (frame lengths are u32).  Only an array larger than this (minus
its alignment padding) is split over several frames; tests lower it to write split arrays."""

PACK_BYTES = 4096  # DATA frames hold values up to this size as one copied buffer (`_packed`)
ROWS_PER_FRAME = 1 << 16  # definitions per VARS/RECS frame at most
FRAME_TARGET = 1 << 20  # structure frames are split below this size when they have several rows
_ESTIMATE = 7 * FRAME_TARGET // 8  # frames are first cut when their columns reach this size


class _TooBig(Exception):
    """A structure frame would exceed `FRAME_TARGET` (raised before anything is written)."""


_PADS = [bytes(k) for k in range(ALIGN)]
_WHAT = {VARS: "the tape's inputs", RECS: "a record", NAME: "the tape's names"}  # (for errors)
_DTYPE, _NDIM, _SHAPE = attrgetter("dtype"), attrgetter("ndim"), attrgetter("shape")

Sources = tuple[list[str], bytes, bytes]
"""Source locations of records: (file table, each record's index into it and each record's line,
as u32 little-endian columns)."""


class LeafRows(NamedTuple):
    """A batch of leaves, one entry per leaf: dense id, constant or not, name, and value (an
    ndarray, or a (shape, dtype) pair when the mode stores no value for it)."""

    ids: Ints
    const: list[bool]
    names: list[str | None]
    values: Sequence[Any]


class RecordRows(NamedTuple):
    """A batch of records as columns: op name, attributes (None or a map), number of inputs,
    all input ids concatenated, output id, output value (as in `LeafRows`), source locations.
    Ids are dense, below 2**32 (the caller checks)."""

    ops: Sequence[str]
    attrs: Sequence[Any]
    nin: Ints
    inputs: Ints
    outs: Ints
    values: Sequence[Any]
    sources: Sources | None


def stored_dtype_name(dt: Any) -> str:
    """The file name of dtype `dt` (big-endian dtypes name their little-endian twin)."""
    name = allowed_dtype_name(dt)
    if name is None and getattr(dt, "byteorder", "=") == ">":
        name = allowed_dtype_name(dt.newbyteorder("<"))
    if name is None:
        raise TapegradError(f"cannot store dtype {dt}: tapes hold only {', '.join(sorted(DTYPES))}")
    return name


def column(values: Sequence[int], code: str, what: str) -> bytes:
    """Little-endian bytes of the ints `values` as items of type `code` ("H": u16, "I": u32);
    TapegradError if a value does not fit (`struct` checks the range)."""
    try:
        return struct.pack(f"<{len(values)}{code}", *values)
    except struct.error:
        raise TapegradError(f"cannot store {what}: values must be integers in [0, 2**{8 * struct.calcsize(code)})") from None


def u32(values: Ints) -> bytes:
    """Little-endian u32 bytes of `values`, which the caller knows to be in range."""
    return values.astype("<u4").tobytes()


def gather(table: Any, keys: Sequence[Any]) -> Sequence[Any]:
    """`[table[k] for k in keys]`, looked up in C (by `itemgetter`); KeyError or IndexError as
    `table[k]` raises them."""
    if len(keys) > 1:
        return itemgetter(*keys)(table)  # type: ignore[no-any-return]
    return [table[k] for k in keys]


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


def pack(obj: Any, what: str, packer: Any = None) -> bytes:
    """The msgpack bytes of `obj` (through `packer`, a reusable `msgpack.Packer`, if given);
    TapegradError naming `what` if msgpack cannot store it."""
    try:
        if packer is not None:
            return packer.pack(obj)  # type: ignore[no-any-return]
        return msgpack.packb(obj, use_bin_type=True, use_single_float=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TapegradError(f"cannot store {what}: {exc} (attributes and metadata must be plain data)") from None


def storable(values: Sequence[Any]) -> list[Any]:
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
    shape] and each value's index into it, and each value's size in bytes (when storing), or
    their one size if they have one type."""

    values: list[Any]
    table: list[Any]
    codes: Ints
    nbytes: Ints
    size: int | None


def _typed(values: Sequence[Any], store: bool) -> Typed:
    """The `Typed` of `values`, each an ndarray or a (shape, dtype) pair (non-ndarrays are
    refused when storing).  A batch of values of one type (the usual case) is recognised
    without hashing any type."""
    if store and not set(map(type, values)) <= {np.ndarray}:
        values = storable(values)  # raises for what is not an array
    n = len(values)
    try:
        dtypes = list(map(_DTYPE, values))
        ndims = list(map(_NDIM, values))
    except AttributeError:  # (shape, dtype) pairs among the arrays
        distinct, codes = runs([(v.shape, v.dtype) if type(v) is np.ndarray else v for v in values])
    else:
        shape = _uniform_shape(values, ndims) if n and dtypes.count(dtypes[0]) == n else None
        if shape is not None:
            distinct, codes = [(shape, dtypes[0])], np.zeros(n, dtype=np.int64)
        else:
            distinct, codes = runs(list(zip(map(_SHAPE, values), dtypes, strict=True)))
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
    return Typed(list(values), table, codes, nbytes, sizes[0] if len(sizes) == 1 else None)


def _uniform_shape(values: Sequence[Any], ndims: list[int]) -> tuple[int, ...] | None:
    """The shape of all `values` (arrays with `ndims` dimensions) if they have one shape and at
    most one dimension, else None: `len` is cheaper than `shape`, which builds a tuple."""
    n = len(values)
    if ndims.count(0) == n:
        return ()
    if ndims.count(1) == n:
        lens = list(map(len, values))
        if lens.count(lens[0]) == n:
            return (lens[0],)
    return None


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


def _table(codes: Ints, table: list[Any], a: int, b: int, whole: bool, first: int = 0) -> tuple[list[Any], bytes]:
    """`_subtable` for rows a..b-1, with the codes as a u32 column; `whole`: these are all the
    rows that `table` was built for, so they use every entry."""
    if whole:
        return table[first:], u32(codes)
    sub, local = _subtable(codes[a:b], table, first)
    return sub, u32(local)


class DataLayout:
    """Places arrays in DATA frames starting at tape offset `start`: 64-aligned, each array in
    one frame unless it is larger than any frame may be (see the module docstring)."""

    def __init__(self, start: int) -> None:
        self.limit = max(int(DATA_FRAME_LIMIT), 2 * ALIGN)
        self.chunk = min(max(int(CHUNK_BYTES), 2 * ALIGN), self.limit)
        self.frames: list[tuple[list[Any], int]] = []
        self._start = start
        self._parts: list[Any] = []
        self._used = 0

    def column(self, values: list[Any], nbytes: Ints, size: int | None = None) -> tuple[bytes, list[Any]]:
        """Lay out `values` of `nbytes` bytes each (all of `size` bytes, if given); return the i64
        data column and the "chunks" list."""
        head = self._start + FRAME_HEAD + self._used
        lead = -head % ALIGN
        if size is None:
            padded = (nbytes + (ALIGN - 1)) & ~(ALIGN - 1)
            total = int(padded.sum())
        else:
            stride = (size + ALIGN - 1) & ~(ALIGN - 1)
            total = stride * len(values)
        if not total:
            return bytes(8 * len(values)), []
        if self._used + lead + total <= self.chunk:  # the common case: one frame, vectorised
            if size is None:
                at = np.concatenate(([0], np.cumsum(padded)[:-1]))  # from the first value's start
                offsets = head + lead + at
                offsets[nbytes == 0] = 0
            else:
                at = np.arange(0, total, stride)
                offsets = at + (head + lead)
            if lead:
                self._parts.append(_PADS[lead])
            self._parts += _packed(values, nbytes, at, total, size)
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

    def _pad(self) -> int:
        """Zero bytes needed before the next array, so that it starts at an aligned offset."""
        return -(self._start + FRAME_HEAD + self._used) % ALIGN

    def _add(self, value: Any) -> list[int]:
        """Place one array; return its (offset, length) pieces: one piece unless it is larger than
        `limit`, none if it is empty."""
        nbytes = value.nbytes
        if not nbytes:
            return []
        if self._used and self._used + self._pad() + nbytes > self.chunk:
            self._close()  # a new frame rather than a split array
        pad = self._pad()
        if pad + nbytes > self.limit:  # larger than one frame may be
            return self._split(value)
        if pad:
            self._parts.append(_PADS[pad])
        self._parts.append(value)
        at = self._start + FRAME_HEAD + self._used + pad
        self._used += pad + nbytes
        if self._used >= self.chunk:
            self._close()
        return [at, nbytes]

    def _split(self, value: Any) -> list[int]:
        """Place an array larger than a frame over several frames, `limit` bytes each (the last
        one less); return its pieces."""
        nbytes = value.nbytes
        ref: list[int] = []
        flat: Any = None
        done = 0
        while done < nbytes:
            at = self._start + FRAME_HEAD + self._used
            pad = -at % ALIGN
            room = self.limit - self._used - pad
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


def _packed(values: list[Any], nbytes: Ints, at: Ints, total: int, size: int | None) -> list[Any]:
    """Buffers holding `values` (of `nbytes` bytes each, or all of `size` bytes) at offsets `at`,
    padded to `total` bytes.

    Values up to `PACK_BYTES` are copied into one buffer (one part per value, each needing its
    own padding, would cost more to write than their bytes); bigger ones are written from their
    own memory, with a padding part after each.
    """
    if size is None and not np.any(nbytes != nbytes[0]):
        size = int(nbytes[0])
    if (int(nbytes.max()) if size is None else size) <= PACK_BYTES:
        try:
            raw = np.frombuffer(b"".join(values), dtype=np.uint8)
        except (TypeError, ValueError, BufferError):  # a value that is not C-contiguous
            raw = np.concatenate([np.ascontiguousarray(v).reshape(-1).view(np.uint8) for v in values])
        out = np.zeros(total, dtype=np.uint8)
        if size is not None:  # values of one size: rows of a matrix
            out.reshape(len(values), -1)[:, :size] = raw.reshape(len(values), size)
        else:  # each byte goes to its value's offset plus its place within the value
            starts = np.cumsum(nbytes) - nbytes
            out[np.repeat(at - starts, nbytes) + np.arange(len(raw))] = raw
        return [out]
    pads = list(map(_PADS.__getitem__, ((-nbytes) % ALIGN).tolist()))
    return list(chain.from_iterable(zip(values, pads, strict=True)))


def _in_frames(count: int, small: bool, size: Callable[[], Ints], write: Callable[[int, int], None]) -> None:
    """Call `write(a, b)` on consecutive row ranges covering all rows, each small enough for one
    frame.  `small` says that all rows surely fit one frame; otherwise `size()[k]` is the estimated
    size of rows 0..k-1 (an array of rows + 1 entries), and a range holds at most `ROWS_PER_FRAME`
    rows and is halved while its frame would exceed `FRAME_TARGET`."""
    sizes: Ints | None = None
    a = 0
    while a < count:
        b = count
        if a or not small:
            sizes = size() if sizes is None else sizes
            if b - a > ROWS_PER_FRAME or sizes[b] - sizes[a] > _ESTIMATE:
                fit = int(np.searchsorted(sizes, sizes[a] + _ESTIMATE, side="right")) - 1
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


def footer_error(error: Any) -> tuple[str, str] | None:
    """A tape's `error` (None, or the recording's exception as (type name, message)) as the footer
    stores it: both strings capped (`tape.stored_error`); TapegradError for anything else."""
    if error is None:
        return None
    if type(error) is not tuple or len(error) != 2 or not all(type(part) is str for part in error):
        raise TapegradError(f"cannot store the tape's error: it must be None or a (type name, message) pair of "
                            f"strings, got {type(error).__name__}")
    return stored_error(*error)


class Encoder:
    """Writes the frames of one tape: preamble and header, batches of definitions, footer.

    `minor` is the minor format version the preamble declares: 0, or `ERROR_MINOR` for a tape
    whose footer may hold the recording's exception (`footer(error=...)`).
    """

    def __init__(self, out: IO[bytes], mode: str, metadata: dict[str, Any], *, minor: int = 0) -> None:
        self.w = FrameWriter(out)
        self.minor = minor
        self.mode = mode
        self.records = 0
        self.variables = 0
        self._ops: list[Any] = []  # every op name written so far, in order of first use
        self._op_index: dict[Any, int] = {}
        self._packer = msgpack.Packer(use_bin_type=True, use_single_float=False)
        try:
            check_plain(metadata, DEFAULT_LIMITS)
        except TapegradError as exc:
            raise TapegradError(f"cannot store the tape's metadata: {exc}") from None
        head = pack({"values": mode, "metadata": metadata}, "the tape's metadata")
        if len(head) > DEFAULT_LIMITS.max_frame_bytes:
            raise TapegradError(f"cannot store the tape's metadata: {len(head):,} bytes, over the frame limit")
        self.w.preamble(preamble_of(minor))
        self.w.frame(HEAD, [head], len(head))

    def batch(self, leaves: LeafRows, records: RecordRows, names: list[tuple[int, str | None]]) -> None:
        """Write one batch of leaves, records and late names (see the module docstring).

        All leaves are written before all records (leaves depend on nothing), then the names.
        """
        if len(leaves.ids):
            self._leaves(leaves)
        if records.ops:
            self._records(records)
        if names:
            small = len(names) <= min(ROWS_PER_FRAME, _ESTIMATE // 16)
            _in_frames(len(names), small, lambda: np.arange(len(names) + 1) * 16,
                       lambda a, b: self._frame(NAME, names[a:b], None))

    def _leaves(self, rows: LeafRows) -> None:
        n = len(rows.ids)
        store = self.mode != "none"
        typed = _typed(rows.values, store)
        named = [(row, name) for row, name in enumerate(rows.names) if name is not None]
        ids = u32(rows.ids)
        per_row = 13 + 8 * store

        def size() -> Ints:
            size = np.arange(n + 1) * per_row
            for row, name in named:
                size[row + 1:] += len(name) + 8
            return size

        def write(a: int, b: int) -> None:
            cols: dict[str, Any] = {"count": b - a, "id": ids[4 * a:4 * b], "const": bytes(rows.const[a:b])}
            cols["types"], cols["type"] = _table(typed.codes, typed.table, a, b, a == 0 and b == n)
            layout = self._data(cols, typed, a, b, store)
            cols["names"] = [(row - a, name) for row, name in named if a <= row < b]
            self._frame(VARS, cols, layout)
            self.variables += b - a

        small = n <= ROWS_PER_FRAME and n * per_row + sum(len(name) + 8 for _, name in named) <= _ESTIMATE
        _in_frames(n, small, size, write)

    def _records(self, rows: RecordRows) -> None:
        n = len(rows.ops)
        store = self.mode == "all"
        ops = self._op_codes(rows.ops)
        attr_table: list[Any] = [None]
        attrs: Ints | None = None
        if rows.attrs.count(None) != n:
            try:
                attr_table, attr_list = attr_codes(rows.attrs)
            except Reject as bad:
                raise TapegradError(f"cannot store the attributes of record {self.records + bad.args[0]}: attributes must "
                                    f"be plain data") from None
            attr_table[1:] = [a if type(a) is dict else dict(a) for a in attr_table[1:]]
            attrs = np.array(attr_list, dtype=np.int64)
        sources = rows.sources
        typed = _typed(rows.values, store)
        nin = rows.nin
        ends = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nin, out=ends[1:])
        inputs, outs = u32(rows.inputs), u32(rows.outs)
        per_row = 22 + 8 * store + 8 * (sources is not None)

        def write(a: int, b: int) -> None:
            whole = a == 0 and b == n
            cols: dict[str, Any] = {"count": b - a}
            cols["ops"], cols["op"] = self._op_table(ops[a:b])
            cols["nin"] = u32(nin[a:b])
            cols["inputs"] = inputs[4 * int(ends[a]):4 * int(ends[b])]
            cols["output"] = outs[4 * a:4 * b]
            cols["types"], cols["type"] = _table(typed.codes, typed.table, a, b, whole)
            if attrs is None:
                cols["attrs"], cols["attr"] = [], bytes(4 * (b - a))
            else:
                cols["attrs"], cols["attr"] = _table(attrs, attr_table, a, b, whole, first=1)
            if sources is not None:
                files, file_column, lines = sources
                cols["files"], cols["file"] = (files, file_column) if whole else _table(
                    np.frombuffer(file_column, dtype="<u4").astype(np.int64), files, a, b, False)
                cols["line"] = lines[4 * a:4 * b]
            self._frame(RECS, cols, self._data(cols, typed, a, b, store))
            self.records += b - a
            self.variables += b - a

        small = n <= ROWS_PER_FRAME and n * per_row + 4 * int(ends[-1]) <= _ESTIMATE
        _in_frames(n, small, lambda: np.arange(n + 1) * per_row + 4 * ends, write)

    def _data(self, cols: dict[str, Any], typed: Typed, a: int, b: int, store: bool) -> DataLayout:
        """The DATA frames for the values of rows a..b-1 (none unless `store`), placed after what
        was written so far; their references go into `cols` ("data", and "chunks" if any)."""
        layout = DataLayout(self.w.pos)
        if store:
            cols["data"], chunks = layout.column(typed.values[a:b], typed.nbytes[a:b], typed.size)
            if chunks:
                cols["chunks"] = chunks
        return layout

    def _op_codes(self, ops: Sequence[Any]) -> Sequence[int]:
        """Each op name's index into `self._ops` (the tables of frames are subsets of it)."""
        index = self._op_index
        try:
            return gather(index, ops)
        except KeyError:
            for op in dict.fromkeys(ops):
                if op not in index:
                    index[op] = len(self._ops)
                    self._ops.append(op)
            return gather(index, ops)

    def _op_table(self, codes: Sequence[int]) -> tuple[list[Any], bytes]:
        """`_subtable` of `self._ops` for these codes, with a u16 column."""
        table, local = _subtable(np.fromiter(codes, dtype=np.int64, count=len(codes)), self._ops)
        if len(table) > 1 << 16:
            raise TapegradError("cannot store an op index: over 65,536 distinct op names in one frame")
        return table, local.astype("<u2").tobytes()

    def _frame(self, tag: bytes, obj: Any, layout: DataLayout | None) -> None:
        """Pack `obj` as a `tag` frame, after the DATA frames of `layout`."""
        payload = pack(obj, _WHAT[tag], self._packer)
        if len(payload) > FRAME_TARGET and (len(payload) > DEFAULT_LIMITS.max_frame_bytes or _rows(obj) > 1):
            raise _TooBig  # nothing written yet: the caller retries with fewer rows
        if layout is not None:
            for parts, length in layout.finish():
                self.w.frame(DATA, parts, length)
        self.w.frame(tag, [payload], len(payload))

    def footer(self, error: tuple[str, str] | None = None) -> None:
        """End the tape; `error` (from `footer_error`) is the exception that ended the recording."""
        foot: dict[str, Any] = {"frames": self.w.frames, "records": self.records, "variables": self.variables}
        if error is not None:
            if self.minor < ERROR_MINOR:
                raise TapegradError(f"a version 1.{self.minor} tape cannot store an error (Encoder(minor=...))")
            foot["error"] = {"type": error[0], "message": error[1]}
        payload = pack(foot, "the footer")
        self.w.frame(FOOT, [payload], len(payload))
        self.w.commit()


def _rows(obj: Any) -> int:
    return int(obj["count"]) if isinstance(obj, dict) else len(obj)
