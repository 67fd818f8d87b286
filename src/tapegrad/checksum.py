"""CRC-32 from the fastest implementation installed: the tape format's one checksum, and the
fingerprint a recording keeps of each input array it shares (`Tape`).

Contract: `crc32(data, seed=0)` equals `zlib.crc32(data, seed)` for every C-contiguous
bytes-like `data` (the same polynomial, the same register, so files are the same whichever is
used), and releases the GIL on large buffers as zlib's does (the writer and the reader checksum
pieces on two threads).  With the optional extra `tapegrad[fast]` it is python-isal's
`isal_zlib.crc32` (Intel ISA-L's CRC, folded with carry-less multiplication), otherwise
`zlib.crc32`; `IMPLEMENTATION` names the one in use.

Why it is worth an optional dependency: the checksums are most of what saving and a verified
load cost beyond the disk itself, and a shared input is fingerprinted on every use of its tape.
Measured on the development machine, zlib's CRC-32 runs at 2.2 GB/s and ISA-L's at 13.9 GB/s
on one core (`benchmarks/format.py` shows what that does to `save` and `load` against
`np.save`/`np.load`).  This module imports nothing from tapegrad.
"""

from __future__ import annotations

from collections.abc import Callable

Crc32 = Callable[..., int]  # (data, seed=0) -> int


def _fastest() -> tuple[str, Crc32]:
    try:
        from isal import isal_zlib
    except ImportError:
        import zlib

        return "zlib", zlib.crc32
    return "isal", isal_zlib.crc32


IMPLEMENTATION, crc32 = _fastest()
