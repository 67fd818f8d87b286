"""msgpack-level damage behind valid checksums.

Every case re-frames the damaged payload with a correct CRC chain, so it reaches the decoder.
"""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest

import tapegrad as tg
from tape_bytes import edit_frame, join_frames, pack, payload_of, replace_payload, split_frames, tiny_tape
from tapegrad import tape_format as tf

DATA = tf.dumps(tiny_tape())


def rejects(data: bytes, match: str | None = None, kind: type[Exception] = tg.TapeFormatError) -> None:
    for recover in (False, True):
        with pytest.raises(kind, match=match):
            tf.loads(data, recover=recover)


@pytest.mark.parametrize("tag", [b"HEAD", b"VARS", b"RECS", b"NAME", b"FOOT"])
def test_reserved_byte_0xc1(tag: bytes) -> None:
    rejects(replace_payload(DATA, tag, b"\xc1"), r"invalid msgpack: FormatError.*\(frame \d+ " + tag.decode())
    payload = payload_of(DATA, tag)
    rejects(replace_payload(DATA, tag, payload[:3] + b"\xc1" + payload[4:]), "invalid msgpack")


@pytest.mark.parametrize("tag", [b"HEAD", b"VARS", b"RECS", b"NAME", b"FOOT"])
def test_extra_data_after_an_object(tag: bytes) -> None:
    payload = payload_of(DATA, tag)
    rejects(replace_payload(DATA, tag, payload + b"\xc0"), "invalid msgpack: ExtraData")


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x00"


def test_deeply_nested_attributes_are_refused_without_recursion_errors() -> None:
    for depth in (20, 900, 1023, 1024, 5000, 100_000):
        inner = msgpack.unpackb(nested(min(depth, 900)), use_list=False) if depth < 1000 else None
        if inner is not None:  # decodable: refused by the attribute check
            bad = edit_frame(DATA, b"RECS", lambda c, v=inner: {**c, "attrs": ({"axis": v, "keepdims": False},)})
            rejects(bad, "attribute 'axis'")
        # raw bytes: deeper than msgpack's stack is an unpack error
        payload = payload_of(DATA, b"RECS")
        cols = msgpack.unpackb(payload, raw=False, use_list=False)
        head = pack({k: v for k, v in cols.items() if k != "attrs"})
        raw = b"\x8b" + head[1:] + pack("attrs") + b"\x91\x82" + pack("axis") + nested(depth) + pack("keepdims") + b"\xc2"
        rejects(replace_payload(DATA, b"RECS", raw))


def test_deeply_nested_metadata() -> None:
    meta: object = 1
    for _ in range(17):
        meta = [meta]
    bad = edit_frame(DATA, b"HEAD", lambda h: {**h, "metadata": {"deep": meta}})
    rejects(bad, "nesting depth of a metadata value is 17, over the limit max_nesting=16", tg.LimitError)
    rejects(replace_payload(DATA, b"HEAD", b"\x82" + pack("values") + pack("all") + pack("metadata")
                            + b"\x81" + pack("k") + nested(100_000)), "invalid msgpack")


@pytest.mark.parametrize("header", [b"\xdb\xff\xff\xff\xff", b"\xd9\xff", b"\xc6\x7f\xff\xff\xff",
                                    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xf0\x01",
                                    b"\xdc\xff\xff", b"\xda\xff\xff"])
def test_length_headers_larger_than_the_remaining_bytes(header: bytes) -> None:
    for tag in (b"HEAD", b"RECS"):
        rejects(replace_payload(DATA, tag, header + b"abc"), "invalid msgpack")


def test_invalid_utf8() -> None:
    payload = payload_of(DATA, b"RECS")
    bad = payload.replace(b"\xa3mul", b"\xa3\xff\xfe\xfd")
    assert bad != payload
    rejects(replace_payload(DATA, b"RECS", bad), "UnicodeDecodeError")
    rejects(replace_payload(DATA, b"NAME", b"\x91\x92\x03\xa2\xc3\x28"), "UnicodeDecodeError")


def test_non_string_map_keys() -> None:
    rejects(replace_payload(DATA, b"HEAD", b"\x82\x01\xa3all" + pack("metadata") + b"\x80"), "not allowed for map key")
    rejects(replace_payload(DATA, b"HEAD", pack({b"values": "all", "metadata": {}})), "lacks the key 'values'")
    rejects(edit_frame(DATA, b"HEAD", lambda h: {**h, "metadata": {b"bin": 1}}), "keys must be strings")
    bad = edit_frame(DATA, b"RECS", lambda c: {**c, "attrs": ({b"axis": None, "keepdims": False},)})
    rejects(bad, "unknown attribute")


def test_duplicate_map_keys() -> None:
    raw = b"\x83" + pack("values") + pack("all") + pack("metadata") + b"\x80" + pack("values") + pack("none")
    rejects(replace_payload(DATA, b"HEAD", raw), "duplicate map key")


@pytest.mark.parametrize("ext", [b"\xd4\x01\x00", b"\xd6\xff\x00\x00\x00\x01", b"\xc7\x00\x05",
                                 b"\xc8\x00\x10\x07" + bytes(16)])
def test_ext_types_the_format_does_not_define(ext: bytes) -> None:
    raw = b"\x82" + pack("values") + pack("all") + pack("metadata") + b"\x81" + pack("t") + ext
    rejects(replace_payload(DATA, b"HEAD", raw), "invalid msgpack")


WRONG = [
    ("FOOT", lambda f: {**f, "records": True}, "must be a int"),
    ("FOOT", lambda f: {**f, "frames": 6.0}, "must be a int"),
    ("FOOT", lambda f: {**f, "variables": 5}, "footer counts 5 variables"),
    ("RECS", lambda c: {**c, "count": True}, "row count must be a non-negative integer"),
    ("RECS", lambda c: {**c, "count": -1}, "row count"),
    ("RECS", lambda c: {**c, "count": 2.0}, "row count"),
    ("RECS", lambda c: {**c, "count": 3}, "column 'op' must be a bin of 3"),
    ("RECS", lambda c: {**c, "output": [2, 3]}, "column 'output' must be a bin"),
    ("RECS", lambda c: {**c, "output": c["output"][:7]}, "column 'output' must be a bin of 2 x 4 bytes, got 7"),
    ("RECS", lambda c: {**c, "ops": ("mul", 7)}, "'ops' must be an array of op names"),
    ("RECS", lambda c: {**c, "op": np.array([0, 5], "<u2").tobytes()}, "refers to entry 5"),
    ("RECS", lambda c: {**c, "type": np.array([0, 9], "<u4").tobytes()}, "refers to entry 9"),
    ("RECS", lambda c: {**c, "attr": np.array([0, 2], "<u4").tobytes()}, "refers to entry 2"),
    ("RECS", lambda c: {**c, "nin": np.array([2, 2], "<u4").tobytes()}, "column 'inputs' must be a bin of 4"),
    ("RECS", lambda c: {**c, "attrs": ([("axis", None)],)}, "'attrs' must be an array of maps"),
    ("RECS", lambda c: {**c, "types": (("float64", (2.0,)), ("float64", ()))}, "non-negative integers, got 2.0"),
    ("RECS", lambda c: {**c, "types": (("float64", (True,)), ("float64", ()))}, "non-negative integers, got True"),
    ("RECS", lambda c: {**c, "types": (("float64", 2), ("float64", ()))}, "a shape must be an array"),
    ("RECS", lambda c: {**c, "types": ("float64",)}, "must be a \\[dtype, shape\\] pair"),
    ("RECS", lambda c: {k: v for k, v in c.items() if k != "attr"}, "lacks the column 'attr'"),
    ("VARS", lambda c: {**c, "const": b"\x00\x02"}, "column 'const' must be 2 bytes of 0 or 1"),
    ("VARS", lambda c: {**c, "names": ((True, "x"),)}, "'names' entry must be \\[row, name\\]"),
    ("VARS", lambda c: {**c, "names": ((0, 5),)}, "'names' entry"),
    ("VARS", lambda c: {**c, "names": ((9, "x"),)}, "'names' entry"),
    ("VARS", lambda c: {**c, "id": np.array([0, 0], "<u4").tobytes()}, "v0 is defined twice"),
    ("NAME", lambda n: ((True, "y"),), "refers to True"),
    ("NAME", lambda n: ((3.0, "y"),), "refers to 3.0"),
    ("NAME", lambda n: ((99, "y"),), "refers to 99"),
    ("NAME", lambda n: ((3, b"y"),), "a name must be a string"),
    ("NAME", lambda n: {"3": "y"}, "NAME frame must hold an array"),
    ("HEAD", lambda h: {**h, "values": "some"}, "'values' must be one of"),
    ("HEAD", lambda h: {**h, "values": True}, "must be a str"),
    ("HEAD", lambda h: [h], "the header must be a map"),
]


@pytest.mark.parametrize("tag, edit, match", WRONG, ids=[f"{t}-{m[:30]}" for t, _, m in WRONG])
def test_wrong_types_where_an_id_or_count_is_expected(tag: str, edit, match: str) -> None:
    rejects(edit_frame(DATA, tag.encode(), edit), match)


def test_errors_name_the_byte_offset_of_the_frame() -> None:
    pos = 12
    for tag, payload in split_frames(DATA)[1]:
        if tag == b"RECS":
            break
        pos += 12 + len(payload)
    with pytest.raises(tg.TapeFormatError, match=f"frame 4 RECS at byte {pos}"):
        tf.loads(replace_payload(DATA, b"RECS", b"\xc1"))


def test_random_msgpack_in_every_frame_never_escapes() -> None:
    rng = np.random.default_rng(1)
    pre, frames = split_frames(DATA)
    values = [None, True, 0, -1, 2**64 - 1, 1.5, "", "mul", b"\x00", [], {}, [0, 1], {"count": 1},
              {"count": 0, "ops": [], "op": b"", "nin": b"", "inputs": b"", "output": b"", "types": [],
               "type": b"", "attrs": [], "attr": b""}]
    for _ in range(300):
        k = int(rng.integers(0, len(frames)))
        obj = values[int(rng.integers(0, len(values)))]
        bad = list(frames)
        bad[k] = (frames[k][0], pack(obj))
        for recover in (False, True):
            with contextlib.suppress(tg.TapegradError):
                tf.loads(join_frames(bad, pre), recover=recover)
