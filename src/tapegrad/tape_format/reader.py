"""Reading tapes: bytes, file objects or paths -> a fully validated `Tape`.

Contract:
- `read(source, recover=, verify=, limits=)` parses the container (`frames`), decodes
  every frame with msgpack under strict limits, checks the graph's columns (`validate.validated`)
  and builds a `Tape` (`Tape.from_parts`); nothing unvalidated ever leaves this module.  Frames are decoded into
  numpy columns (ids, op, attribute and type codes into tape-wide tables), from which the records
  are built a group of equal arity at a time and which `validate.check` validates in bulk.
- Only `TapegradError` subclasses escape for bad content: `TruncatedTapeError` for a tape that
  ends early (strict mode), `LimitError` for a tape over a limit, `TapeFormatError` for anything
  else, each naming the byte offset (and record index where there is one).  msgpack's own
  exceptions are wrapped.  `OSError` escapes only for the file itself.
- Nothing from the file is executed or used as an attribute name: op names are looked up in
  `REGISTRY` (by `validate`), dtypes are matched as exact strings against `DTYPES` before any
  `np.dtype` call, no pickle, no eval.
- Memory: the tape's bytes are read once into one buffer (or mapped); the tape's values are a
  `stored.StoredValues` over it (offsets and types in columns: each value's read-only zero-copy
  view is made when it is read), except arrays split over several chunks (arrays over 4 GiB, or
  files of older writers), which are copied once.  Frames' columns are kept narrow (uint32); the
  bulk validation runs on int64 copies before the records are built (`validate.validated`), and
  the records (sharing one int per variable id) are built a chunk at a time, each column let go
  once used.  Every length and count is checked against the bytes present and the limits before
  use, so memory is bounded by the file size plus the largest chunked array plus about 200 bytes
  per record: under 3x the file size for a tape of tiny values (`tests/test_format_stored.py`).
- Recover mode returns the tape made of the whole frames before the first damaged one (a crash
  leaves whole records) and reports what it dropped in `tape.recovery` (a `Recovery`) and with a
  `TapeRecoveryWarning`; a strict load of a complete tape sets `tape.recovery = None`.
- A footer's `error` (the exception that ended the recording; format 1.1) becomes `tape.error`
  after its types and lengths are checked; it is None when the footer has none or is missing.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, pairwise
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

from ..collector import no_gc
from ..dtypes import DTYPES
from ..errors import LimitError, TapeFormatError, TapegradError, TruncatedTapeError, escape, show
from ..tape import ERROR_MESSAGE_BYTES, ERROR_TYPE_BYTES, VALUE_MODES, RawRecord, Tape
from .common import AvalTable, Ints, check_plain
from .frames import (
    ALIGN,
    CHUNKED,
    DATA,
    ERROR_MINOR,
    FOOT,
    HEAD,
    MAGIC,
    MAJOR,
    MINOR,
    NAME,
    PREAMBLE_SIZE,
    RECS,
    VARS,
    Frame,
    FrameScanner,
)
from .limits import DEFAULT_LIMITS, Limits
from .sources import Source
from .stored import StoredValues
from .validate import Graph, Locator, locate, validated


class TapeRecoveryWarning(UserWarning):
    """A tape loaded with `recover=True` was damaged or incomplete; see `tape.recovery`."""


@dataclass(frozen=True)
class Recovery:
    """What `recover=True` kept and dropped.

    `complete` is True when the tape had its footer (only bytes after it were dropped).
    `offset` is where the problem starts; bytes from `kept_bytes` on were not used.
    """

    complete: bool
    records: int
    variables: int
    kept_bytes: int
    dropped_bytes: int
    offset: int
    reason: str


# ---- parsing --------------------------------------------------------------------------------

def read(source: Source, *, recover: bool, verify: bool, limits: Limits | None) -> Tape:
    """Parse, build and validate a tape from `source` (see the module docstring)."""
    limits = DEFAULT_LIMITS if limits is None else limits
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a tapegrad Limits, got {type(limits).__name__}")
    with no_gc():
        return _read(source, recover=recover, verify=verify, limits=limits)


def _read(source: Source, *, recover: bool, verify: bool, limits: Limits) -> Tape:
    try:
        minor = _preamble(source)
        scanner = FrameScanner(source.buf, source.size, source.wait, source.crc, verify_data=verify,
                               optional_ok=minor > MINOR)
        builder = _Builder(source.buf, limits, minor)
        for frame in scanner.frames():
            builder.take(frame)
        stop = scanner.stop
        recovery: Recovery | None = None
        if stop is not None:
            if not recover:
                hint = "; load with recover=True to get the records before it" if stop.truncated else ""
                raise (TruncatedTapeError if stop.truncated else TapeFormatError)(stop.message + hint)
            if builder.header is None:
                raise (TruncatedTapeError if stop.truncated else TapeFormatError)(
                    f"nothing to recover: {stop.message}, before the header frame was complete")
            recovery = Recovery(builder.complete, builder.records, builder.variables, scanner.end,
                                source.size() - scanner.end, stop.offset, stop.message)
        # (no stop: the scanner ended just after the footer, which `builder.take` accepted)
    finally:
        source.close()
    tape = validated(builder.records + builder.variables, builder.graph, builder.build, limits)
    tape.recovery = recovery
    tape.error = builder.raised
    if recovery is not None:
        warnings.warn(TapeRecoveryWarning(f"recovered {recovery.records} records; dropped {recovery.dropped_bytes:,} "
                                          f"bytes: {recovery.reason}"), stacklevel=3)
    return tape


def _preamble(source: Source) -> int:
    """Check magic and version; return the file's minor version."""
    have = source.wait(PREAMBLE_SIZE)
    head = bytes(source.buf[:min(PREAMBLE_SIZE, source.size())])
    if not have:
        if not head:
            raise TruncatedTapeError("empty input (0 bytes): not a tape")
        if MAGIC.startswith(head[:len(MAGIC)]):
            raise TruncatedTapeError(f"the tape ends at byte {len(head)}, inside its {PREAMBLE_SIZE}-byte preamble")
    if head[:len(MAGIC)] != MAGIC:
        raise TapeFormatError(f"not a tapegrad tape: bad magic bytes at byte 0 ({_sniff(head)})")
    major = int.from_bytes(head[8:10], "little")
    minor = int.from_bytes(head[10:12], "little")
    if major != MAJOR:
        newer = "newer than" if major > MAJOR else "not supported by"
        raise TapeFormatError(f"tape format version {major}.{minor} is {newer} this tapegrad, which reads "
                              f"version {MAJOR}.x; upgrade tapegrad to read it")
    return minor


def _sniff(head: bytes) -> str:
    """A guess at what the bytes are, for the error message (never acted upon)."""
    if head[:1] == b"\x80" or (head[:1] in (b"(", b"]", b"}") and b"." in head):
        return "this looks like a Python pickle, which tapegrad never loads"
    if head.startswith(b"\x93NUMPY"):
        return "this looks like a .npy file"
    if head.startswith(b"PK"):
        return "this looks like a zip or .npz file"
    return f"starts with {head[:8]!r}"


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack map hook: refuse duplicate keys (readers in other languages might keep the first)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate map key")
    return result


class _Builder:
    """Accumulates a tape's columns from checked frames; `build()` makes the `Tape` (not yet
    validated) and `graph()` the same graph as columns, for `validate.check`."""

    def __init__(self, buf: memoryview, limits: Limits, minor: int) -> None:
        self.buf = buf
        self.limits = limits
        self.minor = minor
        self.newer = minor > MINOR
        self.raised: tuple[str, str] | None = None  # the footer's "error": the recording's exception
        self.header: dict[str, Any] | None = None
        self.mode = "none"
        self.complete = False
        self.frames = 0
        self.records = 0
        self.variables = 0
        self.data_starts: list[int] = []
        self.data_ends: list[int] = []
        self.types: AvalTable = []  # distinct (shape, dtype) of the whole tape; loaded avals share them
        self._type_ids: dict[tuple[str, tuple[int, ...]], int] = {}
        self._nbytes: list[int] = []  # bytes of a value of each type
        self.ops: list[str] = []
        self._op_ids: dict[str, int] = {}
        self.attrs: list[Any] = [None]  # every frame's attribute table, concatenated; 0: none
        self.ids: set[int] = set()  # the variables defined so far
        # Columns of the frames taken, per frame; stored values as "offsets" (and "copies": row -> array)
        self.leaf: dict[str, Any] = {"id": [], "type": [], "const": [], "frame": [], "offsets": [], "copies": {}}
        self.rec: dict[str, Any] = {"op": [], "attr": [], "nin": [], "inputs": [], "output": [], "type": [],
                                    "frame": [], "offsets": [], "copies": {}}
        self.names: dict[int, str] = {}
        self.files: list[str] = []  # source file and line of each record, while all records have one
        self.lines: list[Ints] | None = []
        self.cols: dict[str, Any] = {}  # the frames' columns joined (`_join`), narrow
        self._frame: Frame | None = None

    # -- errors --
    def error(self, message: str, record: int | None = None, kind: type[TapeFormatError] = TapeFormatError) -> TapeFormatError:
        f = self._frame
        where = f" (frame {f.number} {f.tag.decode()} at byte {f.offset})" if f is not None else ""
        prefix = f"record {record}: " if record is not None else ""
        return kind(prefix + message + where)

    def unpack(self, frame: Frame, use_list: bool) -> Any:
        payload = frame.payload
        lim = self.limits
        try:
            return msgpack.unpackb(
                payload, raw=False, strict_map_key=True, use_list=use_list, object_pairs_hook=_pairs,
                max_str_len=lim.max_string_bytes, max_bin_len=lim.max_string_bytes,
                max_array_len=len(payload), max_map_len=len(payload), max_ext_len=0, ext_hook=_no_ext)
        except Exception as exc:  # msgpack raises a dozen types (ValueError, StackError, UnicodeDecodeError...)
            text = escape(str(exc), 200)
            if type(exc) is ValueError and ("max_str_len" in text or "max_bin_len" in text):
                raise self.error(f"a str or bin value is longer than the limit max_string_bytes="
                                 f"{lim.max_string_bytes:,} (msgpack: {text}); if you trust this tape, raise the "
                                 f"limit: load(..., limits=Limits(max_string_bytes=...))", kind=LimitError) from None
            raise self.error(f"invalid msgpack: {type(exc).__name__}: {text}") from None

    # -- frames --
    def take(self, frame: Frame) -> None:
        self._frame = frame
        self.frames += 1
        tag = frame.tag
        if self.header is None and (tag != HEAD or frame.number):  # (not even an ancillary frame precedes it)
            raise self.error("the first frame must be the HEAD frame")
        if tag == DATA:
            start = frame.offset + 8
            self.data_starts.append(start)
            self.data_ends.append(start + len(frame.payload))
            return
        self.limits.check("max_frame_bytes", len(frame.payload), "the payload of frame {} ({}) at byte {}",
                          frame.number, tag.decode(), frame.offset)
        if tag == HEAD:
            if self.header is not None:
                raise self.error("a second HEAD frame")
            self._head(self.unpack(frame, use_list=True))
        elif tag == RECS:
            self._recs(self.unpack(frame, use_list=False))
        elif tag == VARS:
            self._vars(self.unpack(frame, use_list=False))
        elif tag == NAME:
            self._names(self.unpack(frame, use_list=False))
        elif tag == FOOT:
            self._foot(self.unpack(frame, use_list=True))

    def _map(self, obj: Any, what: str, required: Mapping[str, type],
             optional: Mapping[str, type] | None = None) -> dict[str, Any]:
        if type(obj) is not dict:
            raise self.error(f"the {what} must be a map, got {show(obj)}")
        optional = optional or {}
        for key, kind in {**required, **optional}.items():
            if key not in obj:
                if key in optional:
                    continue
                raise self.error(f"the {what} lacks the key {key!r}")
            if type(obj[key]) is not kind:
                raise self.error(f"{what} key {key!r} must be a {kind.__name__}, got {show(obj[key])}")
        extra = [k for k in obj if k not in required and k not in optional]
        if extra and not self.newer:
            raise self.error(f"unknown {what} key {show(extra[0])}")
        return obj

    def _head(self, obj: Any) -> None:
        head = self._map(obj, "header", {"values": str, "metadata": dict})
        if head["values"] not in VALUE_MODES:
            raise self.error(f"header 'values' must be one of {VALUE_MODES}, got {show(head['values'])}")
        try:
            check_plain(head["metadata"], self.limits)
        except LimitError as exc:
            raise self.error(str(exc), kind=LimitError) from None
        except TapegradError as exc:
            raise self.error(str(exc)) from None
        self.mode = head["values"]
        self.header = head

    def _foot(self, obj: Any) -> None:
        optional = {"error": dict} if self.minor >= ERROR_MINOR else {}
        foot = self._map(obj, "footer", {"frames": int, "records": int, "variables": int}, optional)
        if "error" in optional and "error" in foot:  # (a reader of 1.0 would ignore it)
            error = self._map(foot["error"], "footer error", {"type": str, "message": str})
            for key, cap in (("type", ERROR_TYPE_BYTES), ("message", ERROR_MESSAGE_BYTES)):
                if len(error[key].encode()) > cap:
                    raise self.error(f"the footer error's {key} is longer than {cap:,} bytes")
            self.raised = (error["type"], error["message"])
        got = {"frames": self._frame.number if self._frame else 0, "records": self.records, "variables": self.variables}
        for key, count in got.items():
            if foot[key] != count:
                raise self.error(f"the footer counts {foot[key]} {key} but the tape has {count}")
        if self.ids and max(self.ids) != len(self.ids) - 1:
            raise self.error("variable ids of a complete tape must be 0..n-1")
        self.complete = True

    def _columns(self, obj: Any, what: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
        if type(obj) is not dict:
            raise self.error(f"a {what} frame must hold a map of columns, got {show(obj)}")
        for key in required:
            if key not in obj:
                raise self.error(f"the {what} frame lacks the column {key!r}")
        if not self.newer:
            for key in obj:
                if key not in required and key not in optional:
                    raise self.error(f"unknown {what} column {show(key)}")
        count = obj["count"]
        if type(count) is not int or count < 0:
            raise self.error(f"a {what} row count must be a non-negative integer, got {show(count)}")
        return obj

    def _column(self, cols: dict[str, Any], key: str, dtype: str, count: int) -> Ints:
        """A fixed-width little-endian integer column of `count` entries, as int64."""
        raw = cols[key]
        itemsize = int(dtype[-1])
        if type(raw) is not bytes or len(raw) != count * itemsize:
            got = f"{len(raw)} bytes" if type(raw) is bytes else show(raw)
            raise self.error(f"column {key!r} must be a bin of {count} x {itemsize} bytes, got {got}")
        return np.frombuffer(raw, dtype=dtype).astype(np.int64)

    def _lookup(self, table: Any, column: Ints, key: str) -> Any:
        """`table[column]`: a column of indices into a frame's table, looked up (bounds checked)."""
        try:
            return table[column]
        except IndexError:
            raise self.error(f"column {key!r} refers to entry {int(column.max())} of a table of {len(table)}") from None

    def _type_id(self, dtype: Any, shape: Any) -> int:
        """The tape-wide index of a stored type, checked against DTYPES and the limits."""
        if type(dtype) is not str or dtype not in DTYPES:  # exact string match before any np.dtype call
            raise self.error(f"dtype {show(dtype)} is not one of the allowed dtypes {sorted(DTYPES)}")
        if type(shape) is not tuple:
            raise self.error(f"a shape must be an array of integers, got {show(shape)}")
        for d in shape:
            if type(d) is not int or d < 0:
                raise self.error(f"shape dimensions must be non-negative integers, got {show(d)}")
        key = (dtype, shape)
        found = self._type_ids.get(key)
        if found is not None:
            return found
        elements = self.limits.elements(shape, "a variable")
        dt = DTYPES[dtype]
        self._type_ids[key] = found = len(self.types)
        self.types.append((shape, dt))
        self._nbytes.append(elements * dt.itemsize)
        return found

    def _types(self, cols: dict[str, Any], count: int) -> Ints:
        """The type column of a VARS/RECS frame as tape-wide type indices, all checked."""
        table = cols["types"]
        if type(table) is not tuple:
            raise self.error(f"'types' must be an array of [dtype, shape] pairs, got {show(table)}")
        ids = []
        for entry in table:
            if type(entry) is not tuple or len(entry) != 2:
                raise self.error(f"a 'types' entry must be a [dtype, shape] pair, got {show(entry)}")
            ids.append(self._type_id(entry[0], entry[1]))
        column = self._column(cols, "type", "<u4", count)
        found = self._lookup(np.array(ids, dtype=np.int64), column, "type")
        self._all_used(column, table, "types")
        return found  # type: ignore[no-any-return]

    def _all_used(self, column: Ints, table: Sequence[Any], key: str, first: int = 0) -> None:
        """Every entry of a frame's table `key`, which `column` refers to as `first`, `first + 1`,
        ... (indices already checked), is used by a row: a table holds only the entries its rows
        use, so that nothing in a file goes unchecked (docs/FORMAT.md, section 5)."""
        if not table:
            return
        used = np.bincount(column, minlength=len(table) + first)[first:]
        if not used.all():
            k = int(np.argmin(used != 0))
            raise self.error(f"entry {k} ({show(table[k])}) of the table {key!r} is used by no row "
                             f"(a table holds only the entries its frame's rows use)")

    def _data(self, cols: dict[str, Any], count: int, types: Ints, into: dict[str, list[Any]]) -> None:
        """Check the data references of a VARS/RECS frame's stored values and append them to
        `into` (its "offsets" and, keyed by row among all of `into`'s rows, its "copies"): each an
        aligned range inside an earlier DATA frame (0 for an empty array), or pieces of several
        (copied once into a read-only array).  No array is made for a value that is not copied
        (`StoredValues` makes it when it is read), except to check that every byte of a bool value
        is 0 or 1 (numpy would show other bytes as True but compute with them as they are:
        `x == True` and `x.view(np.uint8)` would disagree)."""
        offsets = self._column(cols, "data", "<i8", count)
        chunked: dict[int, Any] = {}
        if "chunks" in cols:
            pieces = cols["chunks"]
            if type(pieces) is not tuple:
                raise self.error(f"'chunks' must be an array of [row, pieces] pairs, got {show(pieces)}")
            for item in pieces:
                if type(item) is not tuple or len(item) != 2 or type(item[0]) is not int \
                        or not 0 <= item[0] < count or item[0] in chunked or offsets[item[0]] != CHUNKED:
                    raise self.error(f"a 'chunks' entry must be [row, [offset, length, ...]] for a row marked -2, "
                                     f"got {show(item)}")
                chunked[item[0]] = item[1]
        if count:
            self.limits.check("max_array_bytes", max(self._nbytes[t] for t in set(types.tolist())),
                              "the payload of one array in bytes")
        nbytes = np.array(self._nbytes, dtype=np.int64)[types]  # (each within max_array_bytes now)
        starts, ends = np.array(self.data_starts, dtype=np.int64), np.array(self.data_ends, dtype=np.int64)
        frame = np.searchsorted(starts, offsets, side="right") - 1  # the DATA frame an offset falls in
        inside = (offsets > 0) & (offsets % ALIGN == 0) & (frame >= 0) & (
            offsets <= (ends[frame] if len(ends) else 0) - nbytes)  # (no overflow: file offsets may be anything)
        good = np.where(nbytes > 0, inside, offsets == 0)
        if chunked:
            good[list(chunked)] = True
        if not good.all():
            row = int(np.argmin(good))
            if offsets[row] == CHUNKED:
                raise self.error(f"row {row} is marked as chunked (-2) but has no 'chunks' entry")
            raise self._bad_reference(row, int(offsets[row]), int(nbytes[row]))
        first = sum(map(len, into["offsets"]))
        for row, ref in sorted(chunked.items()):
            shape, dt = self.types[int(types[row])]
            into["copies"][first + row] = self._array(ref, shape, dt, int(nbytes[row]))
        bools = [t for t in set(types.tolist()) if self.types[t][1].kind == "b"]
        for row in np.flatnonzero(np.isin(types, bools)).tolist() if bools else ():
            shape, dt = self.types[int(types[row])]
            off = int(offsets[row])
            value = into["copies"][first + row] if off < 0 else np.ndarray(shape, dtype=dt, buffer=self.buf, offset=off)
            if value.size and int(value.view(np.uint8).max()) > 1:
                raise self.error(f"row {row}: a bool value holds a byte other than 0 or 1")
        into["offsets"].append(offsets)

    def _bad_reference(self, row: int, off: int, nbytes: int) -> TapeFormatError:
        return self.error(f"row {row}: the data reference {off} for {nbytes} bytes is not a 64-aligned range "
                          f"inside an earlier DATA frame (nor 0 for an empty array)")

    def _array(self, ref: Any, shape: tuple[int, ...], dt: np.dtype[Any], nbytes: int) -> Any:
        """A value split over several DATA frames, copied once into a read-only array."""
        if type(ref) is not tuple or len(ref) % 2 or not ref:
            raise self.error(f"chunk pieces must be (offset, length) pairs, got {show(ref)}")
        total = 0
        for k in range(0, len(ref), 2):
            off, n = ref[k], ref[k + 1]
            if type(off) is not int or type(n) is not int or n <= 0 or off < 0:
                raise self.error(f"a data chunk must be a non-negative offset and a positive length, got "
                                 f"{show(off)}, {show(n)}")
            if off % ALIGN:
                raise self.error(f"array data at byte {off} is not aligned to {ALIGN} bytes")
            j = bisect.bisect_right(self.data_starts, off) - 1
            if j < 0 or off + n > self.data_ends[j]:
                raise self.error(f"array data at bytes {off}..{off + n} is not inside an earlier DATA frame")
            total += n
        if total != nbytes:
            raise self.error(f"an array of shape {shape} and dtype {dt.name} needs {nbytes} bytes, but its chunks "
                             f"cover {total}")
        flat = np.empty(nbytes, dtype=np.uint8)
        pos = 0
        for k in range(0, len(ref), 2):
            off, n = ref[k], ref[k + 1]
            flat[pos:pos + n] = np.frombuffer(self.buf, dtype=np.uint8, count=n, offset=off)
            pos += n
        flat.flags.writeable = False  # (so that no view of it can be made writeable again)
        return flat.view(dt).reshape(shape)

    def _define(self, ids: Ints) -> None:
        """Record the variables a frame defines: each exactly once (single assignment)."""
        new = ids.tolist()
        size = len(self.ids)
        if self.ids.isdisjoint(new):
            self.ids.update(new)
            if len(self.ids) == size + len(new):
                self.variables = len(self.ids)
                return
            self.ids.difference_update(new)  # an id twice within the frame: undo, then name it
        seen: set[int] = set()
        for vid in new:
            if vid in seen or vid in self.ids:
                raise self.error(f"variable v{vid} is defined twice")
            seen.add(vid)

    def _vars(self, obj: Any) -> None:
        cols = self._columns(obj, "VARS", ("count", "id", "const", "types", "type", "names"),
                             ("data", "chunks"))
        count = cols["count"]
        self.limits.check("max_variables", self.variables + count, "the number of variables")
        ids = self._column(cols, "id", "<u4", count)
        const = cols["const"]
        if type(const) is not bytes or len(const) != count or const.strip(b"\x00\x01"):
            raise self.error(f"column 'const' must be {count} bytes of 0 or 1")
        types = self._types(cols, count)
        stored = self.mode != "none"
        if ("data" in cols) != stored:
            raise self.error(f"leaves {'lack' if stored else 'have'} stored data but the tape stores values={self.mode!r}")
        names = cols["names"]
        if type(names) is not tuple:
            raise self.error(f"'names' must be an array of [row, name] pairs, got {show(names)}")
        for item in names:
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not int or not 0 <= item[0] < count \
                    or type(item[1]) is not str:
                raise self.error(f"a 'names' entry must be [row, name], got {show(item)}")
        if stored:
            self._data(cols, count, types, self.leaf)
        self._define(ids)
        self.leaf["id"].append(_narrow(ids))
        self.leaf["frame"].append(np.full(count, self.frames, dtype=_NARROW))
        self.leaf["type"].append(_narrow(types))
        self.leaf["const"].append(np.frombuffer(const, dtype=np.uint8))
        self.names.update((int(ids[row]), name) for row, name in names)

    def _recs(self, obj: Any) -> None:
        cols = self._columns(obj, "RECS", ("count", "ops", "op", "nin", "inputs", "output", "types", "type",
                                           "attrs", "attr"), ("data", "chunks", "files", "file", "line"))
        count = cols["count"]
        self.limits.check("max_records", self.records + count, "the number of records")
        self.limits.check("max_variables", self.variables + count, "the number of variables")
        ops = cols["ops"]
        if type(ops) is not tuple or not all(type(op) is str for op in ops):
            raise self.error(f"'ops' must be an array of op names, got {show(ops)}")
        op_column = self._column(cols, "op", "<u2", count)
        op = self._lookup(np.array([self._op_id(name) for name in ops], dtype=np.int64), op_column, "op")
        self._all_used(op_column, ops, "ops")
        nin = self._column(cols, "nin", "<u4", count)
        inputs = self._column(cols, "inputs", "<u4", int(nin.sum()))
        output = self._column(cols, "output", "<u4", count)
        types = self._types(cols, count)
        table = cols["attrs"]
        if type(table) is not tuple or not all(type(a) is dict for a in table):
            raise self.error(f"'attrs' must be an array of maps, got {show(table)}")
        into = np.arange(len(self.attrs) - 1, len(self.attrs) + len(table))  # into the tape-wide table
        into[0] = 0
        attr_column = self._column(cols, "attr", "<u4", count)
        attr = self._lookup(into, attr_column, "attr")
        self._all_used(attr_column, table, "attrs", first=1)
        stored = self.mode == "all"
        if ("data" in cols) != stored:
            raise self.error(f"records {'lack' if stored else 'have'} stored data but the tape stores "
                             f"values={self.mode!r}")
        self._sources(cols, count)
        if stored:
            self._data(cols, count, types, self.rec)
        self._define(output)
        self.records += count
        rec = self.rec
        rec["op"].append(_narrow(op))
        rec["attr"].append(_narrow(attr))
        self.attrs += table
        rec["nin"].append(_narrow(nin))
        rec["inputs"].append(_narrow(inputs))
        rec["output"].append(_narrow(output))
        rec["type"].append(_narrow(types))
        rec["frame"].append(np.full(count, self.frames, dtype=_NARROW))

    def _op_id(self, name: str) -> int:
        """The tape-wide index of an op name (names are only ever keys; `validate` looks them up)."""
        found = self._op_ids.get(name)
        if found is None:
            self._op_ids[name] = found = len(self.ops)
            self.ops.append(name)
        return found

    def _sources(self, cols: dict[str, Any], count: int) -> None:
        """Optional source columns: each record's file (index into "files") and line."""
        if not any(k in cols for k in ("files", "file", "line")):
            self.lines = None  # a record without a source: the tape gets none
            return
        if not all(k in cols for k in ("files", "file", "line")):
            raise self.error("the source columns 'files', 'file' and 'line' go together")
        files = cols["files"]
        if type(files) is not tuple or not all(type(f) is str for f in files):
            raise self.error(f"'files' must be an array of file names, got {show(files)}")
        file_column = self._column(cols, "file", "<u4", count)
        names = self._lookup(_objects(files), file_column, "file")
        self._all_used(file_column, files, "files")
        lines = self._column(cols, "line", "<u4", count)
        if self.lines is not None:
            self.files += names.tolist()
            self.lines.append(_narrow(lines))

    def _names(self, obj: Any) -> None:
        if type(obj) is not tuple:
            raise self.error(f"a NAME frame must hold an array of [id, name] pairs, got {show(obj)}")
        for item in obj:
            if type(item) is not tuple or len(item) != 2:
                raise self.error(f"a NAME entry must be an [id, name] pair, got {show(item)}")
            vid, name = item
            if type(vid) is not int or vid not in self.ids:
                raise self.error(f"a NAME entry refers to {show(vid)}, which is not a variable defined before it")
            if name is not None and type(name) is not str:
                raise self.error(f"a name must be a string or nil, got {show(name)}")
            if name is None:
                self.names.pop(vid, None)
            else:
                self.names[vid] = name

    # -- the tape --
    def _join(self) -> dict[str, Any]:
        """The columns of all frames taken, each joined into one (narrow) array, once; raises
        `TapeFormatError` for a leaf that a record uses before its VARS frame."""
        assert self.header is not None
        leaf, rec, cols = self.leaf, self.rec, self.cols
        if not cols:
            self.ids = set()  # (only taking frames needs the set of defined ids: its memory goes now)
            for key in ("id", "type", "const", "frame"):  # (each frame's columns go once joined, too)
                cols["leaf_" + key] = _cat(leaf.pop(key))
            for key in ("op", "attr", "nin", "inputs", "output", "type", "frame"):
                cols[key] = _cat(rec.pop(key))
            self._leaves_before_use()
            del cols["leaf_frame"], cols["frame"]
        return cols

    def graph(self) -> Graph:
        """The graph of the frames taken, as int64 columns (new arrays: `validate.check` reads
        them before `build` makes the tape, and they go when it is done)."""
        c = {key: column.astype(np.int64) for key, column in self._join().items()}
        return Graph(types=self.types, leaf_ids=c["leaf_id"], leaf_type=c["leaf_type"], ops=self.ops, op=c["op"],
                     attrs=self.attrs, attr=c["attr"], nin=c["nin"], inputs=c["inputs"], output=c["output"],
                     out_type=c["type"])

    def build(self) -> Tape:
        """The tape of the frames taken (not validated here: `validate.validated` calls this).
        Columns go as soon as what they make is made, so that they and the records share the
        peak memory of a load as little as possible."""
        assert self.header is not None
        cols = self._join()
        values = self._values(cols)
        types = _objects(self.types)
        interned = _Interned(cols["leaf_id"], cols["output"])
        leaves = interned.ints(cols["leaf_id"]).tolist()
        avals: dict[int, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        if self.mode == "none":
            avals.update(zip(leaves, types[cols["leaf_type"]].tolist(), strict=True))
        if self.mode != "all" and len(cols["output"]):
            avals.update(zip(interned.ints(cols["output"]).tolist(), types[cols["type"]].tolist(), strict=True))
        del cols["leaf_type"], cols["type"]
        records = _assemble(_objects(self.ops), _objects(self.attrs), cols, interned)
        del interned, cols["op"], cols["attr"], cols["nin"], cols["inputs"]
        sources = None
        if self.lines is not None and self.records and len(self.files) == self.records:
            sources = self.files, _cat(self.lines).tolist()
        return Tape.from_parts(self.mode, self.header["metadata"], leaves=leaves,
                               consts=set(compress(leaves, cols["leaf_const"].tolist())), records=records,
                               values=values, avals=avals, names=self.names, sources=sources)

    def _values(self, cols: dict[str, Any]) -> StoredValues:
        """The stored values: the leaves' rows, then the records' (values="all")."""
        parts = [self.leaf] if self.mode == "inputs" else [self.leaf, self.rec] if self.mode == "all" else []
        ids = [cols["leaf_id"], cols["output"]][:len(parts)]
        copies = dict(self.leaf["copies"])
        copies.update((len(cols["leaf_id"]) + row, value) for row, value in self.rec["copies"].items())
        offsets = _cat([_cat(p.pop("offsets")) for p in parts])
        return StoredValues(_cat(ids), offsets, _cat([cols["leaf_type"], cols["type"]][:len(parts)]), self.types,
                            self.buf, copies)

    def _leaves_before_use(self) -> None:
        """A leaf is defined by a VARS frame before any RECS row uses it (docs/FORMAT.md 3):
        checked here, where frame order is known, for every way of loading alike."""
        c = {key: self.cols[key].astype(np.int64) for key in ("leaf_id", "leaf_frame", "inputs", "nin", "frame")}
        leaf_ids, inputs = c["leaf_id"], c["inputs"]
        if not len(leaf_ids) or not len(inputs):
            return
        order = np.argsort(leaf_ids, kind="stable")
        at, found = locate(leaf_ids[order], inputs)
        late = found & (c["leaf_frame"][order][at] > np.repeat(c["frame"], c["nin"]))
        if late.any():
            k = int(np.argmax(late))
            n = int(np.searchsorted(np.cumsum(c["nin"]), k, side="right"))
            vid = int(inputs[k])
            raise TapeFormatError(f"record {n} ({escape(self.ops[int(self.cols['op'][n])], 60)}) uses leaf v{vid}, which "
                                  f"a later VARS frame (frame {int(c['leaf_frame'][order][at[k]]) - 1}) defines: a leaf "
                                  f"must be defined before any RECS row uses it")


def _cat(parts: list[Ints]) -> Ints:
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else _NONE


_NONE: Ints = np.zeros(0, dtype=np.int64)

_NARROW = np.uint32
"""The type of the columns a builder keeps (ids, counts, table indices, frame numbers, lines: all
below 2**32), half the width of the int64 columns it checks them with."""


def _narrow(column: Ints) -> Any:
    return column.astype(_NARROW)


def _objects(items: Sequence[Any]) -> Any:
    """A numpy object array holding the items themselves (gathering from it is fast)."""
    return np.fromiter(items, dtype=object, count=len(items))


class _Interned:
    """One Python int per variable id, shared by every record that names the id (a fresh int per
    mention, as `tolist()` makes them, would cost 32 bytes each)."""

    def __init__(self, leaf_ids: Ints, outputs: Ints) -> None:
        ids = np.sort(np.concatenate([leaf_ids, outputs]))
        self.locate = Locator(ids)
        self.objects = ids.astype(object)

    def ints(self, column: Ints) -> Any:
        """The ints of the ids in `column`, as an object array (an id no variable has, which
        validation rejects, gets an int of its own)."""
        column = column.astype(np.int64)
        at, found = self.locate(column)
        out = self.objects[at]
        if not found.all():
            out[~found] = column[~found].astype(object)
        return out


_CHUNK = 1 << 12  # records assembled at a time: the work arrays of `_assemble` stay small


def _assemble(ops: Any, attrs: Any, cols: dict[str, Ints], interned: _Interned) -> list[RawRecord]:
    """Records (op, attrs, output, *inputs) from the record columns `cols` ("op" and "attr" index
    the object arrays `ops` and `attrs`), their ids `interned`; built by `zip` over columns, a
    chunk of records and in it one group of equal arity at a time."""
    nin = cols["nin"]
    ends = np.cumsum(nin, dtype=np.int64)
    records: list[RawRecord] = []
    for lo in range(0, len(nin), _CHUNK):
        hi = min(lo + _CHUNK, len(nin))
        first = int(ends[lo - 1]) if lo else 0
        records += _chunk(ops[cols["op"][lo:hi]], attrs[cols["attr"][lo:hi]], interned.ints(cols["output"][lo:hi]),
                          interned.ints(cols["inputs"][first:int(ends[hi - 1])]), nin[lo:hi].astype(np.int64))
    return records


def _chunk(names: Any, attrs: Any, outs: Any, inputs: Any, nin: Ints) -> list[RawRecord]:
    """`_assemble` for one chunk: object arrays of per-record `names`, `attrs`, `outs` and the
    flat `inputs`."""
    n = len(outs)
    widest = int(nin.max())
    if int(nin.min()) == widest:  # the usual case for a frame of one op kind, or of all-unary ops
        return list(zip(names.tolist(), attrs.tolist(), outs.tolist(), *inputs.reshape(n, widest).T.tolist(),
                        strict=True))
    starts = np.cumsum(nin) - nin
    order = np.argsort(nin.astype(np.uint16) if widest < 1 << 16 else nin, kind="stable")  # a radix sort
    arity = nin[order]
    edges = [0, *(np.flatnonzero(arity[1:] != arity[:-1]) + 1).tolist(), n]
    records = np.empty(n, dtype=object)
    for lo, hi in pairwise(edges):
        rows = order[lo:hi]
        block = inputs[starts[rows, None] + np.arange(int(arity[lo]))]  # one row of input ids per record
        records[rows] = np.fromiter(zip(names[rows].tolist(), attrs[rows].tolist(), outs[rows].tolist(),
                                        *block.T.tolist(), strict=True), dtype=object, count=hi - lo)
    return records.tolist()  # type: ignore[no-any-return]


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the tape format")

