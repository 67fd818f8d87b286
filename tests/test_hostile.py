"""Hostile tapes with valid framing and checksums (issue 13), written by `spec_writer`, a writer
made from docs/FORMAT.md alone, so they can say what tapegrad's writer never would.

Each case is loaded every way a tape can be (`loads`, a path, a mapped path, recover mode): a
bad tape must raise the same `TapegradError` subclass in all of them, never a numpy or msgpack
error; a tape that loads must replay or be refused by a `LimitError`, never by the allocator.
Groups: 1. limits on shapes and on replay memory; 2. messages that quote file strings; 3. spec
conformance; 4. the spec's worked example, checked against the bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import tapegrad as tg
from spec_writer import Leaf, Rec, SpecTape, one_leaf
from tape_bytes import tiny_tape
from tapegrad import budget, inspect
from tapegrad import tape_format as tf
from tapegrad.errors import MESSAGE_LIMIT
from tapegrad.inspect.recompute import recompute
from tapegrad.tape import Tape
from tapegrad.tape_format.frames import MINOR

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONTROL = re.compile(r"[\x00-\x1f\x7f\x9b]")  # what must never reach a terminal from a message

LOADERS: dict[str, Callable[[bytes, Path], Tape]] = {
    "loads": lambda b, p: tf.loads(b),
    "path": lambda b, p: tf.load_path(p),
    "mmap": lambda b, p: tf.load_path(p, mmap=True),
    "recover": lambda b, p: tf.load_path(p, recover=True),
}


def load_every_way(data: bytes, tmp_path: Path) -> list[Tape]:
    """The tape loaded by each loader (raising what the first one raises, after checking that
    every loader raises an error of the same type with the same message)."""
    path = tmp_path / "hostile.tape"
    path.write_bytes(data)
    outcomes: list[Any] = []
    for load in LOADERS.values():
        try:
            outcomes.append(load(data, path))
        except tg.TapegradError as exc:
            outcomes.append(exc)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        assert len(errors) == len(outcomes), f"only some loaders refuse: {outcomes}"
        assert len({(type(e), str(e)) for e in errors}) == 1, f"loaders disagree: {errors}"
        raise errors[0]
    return outcomes


def refused(data: bytes, tmp_path: Path, kind: type[Exception], match: str) -> str:
    """Assert every loader refuses `data` with `kind` matching `match`; return the message."""
    with pytest.raises(kind, match=match) as info:
        load_every_way(data, tmp_path)
    message = str(info.value)
    assert not CONTROL.search(message), message
    return message


# ---- 1. errors from outside the library's family --------------------------------------------

@pytest.mark.parametrize("shape", [[2**63, 0], [2**32, 2**32, 0], [2**61, 2**61, 0], [2**62, 0], [0, 2**33]])
@pytest.mark.parametrize("values", ["all", "none"])
def test_an_empty_value_with_huge_dimensions_is_a_limit_error(shape: list[int], values: str, tmp_path: Path) -> None:
    t, _ = one_leaf("float64", shape, values=values)
    t.foot()
    message = refused(t.bytes(), tmp_path, tg.LimitError, "non-zero dimensions .* over the limit max_elements")
    assert "Limits(max_elements=" in message


def test_an_empty_value_with_dimensions_within_the_limit_loads(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2**32, 0], values="all")
    t.recs([Rec("sin", 1, [0], "float64", [2**32, 0])])
    t.foot()
    for tape in load_every_way(t.bytes(), tmp_path):
        assert tg.replay.forward(tape)[1].shape == (2**32, 0)


@pytest.mark.parametrize(("op", "shape"), [("broadcast_to", [2**62, 0]), ("reshape", [2**32, 2**32, 0]),
                                           ("broadcast_to", [0, 2**61, 2**61])])
def test_a_shape_attribute_with_huge_dimensions_is_a_limit_error(op: str, shape: list[int], tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [0], values="inputs")
    t.recs([Rec(op, 1, [0], "float64", [0], attrs={"shape": shape})])  # (an output of that shape is refused earlier)
    t.foot()
    refused(t.bytes(), tmp_path, tg.LimitError, rf"attribute 'shape' of record 0 \({op}\).* max_elements")


def bomb(values: str = "inputs") -> bytes:
    """One element, broadcast to 2**32 (a view: loads within max_elements), then sin: 32 GiB."""
    t, _ = one_leaf("float64", [1], value=np.array([0.5]), values=values)
    t.recs([Rec("broadcast_to", 1, [0], "float64", [2**32], attrs={"shape": [2**32]}),
            Rec("sin", 2, [1], "float64", [2**32])])
    t.name([(2, "y")])
    t.foot()
    return t.bytes()


def test_a_replay_bomb_within_the_load_limits_is_refused_before_it_allocates(tmp_path: Path) -> None:
    for tape in load_every_way(bomb(), tmp_path):
        for replay in (lambda: tg.replay.forward(tape), lambda: tg.replay.backward(tape, of="y", wrt=["x"]),
                       lambda: tg.replay.jvp(tape, {"x": np.ones(1)})):
            with pytest.raises(tg.LimitError) as info:
                replay()
            message = str(info.value)
            assert "record 0 (broadcast_to) alone allocates a float64[4294967296] value of 32.0 GiB" in message
            assert "replay memory budget" in message and "budget=" in message and budget.ENV in message
            peak = int(re.search(r"\(([\d,]+) bytes\) at its peak", message).group(1).replace(",", ""))  # type: ignore[union-attr]
            assert peak >= 2**35


def test_the_inspector_refuses_to_recompute_a_bomb() -> None:
    tape = tf.loads(bomb())
    with pytest.raises(tg.LimitError, match=r"cannot recompute the tape's values: record 0 \(broadcast_to\) would "
                                            r"allocate a float64\[4294967296\] value of 32.0 GiB"):
        list(recompute(tape))
    with pytest.raises(tg.LimitError, match="replay memory budget"):
        inspect.nan(tape)
    assert "would allocate" in str(inspect.check(tape).as_dict()["note"])


def test_a_replay_bomb_is_refused_inside_a_recording_too() -> None:
    tape = tf.loads(bomb())
    with tg.record(), pytest.raises(tg.LimitError, match="replay memory budget"):
        tg.replay.forward(tape)
    with pytest.raises(tg.LimitError, match="replay memory budget"):
        tg.grad(lambda x: tg.replay.backward(tape, of="y", wrt=["x"], inputs={"x": x})["x"])(np.array([0.5]))


def test_the_budget_is_an_option_and_defaults_to_half_the_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(budget.ENV, raising=False)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert budget.default_budget() == memory // 2
    tape = tf.loads(tf.dumps(tiny_tape()))
    need = tg.replay.plan(tape, of=3, wrt=[0]).peak_bytes
    with pytest.raises(tg.LimitError, match=r"over the replay memory budget of \d+ bytes \(\d+ bytes\);"):
        tg.replay.backward(tape, of=3, wrt=[0], budget=need - 1)
    assert tg.replay.backward(tape, of=3, wrt=[0], budget=need)[0].tolist() == [3.0, 3.0]
    monkeypatch.setenv(budget.ENV, str(need - 1))
    with pytest.raises(tg.LimitError, match=rf"\(\${budget.ENV}\)"):
        tg.replay.backward(tape, of=3, wrt=[0])
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(tg.TapegradError, match=budget.ENV):
        tg.replay.forward(tape)
    with pytest.raises(tg.TapegradError, match="budget must be"):
        tg.replay.forward(tape, budget=-1)


# ---- 2. messages that echo what a file says -------------------------------------------------

NASTY = "\x1b[31msin\x1b[0m\x00\x07\r\n\u202e"


def test_an_op_name_with_control_characters_is_escaped_everywhere_in_the_message(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2])
    t.recs([Rec(NASTY, 1, [0], "float64", [2], data=t.data(np.zeros(2))[0])])
    t.foot()
    message = refused(t.bytes(), tmp_path, tg.TapeFormatError, "unknown op")
    assert message.count(r"\x1b[31msin\x1b[0m\x00\x07\r\n\u202e") == 2  # the record's label and the quote


def test_a_source_file_name_is_escaped_in_guard_and_numpy_errors(tmp_path: Path) -> None:
    path = "/tmp/\x1b]0;owned\x07\r\nmodel.py"
    t, _ = one_leaf("float64", [], value=np.array(1.0), values="inputs")
    t.recs([Rec("guard", 1, [0], "bool", [], attrs={"value": 2.0, "kind": "float"}, file=path, line=9)])
    t.foot()
    for tape in load_every_way(t.bytes(), tmp_path):
        with pytest.raises(tg.GuardError) as guard:
            tg.replay.forward(tape)
        assert r"record 0 (guard) at /tmp/\x1b]0;owned\x07\r\nmodel.py:9" in str(guard.value)
        assert not CONTROL.search(str(guard.value))
    t = SpecTape(values="inputs")
    refs = t.data(np.array([2]), np.array([-1]))
    t.vars([Leaf(0, "int64", [1], data=refs[0]), Leaf(1, "int64", [1], data=refs[1])])
    t.recs([Rec("pow", 2, [0, 1], "int64", [1], file=path, line=9)])
    t.foot()
    for tape in load_every_way(t.bytes(), tmp_path):
        with pytest.raises(tg.TapegradError, match="ValueError: Integers to negative") as numpy_error:
            tg.replay.forward(tape)
        assert r"record 0 (pow) at /tmp/\x1b]0;owned\x07\r\nmodel.py:9" in str(numpy_error.value)
        assert not CONTROL.search(str(numpy_error.value))


def test_a_huge_op_name_gives_a_short_message(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2])
    t.recs([Rec("s" * 100_000, 1, [0], "float64", [2], data=t.data(np.zeros(2))[0])])
    t.foot()
    message = refused(t.bytes(), tmp_path, tg.TapeFormatError, r"unknown op 's+\.\.\.\[100,000 characters\]'")
    assert len(message) < 2000


def test_an_attribute_with_200000_axes_gives_a_short_message(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2])
    axes = list(range(200_000))
    t.recs([Rec("sum", 1, [0], "float64", [], attrs={"axis": axes, "keepdims": False}, data=t.data(np.zeros(1))[0])])
    t.foot()
    message = refused(t.bytes(), tmp_path, tg.TapeFormatError, r"record 0 \(sum\): attribute 'axis'")
    assert "(200,000 items)" in message and len(message) < 2000


def test_names_from_the_file_are_escaped_when_a_lookup_lists_them(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2])
    t.recs([Rec("sin", 1, [0], "float64", [2], data=t.data(np.zeros(2))[0])])
    t.name([(1, "\x1b[2J" + "n" * 5000)])
    t.foot()
    for tape in load_every_way(t.bytes(), tmp_path):
        with pytest.raises(tg.TapegradError, match="no variable named 'nope'") as info:
            tg.replay.forward(tape, outputs=["nope"])
        assert not CONTROL.search(str(info.value)) and len(str(info.value)) < 1000


def test_every_message_is_capped() -> None:
    assert len(str(tg.TapegradError("x" * 10**6))) < MESSAGE_LIMIT + 100
    assert "[message cut: 1,000,000 characters]" in str(tg.TapeFormatError("x" * 10**6))


# ---- 3. spec conformance --------------------------------------------------------------------

def late_leaf() -> SpecTape:
    """v2 = mul(v0, v1), where v1 is defined by a VARS frame after the RECS frame."""
    t = SpecTape(values="inputs")
    t.vars([Leaf(0, "float64", [], data=t.data(np.array(2.0))[0])])
    t.recs([Rec("mul", 2, [0, 1], "float64", [])])
    t.vars([Leaf(1, "float64", [], data=t.data(np.array(3.0))[0])])
    return t


def test_a_leaf_defined_after_the_record_that_uses_it_is_refused_in_every_mode(tmp_path: Path) -> None:
    t = late_leaf()
    t.foot()
    refused(t.bytes(), tmp_path, tg.TapeFormatError,
            r"record 0 \(mul\) uses leaf v1, which a later VARS frame \(frame 5\) defines")
    cut = SpecTape(values="inputs")
    cut.frames = late_leaf().frames[:4]  # HEAD, DATA, VARS, RECS: the file cut before the late VARS frame
    with pytest.raises(tg.TapeFormatError, match="v1 is used before it is defined"):
        tf.loads(cut.bytes(), recover=True)


def test_a_leaf_defined_before_the_records_frame_loads(tmp_path: Path) -> None:
    t = SpecTape(values="inputs")
    t.vars([Leaf(0, "float64", [], data=t.data(np.array(2.0))[0])])
    t.vars([Leaf(1, "float64", [], data=t.data(np.array(3.0))[0])])
    t.recs([Rec("mul", 2, [0, 1], "float64", [])])
    t.foot()
    for tape in load_every_way(t.bytes(), tmp_path):
        assert tg.replay.forward(tape)[2] == 6.0


def test_long_strings_are_limit_errors_naming_max_string_bytes(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [])
    t.name([(0, "n" * (3 << 19))])  # 1.5 MiB
    t.foot()
    refused(t.bytes(), tmp_path, tg.LimitError, r"longer than the limit max_string_bytes=1,048,576.*Limits\(max_string_bytes=")
    t, _ = one_leaf("float64", [], metadata={"note": "m" * (2 << 20)})
    t.foot()
    refused(t.bytes(), tmp_path, tg.LimitError, "max_string_bytes=1,048,576")


def nested_metadata(depth: int) -> dict[str, Any]:
    """Metadata whose deepest value is at `depth` (the map itself is at depth 0)."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


def test_metadata_nesting_is_counted_as_the_spec_says(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [], metadata=nested_metadata(16))
    t.foot()
    assert load_every_way(t.bytes(), tmp_path)[0].metadata == {"deep": nested_metadata(16)["deep"]}
    t, _ = one_leaf("float64", [], metadata=nested_metadata(17))
    t.foot()
    refused(t.bytes(), tmp_path, tg.LimitError, r"nesting depth of a metadata value is 17, over the limit max_nesting=16")


@pytest.mark.parametrize(("extra", "table"), [({"extra_ops": ["os.system"]}, "ops"),
                                               ({"extra_attrs": [{"axis": 999}]}, "attrs"),
                                               ({"extra_files": ["/etc/passwd"]}, "files")])
def test_unused_table_entries_are_refused(extra: dict[str, Any], table: str, tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [2])
    t.recs([Rec("sin", 1, [0], "float64", [2], data=t.data(np.zeros(2))[0], file="a.py")], **extra)
    t.foot()
    refused(t.bytes(), tmp_path, tg.TapeFormatError, rf"entry \d+ \(.*\) of the table '{table}' is used by no row")


def test_an_unused_type_entry_is_refused(tmp_path: Path) -> None:
    t = SpecTape(values="none")
    t.vars([Leaf(0, "float64", [2])], extra_types=[["int8", [3]]])
    t.foot()
    refused(t.bytes(), tmp_path, tg.TapeFormatError, r"entry 0 \(a tuple of length 2\) of the table 'types' is used by no row")


@pytest.mark.parametrize("byte", [2, 128, 255])
def test_bool_bytes_other_than_0_and_1_are_refused(byte: int, tmp_path: Path) -> None:
    t, _ = one_leaf("bool", [3], value=np.frombuffer(bytes([1, byte, 0]), dtype=np.uint8))
    t.foot()
    refused(t.bytes(), tmp_path, tg.TapeFormatError, "row 0: a bool value holds a byte other than 0 or 1")
    ok, _ = one_leaf("bool", [3], value=np.array([True, False, True]))
    ok.foot()
    assert load_every_way(ok.bytes(), tmp_path)[0].parts().values[0].tolist() == [True, False, True]


def test_an_ancillary_frame_counts_in_the_footer_and_may_not_precede_head(tmp_path: Path) -> None:
    t, _ = one_leaf("float64", [], values="none")
    t.frames.insert(1, (b"tIME", b"later"))
    t.minor = MINOR + 1  # a minor version newer than the reader's: ancillary frames are skipped
    t.foot()
    assert msgpack.unpackb(t.frames[-1][1])["frames"] == 3  # HEAD, tIME, VARS
    load_every_way(t.bytes(), tmp_path)
    t.frames.insert(0, t.frames.pop(1))  # the ancillary frame first, HEAD second
    refused(t.bytes(), tmp_path, tg.TapeFormatError, "the first frame must be the HEAD frame")


def spec_table_keys(section: str) -> list[str]:
    """The keys of a FORMAT.md section's table, in table order."""
    text = (DOCS / "FORMAT.md").read_text(encoding="utf-8")
    body = text[text.index(section):]
    body = body[:body.index("\n## ", 1)]
    return re.findall(r"^\| `(\w+)` \|", body, re.MULTILINE)


def test_the_writer_writes_keys_in_the_spec_table_order() -> None:
    with tg.record(source=True) as tape:
        x = tg.Variable(np.ones(3), name="x")
        tg.sum(tg.sin(x) * 2.0, axis=0)
    for tag, section in ((b"VARS", "## 7. VARS frame"), (b"RECS", "## 8. RECS frame")):
        frame = next(p for t, p in split(tf.dumps(tape)) if t == tag)
        written = list(msgpack.unpackb(frame, raw=False, strict_map_key=False))
        table = spec_table_keys(section)
        assert written == [k for k in table if k in written], (tag, written, table)
    assert spec_table_keys("## 7. VARS frame")[-3:] == ["data", "chunks", "names"]


def split(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 12, []
    while pos < len(data):
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        out.append((data[pos:pos + 4], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


# ---- 4. the spec's worked example ------------------------------------------------------------

def test_the_worked_example_hexdump_labels_and_bytes_match_the_tape() -> None:
    data = tf.dumps(tiny_tape())
    text = (DOCS / "FORMAT.md").read_text(encoding="utf-8")
    example = text[text.index("## 17. Worked example"):text.index("## 18.")]
    checked = 0
    for line in example.splitlines():
        m = re.match(r"^([0-9a-f]{8}): +(.*)$", line)
        if not m:
            continue
        tokens = m.group(2).split("  ")[0].split()
        if not all(re.fullmatch(r"[0-9a-f]+", t) for t in tokens):
            continue  # "...zeros..."
        at, shown = int(m.group(1), 16), bytes.fromhex("".join(tokens))
        assert data[at:at + len(shown)] == shown, f"FORMAT.md's hexdump line is off: {line}"
        checked += len(shown)
    assert checked > 400
    assert f"{len(data)} bytes" in example


def test_the_spec_writer_reproduces_the_worked_example() -> None:
    """The test writer follows the spec closely enough to write the pinned example byte for byte."""
    t = SpecTape(values="all", metadata={"note": "tiny"})
    x, c = t.data(np.array([1.0, 2.0]), np.array(3.0))
    t.vars([Leaf(0, "float64", [2], data=x), Leaf(1, "float64", [], const=1, data=c)], names=[(0, "x")])
    v2, v3 = t.data(np.array([3.0, 6.0]), np.array(9.0))
    t.recs([Rec("mul", 2, [0, 1], "float64", [2], data=v2),
            Rec("sum", 3, [2], "float64", [], attrs={"axis": None, "keepdims": False}, data=v3)])
    t.name([(3, "y")])
    t.foot()
    assert t.bytes() == tf.dumps(tiny_tape())
