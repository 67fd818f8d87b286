"""The entry points: `dump`/`dumps` (tape -> bytes) and `load`/`loads`/`load_path` (bytes ->
validated tape).  Their contract is the package's (`tapegrad.tape_format`); this module only
wires the pieces together:

- writing: `columns.batch_rows` turns the whole tape into one batch of rows and
  `writer.Encoder` writes it, between the header and the footer;
- reading: a `sources` source holds the bytes, `reader.read` decodes and validates them.
"""

from __future__ import annotations

import io
import os
from typing import IO

from ..collector import no_gc
from ..tape import Tape
from .columns import DenseIds, batch_rows, late_names
from .frames import ERROR_MINOR, records_minor
from .limits import DEFAULT_LIMITS, Limits
from .reader import read
from .sources import memory_source, path_source, stream_source
from .writer import Encoder, footer_error


def dump(tape: Tape, fileobj: IO[bytes]) -> None:
    """Write `tape` to the binary file object `fileobj` (at its current position).

    The file is version 1.0 unless the tape holds the exception that ended its recording
    (`tape.error`), which needs 1.1, or shape guards or a reshape with -1, which need 1.2
    (docs/FORMAT.md, section 13).
    """
    error = footer_error(tape.error)
    with no_gc():
        parts = tape.parts()
        minor = max(0 if error is None else ERROR_MINOR, records_minor(parts.records))
        enc = Encoder(fileobj, tape.values_mode, tape.metadata, minor=minor)
        dense = DenseIds()
        rows = batch_rows(tape, parts.leaves, parts.records, dense, 0, {})
        enc.batch(*rows, names=late_names(parts.names, dense, parts.names, parts.leaves))
        enc.footer(error)


def dumps(tape: Tape) -> bytes:
    """The bytes of `tape` as a tape file."""
    buf = io.BytesIO()
    dump(tape, buf)
    return buf.getvalue()



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

