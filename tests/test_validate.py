"""Graph validation: every inconsistent tape is refused before replay.

Each bad tape is checked twice: `validate()` on the in-memory tape, and `loads(dumps(tape))`
(the writer stores what it is given; the loader must refuse it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from op_cases import op_tape
from tape_bytes import tiny_tape
from tapegrad import tape_format as tf
from tapegrad.ops import REGISTRY
from tapegrad.ops.spec import OpSpec
from tapegrad.tape import Tape
from tapegrad.tape_format.common import Reject
from tapegrad.tape_format.limits import DEFAULT_LIMITS
from tapegrad.tape_format.validate import _fast, explain, group_rows, validate

F64 = np.dtype("float64")


def tape_of(leaves: list[tuple[tuple[int, ...], Any]], records: list[tuple[Any, ...]], mode: str = "none") -> Tape:
    """Leaves get ids 0..L-1; records are (op, inputs, output, attrs, shape, dtype)."""
    t = Tape(mode)
    for vid, (shape, dtype) in enumerate(leaves):
        t._leaves.append(vid)
        if mode == "none":
            t._avals[vid] = (shape, np.dtype(dtype))
        else:
            t._values[vid] = np.zeros(shape, dtype)
    for op, ins, out, attrs, shape, dtype in records:
        t._records.append((op, attrs, out, *ins))
        if mode == "all":
            t._values[out] = np.zeros(shape, dtype)
        else:
            t._avals[out] = (shape, np.dtype(dtype))
    return t


def refused(tape: Tape, match: str, kind: type[Exception] = tg.TapeFormatError, file: bool = True) -> None:
    with pytest.raises((Reject, tg.LimitError)):  # the vectorised pass (big tapes) refuses it too
        _fast(tape, DEFAULT_LIMITS)
    with pytest.raises(kind, match=match):
        validate(tape)
    with pytest.raises(kind, match=match):
        explain(tape)
    if file:
        data = tf.dumps(tape)
        for recover in (False, True):
            with pytest.raises(kind, match=match):
                tf.loads(data, recover=recover)


X = ((3,), F64)


def test_valid_tapes_pass_both_validators() -> None:
    tapes = [tiny_tape()] + [op_tape(op) for op in REGISTRY]
    for tape in tapes:
        validate(tape)  # recorded tapes: internal ids, every value held
        explain(tape)
        _fast(tape, DEFAULT_LIMITS)
        loaded = tf.loads(tf.dumps(tape))
        validate(loaded)
        explain(loaded)
        _fast(loaded, DEFAULT_LIMITS)


def test_use_before_definition() -> None:
    tape = tape_of([X], [("sin", (2,), 1, {}, (3,), F64), ("cos", (0,), 2, {}, (3,), F64)])
    refused(tape, r"record 0 \(sin\): input v2 is used before it is defined")
    refused(tape_of([X], [("sin", (7,), 1, {}, (3,), F64)]), "input v7 is used before it is defined", file=False)


def test_a_variable_defined_twice() -> None:
    twice = tape_of([X], [("sin", (0,), 1, {}, (3,), F64), ("cos", (0,), 2, {}, (3,), F64)])
    twice._records[1] = ("cos", {}, 1, 0)
    refused(twice, "defined twice|not after the previous record", file=False)
    assert "defined twice" in tf_error(twice)
    leaf_again = tape_of([X], [("sin", (0,), 1, {}, (3,), F64)])
    leaf_again._records[0] = ("sin", {}, 0, 0)
    del leaf_again._avals[1]
    refused(leaf_again, "v0 is defined twice", file=False)
    assert "defined twice" in tf_error(leaf_again)
    listed = tape_of([X], [])
    listed._leaves.append(0)
    refused(listed, "listed twice", file=False)


def tf_error(tape: Tape) -> str:
    """The loader's message for a tape whose file the writer can still produce."""
    with pytest.raises(tg.TapeFormatError) as info:
        tf.loads(tf.dumps(tape))
    return str(info.value)


@pytest.mark.parametrize("name", ["os.system", "__import__", "__class__", "", "ADD", "add ", "eval",
                                  "tapegrad.ops.registry", "sum.__globals__", "\x00", "a" * 5000])
def test_unknown_op_names(name: str) -> None:
    refused(tape_of([X], [(name, (0,), 1, {}, (3,), F64)]), "record 0 .*unknown op")


@pytest.mark.parametrize("op, ins, attrs", [
    ("mul", (0,), {}), ("mul", (0, 0, 0), {}), ("sin", (), {}), ("sin", (0, 0), {}),
    ("sum", (0, 0), {"axis": None, "keepdims": False}), ("concatenate", (), {"axis": 0}),
    ("where", (0, 0), {}),
])
def test_wrong_arity(op: str, ins: tuple[int, ...], attrs: dict[str, Any]) -> None:
    refused(tape_of([X], [(op, ins, 1, attrs, (3,), F64)]), r"record 0 .*takes .* inputs, the record has")


@pytest.mark.parametrize("op, attrs, match", [
    ("sum", {"axis": None}, "missing attribute 'keepdims'"),
    ("sum", {"axis": None, "keepdims": False, "where": None}, "unknown attribute 'where'"),
    ("sin", {"axis": 0}, "unknown attribute 'axis'"),
    ("sum", {"axis": None, "keepdims": 1}, "'keepdims': expected a bool, got 1"),
    ("sum", {"axis": None, "keepdims": "no"}, "expected a bool"),
    ("sum", {"axis": True, "keepdims": False}, "'axis': expected None or a tuple"),
    ("sum", {"axis": 0, "keepdims": False}, "'axis': expected None or a tuple"),
    ("sum", {"axis": (1, 0), "keepdims": False}, "distinct, sorted"),
    ("sum", {"axis": (0, 0), "keepdims": False}, "distinct, sorted"),
    ("sum", {"axis": (5,), "keepdims": False}, r"in \[0, 1\)"),
    ("sum", {"axis": (-1,), "keepdims": False}, r"in \[0, 1\)"),
    ("sum", {"axis": (True,), "keepdims": False}, "expected None or a tuple"),
    ("softmax", {"axis": (0.0,)}, "expected None or a tuple"),
    ("reshape", {"shape": (-3,)}, "non-negative"),
    ("reshape", {"shape": (3.0,)}, "non-negative"),
    ("reshape", {"shape": 3}, "expected a shape"),
    ("transpose", {"axes": (1,)}, "permutation"),
    ("transpose", {"axes": None}, "permutation"),
    ("astype", {"dtype": "object"}, "expected a dtype name"),
    ("astype", {"dtype": np.float64.__name__ + "x"}, "expected a dtype name"),
    ("concatenate", {"axis": 1}, r"axis must be an integer in \[0, 1\)"),
    ("concatenate", {"axis": False}, "axis must be an integer"),
    ("stack", {"axis": 2}, r"in \[0, 2\)"),
    ("getitem", {"index": (("array",),)}, "uses 1 integer arrays but the record has 0"),
    ("getitem", {"index": ("...", "...")}, "one ellipsis"),
    ("getitem", {"index": ("x",)}, "bad index item"),
    ("getitem", {"index": (("slice", 1.0, None, None),)}, "bad index item"),
    ("getitem", {"index": (("slice", True, None, None),)}, "bad index item"),
    ("getitem", {"index": (True,)}, "bad index item"),
    ("getitem", {"index": 0}, "expected an index tuple"),
    ("getitem", {"index": (0,) * 100}, "over 2 \\* max_ndim"),
    ("guard", {"value": 1.0, "kind": "complex"}, "expected one of"),
    ("guard", {"value": "1", "kind": "float"}, "expected a bool, int or float"),
])
def test_missing_unknown_and_ill_typed_attributes(op: str, attrs: dict[str, Any], match: str) -> None:
    refused(tape_of([X], [(op, (0,), 1, attrs, (3,), F64)]), f"record 0 \\({op}\\): .*{match}")


def test_attributes_must_be_a_plain_mapping() -> None:
    refused(tape_of([X], [("sin", (0,), 1, [], (3,), F64)]), "attributes", file=False)
    refused(tape_of([X], [("sum", (0,), 1, None, (), F64)]), "missing attribute 'axis'")
    refused(tape_of([X], [("sum", (0,), 1, {"axis": {0: 1}, "keepdims": False}, (), F64)]), "record 0 \\(sum\\)",
            file=False)  # an unhashable value: the bulk pass cannot key it, the reference pass names it


@pytest.mark.parametrize("record, match", [
    (("mul", (0, 0), 1, {}, (4,), F64), r"recorded as float64\[4\], but the op produces float64\[3\]"),
    (("mul", (0, 0), 1, {}, (3,), np.float32), r"recorded as float32\[3\], but the op produces float64\[3\]"),
    (("less", (0, 0), 1, {}, (3,), F64), r"produces bool\[3\]"),
    (("sum", (0,), 1, {"axis": None, "keepdims": True}, (), F64), r"produces float64\[1\]"),
    (("reshape", (0,), 1, {"shape": (2, 2)}, (2, 2), F64), "cannot reshape"),
    (("broadcast_to", (0,), 1, {"shape": (1000, 1000)}, (3,), F64), "cannot broadcast to \\(1000, 1000\\)"),
    (("broadcast_to", (0,), 1, {"shape": (100_000, 3)}, (3,), F64), "produces float64\\[100000, 3\\]"),
    (("matmul", (0, 0), 1, {}, (3,), F64), "produces float64\\[\\]"),
    (("getitem", (0,), 1, {"index": (5,)}, (), F64), "out of bounds"),
])
def test_recorded_shape_or_dtype_disagreeing_with_the_op(record: tuple[Any, ...], match: str) -> None:
    refused(tape_of([X], [record]), f"record 0 \\({record[0]}\\): .*{match}")


def test_enormous_outputs_are_refused_by_a_limit_not_by_memory_error() -> None:
    huge = tape_of([X], [("broadcast_to", (0,), 1, {"shape": (100_000, 100_000, 3)}, (100_000, 100_000, 3), F64)])
    refused(huge, "max_elements", tg.LimitError)
    many = tape_of([((2**20,), F64)], [("exp", (0,), k + 1, {}, (2**20,), F64) if k == 0 else
                                       ("exp", (k,), k + 1, {}, (2**20,), F64) for k in range(100)])
    with pytest.raises(tg.LimitError, match="max_total_elements"):
        tf.loads(tf.dumps(many), limits=tf.Limits(max_total_elements=2**25))
    tf.loads(tf.dumps(many))


def test_outputs_must_increase_in_record_order() -> None:
    tape = tape_of([X], [("sin", (0,), 5, {}, (3,), F64), ("cos", (0,), 4, {}, (3,), F64)])
    refused(tape, "not after the previous record's output v5", file=False)


def test_values_names_and_constants_must_be_consistent() -> None:
    tape = tape_of([X], [("sin", (0,), 1, {}, (3,), F64)], mode="all")
    del tape._values[1]
    tape._avals[1] = ((3,), F64)
    refused(tape, "no stored value, but the tape stores values='all'", file=False)
    tape = tape_of([X], [("sin", (0,), 1, {}, (3,), F64)])
    tape._names[9] = "ghost"
    refused(tape, "name 'ghost' belongs to 9", file=False)
    tape = tape_of([X], [("sin", (0,), 1, {}, (3,), F64)])
    tape._consts.add(1)
    refused(tape, "constant is not a leaf", file=False)
    tape = tape_of([X], [("sin", (0,), 1, {}, (3,), F64)])
    tape._avals[7] = ((3,), F64)
    refused(tape, "v7 has a value or type but is neither", file=False)
    tape = tape_of([X], [])
    tape._values[0] = [1.0, 2.0, 3.0]
    refused(tape, "not an ndarray", file=False)
    tape = tape_of([X], [])
    tape._avals[0] = ((3,), np.dtype("complex128"))
    refused(tape, "not allowed", file=False)
    tape = tape_of([X], [])
    tape._avals[0] = ((True,), F64)
    refused(tape, "not a tuple of non-negative integers", file=False)


def test_gradients_asked_of_integer_variables_are_refused() -> None:
    with tg.record() as tape:
        k = tg.Variable(np.array([1, 2, 3]), name="k")
        a = tg.Variable(np.array([0.5, 1.0, 1.5]), name="a")
        out = tg.sum(a * k)
        out.name = "out"
    loaded = tf.loads(tf.dumps(tape))
    with pytest.raises(tg.TapegradError, match="k"):
        tg.replay.backward(loaded, of="out", wrt=["k"])
    assert tg.replay.backward(loaded, of="out", wrt=["a"])["a"].tolist() == [1.0, 2.0, 3.0]


def test_inference_runs_once_per_distinct_signature(monkeypatch) -> None:
    """Validation stays linear: a long tape of repeated ops infers each signature once."""
    calls = []
    original = OpSpec.infer

    def counting(self: OpSpec, *args: Any, **kw: Any) -> Any:
        calls.append(self.name)
        return original(self, *args, **kw)

    monkeypatch.setattr(OpSpec, "infer", counting)
    with tg.record(values="none") as tape:
        x = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        c = tg.Variable(np.full(4, 0.9), name="c")
        y = x
        steps = [lambda y: tg.add(y, c), lambda y: tg.mul(y, c), tg.sin, tg.exp]
        for k in range(4000):
            y = steps[k % 4](y)
    calls.clear()
    tf.loads(tf.dumps(tape))
    assert sorted(calls) == ["add", "exp", "mul", "sin"]


def test_attribute_values_equal_under_eq_are_still_told_apart() -> None:
    """`True == 1` and `0.0 == -0.0`: a bulk pass or a writer keying attributes by `==` would
    check (or store) one record's attributes for another's."""
    good = ("sum", (0,), 1, {"axis": None, "keepdims": True}, (1,), F64)
    bad = ("sum", (0,), 2, {"axis": None, "keepdims": 1}, (1,), F64)
    refused(tape_of([X], [good, bad]), r"record 1 \(sum\): attribute 'keepdims': expected a bool, got 1")
    with tg.record() as tape:
        x = tg.Variable(np.array([0.0, 1.0]), name="x")
        for k in range(80):  # enough records for the bulk pass
            (tg.sum(x * (1.0 if k % 2 else -1.0)) * 0.0).item()  # guards observing 0.0 and -0.0
    values = [r.attrs["value"] for r in tape.records if r.op == "guard"]
    assert {str(v) for v in values} == {"0.0", "-0.0"}
    loaded = tf.loads(tf.dumps(tape))
    assert [str(r.attrs["value"]) for r in loaded.records if r.op == "guard"] == [str(v) for v in values]


def test_long_tapes_of_mixed_arity_validate_in_bulk_and_name_the_bad_record() -> None:
    with tg.record(values="none") as tape:
        x = tg.Variable(np.ones((2, 3)), name="x")
        y = x
        for k in range(120):  # concatenations of 1 to 6 inputs, unary and binary ops between
            y = tg.concatenate([y] * (k % 6 + 1), axis=0)[:2] if k % 3 else tg.sin(y) * x
    loaded = tf.loads(tf.dumps(tape))
    _fast(loaded, DEFAULT_LIMITS)
    assert loaded.records == tape.records
    n = next(k for k, rec in enumerate(tape._records) if k > 100 and rec[0] == "concatenate" and len(rec) > 6)
    out = tape._records[n][2]
    tape._avals[out] = ((5, 3), F64)  # the recorded type of one deep record no longer follows
    tape._values.pop(out)
    with pytest.raises(tg.TapeFormatError, match=rf"record {n} \(concatenate\): output v\d+ is recorded as"):
        validate(tape)
    with pytest.raises(tg.TapeFormatError, match=rf"record {n} \(concatenate\)"):
        tf.loads(tf.dumps(tape))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**40), st.sampled_from([0, 7, 2**62])), max_size=60))
def test_group_rows_groups_like_a_dict(rows: list[tuple[int, int, int]]) -> None:
    columns = [np.array([row[k] for row in rows], dtype=np.int64) for k in range(3)] if rows else \
        [np.zeros(0, dtype=np.int64)] * 3
    first, group = group_rows(columns)
    firsts: dict[tuple[int, int, int], int] = {}
    for k, row in enumerate(rows):
        firsts.setdefault(row, k)
    assert first.tolist() == list(firsts.values())  # groups in order of first appearance
    assert group.tolist() == [list(firsts).index(row) for row in rows]
