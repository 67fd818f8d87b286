"""Ctrl-C, `SystemExit` and other exceptions while a recording streams (issue 17, item 2).

An interrupt must never cut a write short: it lands after the write in progress, the block's exit
writes the last batch and the footer, and then it propagates.  A file is never left without a
complete header.

The first tests are deterministic: the file writer is wrapped so that an interrupt is sent from
inside a chosen write (`signal.raise_signal`, `_thread.interrupt_main()` or a SIGTERM handler
raising `SystemExit`), in this process, on pytest's main thread.  The last ones are real child
processes interrupted at random moments (SIGINT from the parent, `_thread.interrupt_main()` from a
thread of the child, SIGTERM to a child whose handler raises `SystemExit`), each child until it has
died of the interrupt; a child still running after `WAIT` seconds swallowed it.
`TAPEGRAD_INTERRUPT_TRIALS` (default 2) sets the trials per kind:
`TAPEGRAD_INTERRUPT_TRIALS=200 python -m pytest tests/test_interrupts.py` for a stress run.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import interrupts, tape_format
from tapegrad.tape_format import frames
from tapegrad.tracer import recording

TRIALS = int(os.environ.get("TAPEGRAD_INTERRUPT_TRIALS", "2"))
WAIT = 120.0  # seconds; only a child that swallowed its interrupt runs this long
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Stop(Exception):
    """What the SIGTERM handler of these tests raises (through `SystemExit`)."""


@pytest.fixture
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(3) while the test runs."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(3)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


SENDERS: dict[str, tuple[Callable[[], None], type[BaseException], str]] = {
    "SIGINT": (lambda: signal.raise_signal(signal.SIGINT), KeyboardInterrupt, "KeyboardInterrupt"),
    "interrupt_main": (_thread.interrupt_main, KeyboardInterrupt, "KeyboardInterrupt"),
    "SIGTERM handler": (lambda: signal.raise_signal(signal.SIGTERM), SystemExit, "SystemExit"),
}


def interrupt_at(monkeypatch: pytest.MonkeyPatch, send: Callable[[], None], when: Callable[[int], bool]) -> list[str]:
    """Make the file writer send an interrupt at the start of each write whose number `when`
    accepts (writes are numbered from 1); returns a log of "sent" and "written" events, in order."""
    original = frames.FrameWriter._write
    log: list[str] = []

    def write(self: frames.FrameWriter, data: Any) -> None:
        log.append("write")
        if when(log.count("write")):
            send()
            log.append("sent")
        original(self, data)
        log.append("written")

    monkeypatch.setattr(frames.FrameWriter, "_write", write)
    return log


def chain(n: int, every_op: Callable[[], None] = lambda: None) -> tg.Variable:
    y = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
    for _ in range(n):
        y = tg.sin(y) + 0.5
        every_op()
    return y


@pytest.mark.parametrize("sender", sorted(SENDERS))
def test_an_interrupt_in_a_flush_lands_after_it_and_the_file_gets_its_footer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigterm_exits: None, sender: str) -> None:
    send, raised, name = SENDERS[sender]
    path = tmp_path / "run.tape"
    log = interrupt_at(monkeypatch, send, lambda n: n == 3)  # header, first batch, second batch
    with pytest.raises(raised), tg.record(path=path, flush_every=4) as tape:
        chain(100)
    assert log[log.index("sent") + 1] == "written"  # the write went on to its end
    assert len(tape) == 8  # the op whose record filled the second batch raised
    got = tg.load(path)  # strict: the footer is there
    assert got.error is not None and got.error[0] == name
    assert got.records == tape.records


@pytest.mark.parametrize("sender", sorted(SENDERS))
def test_an_interrupt_while_the_header_is_written_leaves_a_complete_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigterm_exits: None, sender: str) -> None:
    send, raised, name = SENDERS[sender]
    path = tmp_path / "run.tape"
    ran = []
    interrupt_at(monkeypatch, send, lambda n: n == 1)
    with pytest.raises(raised), tg.record(path=path, flush_every=4):
        ran.append("body")
    assert ran == []  # the interrupt propagated from record()'s start
    got = tg.load(path)
    assert len(got) == 0 and got.error is not None and got.error[0] == name
    assert recording() is None


def test_an_interrupt_while_the_block_closes_lets_it_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.tape"
    closing: list[bool] = []
    interrupt_at(monkeypatch, _thread.interrupt_main, lambda n: bool(closing))
    with pytest.raises(KeyboardInterrupt), tg.record(path=path, flush_every=4) as tape:
        chain(10)
        closing.append(True)  # the block ends normally; its exit's writes are interrupted
    got = tg.load(path)
    assert got.error is None and got.records == tape.records and len(got) == 20


def test_two_interrupts_one_in_a_flush_and_one_while_closing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.tape"
    interrupt_at(monkeypatch, _thread.interrupt_main, lambda n: n in (3, 4))
    with pytest.raises(KeyboardInterrupt) as info, tg.record(path=path, flush_every=4) as tape:
        chain(100)
    assert isinstance(info.value.__context__, KeyboardInterrupt)  # the second, raised while closing
    got = tg.load(path)
    assert got.error == ("KeyboardInterrupt", "") and got.records == tape.records


@pytest.mark.parametrize("exc", [SystemExit(2), KeyboardInterrupt(), Stop("user code")], ids=repr)
def test_any_exception_from_user_code_gets_the_footer_written(tmp_path: Path, exc: BaseException) -> None:
    path = tmp_path / "run.tape"

    def raise_at_57() -> None:
        if len(tape) == 2 * 57:
            raise exc

    with pytest.raises(type(exc)), tg.record(path=path, flush_every=5) as tape:
        chain(100, raise_at_57)
    got = tg.load(path)
    assert got.records == tape.records and len(got) == 114
    assert got.error is not None and got.error[0].endswith(type(exc).__name__)


# ---- interrupts.held ----------------------------------------------------------------------

def test_held_delivers_a_signal_after_the_block_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGINT)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
            steps.append("after the signal")
            _thread.interrupt_main()  # the same signal again: its handler runs once
            steps.append("end of block")
        steps.append("after the block")
    assert steps == ["after the signal", "end of block"]
    assert signal.getsignal(signal.SIGINT) is before


def test_a_handler_installed_inside_held_stays() -> None:
    before = signal.getsignal(signal.SIGUSR1)

    def mine(signum: int, frame: Any) -> None:
        raise Stop("usr1")

    try:
        with interrupts.held():
            signal.signal(signal.SIGUSR1, mine)
        assert signal.getsignal(signal.SIGUSR1) is mine
        with pytest.raises(Stop), interrupts.held():
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_held_nests_and_does_nothing_off_the_main_thread() -> None:
    with pytest.raises(KeyboardInterrupt), interrupts.held():
        with interrupts.held():
            _thread.interrupt_main()
        inner_done = True
    assert inner_done

    seen: list[object] = []

    def elsewhere() -> None:
        with interrupts.held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(WAIT)
    assert seen == [signal.default_int_handler]


def test_big_frames_take_no_threading_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A freed `threading.Thread` runs a weakref callback, in which Python drops any exception: a
    Ctrl-C landing there would be lost.  The checksum thread of big frames and the reader thread
    of big files are bare threads (`interrupts.Worker`)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a threading.Thread was made")

    monkeypatch.setattr(threading.Thread, "__init__", refuse)
    big = np.linspace(0.0, 1.0, (frames._BIG // 8) + 1000)
    with tg.record(path=tmp_path / "big.tape") as tape:
        tg.sin(tg.Variable(big, name="x"))
    tg.save(tape, tmp_path / "saved.tape")
    for name in ("big.tape", "saved.tape"):  # (files of several pieces: read on a second thread)
        with open(tmp_path / name, "rb") as f:
            np.testing.assert_array_equal(tape_format.load(f).value("x"), big)
        np.testing.assert_array_equal(tg.load(tmp_path / name).value("x"), big)


# ---- child processes interrupted at random moments -----------------------------------------

CHILD = textwrap.dedent("""
    import signal, sys, threading, time, _thread
    import numpy as np
    import tapegrad as tg

    path, every, how, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    if how == "SIGTERM":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(3))
    print("starting", flush=True)
    with tg.record(path=path, flush_every=every) as tape:
        print("ready", flush=True)
        if how == "interrupt_main":  # from another thread of this process, while the main one records
            threading.Thread(target=lambda: (time.sleep(delay), _thread.interrupt_main()), daemon=True).start()
        y = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        while True:  # until interrupted
            y = tg.sin(y) + 0.5
""")

KINDS = {  # how the child is interrupted -> (its exit status, the exception its footer names)
    "SIGINT": (-signal.SIGINT, "KeyboardInterrupt"),
    "interrupt_main": (-signal.SIGINT, "KeyboardInterrupt"),
    "SIGTERM": (3, "SystemExit"),
    "SIGINT at start-up": (-signal.SIGINT, "KeyboardInterrupt"),
}


def expected(n: int) -> tg.Tape:
    with tg.record() as tape:
        y = tg.Variable(np.linspace(0.1, 0.4, 4), name="x")
        while len(tape) < n:
            y = tg.sin(y) + 0.5
    return tape


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_children_interrupted_at_random_moments_finish_their_files(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    status, name = KINDS[kind]
    for trial in range(TRIALS):
        path = tmp_path / f"run{trial}.tape"
        delay = float(rng.uniform(0.0, 0.2))
        how = "SIGINT" if kind == "SIGINT at start-up" else kind
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(int(rng.integers(1, 64))), how,
                                  str(delay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None
        wanted = "starting" if kind == "SIGINT at start-up" else "ready"
        assert child.stdout.readline().strip() == "starting"
        if wanted == "ready":
            assert child.stdout.readline().strip() == "ready"
        if kind in ("SIGINT", "SIGINT at start-up", "SIGTERM"):
            time.sleep(delay if wanted == "ready" else delay / 50)
            child.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGINT)
        try:
            _, err = child.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail(f"{kind}, trial {trial}: the child went on after its interrupt (swallowed)")
        assert child.returncode == status, err
        if kind == "SIGINT at start-up" and not path.exists():
            continue  # interrupted before record() opened the file
        got = tg.load(path)  # strict: a complete file with its footer
        assert got.error is not None and got.error[0] == name, (kind, trial, got.error)
        assert got.records == expected(len(got)).records[:len(got)]


def test_an_interrupt_while_the_collector_is_paused_leaves_it_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from tapegrad import collector

    real_disable = gc.disable

    def disable() -> None:  # an interrupt lands just after the collector stopped
        real_disable()
        _thread.interrupt_main()

    assert gc.isenabled()
    monkeypatch.setattr(gc, "disable", disable)
    with pytest.raises(KeyboardInterrupt):
        tg.dumps(tg.Tape("all", {}))
    monkeypatch.undo()
    assert gc.isenabled() and collector._gc_users == 0
