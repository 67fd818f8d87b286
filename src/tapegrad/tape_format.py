"""The tape file format: msgpack structure in checksummed frames, raw aligned array payloads.

Contract (byte layout and versioning rules: docs/FORMAT.md):
- `dump(tape, fileobj)` / `dumps(tape) -> bytes` write a tape; `save(tape, path)` writes it
  atomically (temporary file in the same directory, flush, fsync, `os.replace`, fsync of the
  directory; on any failure the temporary file is removed and the old file is untouched).
  What is stored follows `tape.values_mode`: "all" values, "inputs" (leaf values only) or
  "none" (shapes and dtypes only).  Output is deterministic: the same tape gives the same bytes.
  Writing raises `TapegradError` for tapes it cannot represent (a dtype outside `DTYPES`,
  attributes or metadata that are not plain data) and `OSError` from the file.
- `load(fileobj)`, `loads(data)` and `load_path(path, mmap=False)` read a tape, validate it fully
  (`validate.validate`) and return it; stored arrays are read-only zero-copy views of the bytes
  read (or of the mapped file).  Options: `recover=True` returns the whole-record prefix of a
  damaged or cut-off tape and reports what was dropped (`tape.recovery`, a `Recovery`, plus a
  `TapeRecoveryWarning`); `verify=False` skips the checksums of array payloads (structure is
  always checked), and so does `mmap=True`, which never touches the payload pages when opening;
  `limits=Limits(...)` changes the safety limits.  Only `TapegradError`
  subclasses escape for bad content, and `OSError` for the file itself.
- `StreamWriter(path, tape, flush_every=256)` is the `TapeSink` that `record(path=...)` uses: it
  writes the header at once, then appends a batch of frames every `flush_every` records (and at
  `close()`, which adds the footer).  A process killed at any point leaves a file whose flushed
  records load with `recover=True`.  Files are flushed to the OS, not fsynced, unless `fsync=True`.

Modules: `tape_format_frames` (container, CRC chain), `tape_format_writer` (encoding; its
`CHUNK_BYTES` is the DATA frame size), `tape_format_sources` (reading or mapping the bytes),
`tape_format_reader` (decoding), `tape_format_limits` (`Limits`), and `validate` (graph checks).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import chain, compress, zip_longest
from operator import itemgetter
from typing import IO, Any, NamedTuple

import numpy as np

from .errors import TapegradError
from .tape import RawRecord, Tape
from .tape_format_frames import MAGIC, MAJOR, MINOR
from .tape_format_limits import DEFAULT_LIMITS, Limits
from .tape_format_reader import Recovery, TapeRecoveryWarning, read
from .tape_format_sources import memory_source, path_source, stream_source
from .tape_format_writer import Encoder, LeafRows, RecordRows, Sources, column, gather
from .validate import Ints, no_gc, validate

__all__ = [
    "DEFAULT_LIMITS", "Limits", "MAGIC", "MAJOR", "MINOR", "Recovery", "StreamWriter",
    "TapeRecoveryWarning", "dump", "dumps", "load", "load_path", "loads", "save", "validate",
]

_FIRST = itemgetter(0)
SourceCache = dict[int, tuple[str, dict[int, int]]]  # id of a code object -> (its file, position -> line)
_U32 = struct.Struct("<I")


class _DenseIds:
    """Internal ids -> dense ids (the ids a file stores), given out in batches.

    Kept as runs of consecutive internal ids with consecutive dense ids, sorted by internal id,
    in columns that grow by doubling: the ids of a recording are mostly consecutive, so there
    are few runs, and a batch of ids is looked up with a few numpy calls.
    """

    def __init__(self) -> None:
        self.count = 0  # dense ids given out so far
        self._runs = np.zeros((3, 8), dtype=np.int64)  # rows: first internal id, first dense id, length
        self._n = 0

    def add(self, ids: Ints) -> None:
        """Give the next dense ids to `ids`: new internal ids, in increasing order."""
        m = len(ids)
        if not m:
            return
        if self.count + m > 1 << 32:
            raise TapegradError("cannot store the tape: it has more than 2**32 variables")
        first, last = ids[[0, -1]].tolist()
        runs, n = self._runs, self._n
        start, dense, length = runs[:, n - 1].tolist() if n else (0, 0, -1)
        joins = start + length == first and dense + length == self.count  # continues the last run
        if joins and last - first == m - 1:  # (the usual case: all of the batch does)
            runs[2, n - 1] += m
            self.count += m
            return
        heads = np.flatnonzero(ids[1:] - ids[:-1] != 1) + 1
        new = np.empty((3, len(heads) + 1), dtype=np.int64)
        new[0, 0], new[0, 1:] = first, ids[heads]
        new[1, 0], new[1, 1:] = self.count, self.count + heads
        new[2, :-1], new[2, -1] = np.diff(new[1]), self.count + m - new[1, -1]
        self.count += m
        if joins:
            runs[2, n - 1] += new[2, 0]
            new = new[:, 1:]
        k = new.shape[1]
        if n + k > runs.shape[1]:
            runs = self._runs = np.concatenate((runs, np.zeros((3, max(n + k, 2 * n)), dtype=np.int64)), axis=1)
        runs[:, n:n + k] = new
        self._n = n = n + k
        if k and n > k and new[0, 0] < runs[0, n - k - 1]:  # ids older than some given out before
            runs[:, :n] = runs[:, np.argsort(runs[0, :n], kind="stable")]

    def find(self, ids: Ints) -> tuple[Ints, Any]:
        """(the dense id of each of `ids`, whether it has one)."""
        if not self._n:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        runs = self._runs[:, :self._n]
        k = np.searchsorted(runs[0], ids, side="right") - 1
        first, dense, length = runs[:, k]
        offset = ids - first
        return dense + offset, (k >= 0) & (offset < length)

    def __call__(self, ids: Ints) -> Ints:
        """The dense ids of `ids`; KeyError(the first unknown id) if one has none."""
        if not len(ids):
            return ids
        if self._n == 1:  # (the usual case, in fewer steps)
            first, dense0, length = self._runs[:, 0].tolist()
            offset = ids - first
            if offset.min() >= 0 and offset.max() < length:
                mapped: Ints = offset + dense0 if dense0 else offset
                return mapped
        dense, known = self.find(ids)
        if not known.all():
            raise KeyError(int(ids[np.argmin(known)]))
        return dense


def _sources(tape: Tape, start: int, count: int, cache: SourceCache) -> Sources | None:
    """Source locations of records start..start+count-1, or None unless all have one.

    The tape keeps one position per record (a bytecode offset, or a line once loaded) and a run
    (first record, code object or file name) wherever the code changes.  Each distinct position
    of a code is resolved once by `Tape.source_of` and remembered in `cache` under the code's id
    (the tape keeps its code objects alive).  The file table is in order of first use.
    """
    runs, positions = tape._source_runs, tape._source_pos
    stop = start + count
    if not count or len(positions) < stop or not runs or runs[0][0] > start:
        return None
    files: dict[str, int] = {}
    file_column: list[bytes] = []
    lines: list[int] = []
    k = bisect_right(runs, start, key=_FIRST) - 1
    a = start
    while a < stop:
        b = min(runs[k + 1][0], stop) if k + 1 < len(runs) else stop
        segment = positions[a:b]
        if segment:
            code = id(runs[k][1])
            file, line_of = cache.get(code, ("", {}))
            try:
                lines += gather(line_of, segment)
            except KeyError:
                for pos in set(segment) - line_of.keys():
                    where = tape.source_of(a + segment.index(pos))
                    if where is None:
                        return None
                    file, line_of[pos] = where
                cache[code] = file, line_of
                lines += gather(line_of, segment)
            file_column.append(_U32.pack(files.setdefault(file, len(files))) * len(segment))
            a = b
        k += 1
    return list(files), b"".join(file_column), column(lines, "I", "a line number")


def _values(tape: Tape, ids: Sequence[int], store: bool, dense: _DenseIds) -> Sequence[Any]:
    """The values of internal ids `ids`, or their (shape, dtype) where the tape has no value."""
    values = tape._values
    try:
        return gather(values, ids)
    except KeyError as exc:
        if store:
            raise TapegradError(f"cannot store v{int(dense(np.array(exc.args, dtype=np.int64))[0])}: the tape has no "
                                f"value for it (values={tape.values_mode!r})") from None
    return [values[i] if i in values else tape._avals[i] for i in ids]


_NARROW = 8  # records are read as columns of their first _NARROW items; inputs past those one by one
_CHUNK = 1 << 16  # records transposed at a time


def _int64s(ints: Iterable[Any], count: int) -> Ints:
    """The `count` items of `ints` as an int64 array; TapegradError unless they are integers of
    64 bits (`struct` refuses anything else, unlike numpy, which would parse strings)."""
    try:
        return np.frombuffer(struct.pack(f"={count}q", *ints), dtype=np.int64)
    except struct.error:
        raise TapegradError("cannot store the tape: its records hold variable ids that are not 64-bit integers") from None


class _RecordColumns(NamedTuple):
    """A batch of records as columns (see `_record_columns`); ids are internal ids."""

    ops: Sequence[str]
    attrs: Sequence[Any]
    outputs: Sequence[int]
    output_ids: Ints
    nin: Ints
    inputs: Ints


def _record_columns(records: Sequence[RawRecord], first_record: int) -> _RecordColumns:
    """The columns of `records` (each `(op, attrs, output, *inputs)`): op names, attributes,
    outputs (as ints and as an array), each record's number of inputs, and all their input ids
    concatenated in record order (internal ids, not checked against the tape).

    The records are transposed in C (`zip_longest`) and their ids packed in one `struct` call;
    a record longer than `_NARROW` items contributes its first ones to the columns and its
    further inputs separately, so one wide record does not widen every row.
    """
    n = len(records)
    if n > _CHUNK:  # (bounds the transposition's temporary objects)
        parts = [_record_columns(records[a:a + _CHUNK], first_record + a) for a in range(0, n, _CHUNK)]
        ops, attrs, outputs, output_ids, nin, inputs = zip(*parts, strict=True)
        return _RecordColumns(tuple(chain.from_iterable(ops)), tuple(chain.from_iterable(attrs)),
                              tuple(chain.from_iterable(outputs)), np.concatenate(output_ids), np.concatenate(nin),
                              np.concatenate(inputs))
    try:
        lens = np.frombuffer(bytes(map(len, records)), dtype=np.uint8).astype(np.int64)
    except ValueError:  # a record of 256 items or more
        lens = np.fromiter(map(len, records), dtype=np.int64, count=n)
    if not n:
        return _RecordColumns((), (), (), lens, lens, lens)
    if int(lens.min()) < 3:
        raise TapegradError(f"cannot store record {first_record + int(np.argmin(lens))}: records are (op, attributes, "
                            f"output, *inputs)")
    wide = int(lens.max()) > _NARROW
    rows = list(map(itemgetter(slice(_NARROW)), records)) if wide else records
    cols = list(zip_longest(*rows, fillvalue=-1))
    ids = _int64s(chain.from_iterable(cols[2:]), n * (len(cols) - 2)).reshape(-1, n)
    nin = lens - 3
    table = ids[1:].T  # (record, input) with -1 past each record's inputs
    if int(nin.min()) == table.shape[1]:  # (the usual batch: records of one arity)
        inputs = table.ravel()
    else:
        inputs = table[np.arange(table.shape[1]) < nin[:, None]]
    if wide:  # inputs past the columns, inserted after each long record's first ones
        long = np.flatnonzero(lens > _NARROW)
        more = lens[long] - _NARROW
        rest = _int64s(chain.from_iterable(records[k][_NARROW:] for k in long.tolist()), int(more.sum()))
        inputs = np.insert(inputs, np.repeat(np.cumsum(np.minimum(nin, _NARROW - 3))[long], more), rest)
    return _RecordColumns(cols[0], cols[1], cols[2], ids[0], nin, inputs)


def _columns(tape: Tape, leaves: list[int], records: list[RawRecord], dense: _DenseIds, first_record: int,
             source_cache: SourceCache) -> tuple[LeafRows, RecordRows]:
    """The `Encoder.batch` rows of new leaves and records of `tape`, whose ids get the next dense
    ids in `dense` (in the order of their internal ids).

    `records` are the tape's records from index `first_record` on (for their source lines).
    """
    cols = _record_columns(records, first_record)
    try:
        leaf_ids = np.array(leaves, dtype=np.int64)
        outs = cols.output_ids
        dense.add(np.sort(np.concatenate((leaf_ids, outs))) if leaves else outs)
        inputs, outs, leaf_dense = dense(cols.inputs), dense(outs), dense(leaf_ids)
        mode = tape.values_mode
        names, consts = tape._names, tape._consts
        return (LeafRows(ids=leaf_dense, const=list(map(consts.__contains__, leaves)), names=list(map(names.get, leaves)),
                         values=_values(tape, leaves, mode != "none", dense)),
                RecordRows(ops=cols.ops, attrs=cols.attrs, nin=cols.nin, inputs=inputs, outs=outs,
                           values=_values(tape, cols.outputs, mode == "all", dense),
                           sources=_sources(tape, first_record, len(records), source_cache)))
    except KeyError as exc:
        raise TapegradError(f"cannot store the tape: it refers to variable {exc.args[0]!r}, which it does not "
                            f"define") from None


def _late_names(tape: Tape, dense: _DenseIds, named: Iterable[int], leaves: list[int]) -> list[tuple[int, str | None]]:
    """NAME entries (dense id, name or None) for the internal ids in `named` that have a dense id,
    except `leaves` (whose names their VARS rows carry)."""
    leaf_set = set(leaves)
    ids = [v for v in named if v not in leaf_set]
    found, known = dense.find(np.array(ids, dtype=np.int64))
    names = tape._names
    return sorted(zip(found[known].tolist(), map(names.get, compress(ids, known.tolist())), strict=True))


def dump(tape: Tape, fileobj: IO[bytes]) -> None:
    """Write `tape` to the binary file object `fileobj` (at its current position)."""
    with no_gc():
        enc = Encoder(fileobj, tape.values_mode, tape.metadata)
        dense = _DenseIds()
        rows = _columns(tape, tape._leaves, tape._records, dense, 0, {})
        enc.batch(*rows, names=_late_names(tape, dense, tape._names, tape._leaves))
        enc.footer()


def dumps(tape: Tape) -> bytes:
    """The bytes of `tape` as a tape file."""
    buf = io.BytesIO()
    dump(tape, buf)
    return buf.getvalue()


_inflight: set[str] = set()  # temporary files this process is writing right now
_inflight_lock = threading.Lock()
_TMP_SUFFIX = ".tapegrad-tmp"


def save(tape: Tape, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
    """Write `tape` to `path` atomically: readers and crashes see the old file or the new one.

    The tape goes to a temporary file in the same directory, which is flushed, fsynced and
    renamed over `path`; then the directory is fsynced.  On failure (a full disk, a failing
    fsync, an interrupt) the temporary file is removed and `path` is untouched, and the error
    propagates.  Temporary files left by writers that were killed are removed by the next save.
    `fsync=False` skips both fsyncs (faster; a power cut may then lose the new file).
    """
    target = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(6).hex()}{_TMP_SUFFIX}")
    with _inflight_lock:
        _inflight.add(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                dump(tape, f)
                if fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if fsync:
            _fsync_dir(folder)
    finally:
        with _inflight_lock:
            _inflight.discard(tmp)
    _sweep(folder, base)


def _fsync_dir(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _sweep(folder: str, base: str) -> None:
    """Remove temporary files of earlier saves to `base` whose writer process is gone."""
    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        middle = name[len(prefix):-len(_TMP_SUFFIX)].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        full = os.path.join(folder, name)
        pid = int(middle[0])
        with _inflight_lock:
            mine = full in _inflight
        if mine or (pid != os.getpid() and _alive(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(full)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


# ---- reading ----------------------------------------------------------------------------------

def load(fileobj: IO[bytes], *, recover: bool = False, verify: bool = True, limits: Limits | None = None) -> Tape:
    """Read a tape from the binary file object `fileobj` (from its position to its end)."""
    lim = DEFAULT_LIMITS if limits is None else limits
    return read(stream_source(fileobj, lim, verify), recover=recover, verify=verify, limits=lim)


def loads(data: bytes | bytearray | memoryview, *, recover: bool = False, verify: bool = True,
          limits: Limits | None = None) -> Tape:
    """Read a tape from bytes (used in place; other buffers are copied once)."""
    lim = DEFAULT_LIMITS if limits is None else limits
    size = memoryview(data).nbytes
    lim.check("max_total_bytes", size, "the tape's size in bytes")
    return read(memory_source(data), recover=recover, verify=verify, limits=lim)


def load_path(path: str | os.PathLike[str], *, recover: bool = False, mmap: bool = False, verify: bool = True,
              limits: Limits | None = None) -> Tape:
    """Read the tape file at `path` (a regular file); `mmap=True` maps it instead of reading it.

    A mapped tape's arrays are views of the mapping: the file must not be truncated or rewritten
    in place while they are in use (`save` replaces files, which is safe).  Mapping reads only
    the structure: it checks every frame's bounds and the CRC of every frame but the DATA frames,
    whose pages it never touches (whatever `verify` says); load without `mmap` to check those.
    """
    lim = DEFAULT_LIMITS if limits is None else limits
    return read(path_source(path, lim, mmap, verify), recover=recover, verify=verify and not mmap, limits=lim)


# ---- streaming ---------------------------------------------------------------------------------

class StreamWriter:
    """A `TapeSink` that appends a recording to `path` as it happens (see the module docstring).

    Ids are made dense as batches are written: the new variables of a batch get the next ids in
    the order of their internal ids (the order `Tape` uses), so a recording whose inputs are all
    created inside the `record()` block gets the same ids as `dump` of the finished tape.  Names
    set after a variable was written become NAME entries of a later batch.  After a write fails
    (a full disk), the error propagates once; later events are ignored and `close()` only closes
    the file, which keeps the batches written before the failure.
    """

    def __init__(self, path: str | os.PathLike[str], tape: Tape, flush_every: int = 256, *,
                 fsync: bool = False) -> None:
        if type(flush_every) is not int or flush_every < 1:
            raise TapegradError(f"flush_every must be a positive integer, got {flush_every!r}")
        self._tape = tape
        self._flush_every = flush_every
        self._fsync = fsync
        self._dense = _DenseIds()
        self._leaves_done = 0
        self._records_done = 0
        self._renamed: dict[int, None] = dict.fromkeys(tape._names)  # names the tape already has
        self._where: SourceCache = {}  # resolved source locations
        self._failed: BaseException | None = None
        self._closed = False
        self._file: IO[bytes] = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            self._enc = Encoder(self._file, tape.values_mode, tape.metadata)
            self._flush()
        except BaseException:
            self._file.close()
            raise

    # -- TapeSink --
    def leaf(self, vid: int, value: Any, name: str | None, const: bool) -> None:
        """Leaves are taken from the tape at the next flush."""

    def due(self) -> None:
        if self._failed is None:
            self._flush()

    def name(self, vid: int, name: str | None) -> None:
        self._renamed[vid] = None

    def close(self) -> None:
        """Write what is left and the footer, and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failed is None:
                self._flush()
                self._enc.footer()
                if self._fsync:
                    os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def flush(self) -> None:
        """Write the records gathered so far (also done every `flush_every` records)."""
        if self._failed is not None:
            raise TapegradError(f"the tape stream failed earlier: {self._failed}") from self._failed
        self._flush()

    def _flush(self) -> None:
        tape = self._tape
        tape._sink_at = len(tape._records) + self._flush_every
        leaves = tape._leaves[self._leaves_done:]
        records = tape._records[self._records_done:]
        try:
            rows = _columns(tape, leaves, records, self._dense, self._records_done, self._where)
            late: list[tuple[int, str | None]] = []
            if self._renamed:
                late = _late_names(tape, self._dense, self._renamed, leaves)
                self._renamed = {}
            self._enc.batch(*rows, names=late)
            self._enc.w.commit()
        except BaseException as exc:
            self._failed = exc
            raise
        self._leaves_done += len(leaves)
        self._records_done += len(records)
