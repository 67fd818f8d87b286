"""Where a tape's bytes come from: memory, file objects, paths (read or memory-mapped).

Contract:
- A `Source` exposes the tape as one read-only buffer (`buf`), with `wait(n)` blocking until its
  first `n` bytes are present (False if the source ends first) and `size()` (final once a wait
  returned False).  `close()` releases what the source holds open (not the buffer, which the
  loaded arrays keep alive).
- Buffers are page-aligned numpy arrays made read-only after filling (so no view of them can be
  made writeable), caller-owned `bytes` used in place, or read-only memory maps.  Regular files
  are read by a thread in 8 MiB steps, so the parser can checksum what has arrived while the
  rest is being read.
- Sizes are checked against `max_total_bytes` before anything is allocated.  `path_source`
  accepts only regular files (a FIFO or a device is refused without blocking) and raises
  `OSError` for the path itself.
"""

from __future__ import annotations

import errno
import mmap as mmap_module
import os
import stat
import threading
from typing import IO, Any

import numpy as np

from .errors import TapeFormatError
from .tape_format_limits import Limits

_READ_CHUNK = 8 << 20


class Source:
    """A read-only byte buffer, possibly still being filled by a reader thread."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self._size = len(buf)

    def size(self) -> int:
        return self._size

    def wait(self, n: int) -> bool:
        return n <= self._size

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
    """The first `size` bytes of a readable binary file, read by a thread while parsing proceeds."""

    def __init__(self, f: Any, size: int, threaded: bool) -> None:
        self._array = aligned_buffer(size)
        self._write = self._array.data
        super().__init__(self._write.toreadonly())
        self._size = size
        self._avail = 0
        self._done = False
        self._cancel = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._f = f
        self._thread: threading.Thread | None = None
        if not threaded or size <= 2 * _READ_CHUNK:
            self._fill(size)
        else:
            self._thread = threading.Thread(target=self._fill, args=(_READ_CHUNK,), name="tapegrad-read", daemon=True)
            self._thread.start()

    def _fill(self, step: int) -> None:
        pos = 0
        try:
            while pos < self._size and not self._cancel:
                n = self._f.readinto(self._write[pos:pos + step])
                if not n:
                    break
                pos += n
                with self._cond:
                    self._avail = pos
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the parsing thread, which raises it
            self._error = exc
        finally:
            lock(self._array)
            with self._cond:
                self._avail = pos
                self._done = True
                self._cond.notify_all()

    def size(self) -> int:
        return self._avail if self._done else self._size

    def wait(self, n: int) -> bool:
        if n <= self._avail:
            return True
        with self._cond:
            while self._avail < n and not self._done:
                self._cond.wait()
        if self._error is not None:
            raise self._error
        return n <= self._avail

    def close(self) -> None:
        self._cancel = True
        if self._thread is not None:
            self._thread.join()


def stream_source(f: IO[bytes], limits: Limits, verify: bool) -> Source:
    """All bytes remaining in file object `f` (regular files are read concurrently with checksums)."""
    size = _remaining(f)
    if size is not None and hasattr(f, "readinto"):
        limits.check("max_total_bytes", size, "the tape's size in bytes")
        return FileSource(f, size, threaded=verify)
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
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise TapeFormatError(f"{os.fspath(path)!r} is not a regular file; tapes are read only from regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        limits.check("max_total_bytes", st.st_size, "the tape's size in bytes")
        if use_mmap and st.st_size > 0:
            mapped = mmap_module.mmap(fd, 0, access=mmap_module.ACCESS_READ)
            return Source(memoryview(mapped))
        f = os.fdopen(fd, "rb", buffering=0, closefd=True)
        fd = -1
        source = FileSource(f, st.st_size, threaded=verify)  # overlap reading with checksumming
        return _ClosingSource(source, f)
    finally:
        if fd >= 0:
            os.close(fd)


class _ClosingSource(Source):
    """A `FileSource` that also closes its file when parsing is over."""

    def __init__(self, inner: FileSource, f: IO[bytes]) -> None:
        super().__init__(inner.buf)
        self._inner = inner
        self._f = f

    def size(self) -> int:
        return self._inner.size()

    def wait(self, n: int) -> bool:
        return self._inner.wait(n)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._f.close()
