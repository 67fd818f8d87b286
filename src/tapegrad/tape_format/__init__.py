"""The tape file format: msgpack structure in checksummed frames, raw aligned array payloads.

Public API (this module only re-exports it; byte layout and versioning rules: docs/FORMAT.md):
- `dump(tape, fileobj)` / `dumps(tape) -> bytes` write a tape; `save(tape, path)` writes it
  atomically (temporary file in the same directory, flush, fsync, `os.replace`, fsync of the
  directory; on any failure the temporary file is removed and the old file is untouched).
  What is stored follows `tape.values_mode`: "all" values, "inputs" (leaf values only) or
  "none" (shapes and dtypes only).  Output is deterministic: the same tape gives the same bytes.
  Writing raises `TapegradError` for tapes it cannot represent (a dtype outside `DTYPES`,
  attributes or metadata that are not plain data) and `OSError` from the file.
- `load(fileobj)`, `loads(data)` and `load_path(path, mmap=False)` read a tape, validate it fully
  (`validate.validated`, which `validate.validate` would pass) and return it; stored arrays are
  read-only zero-copy views of the bytes read (or of the mapped file), each made when it is read
  (`stored.StoredValues`).  Options: `recover=True` returns the whole-record prefix of a damaged
  or cut-off tape and reports what was dropped (`tape.recovery`, a `Recovery`, plus a
  `TapeRecoveryWarning`); `verify=False` skips the checksums of array payloads (structure is
  always checked), and so does `mmap=True`, which never touches the payload pages when opening;
  `limits=Limits(...)` changes the safety limits.  Only `TapegradError`
  subclasses escape for bad content, and `OSError` for the file itself.
- The streaming writer that `record(path=...)` uses is `stream.StreamWriter` (see there).

Modules, each stating its own contract:
- `api`: the entry points `dump`, `dumps`, `load`, `loads`, `load_path`.
- `atomic`: `save`, the atomic write (temporary file, fsync, rename; sweeping killed writers' litter).
- `stream`: `StreamWriter`, which appends a recording to a file in batches as it happens.
- `columns`: a tape's leaves and records as the writer's rows (`DenseIds`: internal -> file ids).
- `writer`: encoding rows into frames (`Encoder`; `CHUNK_BYTES` sizes DATA frames, and an array
  gets a frame of its own rather than being split, up to `DATA_FRAME_LIMIT`).
- `frames`: the container: preamble, frames, CRC chain (`FrameWriter`, `FrameScanner`).
- `sources`: where the bytes come from (memory, file objects, paths, read or mapped).
- `reader`: decoding frames into a `Tape` (`read`), then validating it; `Recovery`.
- `stored`: `StoredValues`, a loaded tape's values: id -> array over the bytes, made on read.
- `validate`: the graph checks every loaded tape passes (bulk pass and reference pass).
- `limits`: `Limits` and `DEFAULT_LIMITS`, the safety bounds of loading.
- `common`: what the writer, reader and validator share (plain-data checks, attribute keys,
  dtype names).
`writer` and `columns` never import `reader`, `sources` or `validate` (writing needs no reading
code), and nothing here imports the tracer or replay.
"""

from .api import dump, dumps, load, load_path, loads
from .atomic import save
from .limits import Limits
from .reader import Recovery, TapeRecoveryWarning

__all__ = ["Limits", "Recovery", "TapeRecoveryWarning", "dump", "dumps", "load", "load_path", "loads", "save"]
