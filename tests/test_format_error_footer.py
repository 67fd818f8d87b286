"""A recording that ends with an exception says so in its file: the footer's `error` (format 1.1).

The type and message of the exception that made the `record()` block exit are kept in
`tape.error`, written by the stream writer and by `dump`/`save`, and read back after checks (the
file is untrusted input).  A tape without an exception is written exactly as before, as version 1.0.
"""

from __future__ import annotations

import warnings
from typing import Any

import msgpack
import numpy as np
import pytest

import tapegrad as tg
from tape_bytes import join_frames, preamble, split_frames, tiny_tape
from tapegrad import tape_format as tf
from tapegrad.tape import ERROR_MESSAGE_BYTES, describe_exception
from tapegrad.tape_format import reader


class CustomError(Exception):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


def raising(exc: BaseException, path: Any = None) -> tg.Tape:
    """A recording (streamed to `path` if given) whose block raises `exc` after two records."""
    with pytest.raises(type(exc)), tg.record(path=path) as tape:
        x = tg.Variable(np.array([1.0, 2.0]), name="x")
        tg.exp(tg.sin(x))
        raise exc
    return tape


def version(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[8:10], "little"), int.from_bytes(data[10:12], "little")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def with_footer(data: bytes, footer: dict[str, Any], minor: int = 1) -> bytes:
    """`data` (a tape) with its footer replaced by `footer` and the given minor version."""
    _, frames = split_frames(data)
    return join_frames([*frames[:-1], (b"FOOT", pack(footer))], preamble(1, minor))


def counts(data: bytes) -> dict[str, Any]:
    _, frames = split_frames(data)
    foot: dict[str, Any] = msgpack.unpackb(frames[-1][1])
    return {k: foot[k] for k in ("frames", "records", "variables")}


# ---- what the tape keeps ----------------------------------------------------------------------

def test_a_block_that_raises_keeps_the_exception_on_the_tape() -> None:
    tape = raising(ValueError("step 7: loss exploded"))
    assert tape.error == ("ValueError", "step 7: loss exploded")
    assert len(tape) == 2
    with tg.record() as fine:
        tg.exp(tg.Variable(np.ones(2)))
    assert fine.error is None


def test_the_type_name_is_qualified_unless_built_in() -> None:
    assert raising(CustomError("x")).error == (f"{__name__}.CustomError", "x")
    assert raising(KeyboardInterrupt()).error == ("KeyboardInterrupt", "")
    assert raising(Unprintable()).error == (f"{__name__}.Unprintable", "<the exception's message could not be computed>")
    assert describe_exception(tg.GuardError("g")) == ("tapegrad.errors.GuardError", "g")


def test_huge_and_unencodable_messages_are_capped_and_made_valid_utf8() -> None:
    _, message = raising(ValueError("\x1b[31m" + "m" * (1 << 20))).error or ("", "")
    assert len(message.encode()) <= ERROR_MESSAGE_BYTES and message.startswith("\x1b[31mmmm")
    assert message.endswith("bytes, cut)") and f"{(1 << 20) + 5:,} bytes" in message
    _, odd = raising(ValueError("lone \ud800 surrogate")).error or ("", "")
    assert odd == "lone \\ud800 surrogate"
    assert tg.loads(tg.dumps(raising(ValueError("é" * 5000)))).error[1].startswith("é" * 100)  # type: ignore[index]


# ---- what the files say ----------------------------------------------------------------------

def test_dump_and_save_keep_the_exception_as_version_1_1(tmp_path) -> None:
    tape = raising(ValueError("boom"))
    data = tg.dumps(tape)
    assert version(data) == (1, 1)
    assert tg.loads(data).error == ("ValueError", "boom")
    tape.save(tmp_path / "t.tape")
    assert tg.load(tmp_path / "t.tape").error == ("ValueError", "boom")
    again = tg.loads(tg.dumps(tg.loads(data)))  # a loaded tape writes it again
    assert again.error == ("ValueError", "boom")


def test_a_tape_without_an_exception_is_written_as_before_version_1_0() -> None:
    tape = tiny_tape()
    data = tg.dumps(tape)
    assert version(data) == (1, 0)
    assert "error" not in msgpack.unpackb(split_frames(data)[1][-1][1])
    assert tg.loads(data).error is None
    tape.error = ("ValueError", "x")  # the same tape with an error: only the version and the footer differ
    other = tg.dumps(tape)
    assert version(other) == (1, 1) and split_frames(other)[1][:-1] == split_frames(data)[1][:-1]


def test_a_stream_keeps_the_exception_in_its_footer(tmp_path) -> None:
    path = tmp_path / "raised.tape"
    tape = raising(RuntimeError("CUDA out of memory\nsecond line"), path)
    data = path.read_bytes()
    assert version(data) == (1, 2)  # a stream cannot know what it will hold: it declares the newest minor version
    loaded = tg.load(path)
    assert loaded.error == ("RuntimeError", "CUDA out of memory\nsecond line") == tape.error
    assert tg.dumps(loaded) == tg.dumps(tape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.TapeRecoveryWarning)
        assert tg.loads(data[:-30], recover=True).error is None  # the footer is gone: nothing to say


def test_a_complete_stream_has_no_error_and_loads_as_before(tmp_path) -> None:
    path = tmp_path / "fine.tape"
    with tg.record(path=path) as tape:
        tg.exp(tg.Variable(np.ones(3), name="x"))
    data = path.read_bytes()
    assert version(data) == (1, 2)  # (a stream declares the newest minor version)
    assert "error" not in msgpack.unpackb(split_frames(data)[1][-1][1])
    assert tg.load(path).error is None and tg.dumps(tg.load(path)) == tg.dumps(tape)


def test_an_older_reader_ignores_the_key_of_a_newer_minor_version(monkeypatch: pytest.MonkeyPatch) -> None:
    data = tg.dumps(raising(ValueError("boom")))
    monkeypatch.setattr(reader, "MINOR", 0)  # a tapegrad that reads 1.0 and knows no footer error
    monkeypatch.setattr(reader, "ERROR_MINOR", 2)
    loaded = tg.loads(data)
    assert loaded.error is None and len(loaded) == 2


def test_a_newer_minor_version_may_extend_the_error_map() -> None:
    data = tg.dumps(tiny_tape())
    foot = {**counts(data), "error": {"type": "E", "message": "m", "traceback": ["..."]}, "future": 1}
    assert tg.loads(with_footer(data, foot, minor=7)).error == ("E", "m")


@pytest.mark.parametrize(("error", "message"), [
    (7, "key 'error' must be a dict"),
    ([1, 2], "key 'error' must be a dict"),
    ({"type": "E"}, "lacks the key 'message'"),
    ({"type": "E", "message": 3}, "key 'message' must be a str"),
    ({"type": b"E", "message": "m"}, "key 'type' must be a str"),
    ({"type": "E", "message": "m", "extra": 1}, "unknown footer error key 'extra'"),
    ({"type": "E", "message": "m" * (ERROR_MESSAGE_BYTES + 1)}, "message is longer than 4,096 bytes"),
    ({"type": "E" * 300, "message": "m"}, "type is longer than 256 bytes"),
])
def test_an_ill_formed_error_is_a_format_error(error: Any, message: str) -> None:
    data = tg.dumps(tiny_tape())
    with pytest.raises(tg.TapeFormatError, match=message):
        tg.loads(with_footer(data, {**counts(data), "error": error}))


def test_an_error_in_a_version_1_0_file_is_an_unknown_key() -> None:
    data = tg.dumps(tiny_tape())
    with pytest.raises(tg.TapeFormatError, match="unknown footer key 'error'"):
        tg.loads(with_footer(data, {**counts(data), "error": {"type": "E", "message": "m"}}, minor=0))


def test_an_error_set_by_hand_is_checked_and_capped_when_written() -> None:
    tape = tiny_tape()
    tape.error = "boom"  # type: ignore[assignment]
    with pytest.raises(tg.TapegradError, match="cannot store the tape's error"):
        tg.dumps(tape)
    tape.error = ("E", "x" * 100_000)
    assert len(tg.loads(tg.dumps(tape)).error[1].encode()) <= ERROR_MESSAGE_BYTES  # type: ignore[index]
