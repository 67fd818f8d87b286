"""The op registry is complete: every fact of every op is on its row, and agrees with reality.

Each test walks the whole registry, so a new op that leaves a fact out, states a memory fact its
kernel does not keep, lacks test cases, is missing from the exports or from docs/FORMAT.md
fails here.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tracemalloc
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from op_cases import CASES, record_case
from tapegrad import tracer
from tapegrad.ops import REGISTRY, OpSpec, op_table_markdown
from tapegrad.ops import infer as shape_rules
from tapegrad.ops.spec import REQUIRED, Attr, canon

FORMAT_MD = pathlib.Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"

FACT_TYPES: dict[str, Any] = {
    "name": str, "arity": int, "doc": str, "attrs": tuple, "elementwise": bool, "scratch": int, "view": bool,
    "public": bool,
}
CALLABLE_FACTS = ("forward", "shape", "aliases")


def test_every_fact_of_an_op_is_a_required_field() -> None:
    """A row cannot leave a fact to a default: leaving one out is a TypeError at import."""
    facts = [f for f in dataclasses.fields(OpSpec) if f.init]
    assert {f.name for f in facts} == {*FACT_TYPES, *CALLABLE_FACTS, "vjp", "binder"}
    defaulted = [f.name for f in facts if f.default is not dataclasses.MISSING
                 or f.default_factory is not dataclasses.MISSING]
    assert defaulted == []
    with pytest.raises(TypeError, match="scratch"):
        OpSpec(name="x", arity=1, forward=np.sin, vjp=None, doc="d", attrs=(), binder=None,  # type: ignore[call-arg]
               shape=shape_rules.elementwise, elementwise=True, aliases=lambda x, o, a: False, view=False, public=True)


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_fact_has_the_right_type(op: str) -> None:
    spec = REGISTRY[op]
    assert spec.name == op and op.isidentifier() and op == op.lower()
    for name, kind in FACT_TYPES.items():
        assert type(getattr(spec, name)) is kind, f"{op}.{name} is {getattr(spec, name)!r}, not a {kind.__name__}"
    for name in CALLABLE_FACTS:
        assert callable(getattr(spec, name)), f"{op}.{name} is not callable"
    assert spec.vjp is None or callable(spec.vjp)
    assert spec.arity == -1 or spec.arity >= 1
    assert spec.scratch >= 0
    assert spec.doc and "\n" not in spec.doc
    assert all(isinstance(a, Attr) for a in spec.attrs)
    assert len({a.name for a in spec.attrs}) == len(spec.attrs)
    for attr in spec.attrs:  # every default is a valid value of its kind
        if attr.default is not REQUIRED:
            canon(op, attr.kind, attr.default, 2, (3, 4))


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_elementwise_means_broadcasting_shapes_and_no_attributes(op: str) -> None:
    spec = REGISTRY[op]
    assert spec.elementwise == (spec.shape is shape_rules.elementwise)
    if spec.elementwise:
        assert spec.attrs == () and spec.arity >= 1 and not spec.view


def test_every_op_has_test_cases() -> None:
    assert sorted(set(REGISTRY) - set(CASES)) == [], "add cases for these ops to tests/op_cases.py"
    assert sorted(set(CASES) - set(REGISTRY)) == []
    assert all(CASES[op] for op in REGISTRY)


def test_exports_follow_the_registry() -> None:
    public = {op for op, spec in REGISTRY.items() if spec.public}
    assert set(tracer.FUNCTIONS) == public
    assert len(tg.__all__) == len(set(tg.__all__))
    for op in public:
        fn = getattr(tg, op)
        assert op in tg.__all__ and fn is tracer.FUNCTIONS[op] and fn is getattr(tracer, op)
        assert fn.__name__ == op and fn.__doc__ == REGISTRY[op].doc
    for op in set(REGISTRY) - public:
        assert op not in tg.__all__ and not hasattr(tg, op)
    for name in tg.__all__:
        assert hasattr(tg, name), f"tapegrad.__all__ names {name!r}, which tapegrad lacks"


def test_format_md_carries_the_generated_op_table() -> None:
    text = FORMAT_MD.read_text(encoding="utf-8")
    start = text.index("<!-- op table:")
    start = text.index("\n", start) + 1
    end = text.index("<!-- end of op table -->")
    assert text[start:end].rstrip("\n") == op_table_markdown(), (
        "docs/FORMAT.md's op table differs from the registry: paste the output of `python -m tapegrad.ops`")


# ---- memory facts against the kernels ---------------------------------------------------------


def _records_of(op: str) -> list[tuple[Any, list[np.ndarray], dict[str, Any]]]:
    """(output, inputs, attributes) of every `op` record in the recordings of the op's cases."""
    found = []
    for case in CASES[op]:
        tape, _ = record_case(case)
        for r in tape.records:
            if r.op == op:
                ins = [np.asarray(tape.value(i)) for i in r.inputs]
                found.append((REGISTRY[op].forward(*ins, **r.attrs), ins, dict(r.attrs)))
    return found


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_alias_and_view_facts_hold_for_the_kernel(op: str) -> None:
    spec = REGISTRY[op]
    records = _records_of(op)
    assert records, f"the cases of {op!r} record no {op!r}"
    for out, ins, attrs in records:
        out = np.asarray(out)
        x = ins[0]
        claims = spec.aliases((x.shape, x.dtype), (out.shape, out.dtype), attrs or None)
        if out.size and x.size:
            assert np.shares_memory(out, x) == claims, (
                f"{op}{attrs}: the alias rule says {claims}, the kernel {'shares' if not claims else 'copies'} input 0")
        if not out.flags.c_contiguous:
            assert spec.view, f"{op}{attrs}: the kernel returns a non-C-ordered view but the row says view=False"


def _big_unary_calls() -> list[tuple[str, dict[str, Any]]]:
    """Ops that take one float array and attributes that all have defaults."""
    calls = []
    for op, spec in sorted(REGISTRY.items()):
        if spec.arity == 1 and spec.binder is None and all(a.default is not REQUIRED for a in spec.attrs):
            attrs = {a.name: canon(op, a.kind, a.default, 2, (256, 512)) for a in spec.attrs}
            calls.append((op, attrs))
    return calls


@pytest.mark.parametrize(("op", "attrs"), _big_unary_calls(), ids=[op for op, _ in _big_unary_calls()])
def test_scratch_fact_bounds_what_the_kernel_allocates(op: str, attrs: dict[str, Any]) -> None:
    """The replay memory model (`plan.peak_bytes`) counts the result plus `scratch` buffers the
    size of the larger of input 0 and the result: the kernel must not allocate more."""
    spec = REGISTRY[op]
    x = np.random.default_rng(0).uniform(0.5, 2.0, (256, 512))  # (NaN for arcsin and co.: the memory is the same)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with np.errstate(all="ignore"):
            out = np.asarray(spec.forward(x, **attrs))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    unit = max(x.nbytes, out.nbytes)
    result = 0 if spec.aliases((x.shape, x.dtype), (out.shape, out.dtype), attrs or None) else out.nbytes
    allowed = result + spec.scratch * unit + 128 * 1024  # slack: numpy's 8192-element ufunc buffers, small reductions
    assert peak <= allowed, f"{op}: the kernel allocated {peak} bytes, the row allows {allowed} (scratch={spec.scratch})"
