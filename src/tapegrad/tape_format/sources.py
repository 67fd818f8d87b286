"""Where a tape's bytes come from: memory, file objects, paths (read or memory-mapped).

Contract:
- A `Source` exposes the tape as one read-only buffer (`buf`), with `wait(n)` blocking until its
  first `n` bytes are present (False if the source ends first), `size()` (final once a wait
  returned False) and `crc(lo, hi, seed)`, the CRC-32 of present bytes.  `close()` releases what
  the source holds open (not the buffer, which the loaded arrays keep alive).
- Buffers are page-aligned numpy arrays made read-only after filling (so no view of them can be
  made writeable), caller-owned `bytes` used in place, or read-only memory maps.  Regular files
  and seekable file objects are read in `PIECE`-byte pieces by a worker thread and by the parser
  while it waits (two at once where `os.preadv` exists), each piece checksummed as it arrives,
  so reading, checksumming and parsing overlap.
- Sizes are checked against `max_total_bytes` before anything is allocated (a memory map, which
  allocates nothing, is made first and closed again if the file is too large).  `path_source`
  accepts only regular files (a FIFO or a device is refused without blocking) and raises
  `OSError` for the path itself.
"""

from __future__ import annotations

import errno
import mmap as mmap_module
import os
import stat
import threading
from collections.abc import Callable
from typing import IO, Any, cast

import numpy as np

from ..checksum import crc32
from ..errors import TapeFormatError
from ..interrupts import Worker
from .frames import crc_shift, crc_shifter
from .limits import Limits

_READ_CHUNK = 8 << 20  # reads of streams of unknown size
PIECE = 2 << 20  # files are read and checksummed in pieces of this size


class Source:
    """A read-only byte buffer, possibly still being filled by a reader thread."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self._size = len(buf)

    def size(self) -> int:
        return self._size

    def wait(self, n: int) -> bool:
        return n <= self._size

    def crc(self, lo: int, hi: int, seed: int) -> int:
        """CRC-32 of `buf[lo:hi]` continuing from `seed` (the bytes must be present)."""
        return crc32(self.buf[lo:hi], seed)

    def close(self) -> None:
        pass


def aligned_buffer(size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A writable uint8 array of `size` bytes starting on a 4096-byte boundary.

    Page alignment keeps 64-aligned file offsets 64-aligned in memory, and reading a page-aligned
    file offset into a page-aligned address avoids a slow path of the kernel's copy.
    """
    raw = np.empty(size + 4096, dtype=np.uint8)
    start = -raw.ctypes.data % 4096
    return raw[start:start + size]


def lock(buf: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
    """Make `buf` and the array owning its memory read-only, so no view of it can become writeable."""
    buf.flags.writeable = False
    if isinstance(buf.base, np.ndarray):
        buf.base.flags.writeable = False


def memory_source(data: Any) -> Source:
    """A source over bytes-like `data` (bytes are used in place; anything else is copied once)."""
    if isinstance(data, bytes):
        return Source(memoryview(data))
    view = memoryview(data).cast("B")
    buf = aligned_buffer(len(view))
    buf[:] = np.frombuffer(view, dtype=np.uint8)
    lock(buf)
    return Source(buf.data)


class FileSource(Source):
    """The first `size` bytes of a readable binary file, read in `PIECE`-byte pieces while
    parsing proceeds: by a worker thread, and by the parsing thread whenever it waits for bytes.

    With a descriptor (`fd`), pieces are read with `os.preadv`, so both threads read at once; a
    file object is read in order (its position is shared), one piece at a time.  With `verify`
    and two pieces or more, each piece's CRC-32 is computed right after it is read (while it is
    in the cache), and `crc` combines those of the pieces in a range (one the range covers only
    in part, from the piece's CRC and the bytes around the part when they are fewer), so each
    byte is checksummed about once; a smaller file is checksummed by `crc` alone.  A file that turns out shorter than `size`
    ends the source where its data ends.  `owned`: `close()` also closes `f`.
    """

    def __init__(self, f: Any, size: int, verify: bool, fd: int | None = None, owned: bool = False) -> None:
        self._array = aligned_buffer(size)
        self._write = self._array.data
        super().__init__(self._write.toreadonly())
        self._size = size
        self._f = f
        self._owned = owned
        self._pread = _preader(fd)
        # piece CRCs serve only ranges that hold a whole piece (`crc`): a smaller file is checksummed once, by `crc`
        self._verify = verify and size >= 2 * PIECE
        self._pieces: list[int | None] = [None] * -(-size // PIECE)  # each read piece's CRC-32 (0 unverified)
        self._claimed = 0
        self._busy = 0  # pieces being read
        self._stopped = False  # no piece will be claimed any more (a short read, an error, close())
        self._ready = 0  # leading pieces read
        self._avail = 0  # leading bytes read
        self._wanted = 0  # what the parser waits for
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._worker: Worker | None = None  # (not a threading.Thread: see `interrupts`)
        if len(self._pieces) > 2 and (verify or self._pread is not None):  # work for a second thread
            self._worker = Worker(self._run)

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:  # handed to the parsing thread, which raises it
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _step(self) -> bool:
        """Claim, read and checksum the next piece; False if there is none left."""
        with self._cond:
            k = self._claimed
            lo = k * PIECE
            if self._stopped or lo >= self._size:
                return False
            self._claimed += 1
            self._busy += 1
            view = self._write[lo:min(lo + PIECE, self._size)]
            n = 0
            try:
                if self._pread is None:  # a shared file position: read in order, under the lock
                    n = _fill(self._readinto, view, lo)
            except BaseException:
                self._stopped = True
                self._busy -= 1
                raise
        try:
            if self._pread is not None:
                n = _fill(self._pread, view, lo)
            crc = crc32(view[:n]) if self._verify else 0
        finally:
            with self._cond:
                self._busy -= 1
                if n < len(view):  # an error, or a file shorter than it was: it ends here
                    self._stopped = True
                    self._size = min(self._size, lo + n)
                else:
                    self._pieces[k] = crc
                while self._ready < len(self._pieces) and self._pieces[self._ready] is not None:
                    self._ready += 1
                self._avail = min(self._ready * PIECE, self._size)
                if self._done():
                    lock(self._array)
                if self._avail >= self._wanted or self._done():  # wake the parser only when it can go on
                    self._cond.notify_all()
        return True

    def _done(self) -> bool:
        """All reading is over (call with the lock held)."""
        return not self._busy and (self._stopped or self._claimed * PIECE >= self._size)

    def _readinto(self, view: memoryview, offset: int) -> int | None:
        return self._f.readinto(view)  # type: ignore[no-any-return]  # (reads are in order)

    def size(self) -> int:
        return self._avail if self._done() else self._size

    def wait(self, n: int) -> bool:
        while self._avail < n and self._error is None and self._step():  # help read what is missing
            pass
        with self._cond:
            self._wanted = n
            while self._avail < n and not self._done() and self._error is None:
                self._cond.wait()
        if self._error is not None:
            raise self._error
        return n <= self._avail

    def crc(self, lo: int, hi: int, seed: int) -> int:
        if not self._verify:
            return crc32(self.buf[lo:hi], seed)
        crc = seed
        for k in range(lo // PIECE, -(-hi // PIECE)):  # the pieces lo..hi overlaps
            start, end = k * PIECE, min((k + 1) * PIECE, self._size)
            if lo <= start and end <= hi:  # a whole piece: its CRC was taken when it was read
                crc = crc_shift(crc, crc_shifter(end - start)) ^ cast(int, self._pieces[k])
            else:
                crc = self._part(k, max(lo, start), min(hi, end), crc)
        return crc

    def _part(self, k: int, lo: int, hi: int, seed: int) -> int:
        """CRC-32 of the bytes lo..hi of piece `k` continuing from `seed`: from the piece's CRC
        and the bytes around the part when they are fewer (a CRC is linear in its input)."""
        start, end = k * PIECE, min((k + 1) * PIECE, self._size)
        if (lo - start) + (end - hi) >= hi - lo:
            return crc32(self.buf[lo:hi], seed)
        before = crc32(self.buf[start:lo])
        after = crc32(self.buf[hi:end])
        back = crc_shift(cast(int, self._pieces[k]) ^ after, crc_shifter(hi - end))
        return crc_shift(seed ^ before, crc_shifter(hi - lo)) ^ back

    def close(self) -> None:
        with self._cond:
            self._stopped = True
        if self._worker is not None:
            self._worker.join()
        lock(self._array)  # nothing reads into it any more (a recovered prefix may stop early)
        if self._owned:
            self._f.close()


def _fill(read: Callable[[memoryview, int], int | None], view: memoryview, offset: int) -> int:
    """Read file bytes from `offset` on into all of `view` with `read(part, offset)` (which may
    read less); return the bytes read (fewer at the end of the file)."""
    done = 0
    while done < len(view):
        n = read(view[done:], offset + done)
        if not n:
            break
        done += n
    return done


def _preader(fd: int | None) -> Callable[[memoryview, int], int] | None:
    """`os.preadv` on `fd` (positional reads, safe from several threads at once), if available."""
    preadv = getattr(os, "preadv", None)
    if fd is None or preadv is None:
        return None
    return lambda view, offset: int(preadv(fd, [view], offset))


def stream_source(f: IO[bytes], limits: Limits, verify: bool) -> Source:
    """All bytes remaining in file object `f` (regular files are read concurrently with checksums)."""
    size = _remaining(f)
    if size is not None and hasattr(f, "readinto"):
        limits.check("max_total_bytes", size, "the tape's size in bytes")
        return FileSource(f, size, verify)
    parts: list[bytes] = []
    total = 0
    while True:
        part = f.read(_READ_CHUNK)
        if not part:
            break
        if not isinstance(part, (bytes, bytearray)):
            raise TypeError(f"the file object must be opened in binary mode (read returned {type(part).__name__})")
        total += len(part)
        limits.check("max_total_bytes", total, "the tape's size in bytes")
        parts.append(part)
    return memory_source(b"".join(parts))


def _remaining(f: IO[bytes]) -> int | None:
    """Bytes from the position of `f` to its end, if `f` is a seekable regular file or buffer."""
    try:
        if not f.seekable():
            return None
        try:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                return None
        except (OSError, ValueError, AttributeError):
            pass  # BytesIO and friends have no file descriptor but are seekable buffers
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return max(0, end - here)
    except (OSError, ValueError, AttributeError):
        return None


def path_source(path: str | os.PathLike[str], limits: Limits, use_mmap: bool, verify: bool) -> Source:
    """The tape file at `path`: a regular file only (FIFOs and devices are refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if use_mmap:
            try:  # mmap succeeds only for a non-empty regular file (it checks with its own fstat)
                mapped = mmap_module.mmap(fd, 0, access=mmap_module.ACCESS_READ)
            except (OSError, ValueError):
                pass  # the checks below say what is wrong with the file (or raise what mmap raised)
            else:
                size = len(mapped)
                if size > limits.max_total_bytes:
                    mapped.close()
                    limits.check("max_total_bytes", size, "the tape's size in bytes")
                return Source(memoryview(mapped))
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise TapeFormatError(f"{os.fspath(path)!r} is not a regular file; tapes are read only from regular files")
        limits.check("max_total_bytes", st.st_size, "the tape's size in bytes")
        if use_mmap and st.st_size > 0:
            return Source(memoryview(mmap_module.mmap(fd, 0, access=mmap_module.ACCESS_READ)))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb", buffering=0, closefd=True)
        fd = -1
        return FileSource(f, st.st_size, verify, f.fileno(), owned=True)
    finally:
        if fd >= 0:
            os.close(fd)
