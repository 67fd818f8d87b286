"""Streaming a recording to a file: `StreamWriter`, the `TapeSink` that `record(path=...)` uses.

Contract: `StreamWriter(path, tape, flush_every=256, fsync=False)` writes the header at once,
then appends a batch of frames (`columns.batch_rows` -> `writer.Encoder.batch`) every
`flush_every` records and at `close()`, which adds the footer, with the exception that ended the
recording when there is one (`tape.error`, which `record()` sets before closing its sink).  A
stream declares the newest format version (1.2) from its first byte, since only its end tells
whether its footer holds an exception and its records shape guards.  A process killed at any point leaves a file whose flushed batches
load with `recover=True`.  Files are flushed to the OS, not fsynced, unless `fsync=True`.

Interrupts: creating the writer (the file and its whole header), each flush and `close()` (the
last batch, the footer and closing the file) run with signal handlers held back
(`interrupts.held`): Ctrl-C, `_thread.interrupt_main()` or a handler raising `SystemExit` never
cut a write short; what they raise propagates once the write is complete.  So the file is never
left without a complete header, and a recording interrupted anywhere still gets its footer when
`record()` closes it.

I/O errors: an `OSError` while writing (a full disk) is raised again as an `OSError` with the same
errno whose message names the file and what was being done ("writing records 512 to 767 to
PATH", the footer, the fsync) and says that the file holds a recoverable prefix; its `filename`
is the path.  If the header cannot be written, the message says the recording could not start,
and the file is removed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import IO, Any

from ..errors import TapegradError
from ..interrupts import held
from ..tape import Tape
from .columns import DenseIds, SourceCache, batch_rows, late_names
from .frames import MINOR
from .writer import Encoder, footer_error


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
        self._dense = DenseIds()
        self._leaves_done = 0
        self._records_done = 0
        self._renamed: dict[int, None] = dict.fromkeys(tape.parts().names)  # names the tape already has
        self._where: SourceCache = {}  # resolved source locations
        self._failed: BaseException | None = None
        self._closed = False
        self._path = os.fspath(path)
        self._started = False  # the header is written
        with held():  # the file exists only with its complete header
            self._file: IO[bytes] = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
            try:
                self._enc = Encoder(self._file, tape.values_mode, tape.metadata, minor=MINOR)
                self._flush()  # the header, and whatever the tape holds already
            except BaseException as exc:
                _remove_unfinished(self._path, self._file)
                if isinstance(exc, OSError):
                    raise OSError(exc.errno, f"starting a recording in {self._path}: {exc.strerror or exc}",
                                  self._path) from exc
                raise
            self._started = True

    # -- TapeSink --
    def leaf(self, vid: int, value: Any, name: str | None, const: bool) -> None:
        """Leaves are taken from the tape at the next flush."""

    def due(self) -> None:
        if self._failed is None:
            with held():
                self._flush()

    def name(self, vid: int, name: str | None) -> None:
        self._renamed[vid] = None

    def close(self) -> None:
        """Write what is left and the footer, and close the file (idempotent)."""
        if self._closed:
            return
        with held():
            self._closed = True
            try:
                if self._failed is None:
                    self._flush()
                    self._write("writing the footer to", lambda: self._enc.footer(footer_error(self._tape.error)))
                    if self._fsync:
                        self._write("flushing to disk (fsync):", lambda: os.fsync(self._file.fileno()))
            finally:
                self._file.close()

    def flush(self) -> None:
        """Write the records gathered so far (also done every `flush_every` records)."""
        if self._failed is not None:
            raise TapegradError(f"the tape stream failed earlier: {self._failed}") from self._failed
        with held():
            self._flush()

    def _flush(self) -> None:
        tape = self._tape
        parts = tape.parts()  # (once per batch: accessors cost nothing measurable here)
        tape.sink_due_at(len(parts.records) + self._flush_every)
        leaves = parts.leaves[self._leaves_done:]
        records = parts.records[self._records_done:]
        first, last = self._records_done, self._records_done + len(records) - 1
        what = f"record {first}" if first == last else f"records {first} to {last}" if records else "the tape's inputs"

        def write() -> None:
            rows = batch_rows(tape, leaves, records, self._dense, self._records_done, self._where)
            late: list[tuple[int, str | None]] = []
            if self._renamed:
                late = late_names(parts.names, self._dense, self._renamed, leaves)
                self._renamed = {}
            self._enc.batch(*rows, names=late)
            self._enc.w.commit()

        self._write(f"writing {what} to", write)
        self._leaves_done += len(leaves)
        self._records_done += len(records)

    def _write(self, doing: str, write: Callable[[], object]) -> None:
        """Run `write`; if it fails, the stream has failed (once the header is written, an
        `OSError` is raised again saying what it was `doing` to which file, and that the file
        holds a recoverable prefix)."""
        try:
            write()
        except OSError as exc:
            self._failed = exc
            if not self._started:
                raise
            raise OSError(exc.errno, f"{doing} {self._path}: {exc.strerror or exc}; the file holds a "
                                     f"recoverable prefix of the recording (tg.load(path, recover=True))",
                          self._path) from exc
        except BaseException as exc:
            self._failed = exc
            raise


def _remove_unfinished(path: str, file: IO[bytes]) -> None:
    """Close `file` and remove it from `path` if it is a regular file still there (never a
    device such as /dev/full, nor a file that replaced it meanwhile)."""
    try:
        mine = os.fstat(file.fileno())
        there = os.stat(path)
        if stat.S_ISREG(mine.st_mode) and (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
            os.unlink(path)
    except OSError:
        pass
    finally:
        file.close()
