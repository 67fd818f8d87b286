"""`tapegrad nan` end to end through `main(argv)`: real tapes saved to files, from a forward NaN,
a NaN born only in the reverse pass, a streaming run killed with SIGKILL, and a tape that stores
only its inputs; several files at once with one bad; JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nan_tapes import CRASH, HERE, root, underflow
from tapegrad.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_forward_and_reverse_findings_name_the_record_op_and_source_line(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    forward, forward_line = underflow()
    forward.save(tmp_path / "forward.tape")
    backward, backward_line = root()
    backward.save(tmp_path / "backward.tape")
    code, out, err = run(capsys, "nan", str(tmp_path / "forward.tape"))
    assert code == 1 and err == ""  # a non-finite value was found
    assert f"non-finite value from finite inputs is record 1 at {HERE}:{forward_line}" in out
    code, out, err = run(capsys, "nan", str(tmp_path / "backward.tape"), "--json")
    report = json.loads(out)
    assert code == 1 and report["file"] == str(tmp_path / "backward.tape") and report["forward"] is None
    assert (report["reverse"]["record"], report["reverse"]["op"], report["reverse"]["source"][1]) == (0, "sqrt", backward_line)
    assert report["reverse"]["cotangent"]["name"] == "x"


def test_a_run_killed_while_streaming_is_read_with_recovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "crashed.tape"
    child = subprocess.Popen([sys.executable, "-c", CRASH, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if int(line) >= 20:
                break
    finally:
        child.kill()
        child.wait()
    code, out, _ = run(capsys, "nan", str(path))
    assert code == 1 and "recovered: " in out and "record 1 at <string>" in out
    assert run(capsys, "show", str(path))[0] == 1  # strict commands refuse the cut file


def test_a_tape_of_inputs_only_replays_with_inputs_from_an_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tape, _ = underflow(values="none")
    tape.save(tmp_path / "none.tape")
    code, out, err = run(capsys, "nan", str(tmp_path / "none.tape"))
    assert code == 1 and out == "" and "inputs" in err
    np.savez(tmp_path / "in.npz", logits=np.array([[1000.0, 0.0, -5.0]]))
    code, out, _ = run(capsys, "nan", str(tmp_path / "none.tape"), "--inputs", str(tmp_path / "in.npz"))
    assert code == 1 and "record 1" in out and "values recomputed with the given inputs" in out
    np.savez(tmp_path / "calm.npz", logits=np.array([[1.0, 0.0, -5.0]]))
    code, out, _ = run(capsys, "nan", str(tmp_path / "none.tape"), "--inputs", str(tmp_path / "calm.npz"))
    assert code == 0 and "no record makes a non-finite value" in out


def test_several_files_one_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, _ = underflow(logits=np.array([[1.0, 0.0, -5.0]]))
    good.save(tmp_path / "good.tape")
    (tmp_path / "bad.tape").write_bytes(b"not a tape")
    code, out, err = run(capsys, "nan", str(tmp_path / "bad.tape"), str(tmp_path / "good.tape"), "--json")
    assert "bad.tape" in err
    objects: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [("error" in o) for o in objects] == [True, False]
    assert objects[1]["forward"] is None and objects[1]["reverse"] is None
