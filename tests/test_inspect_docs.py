"""docs/inspect.md and docs/debugging.md cannot rot: every console block on them is run and must
print what it shows.

A console block is a fenced block marked `console`: lines starting with `$ ` are commands, the
lines after each command its output (stdout, then stderr).  Commands run in order, in one fresh
folder, so a block can use the files an earlier one wrote: `python examples/...` runs the
example script in a subprocess, `tapegrad ...` runs `tapegrad.cli.main` in this process; a
command may be followed by filters, `| python -m json.tool` (json.tool's layout) and
`| head -n N`.  The examples are copied into the folder first and run from there, and the folder
is made in `/tmp` with a name of fixed length, so the tapes they write (which keep the absolute
path of each record's source file) have the same bytes wherever the repository is checked out:
the byte offsets the page shows do not depend on it.  Before comparing, the folder's path in the
output becomes `...`; nothing else is normalised.

Regenerate the outputs after a deliberate change: `python tests/test_inspect_docs.py --update`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "inspect.md", ROOT / "docs" / "debugging.md"]
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def run_command(line: str, folder: Path) -> str:
    """The output of one documented command line (see the module docstring)."""
    command, *filters = [part.strip() for part in line.split(" | ")]
    argv = shlex.split(command)
    if argv[0] == "python":
        done = subprocess.run([sys.executable, *argv[1:]], cwd=folder, capture_output=True, text=True, timeout=120)
        out = done.stdout + done.stderr
    elif argv[0] == "tapegrad":
        from tapegrad.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        with _inside(folder), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main(argv[1:])
        out = stdout.getvalue() + stderr.getvalue()
    else:
        raise ValueError(f"a documented command: cannot run {line!r}")
    for f in filters:
        if f == "python -m json.tool":
            out = json.dumps(json.loads(out), indent=4) + "\n"
        elif f.startswith("head -n "):
            out = "".join(out.splitlines(keepends=True)[:int(f.split()[2])])
        else:
            raise ValueError(f"a documented command: unknown filter {f!r}")
    return out.replace(str(folder), "...")


def run_block(block: str, folder: Path) -> str:
    """The block as it should read: each command followed by its actual output."""
    commands = [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    return "".join(f"$ {c}\n{run_command(c, folder)}" for c in commands)


def render(text: str) -> str:
    """docs/inspect.md with every console block's output regenerated."""
    # mkdtemp's names have a fixed length: with a fixed parent, so has every path under it.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "examples", folder / "examples")
        return BLOCK.sub(lambda m: f"```console\n{run_block(m.group(1), folder)}```", text)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_documented_command_prints_what_the_page_shows(doc: Path) -> None:
    text = doc.read_text()
    assert len(BLOCK.findall(text)) >= 4
    rendered = render(text)
    for want, got in zip(BLOCK.findall(text), BLOCK.findall(rendered), strict=True):
        assert got == want, f"docs/{doc.name} is out of date; run `python tests/test_inspect_docs.py --update`"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    sys.path.insert(0, str(ROOT / "src"))
    for page in DOCS:
        page.write_text(render(page.read_text()))
