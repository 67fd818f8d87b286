"""Module boundaries and code-safety properties, checked on the source and in fresh interpreters.

- `replay` never imports the tracer (or `functional`, which needs it): a tape can be replayed
  without the code that recorded it.  The `tape_format` package imports neither tracer nor
  replay, and its writer (`writer`, `columns`) never imports its reader (`reader`, `sources`,
  `validate`), directly or through other modules.
- No module uses eval/exec/compile/__import__ or pickle-like modules: loading a tape can never
  run code from it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tapegrad

PACKAGE_DIR = Path(tapegrad.__file__).resolve().parent
SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))

# Module -> tapegrad modules it must never load, directly or through its own imports.
FORBIDDEN_IMPORTS = {
    "tapegrad.replay": ("tapegrad.tracer", "tapegrad.functional", "tapegrad.testing"),
    # the shared machinery of every reverse pass stands below the tracer
    "tapegrad.engine": ("tapegrad.tracer", "tapegrad.functional", "tapegrad.replay"),
    "tapegrad.backprop": ("tapegrad.tracer", "tapegrad.functional", "tapegrad.replay"),
    "tapegrad.ops": ("tapegrad.tracer", "tapegrad.tape", "tapegrad.engine", "tapegrad.replay"),
    "tapegrad.nesting": ("tapegrad.tracer", "tapegrad.tape", "tapegrad.ops"),
    "tapegrad.context": ("tapegrad.tracer", "tapegrad.tape", "tapegrad.ops", "tapegrad.replay"),
    "tapegrad.interrupts": ("tapegrad.tracer", "tapegrad.tape", "tapegrad.ops", "tapegrad.replay"),
}
FORMAT_DIR = PACKAGE_DIR / "tape_format"
FORMAT_MODULES = ["tapegrad.tape_format"] + [f"tapegrad.tape_format.{p.stem}" for p in sorted(FORMAT_DIR.glob("*.py"))
                                             if p.stem != "__init__"]
for _module in FORMAT_MODULES:
    FORBIDDEN_IMPORTS[_module] = ("tapegrad.tracer", "tapegrad.functional", "tapegrad.testing", "tapegrad.replay")

# Import one submodule in a fresh interpreter *without* running tapegrad/__init__.py (which
# imports the tracer for the public API): register a bare package object whose __path__ is the
# installed package directory, then import the submodule normally.
PROBE = """
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec("tapegrad")
package = types.ModuleType("tapegrad")
package.__path__ = list(spec.submodule_search_locations)
package.__spec__ = spec
sys.modules["tapegrad"] = package
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(name for name in sys.modules if name.startswith("tapegrad"))))
"""


def _loaded_by(module: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout)
    return loaded


def test_probe_sees_what_a_module_loads() -> None:
    # The probe itself must be able to fail: the package __init__ loads the tracer.
    assert "tapegrad.tracer" in _loaded_by("tapegrad.functional")
    assert "tapegrad.tracer" not in _loaded_by("tapegrad.errors")


@pytest.mark.parametrize("module", sorted(FORBIDDEN_IMPORTS))
def test_module_does_not_load_forbidden_modules(module: str) -> None:
    loaded = _loaded_by(module)
    assert module in loaded
    bad = sorted(set(loaded) & set(FORBIDDEN_IMPORTS[module]))
    assert not bad, f"importing {module} loads {bad}"


def _imported_names(tree: ast.AST) -> set[str]:
    """Every module name an import statement mentions (relative imports resolved inside tapegrad)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return names


def test_replay_source_imports_nothing_from_tracer_or_functional() -> None:
    tree = ast.parse((PACKAGE_DIR / "replay.py").read_text())
    for name in _imported_names(tree):
        parts = set(name.split("."))
        assert not parts & {"tracer", "functional", "testing"}, f"replay.py imports {name}"


def _module_level(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of `node` outside function bodies: what runs when the module is imported (an
    import inside a function, like `Tape.save`'s, runs only when the function is called)."""
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _module_level(child)


def _package_imports(path: Path) -> set[str]:
    """The tapegrad modules that the module at `path` imports when it is imported (relative
    imports resolved)."""
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    module = ".".join(("tapegrad", *(parts[:-1] if parts[-1] == "__init__" else parts)))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _module_level(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module or ""
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if _module_path(c) is not None)
    return found


def _module_path(module: str) -> Path | None:
    """The source file of tapegrad module `module`, or None if it is not one."""
    if module != "tapegrad" and not module.startswith("tapegrad."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _reachable(module: str) -> set[str]:
    """Every tapegrad module whose code importing `module` runs, directly or through other
    tapegrad modules, found by reading the sources.  Parent packages are left out: importing a
    submodule for real first runs its package's `__init__` (which loads the whole package), but
    that is not code the submodule depends on."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        path = _module_path(todo.pop())
        assert path is not None
        for name in _package_imports(path) - seen:
            seen.add(name)
            todo.append(name)
    return seen


@pytest.mark.parametrize("module", ["tapegrad.tape_format.writer", "tapegrad.tape_format.columns"])
def test_the_format_writer_never_imports_the_reader(module: str) -> None:
    reached = _reachable(module)
    assert "tapegrad.tape_format.frames" in reached  # (the scan sees the writer's own imports)
    bad = sorted(reached & {"tapegrad.tape_format.reader", "tapegrad.tape_format.sources",
                            "tapegrad.tape_format.validate", "tapegrad.tape_format"})
    assert not bad, f"{module} imports {bad}"


def test_import_scan_follows_imports_through_other_modules() -> None:
    # The reader imports validate; the package's front door reaches the reader through `api`.
    assert "tapegrad.tape_format.validate" in _reachable("tapegrad.tape_format.reader")
    assert "tapegrad.tape_format.reader" in _reachable("tapegrad.tape_format")
    assert "tapegrad.tape_format" not in _reachable("tapegrad.tape")  # `Tape.save` imports it when called


def test_source_scan_finds_forbidden_imports() -> None:
    # The scanner must see all import forms, or the tests above prove nothing.
    tree = ast.parse("from .tracer import Variable\nfrom . import functional\nimport pickle\n")
    names = _imported_names(tree)
    assert {"tracer", "functional", "pickle"} <= {p for n in names for p in n.split(".")}


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _unsafe_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in FORBIDDEN_CALLS:
                found.append(f"line {node.lineno}: call to {name}")
            if name == "load" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id == "np":
                allow = [k for k in node.keywords if k.arg == "allow_pickle"]
                if any(not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in allow):
                    found.append(f"line {node.lineno}: np.load with allow_pickle")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"line {node.lineno}: import of {module}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_CALLS:
            found.append(f"line {node.lineno}: reference to {node.id}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_code_execution_or_pickle_in_the_library(path: Path) -> None:
    assert not _unsafe_uses(path.read_text()), f"{path.name}: {_unsafe_uses(path.read_text())}"


def test_unsafe_use_scanner_catches_each_form() -> None:
    for snippet in ["eval('1')", "exec('x = 1')", "__import__('os')", "import pickle", "from pickle import loads",
                    "import marshal", "f = eval", "builtins.exec('1')", "np.load(p, allow_pickle=True)"]:
        assert _unsafe_uses(snippet), snippet
    assert not _unsafe_uses("np.load(p, allow_pickle=False)\nx = evaluate(1)\nimport msgpack")


def test_package_sources_were_found() -> None:
    names = {p.name for p in SOURCES}
    assert {"replay.py", "tracer.py", "tape.py", "registry.py"} <= names
    assert importlib.util.find_spec("tapegrad.replay") is not None
