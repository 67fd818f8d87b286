"""The `tapegrad` inspection commands, run through `main(argv)` on real recorded tapes.

Tapes: the MLP step of `examples/mlp_step.py` (healthy, with a guard and sources), two runs of
one small program that part ways at a known record (`_program`), a tape with a NaN, a hostile
tape (control characters in names, metadata and source paths), a cut-off streamed recording.
Every command is checked for what it reports (record index, variable, source line), its JSON,
and its exit code; plus several files with one bad, FIFOs, `--version`, the help, closed pipes
and one `python -m tapegrad` run in a subprocess.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import inspect
from tapegrad.cli import main
from tapegrad.tape import Tape

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).read_text().splitlines()


def line_of(marker: str) -> int:
    """The line of this file holding `# MARK: marker` (where a record is made)."""
    return next(n for n, text in enumerate(HERE, 1) if text.rstrip().endswith(f"# MARK: {marker}"))


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlp_step", ROOT / "examples" / "mlp_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _program(scale: float, extra: bool = False, size: int = 8) -> Tape:
    """Records 0..3: sin, mul (by `scale`), exp, sum; `extra` inserts a tanh as record 2."""
    with tg.record() as tape:
        x = tg.Variable(np.linspace(-1.0, 1.0, size), name="x")
        a = tg.sin(x)  # MARK: sin
        b = a * scale  # MARK: scale
        if extra:
            b = tg.tanh(b)  # MARK: extra
        c = tg.exp(b)  # MARK: exp
        loss = tg.sum(c)  # MARK: sum
        loss.name = "loss"
    return tape


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.tape"
    example().record_step(str(path))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two runs of `_program` that part ways at record 1 (another scale)."""
    a, b = tmp_path / "a.tape", tmp_path / "b.tape"
    _program(2.0).save(a)
    _program(2.5).save(b)
    return a, b


def _nan_tape(path: Path) -> Path:
    with tg.record() as tape, np.errstate(all="ignore"):
        x = tg.Variable(np.array([1.0, 0.0, 4.0]), name="x")
        y = tg.log(x)  # log(0) = -inf
        z = tg.sqrt(y - 1.0)  # sqrt of negatives: NaN
        loss = tg.sum(z)
        loss.name = "loss"
    tape.save(path)
    return path


# ---- show -------------------------------------------------------------------------------------

def test_show_prints_the_listing_of_str_tape_with_source_lines(capsys: pytest.CaptureFixture[str], runs: tuple[Path, Path]) -> None:
    code, out, err = run(capsys, "show", runs[0])
    assert code == 0 and err == ""
    assert out == str(tg.load(runs[0])) + "\n"
    mul = next(line for line in out.splitlines() if line.startswith("    1 "))
    assert mul.startswith("    1 v3:f64[8] = mul v1 v2") and mul.endswith(f"# test_inspect_cli.py:{line_of('scale')}")
    assert out.splitlines()[-1].endswith(f"# loss @ test_inspect_cli.py:{line_of('sum')}")


def test_show_range_grep_and_values(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    full = str(tg.load(mlp)).splitlines()
    _, out, _ = run(capsys, "show", mlp, "--range", "3:5")
    assert [ln.split()[0] for ln in out.splitlines()] == ["3", "4"]
    _, out, _ = run(capsys, "show", mlp, "--range", "0:2")  # the inputs before record 0 come with it
    assert out.splitlines() == full[:7]
    _, out, _ = run(capsys, "show", mlp, "--range", "-1")
    assert out.splitlines() == full[-1:]
    _, out, _ = run(capsys, "show", mlp, "--grep", "matmul")
    assert [ln.split()[3] for ln in out.splitlines()] == ["matmul", "matmul"]
    _, out, _ = run(capsys, "show", mlp, "--grep", "logits")  # defined at record 4, used by 5 and 9
    assert [ln.split()[0] for ln in out.splitlines()] == ["4", "5", "9"]
    _, out, _ = run(capsys, "show", mlp, "--grep", "w*")
    assert [ln.split()[-1] for ln in out.splitlines()[:2]] == ["w1", "w2"]
    _, out, _ = run(capsys, "show", mlp, "--values", "--range", "4:5")
    assert out.startswith(full[full.index(next(ln for ln in full if ln.startswith("    4 ")))] + "  | min ")
    code, _, err = run(capsys, "show", mlp, "--range", "x:y")
    assert code == 2 and "--range" in err


def test_show_json(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    code, out, _ = run(capsys, "show", mlp, "--json", "--values")
    doc = json.loads(out)
    assert code == 0 and doc["file"] == str(mlp) and doc["records"] == 13 and doc["recovery"] is None
    assert [ln["text"] for ln in doc["lines"]] == str(tg.load(mlp)).splitlines()
    logits = next(ln for ln in doc["lines"] if ln["name"] == "logits")
    assert logits["record"] == 4 and logits["op"] == "add" and logits["type"] == "f64[32,3]"
    assert logits["source"]["file"].endswith("mlp_step.py") and logits["source"]["line"] > 0
    assert logits["values"]["size"] == 96 and logits["values"]["nan"] == 0
    assert doc["lines"][0]["record"] is None and doc["lines"][0]["op"] == "input"


# ---- stats ------------------------------------------------------------------------------------

def test_stats(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    code, out, _ = run(capsys, "stats", mlp, "--json")
    s = json.loads(out)
    assert code == 0
    assert (s["records"], s["variables"], s["constants"]) == (13, 21, 3)
    assert [v["name"] for v in s["inputs"]] == ["x", "w1", "b1", "w2", "b2"]
    assert [v["name"] for v in s["outputs"]] == ["h", "logits", "loss"]
    assert s["ops"]["matmul"] == 2 and list(s["ops"])[:2] == ["add", "matmul"] and sum(s["ops"].values()) == 13
    assert s["flops"] >= 2 * (32 * 16 * 4 + 32 * 3 * 16)  # the two matmuls
    assert s["peak"]["forward"] > 0 and s["peak"]["backward"] > s["peak"]["forward"]
    assert s["stored"]["float64"]["values"] == 17 and s["stored_bytes"] == sum(r["bytes"] for r in s["stored"].values())
    assert s["metadata"] == {"example": "mlp_step", "seed": 0} and s["sources"][0].endswith("mlp_step.py")
    assert s["health"] is None and s["values_mode"] == "all"
    _, text, _ = run(capsys, "stats", mlp)
    assert "records    13" in text and "inputs     x (v0) f64[32,4], w1 (v1)" in text and "seed: 0" in text


def test_stats_values_lists_the_worst_first(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _nan_tape(tmp_path / "nan.tape")
    _, out, _ = run(capsys, "stats", path, "--values", "--json")
    health = json.loads(out)["health"]
    # sqrt (v4): 2 NaN; then one non-finite each, the largest finite magnitude first: log (v1: 1.39),
    # log - 1 (v3: 1.0), the loss (v5: no finite value)
    assert [h["id"] for h in health[:4]] == [4, 1, 3, 5]
    assert health[0]["values"]["nan"] == 2 and health[0]["op"] == "sqrt"
    _, text, _ = run(capsys, "stats", path, "--values", "--top", "1")
    assert "health     worst first, 1 of 6 stored values:" in text and "nan 2 inf 0" in text


def test_stats_skips_plans_of_long_tapes(capsys: pytest.CaptureFixture[str], runs: tuple[Path, Path]) -> None:
    _, out, _ = run(capsys, "stats", runs[0], "--json", "--max-plan-records", "2")
    s = json.loads(out)
    assert s["peak"] == {"forward": None, "backward": None} and "more than the limit of 2" in s["peak_note"]


# ---- grad -------------------------------------------------------------------------------------

def test_grad_prints_and_saves_the_replayed_gradients(capsys: pytest.CaptureFixture[str], mlp: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "grads"  # written exactly there: no .npz appended
    code, out, _ = run(capsys, "grad", mlp, "--of", "loss", "--wrt", "w1", "b2", "--out", out_path)
    expected = tg.replay.backward(tg.load(mlp), of="loss", wrt=["w1", "b2"])
    assert code == 0 and out.startswith("gradients of loss (v20) f64[] neg @ mlp_step.py:")
    assert f"w1 (v1) f64[4,16]  norm {np.linalg.norm(expected['w1']):.6g}  nan 0 inf 0" in out
    with np.load(out_path) as saved:
        assert sorted(saved.files) == ["b2", "w1"]
        np.testing.assert_array_equal(saved["w1"], expected["w1"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tapegrad")] == []
    _, out, _ = run(capsys, "grad", mlp, "--json")
    doc = json.loads(out)
    assert doc["of"]["name"] == "loss" and [g["wrt"]["name"] for g in doc["grads"]] == ["x", "w1", "b1", "w2", "b2"]
    assert doc["grads"][1]["norm"] == pytest.approx(np.linalg.norm(expected["w1"]))


def test_grad_counts_nan_and_inf(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "grad", _nan_tape(tmp_path / "nan.tape"), "--of", "loss")
    assert code == 0 and "x (v0) f64[3]  norm" in out and "nan 2 inf 0" in out


def test_grad_out_errors_name_the_path_and_leave_nothing(capsys: pytest.CaptureFixture[str], mlp: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "g.npz"
    code, out, err = run(capsys, "grad", mlp, "--out", target)
    assert code == 1 and out == "" and err.startswith(f"tapegrad: {target}: ") and err.count("\n") == 1
    assert "creating a temporary file failed: No such file or directory; the file is unchanged" in err
    assert not target.parent.exists()
    code, _, err = run(capsys, "grad", mlp, mlp, "--out", tmp_path / "g.npz")
    assert code == 2 and "--out takes one tape file" in err


def test_unknown_names_list_the_nearest_first(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    code, out, err = run(capsys, "grad", mlp, "--of", "los")
    assert code == 1 and out == ""
    assert err.startswith(f"tapegrad: {mlp}: no variable named 'los' on this tape")
    assert err.index("'loss'") < err.index("'logits'") < err.index("'b1'") and err.count("\n") == 1
    code, out, _ = run(capsys, "grad", mlp, "--of", "v20", "--wrt", "v1")  # ids work as v<N>
    assert code == 0 and "w1 (v1)" in out


# ---- check ------------------------------------------------------------------------------------

def _corrupted(tape: Tape, record: int) -> Tape:
    """`tape` with the stored value of `record`'s output changed (a corrupted recording)."""
    parts = tape.parts()
    values = dict(parts.values)
    out = parts.records[record][2]
    values[out] = values[out] + 1e-3
    return Tape.from_parts(tape.values_mode, tape.metadata, leaves=list(parts.leaves), consts=set(parts.consts),
                           records=list(parts.records), values=values, avals=dict(parts.avals), names=dict(parts.names),
                           sources=([f for f, _ in map(tape.source_of, range(len(tape)))],  # type: ignore[misc]
                                    [ln for _, ln in map(tape.source_of, range(len(tape)))]))  # type: ignore[misc]


def test_check_a_healthy_tape_and_its_gradient(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    code, out, _ = run(capsys, "check", mlp, "--grad", "w1")
    assert code == 0
    assert out.startswith("values: 13 records, 13 recomputed, 13 stored values compared (rtol 1e-05, atol 1e-08): ok\n")
    assert "gradient: d loss (v20) / d w1 (v1) against finite differences" in out and "MISMATCH" not in out
    _, out, _ = run(capsys, "check", mlp, "--grad", "x", "--of", "logits", "--json")
    doc = json.loads(out)
    assert doc["ok"] and doc["grad"]["ok"] and len(doc["grad"]["directions"]) == 3 and doc["grad"]["of"]["name"] == "logits"


def test_check_finds_the_first_corrupted_record(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.tape"
    _corrupted(_program(2.0), 2).save(path)
    code, out, _ = run(capsys, "check", path)
    assert code == 1
    assert f"record 2: v4 f64[8] exp @ test_inspect_cli.py:{line_of('exp')}: 8 elements differ (first at [0])" in out
    _, out, _ = run(capsys, "check", path, "--json", "--atol", "1e-2")  # within a looser tolerance
    assert json.loads(out)["ok"] is True
    _, out, _ = run(capsys, "check", path, "--json")
    m = json.loads(out)["mismatch"]
    assert (m["record"], m["kind"], m["var"]["id"], m["difference"]["count"]) == (2, "value", 4, 8)
    assert m["stored"]["mean"] == pytest.approx(m["recomputed"]["mean"] + 1e-3)


def test_check_an_inputs_only_tape_compares_nothing_but_recomputes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with tg.record(values="inputs") as tape:
        tg.exp(tg.Variable(np.ones(3), name="x"))
    tape.save(tmp_path / "in.tape")
    code, out, _ = run(capsys, "check", tmp_path / "in.tape", "--json")
    doc = json.loads(out)
    assert code == 0 and (doc["recomputed"], doc["compared"], doc["values_mode"]) == (1, 0, "inputs")


# ---- diff -------------------------------------------------------------------------------------

def test_diff_of_one_tape_with_itself_is_same(capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    code, out, _ = run(capsys, "diff", mlp, mlp, "--of", "loss")
    assert code == 0 and out.endswith("same\n") and "record by record, 13 pairs" in out


def test_diff_reports_the_record_where_runs_part_ways(capsys: pytest.CaptureFixture[str], runs: tuple[Path, Path]) -> None:
    code, out, _ = run(capsys, "diff", *runs, "--of", "loss")
    assert code == 1
    assert "first value difference, after 1 equal pairs" in out
    assert f"A: record 1: v3 f64[8] mul @ test_inspect_cli.py:{line_of('scale')}" in out
    _, out, _ = run(capsys, "diff", *runs, "--of", "loss", "--json")
    d = json.loads(out)
    assert d["files"] == [str(p) for p in runs] and not d["same"] and d["alignment"] == "record by record"
    assert d["changes"] == [] and d["input_count"] == 1 and d["inputs"][0]["a"]["var"]["op"] == "const"
    first = d["first_value"]
    assert (first["a"]["var"]["record"], first["b"]["var"]["record"]) == (1, 1)
    assert first["a"]["values"]["max"] == pytest.approx(2.0 * np.sin(1.0))
    assert first["b"]["values"]["max"] == pytest.approx(2.5 * np.sin(1.0))
    assert first["a"]["var"]["source"]["line"] == line_of("scale")
    grad = d["first_gradient"]  # from the output back: d loss / d (the mul's output) = exp(mul) differs first
    assert grad["a"]["var"]["record"] == 1 and grad["kind"] == "gradient"
    assert grad["a"]["values"]["max"] == pytest.approx(np.exp(2.0 * np.sin(1.0)))


def test_diff_reports_an_inserted_op_and_a_changed_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.tape", tmp_path / "b.tape", tmp_path / "c.tape"
    _program(2.0).save(a)
    _program(2.0, extra=True).save(b)
    _program(2.0, size=9).save(c)
    code, out, _ = run(capsys, "diff", a, b, "--json")
    d = json.loads(out)
    assert code == 1 and d["alignment"] == "aligned" and d["pairs"] == 4
    assert [(ch["kind"], ch["a"], ch["b"]) for ch in d["changes"]] == [("inserted", None, [2, 3])]
    assert d["changes"][0]["detail"] == "tanh f64[8]" and d["changes"][0]["b_source"]["line"] == line_of("extra")
    assert d["first_value"]["a"]["var"]["record"] == 2 and d["first_value"]["b"]["var"]["record"] == 3  # exp, after the tanh
    _, out, _ = run(capsys, "diff", a, b)
    assert f"inserted: B record 2 @ test_inspect_cli.py:{line_of('extra')}: tanh f64[8]" in out
    _, out, _ = run(capsys, "diff", a, c, "--json")
    d = json.loads(out)  # every record but the final sum (f64[] on both) changes shape
    assert {(ch["kind"], ch["a"][0]) for ch in d["changes"]} == {("shape changed", 0), ("shape changed", 1), ("shape changed", 2)}
    assert d["changes"][0]["detail"] == "sin: f64[8] -> f64[9]" and d["pairs"] == 1 and d["inputs"][0]["a"]["var"]["name"] == "x"


# ---- slice ------------------------------------------------------------------------------------

def test_slice_is_a_standalone_reproducer(capsys: pytest.CaptureFixture[str], mlp: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.tape"
    code, out, _ = run(capsys, "slice", mlp, "--var", "loss", "--out", small)
    # everything: the guard on max(abs(logits)) depends on the inputs the loss reads
    assert code == 0 and out.startswith(f"wrote {small}: 13 of 13 records (1 guards), 8 leaves, computing loss (v20)")
    full, part = tg.load(mlp), tg.load(small)
    assert str(part) == str(full)
    assert part.value("loss").tolist() == full.value("loss").tolist()
    want = tg.replay.backward(full, of="loss", wrt=["w1", "b1", "w2", "b2", "x"])
    got = tg.replay.backward(part, of="loss", wrt=["w1", "b1", "w2", "b2", "x"])
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    new_x = np.random.default_rng(5).standard_normal((32, 4))
    assert tg.replay.forward(part, inputs={"x": new_x})["loss"] == tg.replay.forward(full, inputs={"x": new_x})["loss"]
    assert part.source_of(len(part) - 1) == full.source_of(len(full) - 1)
    assert part.metadata["tapegrad.slice"] == {"of": "loss", "records": 13} and part.metadata["seed"] == 0


def test_slice_keeps_only_what_the_variable_needs(capsys: pytest.CaptureFixture[str], runs: tuple[Path, Path], tmp_path: Path) -> None:
    small = tmp_path / "s.tape"
    code, out, _ = run(capsys, "slice", runs[0], "--var", "v3", "--out", small, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["from_records"] == [0, 1] and doc["var"]["record"] == 1 and doc["out"] == str(small)
    part = tg.load(small)
    assert str(part).splitlines()[-1].endswith(f"# test_inspect_cli.py:{line_of('scale')}")
    np.testing.assert_array_equal(part.value(3), tg.load(runs[0]).value(3))


def test_slice_of_a_guarded_value_keeps_the_guard() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.array([1.0, -2.0]), name="x")
        w = tg.Variable(np.array([3.0]), name="w")
        y = tg.sin(x)
        if tg.max(y) > 0:  # decided by x, which z reads: kept, with the max and the comparison
            y = y * 2.0
        if tg.sum(w) < 0:  # decided by w alone: z never reads w
            y = -y
        z = tg.exp(y)
        z.name = "z"
        if tg.sum(z) > 0:  # after z: it decided nothing about z
            pass
    sliced = inspect.slice(tape, "z")
    ops = [r.op for r in sliced.tape.records]
    assert ops == ["sin", "max", "greater", "guard", "mul", "exp"] and sliced.records == [0, 1, 2, 3, 4, 8]
    assert "w" not in sliced.tape.names
    np.testing.assert_array_equal(tg.replay.forward(sliced.tape)["z"], tape.value("z"))
    with pytest.raises(tg.GuardError):  # the slice re-checks the branch its input decided
        tg.replay.forward(sliced.tape, inputs={"x": np.array([-1.0, -2.0])})


# ---- many files, bad files, hostile files -------------------------------------------------------

def test_several_files_one_bad(capsys: pytest.CaptureFixture[str], runs: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.tape"
    bad.write_bytes(b"not a tape at all")
    code, out, err = run(capsys, "stats", runs[0], bad, runs[1])
    assert code == 1
    assert out.count("==> ") == 2 and out.count("records    4") == 2  # a header for each file reported
    assert err.count("\n") == 1 and err.startswith(f"tapegrad: {bad}: ")
    code, out, err = run(capsys, "stats", runs[0], bad, runs[1], "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [d["file"] for d in docs] == [str(runs[0]), str(bad), str(runs[1])]
    assert "error" in docs[1] and docs[2]["records"] == 4
    code, out, err = run(capsys, "show", tmp_path / "nosuch.tape")
    assert code == 1 and out == "" and err == f"tapegrad: {tmp_path / 'nosuch.tape'}: No such file or directory\n"
    code, _, err = run(capsys, "check", tmp_path)
    assert code == 1 and "is a directory" in err


def test_a_fifo_is_refused_without_blocking(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.tape"
    os.mkfifo(fifo)

    def hang(signum: int, frame: Any) -> None:
        raise TimeoutError("the FIFO blocked")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(5)
    try:
        code, out, err = run(capsys, "show", fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert code == 1 and out == "" and err == f"tapegrad: {fifo}: is a FIFO; tapes are read only from regular files\n"


def _hostile(path: Path) -> Path:
    evil = "x\x1b[31m\nname\u202e"
    tape = Tape.from_parts("all", {"key\x1b[2J": "value\n\x1b]0;title\x07"}, leaves=[0], consts=set(),
                           records=[("exp", None, 1, 0)], values={0: np.ones(2), 1: np.exp(np.ones(2))}, avals={},
                           names={0: evil, 1: "out\x1b[0m"}, sources=(["/tmp/evil\x1b]0;pwned\x07.py"], [7]))
    tape.save(path)
    return path


@pytest.mark.parametrize("argv", [["show", "--values"], ["stats", "--values"], ["grad"], ["check", "--grad", "v0"],
                                  ["grad", "--of", "nosuch\x1b[31m"], ["diff", "SELF"], ["slice", "--var", "v1", "--out", "OUT"]])
def test_strings_from_files_are_escaped(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]) -> None:
    path = _hostile(tmp_path / "evil\x1b[1m.tape")
    args = [a.replace("OUT", str(tmp_path / "o.tape")) for a in argv if a != "SELF"] + (["--of", "v1"] if "SELF" in argv else [])
    code, out, err = run(capsys, args[0], path, *([path] if "SELF" in argv else []), *args[1:])
    for text in (out, err):
        assert not any(c in text for c in "\x1b\x07\u202e"), text
    assert out.count("\n") == len(out.splitlines()) and err.count("\n") <= 1
    if argv[0] == "show":
        assert "x\\x1b[31m\\nname\\u202e" in out and "evil\\x1b]0;pwned\\x07.py:7" in out
    if "nosuch" in argv[-1]:
        assert code == 1 and "'nosuch\\x1b[31m'" in err and "'out\\x1b[0m'" in err


def test_json_escapes_but_keeps_the_strings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = _hostile(tmp_path / "evil.tape")
    _, out, _ = run(capsys, "stats", path, "--json")
    assert "\x1b" not in out and out.isascii()
    doc = json.loads(out)
    assert doc["inputs"][0]["name"] == "x\x1b[31m\nname\u202e" and doc["metadata"] == {"key\x1b[2J": "value\n\x1b]0;title\x07"}


def test_a_cut_off_recording_says_to_recover_and_recover_says_what_was_kept(capsys: pytest.CaptureFixture[str],
                                                                            tmp_path: Path) -> None:
    whole = tmp_path / "run.tape"
    with tg.record(path=whole, flush_every=4):
        x = tg.Variable(np.ones(3), name="x")
        for _ in range(10):
            x = tg.sin(x)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tape"
    cut.write_bytes(data[:len(data) * 2 // 3])
    code, out, err = run(capsys, "show", cut)
    assert code == 1 and out == "" and err.count("\n") == 1 and "--recover" in err and err.startswith(f"tapegrad: {cut}: ")
    code, out, err = run(capsys, "show", cut, "--recover")
    with pytest.warns(tg.TapeRecoveryWarning):
        kept = tg.load(cut, recover=True)
    assert code == 0 and out == str(kept) + "\n" and 0 < len(kept) < 10
    assert f"recovered: {len(kept)} records" in err and f"cut off at byte {kept.recovery.offset:,}" in err
    _, out, _ = run(capsys, "stats", cut, "--recover", "--json")
    assert json.loads(out)["recovery"]["records"] == len(kept)


# ---- the command line itself -------------------------------------------------------------------

def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"tapegrad {tg.__version__}\n"
    code, out, _ = run(capsys)
    assert code == 0
    for name in ("show", "stats", "grad", "check", "diff", "slice", "demo"):
        assert f"\n    {name} " in out
    code, _, err = run(capsys, "show")
    assert code == 2 and "FILE" in err
    code, _, err = run(capsys, "nosuchcommand")
    assert code == 2


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_ends_quietly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mlp: Path) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["show", str(mlp)]) == 0


def test_python_m_tapegrad_piped_into_head(tmp_path: Path) -> None:
    path = tmp_path / "long.tape"
    with tg.record() as tape:
        x = tg.Variable(np.ones(2), name="x")
        for _ in range(20000):
            x = tg.sin(x)
    tape.save(path)
    shown = subprocess.run(f"'{sys.executable}' -m tapegrad show '{path}' | head -n 3", shell=True, capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
    assert shown.stdout.splitlines()[1].startswith("    0 v1:f64[2] = sin v0")
    assert shown.stderr == ""
    status = subprocess.run([sys.executable, "-m", "tapegrad", "show", str(path), "--range", "0:1"], capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0 and len(status.stdout.splitlines()) == 2


def test_progress_bar_waits_a_second_and_clears_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tapegrad import cli

    now = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    bar = cli._Bar(stream, "x.tape")
    bar(10, 100)
    assert stream.getvalue() == ""
    now[0] += 1.5
    bar(50, 100)
    assert stream.getvalue() == "\rx.tape [###############...............]  50% 50/100"
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")
