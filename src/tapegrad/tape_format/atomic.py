"""Atomic saving: `save(tape, path)` leaves `path` holding the old tape or the new one, never a mix
(`write_atomically` does the same for any content: `tapegrad grad --out` writes its .npz with it).

Contract: the tape is written (`api.dump`) to a temporary file in the same directory, which is
flushed, fsynced and renamed over `path` (`os.replace`); then the directory is fsynced.  On any
failure the temporary file is removed, `path` is untouched and the error propagates; an
`OSError` (a full disk, a failing fsync) is raised again as an `OSError` with the same errno
whose message names `path` and the step that failed, and whose `filename` is `path`.  Temporary
files (`.<name>.<pid>.<random>.tapegrad-tmp`) left by writers that were killed are removed by
the next save to the same path; those of other live processes, and saves in progress, are left
alone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import IO

from ..tape import Tape
from .api import dump

_inflight: set[str] = set()  # temporary files this process is writing right now
_inflight_lock = threading.Lock()
_TMP_SUFFIX = ".tapegrad-tmp"


def save(tape: Tape, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
    """Write `tape` to `path` atomically: readers and crashes see the old file or the new one.

    The tape goes to a temporary file in the same directory, which is flushed, fsynced and
    renamed over `path`; then the directory is fsynced.  On failure (a full disk, a failing
    fsync, an interrupt) the temporary file is removed and `path` is untouched, and the error
    propagates (an `OSError` keeps its errno and names `path`).  Temporary files left by
    writers that were killed are removed by the next save.
    `fsync=False` skips both fsyncs (faster; a power cut may then lose the new file).
    """
    write_atomically(path, lambda f: dump(tape, f), "a tape", fsync=fsync)


def write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], what: str, *,
                     fsync: bool = True) -> None:
    """`write(file)` to a temporary file that then replaces `path`, as `save` does for tapes
    (`what` names the content in error messages: "a tape", "gradients")."""
    target = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(6).hex()}{_TMP_SUFFIX}")
    with _inflight_lock:
        _inflight.add(tmp)
    step = "creating a temporary file"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                step = "writing"
                write(f)
                if fsync:
                    step = "flushing to disk (fsync)"
                    os.fsync(f.fileno())
            step = "renaming the temporary file over it"
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if fsync:
            step = "flushing its directory to disk (fsync)"
            _fsync_dir(folder)
    except OSError as exc:
        done = step.startswith("flushing its directory")
        outcome = f"the new {what.removeprefix('a ')} is in place, but a power cut may still lose it" if done \
            else "the file is unchanged"
        raise OSError(exc.errno, f"saving {what} to {target}: {step} failed: {exc.strerror or exc}; {outcome}",
                      target) from exc
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

