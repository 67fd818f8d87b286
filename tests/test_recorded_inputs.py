"""Issue 12, item 2: lookups by name or id do not scan the tape, and recording does not copy big
input arrays, yet changing one in place after recording never changes a recording silently.

Checked without timings: a lookup after the index exists must not iterate over the tape's names
(a dict that refuses iteration stands in for them), and sharing is checked with
`np.shares_memory`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.tape import SHARE_BYTES

BIG = SHARE_BYTES // 8  # float64 elements of an array the tape shares


class _NoScans(dict[int, str]):
    """The names of a tape, refusing every whole-table walk."""

    def items(self) -> Any:
        raise AssertionError("a lookup walked every name of the tape")

    def values(self) -> Any:
        raise AssertionError("a lookup walked every name of the tape")

    def __iter__(self) -> Any:
        raise AssertionError("a lookup walked every name of the tape")


def _named_chain(n: int) -> tuple[tg.Tape, list[tg.Variable]]:
    with tg.record() as tape:
        y = tg.Variable(np.ones(2), name="x")
        kept = [y]
        for k in range(n):
            y = tg.sin(y)
            y.name = f"h{k}"
            kept.append(y)
    return tape, kept


@pytest.mark.parametrize("loaded", [False, True], ids=["recorded", "loaded"])
def test_lookup_by_name_uses_an_index_not_a_scan(loaded: bool) -> None:
    tape, kept = _named_chain(2_000)
    if loaded:
        tape = tg.loads(tg.dumps(tape))
    np.testing.assert_array_equal(tape.value("h0"), np.sin(np.ones(2)))  # builds the index (one walk)
    tape._names = _NoScans(tape._names)
    for k in range(0, 2_000, 7):
        np.testing.assert_array_equal(tape.value(f"h{k}"), kept[k + 1].data)
        assert tape.var(f"h{k}").name == f"h{k}"
    assert tape.resolve(5) == tape.ids_in_order()[5]


def test_the_name_index_follows_renames_and_new_leaves() -> None:
    with tg.record() as tape:
        x = tg.Variable(np.ones(2), name="x")
        assert tape.var("x").kind == "input"  # index built while recording
        y = x * 2.0
        y.name = "y"
        assert tape.resolve("y") == y._tapegrad_serial
        y.name = "z"
        w = tg.Variable(np.zeros(2), name="z")
        z2 = w + y
    with pytest.raises(tg.TapegradError, match="no variable named 'y'"):
        tape.resolve("y")
    with pytest.raises(tg.TapegradError, match="ambiguous"):
        tape.resolve("z")
    y.name = None
    assert tape.resolve("z") == w._tapegrad_serial
    assert tape.var(z2).kind == "op" and tape.var("x").kind == "input"


def _step(w0: np.ndarray, x0: np.ndarray, **options: Any) -> tuple[tg.Tape, tg.Variable, tg.Variable]:
    with tg.record(**options) as tape:
        w = tg.Variable(w0, name="w")
        loss = tg.sum(tg.tanh(w * x0))
        loss.name = "loss"
    return tape, w, loss


def test_big_inputs_and_constants_are_shared_not_copied() -> None:
    w0, x0 = np.linspace(0, 1, BIG), np.linspace(1, 2, BIG)
    tape, _, _ = _step(w0, x0)
    const = next(i for r in tape.records for i in r.inputs if tape.var(i).kind == "const")
    assert np.shares_memory(tape.value("w"), w0)
    assert np.shares_memory(tape.value(const), x0)
    assert not tape.value("w").flags.writeable  # the view handed out is read-only


@pytest.mark.parametrize("case", ["small", "not contiguous", "copy_inputs", "streamed"])
def test_other_inputs_are_copied(tmp_path: Any, case: str) -> None:
    w0 = np.linspace(0, 1, 8 if case == "small" else 2 * BIG)
    x0 = np.ones_like(w0)
    if case == "not contiguous":
        w0, x0 = w0[::2], x0[::2]
    options: dict[str, Any] = {"copy_inputs": True} if case == "copy_inputs" else {}
    if case == "streamed":
        options["path"] = str(tmp_path / "step.tape")
    tape, _, _ = _step(w0, x0, **options)
    assert not np.shares_memory(tape.value("w"), w0)
    w0 += 1.0  # changes nothing recorded
    g = tg.replay.backward(tape, of="loss", wrt=["w"])["w"]
    np.testing.assert_allclose(g, x0 * (1 - np.tanh((w0 - 1.0) * x0) ** 2))


USES = {
    "save": lambda tape, path: tape.save(path),
    "dumps": lambda tape, path: tg.dumps(tape),
    "replay.backward": lambda tape, path: tg.replay.backward(tape, of="loss", wrt=["w"]),
    "replay.forward": lambda tape, path: tg.replay.forward(tape),
    "value": lambda tape, path: tape.value("w"),
}


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("changed", ["input", "constant"])
def test_a_shared_array_changed_in_place_is_refused_by_every_later_use(tmp_path: Any, use: str, changed: str) -> None:
    w0, x0 = np.linspace(0, 1, BIG), np.linspace(1, 2, BIG)
    tape, _, _ = _step(w0, x0)
    (w0 if changed == "input" else x0)[3] += 1.0  # e.g. an optimizer step before saving
    path = tmp_path / "step.tape"
    with pytest.raises(tg.TapegradError, match="changed in place after it was recorded") as info:
        USES[use](tape, str(path))
    assert ("'w'" in str(info.value)) == (changed == "input")  # names the variable
    assert not path.exists()


def test_backward_after_an_in_place_change_is_refused_and_without_it_is_exact() -> None:
    w0, x0 = np.linspace(0, 1, BIG), np.linspace(1, 2, BIG)
    _, w, loss = _step(w0, x0)
    loss.backward()
    np.testing.assert_allclose(w.grad, x0 * (1 - np.tanh(w0 * x0) ** 2))
    w0 *= 2.0
    with pytest.raises(tg.TapegradError, match="changed in place"):
        loss.backward()


def test_unchanged_shared_inputs_save_and_replay_bit_for_bit(tmp_path: Any) -> None:
    w0, x0 = np.linspace(0, 1, BIG), np.linspace(1, 2, BIG)
    tape, w, loss = _step(w0, x0)
    loss.backward()
    path = tmp_path / "step.tape"
    tape.save(str(path))
    loaded = tg.load(str(path))
    np.testing.assert_array_equal(loaded.value("w"), w0)
    np.testing.assert_array_equal(tg.replay.backward(loaded, of="loss", wrt=["w"])["w"], w.grad)
