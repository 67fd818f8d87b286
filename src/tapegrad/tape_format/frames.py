"""The tape container: preamble, checksummed frames, and a scanner that never trusts a length.

Contract (byte layout in docs/FORMAT.md):
- A tape is `PREAMBLE` (magic + format version, 12 bytes) followed by frames.  A frame is a
  4-byte ASCII tag, a u32 little-endian payload length, the payload, and a u32 little-endian
  CRC-32 of tag + length + payload seeded with the previous frame's CRC (the first frame's seed is
  the CRC-32 of the preamble), so a frame cut off, corrupted, reordered or spliced in from another
  file fails its check.
- `FrameWriter` appends frames to a binary file object, tracking the offset (relative to the
  tape's first byte) and the CRC chain; buffers under `_BATCH` bytes are gathered into
  writes of about that size, larger ones are written straight from the caller's memory (arrays
  that are not C-contiguous are copied into C order).  A payload of `_BIG` bytes or more is
  checksummed in `_PIECE`-byte pieces by a worker thread (`interrupts.Worker`) and by the writing thread, and each
  piece is written right after its checksum, while its bytes are still in the cache; the pieces'
  CRCs are combined (`crc_shift`).  It raises only what the file object raises (`OSError`).
- `FrameScanner` walks the frames of a byte buffer (possibly still being filled by reader
  threads) and yields `Frame`s whose bounds are checked and whose CRC matched.  It stops at the
  footer or at the first problem, which it describes in `scanner.stop` (`Stop`): the byte
  offset, a message, and whether it looks like a truncation (a writer that died) or corruption.
  It allocates nothing proportional to the lengths it reads.
- `crc_shifter(n)` and `crc_shift(crc, shifter)` are CRC-32 arithmetic: `crc32(A + B) ==
  crc_shift(crc32(A), crc_shifter(len(B))) ^ crc32(B)`, so pieces checksummed apart combine.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple

import numpy as np

from ..checksum import crc32
from ..interrupts import Worker

MAGIC = b"\x89TAPE\r\n\x1a"
MAJOR = 1
MINOR = 2
"""The newest minor version this tapegrad reads and writes.  A writer declares the oldest minor
version that has everything its file holds (docs/FORMAT.md, section 13)."""
ERROR_MINOR = 1  # the first minor version whose footer may hold the recording's exception ("error")
SHAPES_MINOR = 2  # the first minor version whose records may be shape guards or reshape to a shape with -1


def records_minor(records: Iterable[Any]) -> int:
    """The oldest minor version that has every op and attribute form of `records` (raw records)."""
    for rec in records:
        shape = rec[1].get("shape") if rec[0] == "reshape" and isinstance(rec[1], Mapping) else None
        if rec[0] == "shape_guard" or (type(shape) is tuple and -1 in shape):
            return SHAPES_MINOR
    return 0


def preamble_of(minor: int) -> bytes:
    """The preamble of a tape of version MAJOR.`minor`."""
    return MAGIC + struct.pack("<HH", MAJOR, minor)


PREAMBLE = preamble_of(0)  # version 1.0: what a tape that uses nothing newer declares
PREAMBLE_SIZE = len(PREAMBLE)
FRAME_HEAD = 8  # tag + u32 length
FRAME_TAIL = 4  # u32 CRC-32
ALIGN = 64  # array payloads start at offsets that are multiples of this
CHUNKED = -2  # a data reference meaning: the value is split; its pieces are in the frame's "chunks" list

HEAD, DATA, VARS, RECS, NAME, FOOT = b"HEAD", b"DATA", b"VARS", b"RECS", b"NAME", b"FOOT"
TAGS = frozenset((HEAD, DATA, VARS, RECS, NAME, FOOT))

_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<4sI")
_BIG = 4 << 20  # payloads at least this large are checksummed on two threads, piece by piece
_PIECE = 2 << 20  # (fits a core's L2 cache, so a piece is written from the cache after its checksum)
_BATCH = 1 << 20  # small frames are gathered into writes of about this size


def preamble_seed(preamble: bytes | memoryview) -> int:
    """The CRC seed of the first frame."""
    return crc32(preamble)


# CRC-32 arithmetic: crc32(A + B) == crc_shift(crc32(A), crc_shifter(len(B))) ^ crc32(B), so the
# pieces of a payload can be checksummed separately (on several threads) and combined.  CRC
# registers hold polynomials over GF(2) modulo the CRC polynomial P, in reflected bit order (bit
# 31 is x**0, bit 0 is x**31); a shift over n bytes multiplies by x**(8n), and x**(2**32 - 1) is 1
# modulo P, so shifts can be undone.
_POLY = 0xEDB88320  # P = x**32 + x**26 + ... + 1, the CRC-32 (ISO-HDLC) polynomial, reflected
_ORDER = (1 << 32) - 1  # x**_ORDER == 1 modulo P


def _mulmod(a: int, b: int) -> int:
    """a(x) * b(x) modulo P."""
    product = 0
    for bit in range(31, -1, -1):  # the terms x**0, x**1, ... of a; b becomes b * x**k
        if a >> bit & 1:
            product ^= b
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


_X2N = [1 << 30]  # x**(2**k) modulo P, for k = 0, 1, ...
for _ in range(31):
    _X2N.append(_mulmod(_X2N[-1], _X2N[-1]))


@functools.lru_cache(maxsize=256)
def crc_shifter(nbytes: int) -> int:
    """x**(8 * nbytes) modulo P, what `crc_shift` multiplies by to pass `nbytes` bytes (a
    negative count undoes such a shift)."""
    factor = 1 << 31  # x**0
    exponent = 8 * nbytes % _ORDER
    for k in range(32):
        if exponent >> k & 1:
            factor = _mulmod(_X2N[k], factor)
    return factor


def crc_shift(crc: int, shifter: int) -> int:
    """The CRC register `crc` carried over the bytes that `shifter` (from `crc_shifter`) stands for."""
    return _mulmod(shifter, crc)


def _crc_parts(parts: Sequence[Any], seed: int) -> int:
    crc = seed
    for part in parts:
        crc = crc32(part, crc)
    return crc


def _pieces(views: Sequence[memoryview], size: int) -> list[list[memoryview]]:
    """The bytes of `views` cut into consecutive pieces of `size` bytes (the last one fewer),
    each a list of views."""
    pieces: list[list[memoryview]] = []
    piece: list[memoryview] = []
    room = size
    for view in views:
        while view.nbytes:
            take = view[:room]
            piece.append(take)
            room -= take.nbytes
            view = view[take.nbytes:]
            if not room:
                pieces.append(piece)
                piece, room = [], size
    if piece:
        pieces.append(piece)
    return pieces


class _PieceCRCs:
    """The CRC-32s of `pieces` (each started from 0), computed by a worker thread and by the
    thread asking for them (`get`) while there are pieces nobody has taken.  `crc32` releases the
    GIL on large buffers, so both threads checksum at once.  `close()` stops and joins the worker
    (it finishes the piece it is on)."""

    def __init__(self, pieces: list[list[memoryview]]) -> None:
        self.pieces = pieces
        self.crcs: list[int | None] = [None] * len(pieces)
        self._next = 0  # the first piece nobody has taken
        self._stop = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._worker = Worker(self._run)  # (not a threading.Thread: see `interrupts`)

    def _take(self) -> bool:
        """Checksum the next piece nobody has taken; False if there is none (or after close)."""
        with self._cond:
            k = self._next
            if self._stop or k >= len(self.pieces):
                return False
            self._next += 1
        crc = _crc_parts(self.pieces[k], 0)
        with self._cond:
            self.crcs[k] = crc
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        try:
            while self._take():
                pass
        except BaseException as exc:  # (handed to the thread waiting for the piece)
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def get(self, k: int) -> int:
        """The CRC of piece `k`."""
        while self.crcs[k] is None and self._take():
            pass
        with self._cond:
            while (crc := self.crcs[k]) is None:
                if self._error is not None:
                    raise self._error
                self._cond.wait()
        return crc

    def close(self) -> None:
        with self._cond:
            self._stop = True
        self._worker.join()


class FrameWriter:
    """Appends frames to `out`; `pos` is the offset of the next byte relative to the tape start."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.pos = 0
        self.frames = 0
        self.seed = 0
        self._pending = bytearray()

    def preamble(self, preamble: bytes = PREAMBLE) -> None:
        self._pending += preamble
        self.pos += len(preamble)
        self.seed = preamble_seed(preamble)

    def frame(self, tag: bytes, parts: Sequence[Any], length: int) -> None:
        """Append one frame whose payload is the concatenation of the buffers `parts`."""
        head = _HEAD.pack(tag, length)
        views = list(map(_flat, parts))
        seed = crc32(head, self.seed)
        self._pending += head
        if length < _BIG:
            crc = _crc_parts(views, seed)
            self._append(views)
        else:
            crc = self._append_checked(views, seed)
        self._pending += _U32.pack(crc)
        if len(self._pending) >= _BATCH:
            self.commit()
        self.seed = crc
        self.pos += FRAME_HEAD + length + FRAME_TAIL
        self.frames += 1

    def _append_checked(self, views: list[memoryview], seed: int) -> int:
        """`_append(views)`, returning their CRC-32 continued from `seed`: checksummed piece by
        piece on two threads, each piece written right after its checksum (see the module
        docstring)."""
        pieces = _pieces(views, _PIECE)
        crcs = _PieceCRCs(pieces)
        crc = seed
        try:
            for k, piece in enumerate(pieces):
                crc = crc_shift(crc, crc_shifter(sum(view.nbytes for view in piece))) ^ crcs.get(k)
                self._append(piece)
        finally:
            crcs.close()
        return crc

    def _append(self, views: list[memoryview]) -> None:
        """Queue `views`: each view is copied into the pending batch, which is written whenever
        it fills; a view of a batch or more is written as it is."""
        for view in views:
            if view.nbytes < _BATCH:
                self._pending += view
                if len(self._pending) >= _BATCH:
                    self.commit()
            else:
                self.commit()
                self._write(view)

    def commit(self) -> None:
        """Hand everything gathered so far to the file object."""
        if self._pending:
            self._write(self._pending)
            self._pending = bytearray()

    def _write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.out.write(view)
            if n is None:  # a non-blocking raw file that could take nothing right now
                raise BlockingIOError("the tape file object accepted no bytes")
            view = view[n:]


def _flat(part: Any) -> memoryview:
    """A buffer as flat bytes; an array that is not C-contiguous is copied into C order."""
    try:
        return memoryview(part).cast("B")
    except TypeError:
        return np.ascontiguousarray(part).data.cast("B")


class Frame(NamedTuple):
    """One checked frame: its tag, number, the offset of its header, and its payload (a view)."""

    tag: bytes
    number: int  # frames are numbered from 0 (the HEAD frame)
    offset: int
    payload: memoryview


class Stop(NamedTuple):
    """Why scanning stopped early: byte `offset`, a message, and whether it is a truncation."""

    offset: int
    message: str
    truncated: bool


class FrameScanner:
    """Iterate over the frames of `buf[:size]`, checking bounds and CRCs.

    `wait(n)` blocks until the first `n` bytes of `buf` are present and returns False if the
    source ended before that (then `size()` is final); `crc(lo, hi, seed)` is the CRC-32 of
    `buf[lo:hi]` continuing from `seed` (a source may have checksummed pieces as it read them).
    With `verify_data=False` the CRCs of DATA frames are not computed (structure frames are
    always checked).  `optional_ok` lets
    unknown frames whose tag starts with a lowercase letter be skipped (files of a newer minor
    version).  After iteration, `stop` is None if the footer ended the tape exactly, else a `Stop`.
    """

    def __init__(self, buf: memoryview, size: Callable[[], int], wait: Callable[[int], bool],
                 crc: Callable[[int, int, int], int], *, verify_data: bool, optional_ok: bool) -> None:
        self.buf = buf
        self.size = size
        self.wait = wait
        self.crc = crc
        self.verify_data = verify_data
        self.optional_ok = optional_ok
        self.stop: Stop | None = None
        self.end = PREAMBLE_SIZE  # offset just past the last good frame
        self.trailing = 0  # bytes after the footer

    def frames(self) -> Iterator[Frame]:
        """The checked frames in order, until the footer or the first problem (then `stop`)."""
        buf = self.buf
        pos = PREAMBLE_SIZE
        seed = preamble_seed(buf[:PREAMBLE_SIZE])
        index = 0
        while True:
            if not self.wait(pos + FRAME_HEAD):
                self.stop = self._no_header(index, pos)
                return
            tag, length = _HEAD.unpack_from(buf, pos)
            if tag not in TAGS and not (self.optional_ok and tag[:1].islower() and tag.isalnum()):
                self.stop = self._unknown(index, tag, pos)
                return
            start = pos + FRAME_HEAD
            end = start + length + FRAME_TAIL
            if not self.wait(end):
                self.stop = self._cut(index, tag, pos, length)
                return
            stored = _U32.unpack_from(buf, start + length)[0]
            if (tag != DATA or self.verify_data) and self.crc(pos, start + length, seed) != stored:
                self.stop = Stop(pos, f"checksum mismatch in frame {index} ({_tag(tag)}) at byte {pos}: "
                                      f"the tape is corrupted", False)
                return
            seed = stored
            self.end = end
            if tag in TAGS:
                yield Frame(tag, index, pos, buf[start:start + length])
            index += 1
            pos = end
            if tag == FOOT:
                self.stop = self._after_footer(end)
                return

    def _no_header(self, index: int, pos: int) -> Stop:
        """Why the source ended before the header of frame `index` at byte `pos` (a truncation)."""
        size = self.size()
        if pos == size:
            return Stop(pos, f"the tape ends at byte {pos} without a footer (the writer did not finish)", True)
        tail = self._zero_tail(pos, size)
        if tail is not None:
            return tail
        return Stop(pos, f"the tape ends at byte {size} inside the header of frame {index} at byte {pos}", True)

    def _unknown(self, index: int, tag: bytes, pos: int) -> Stop:
        """Why frame `index` at byte `pos` with a tag it may not have stops the scan: a zero-filled
        tail (a truncation) or corruption."""
        self.wait(1 << 62)
        tail = self._zero_tail(pos, self.size())
        if tail is not None:
            return tail
        return Stop(pos, f"frame {index} at byte {pos} has unknown tag {tag!r}", False)

    def _zero_tail(self, pos: int, size: int) -> Stop | None:
        """A truncation if bytes `pos` to `size` are all zero (a writer that died after its file
        was extended), else None."""
        if not _all_zero(self.buf[pos:size]):
            return None
        return Stop(pos, f"zero-filled tail of {size - pos} bytes from byte {pos} (the writer died before writing "
                         f"it)", True)

    def _after_footer(self, end: int) -> Stop | None:
        """None if the tape ends at byte `end`, just after its footer; else the trailing bytes."""
        self.wait(1 << 62)
        size = self.size()
        if size <= end:
            return None
        self.trailing = size - end
        return Stop(end, f"{size - end:,} unexpected bytes after the footer at byte {end}", False)

    def _cut(self, index: int, tag: bytes, pos: int, length: int) -> Stop:
        size = self.size()
        return Stop(pos, f"frame {index} ({_tag(tag)}) at byte {pos} needs {length + 12:,} bytes but the tape "
                         f"ends {size - pos:,} bytes after its start", True)


def _tag(tag: bytes) -> str:
    """A printable frame tag (tags of damaged frames are arbitrary bytes)."""
    return tag.decode("ascii", "backslashreplace")


def _all_zero(view: memoryview) -> bool:
    """True if every byte of `view` is zero (and there is at least one)."""
    n = len(view)
    if n == 0:
        return False
    step = 1 << 20
    zeros = bytes(min(n, step))
    return all(view[i:i + step] == zeros[:min(step, n - i)] for i in range(0, n, step))
