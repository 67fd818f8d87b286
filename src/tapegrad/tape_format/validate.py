"""Full validation of a tape's graph, run on every loaded tape before anyone can replay it.

Contract:
- `validate(tape, limits=None)` returns None for a consistent tape and raises `TapeFormatError`
  (or its subclass `LimitError`) naming the record index, op and variable ids otherwise.  It
  checks: every variable has exactly one of a stored value or a stored type, of an allowed
  dtype (`DTYPES`) and a shape within the limits; leaves are listed once; every record has a
  known op (looked up only in `REGISTRY`), the op's arity, inputs defined before use, exactly
  one output assigned once (outputs increase in record order), attribute names exactly the op's
  schema with values well-formed for their kind in stored form, and the recorded output shape
  and dtype equal to what `OpSpec.infer` derives from the inputs; names belong to variables;
  the summed element count is within `max_total_elements`.
- `Graph` holds a tape's graph as columns (numpy arrays of ids, type indices, op and attribute
  codes) and `check(graph, limits)` does the graph checks above on it in bulk, raising `Reject`
  (no message) or `LimitError`.  The loader builds a `Graph` straight from a file's columns,
  whose decoding already guarantees the rest (exact Python types, the values the mode stores,
  names of defined variables), and `validated(graph, build, limits)` checks it before `build()`
  makes the tape; `validate` runs `check` on `graph_of(tape)` plus those checks.
  When a bulk check rejects, `explain`, the sequential reference pass, names the first problem.
- Time is linear in the number of records and variables: attributes are checked and output types
  inferred once per distinct signature (op, attributes, input types), found by sorting integer
  keys, so a long tape of identical ops infers once; nothing is allocated in proportion to the
  shapes it reads.
- Attribute maps are told apart by `common.attrs_key` (`True`, `1` and `1.0` differ).
- It works on any `Tape` (recorded or loaded), reads it through `Tape.parts()` and never mutates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from ..collector import no_gc
from ..dtypes import dtype_name
from ..errors import LimitError, TapeFormatError, TapegradError, escape, show
from ..ops import REGISTRY
from ..ops.spec import NEWSHAPE, SHAPE, check_stored
from ..tape import ATTRS, INPUTS, OP, OUTPUT, VALUE_MODES, Tape
from .common import AvalTable, Ints, Reject, allowed_dtype_name, attr_codes
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["Graph", "Locator", "check", "explain", "graph_of", "group_rows", "locate", "validate", "validated"]

_SHAPE_DTYPE = attrgetter("shape", "dtype")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_THIRD = itemgetter(2)
_INPUTS = itemgetter(slice(3, None))
_ATTR_TYPES = {dict, MappingProxyType, type(None)}  # None: a record without attributes
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_WIDE = 3  # signatures hold the types of the first _WIDE inputs as columns; longer rows add a tail code


def _dtype_ok(dtype: Any) -> str | None:
    """The stored name of an allowed dtype object, else None."""
    return allowed_dtype_name(dtype) if isinstance(dtype, np.dtype) else None


def _fail(n: int, op: Any, message: str) -> TapeFormatError:
    return TapeFormatError(f"record {n} ({escape(op, 60)}): {message}")


_SMALL = 64  # records + variables below which `explain` alone is faster


def validate(tape: Tape, limits: Limits | None = None) -> None:
    """Raise `TapeFormatError` unless `tape` is a consistent tape within `limits` (see module doc).

    The bulk pass checks everything; only when it finds a problem does the sequential reference
    pass (`explain`) run to name the first offending record.  Small tapes go straight to the
    reference pass.
    """
    lim = DEFAULT_LIMITS if limits is None else limits
    parts = tape.parts()
    if len(parts.records) + len(parts.values) + len(parts.avals) < _SMALL:
        explain(tape, lim)  # small tapes: the reference pass is quicker than the vectorised set-up
        return
    with no_gc():
        try:
            _fast(tape, lim)
        except Reject:
            explain(tape, lim)
            raise TapeFormatError("the tape is inconsistent") from None  # explain() should have raised


def validated(size: int, graph: Callable[[], Graph], build: Callable[[], Tape], limits: Limits) -> Tape:
    """`build()`, the tape a loader makes from the columns `graph()`, once `validate` would pass it
    (`size`: its records plus its variables).

    The bulk pass is `check(graph())` alone (the loader vouches for the variable table), run
    before `build()` makes the tape's records, so that a load never holds the check's work
    arrays (nor the graph's columns) and the records at once.  `build` is called once; the
    reference pass runs on its tape for small tapes and to name the problem the bulk pass found.
    """
    if size < _SMALL:
        tape = build()
        explain(tape, limits)
        return tape
    with no_gc():
        try:
            limits.check("max_total_elements", check(graph(), limits), "the elements of all variables together")
        except Reject:
            explain(build(), limits)
            raise TapeFormatError("the tape is inconsistent") from None  # explain() should have raised
    return build()


def explain(tape: Tape, limits: Limits | None = None) -> None:
    """The sequential reference validation: raises the error for the first problem in tape order."""
    lim = DEFAULT_LIMITS if limits is None else limits
    mode = tape.values_mode
    if mode not in VALUE_MODES:
        raise TapeFormatError(f"values mode must be one of {VALUE_MODES}, got {show(mode)}")
    parts = tape.parts()
    values, avals, records = parts.values, parts.avals, parts.records
    lim.check("max_records", len(records), "the number of records")
    lim.check("max_variables", len(values) + len(avals), "the number of variables")
    types, total = _types(values, avals, lim)
    defined: set[int] = set()
    for vid in parts.leaves:
        if type(vid) is not int or vid not in types:
            raise TapeFormatError(f"leaf {show(vid)} has neither a value nor a stored type")
        if vid in defined:
            raise TapeFormatError(f"leaf v{vid} is listed twice")
        if mode != "none" and vid not in values:
            raise TapeFormatError(f"leaf v{vid} has no stored value, but the tape stores values={mode!r}")
        defined.add(vid)
    if not parts.consts <= defined:
        raise TapeFormatError("a constant is not a leaf of the tape")
    _records(records, types, defined, mode == "all", values, lim)
    if len(defined) != len(types):
        stray = min(set(types) - defined)
        raise TapeFormatError(f"v{stray} has a value or type but is neither a leaf nor a record output")
    for vid, name in parts.names.items():
        if vid not in defined or type(name) is not str:
            raise TapeFormatError(f"name {show(name)} belongs to {show(vid)}, which is not a variable of the tape")
    lim.check("max_total_elements", total, "the elements of all variables together")


# ---- the bulk pass --------------------------------------------------------------------------

class Graph(NamedTuple):
    """A tape's graph as columns (what `check` validates).

    Variables are defined by leaf rows (`leaf_ids`, of types `types[leaf_type]`) and by record
    rows: record k applies `ops[op[k]]` with attributes `attrs[attr[k]]` (None or a mapping;
    falsy means none) to its `nin[k]` inputs, the next ones of `inputs`, and defines `output[k]`
    of type `types[out_type[k]]`.  `types` holds distinct (shape, dtype) pairs.
    """

    types: AvalTable
    leaf_ids: Ints
    leaf_type: Ints
    ops: list[Any]
    op: Ints
    attrs: list[Any]
    attr: Ints
    nin: Ints
    inputs: Ints
    output: Ints
    out_type: Ints


def check(g: Graph, lim: Limits) -> int:
    """Check `g` in bulk (see the module docstring); return the element count of all variables.

    Raises `Reject` for any inconsistency and `LimitError` for a limit; the caller checks the
    returned total against `max_total_elements` once its own checks have passed.
    """
    lim.check("max_records", len(g.output), "the number of records")
    lim.check("max_variables", len(g.leaf_ids) + len(g.output), "the number of variables")
    elements = [_elements(shape, dtype, lim) for shape, dtype in g.types]
    leaves, leaf_type = _sorted_leaves(g)
    specs = _known_ops(g)
    in_type = _input_types(g, leaves, leaf_type)
    starts = np.cumsum(g.nin) - g.nin  # each record's first entry in `g.inputs`
    first, group = _signatures(g, in_type, starts)
    expected = _inferred_types(g, specs, in_type, starts, first, lim)
    if len(g.output) and np.any(expected[group] != g.out_type):
        raise Reject  # a recorded output type that its op does not produce
    counts = np.bincount(g.leaf_type, minlength=len(elements)) + np.bincount(g.out_type, minlength=len(elements))
    return sum(c * e for c, e in zip(counts.tolist(), elements, strict=True) if c)


def _sorted_leaves(g: Graph) -> tuple[Ints, Ints]:
    """(the leaf ids sorted, their types); `Reject` for a leaf listed twice, outputs that do not
    increase in record order, or an output that is also a leaf."""
    order = np.argsort(g.leaf_ids, kind="stable")
    leaves, leaf_type = g.leaf_ids[order], g.leaf_type[order]
    out = g.output
    if np.any(leaves[1:] == leaves[:-1]) or np.any(out[1:] <= out[:-1]) or np.any(locate(leaves, out)[1]):
        raise Reject
    return leaves, leaf_type


def _known_ops(g: Graph) -> list[Any]:
    """The `OpSpec` of each of `g.ops` (None for names not in `REGISTRY`, which no record may
    use); `Reject` for an unknown op or a record whose input count is not its op's arity."""
    specs = [REGISTRY.get(name) if type(name) is str else None for name in g.ops]  # the only use of op names
    used = np.flatnonzero(np.bincount(g.op, minlength=len(specs)))
    if any(specs[k] is None for k in used.tolist()):
        raise Reject
    arity = np.array([-1 if spec is None else spec.arity for spec in specs], dtype=np.int64)[g.op]
    nin = g.nin
    if np.any(np.where(arity >= 0, nin != arity, nin == 0)):  # (arity -1: any number but none)
        raise Reject
    return specs


def _input_types(g: Graph, leaves: Ints, leaf_type: Ints) -> Ints:
    """The type of each entry of `g.inputs`; `Reject` unless each is defined before its use: the
    output of an earlier record, or a leaf (`leaves` sorted, of types `leaf_type`)."""
    ins = g.inputs
    at, from_record = locate(g.output, ins)
    if np.any(from_record & (at >= np.repeat(np.arange(len(g.output)), g.nin))):
        raise Reject
    leaf_at, from_leaf = locate(leaves, ins)
    if not np.all(from_record | from_leaf):
        raise Reject
    return np.where(from_record, _gather(g.out_type, at), _gather(leaf_type, leaf_at))


def _signatures(g: Graph, in_type: Ints, starts: Ints) -> tuple[Ints, Ints]:
    """Records grouped by signature (op, attributes, input types): `group_rows` of columns of
    op and attribute codes, the types of the first `_WIDE` inputs and a code for the rest."""
    n, nin = len(g.output), g.nin
    columns = [g.op, g.attr]
    for k in range(_WIDE):
        columns.append(np.where(nin > k, _gather(in_type, starts + k) + 1, 0))
    long_rows = np.flatnonzero(nin > _WIDE).tolist()
    if long_rows:
        tails: dict[tuple[int, ...], int] = {}
        tail = np.zeros(n, dtype=np.int64)
        for row in long_rows:
            a = int(starts[row])
            tail[row] = tails.setdefault(tuple(in_type[a + _WIDE:a + int(nin[row])].tolist()), len(tails) + 1)
        columns.append(tail)
    return group_rows(columns)


def _inferred_types(g: Graph, specs: list[Any], in_type: Ints, starts: Ints, first: Ints, lim: Limits) -> Ints:
    """For each signature (its first record in `first`), the index in `g.types` of the output
    type its op infers (-1 if none there), after checking its attributes: one check and one
    inference per signature.  `Reject` for bad attributes or inputs the op refuses."""
    index = {t: k for k, t in enumerate(g.types)}
    expected = []
    for row in first.tolist():
        spec = specs[int(g.op[row])]
        assert spec is not None
        attrs = g.attrs[int(g.attr[row])] or _EMPTY
        a, b = int(starts[row]), int(starts[row] + g.nin[row])
        in_types = tuple(g.types[t] for t in in_type[a:b].tolist())
        try:
            if attrs or spec.attrs:
                _check_attrs(row, spec, attrs, in_types, b - a - 1, lim)
            inferred = _infer(row, spec, in_types, attrs)
        except LimitError:
            raise
        except TapeFormatError:
            raise Reject from None
        expected.append(index.get(inferred, -1))
    return np.array(expected, dtype=np.int64)


def group_rows(columns: Sequence[Ints]) -> tuple[Ints, Ints]:
    """Rows grouped by their values in `columns` (non-negative integer arrays of equal length).

    Returns (the first row of each group, in order of first appearance; each row's group).  The
    columns are folded into one int64 key (compressed to ranks whenever the product of their
    ranges would overflow); a key of small range is grouped through a table, others by sorting.
    """
    n = len(columns[0])
    key = np.zeros(n, dtype=np.int64)
    size = 1
    for column in columns:
        col = np.asarray(column, dtype=np.int64)
        span = int(col.max()) + 1 if n else 1
        if span > n and size * span >= 1 << 62:
            col = _ranks(col)
            span = int(col.max()) + 1
        if size * span >= 1 << 62:
            key = _ranks(key)
            size = int(key.max()) + 1
        key = key * span + col
        size *= span
    if size > 4 * n + 1024:
        key = _ranks(key)
        size = int(key.max()) + 1 if n else 0
    first = np.full(size, n, dtype=np.int64)
    np.minimum.at(first, key, np.arange(n))
    used = np.flatnonzero(first < n)
    used = used[np.argsort(first[used])]  # groups in order of first appearance
    group = np.zeros(size, dtype=np.int64)
    group[used] = np.arange(len(used))
    return first[used], group[key]


def _ranks(column: Ints) -> Ints:
    """Each value's rank among the distinct values of `column` (sorting one value per run of
    equal values: columns like code addresses come in long runs)."""
    if not len(column):
        return np.zeros(0, dtype=np.int64)
    heads = np.flatnonzero(np.concatenate(([True], column[1:] != column[:-1])))
    ranks = np.unique(column[heads], return_inverse=True)[1].reshape(-1).astype(np.int64)
    return np.repeat(ranks, np.diff(np.append(heads, len(column))))


def locate(ids: Ints, values: Ints) -> tuple[Ints, Any]:
    """(index into sorted distinct `ids` of each value, clipped into range; whether it was found).

    Ids of a small range (like a file's dense ids) are looked up in a table, others by bisection.
    """
    return Locator(ids)(values)


class Locator:
    """`locate` with `ids` fixed: the table (or sorted ids) is made once for any number of calls."""

    def __init__(self, ids: Ints) -> None:
        self.count = len(ids)
        self.table: Ints | None = None
        self.low = int(ids[0]) if len(ids) else 0
        span = int(ids[-1]) - self.low + 1 if len(ids) else 0
        if len(ids) and span <= 4 * len(ids) + 1024:
            self.table = np.full(span, -1, dtype=np.int64)
            self.table[ids - self.low] = np.arange(len(ids))
        self.ids = ids if self.table is None else None  # (the table path does not need them)

    def __call__(self, values: Ints) -> tuple[Ints, Any]:
        ids, table, low = self.ids, self.table, self.low
        if not self.count:
            return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
        if table is None:
            assert ids is not None
            at = np.minimum(np.searchsorted(ids, values), len(ids) - 1)
            return at, ids[at] == values
        span = len(table)
        at = table[np.clip(values - low, 0, span - 1)]
        found = (at >= 0) & (values >= low) & (values < low + span)
        return np.maximum(at, 0), found


def _gather(column: Ints, at: Ints) -> Ints:
    """`column[at]` with positions clipped into range (their results are masked out by callers)."""
    if not len(column):
        return np.zeros(len(at), dtype=np.int64)
    return column[np.clip(at, 0, len(column) - 1)]


def _elements(shape: Any, dtype: Any, lim: Limits) -> int:
    """Elements of a variable of this (checked) shape and dtype."""
    if _dtype_ok(dtype) is None or type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        raise Reject
    return lim.elements(shape, "a variable")


def _only(items: Iterable[Any], *kinds: type) -> None:
    """Reject unless every item's exact type is one of `kinds`."""
    if not set(map(type, items)) <= set(kinds):
        raise Reject


def _int64(items: Iterable[Any]) -> Ints:
    try:
        return np.fromiter(items, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        raise Reject from None


def graph_of(tape: Tape) -> Graph:
    """The columns of `tape` (internal ids); `Reject` if it holds anything of an unexpected type."""
    parts = tape.parts()
    values, avals, records, leaves = parts.values, parts.avals, parts.records, parts.leaves
    _only(values, int)
    _only(avals, int)
    if not values.keys().isdisjoint(avals.keys()):
        raise Reject
    held = list(values.values())
    _only(held, np.ndarray)
    stored = list(avals.values())
    _only(stored, tuple)
    for entry in {id(t): t for t in stored}.values():  # a loaded tape shares one tuple per type
        if len(entry) != 2 or type(entry[0]) is not tuple:
            raise Reject
        _only(entry[0], int)  # exactly: (True,) equals (1,) and would hide behind it in the table
    keys = list(map(_SHAPE_DTYPE, held)) + stored
    try:
        index = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    except TypeError:
        raise Reject from None
    var_type = dict(zip(chain(values, avals), map(index.__getitem__, keys), strict=True))
    _only(leaves, int)
    _only(records, tuple)
    if records and min(map(len, records)) < 3:
        raise Reject
    ops = list(map(_FIRST, records))  # records are (op, attrs, output, *inputs)
    attrs = list(map(_SECOND, records))
    outs = list(map(_THIRD, records))
    ins = list(map(_INPUTS, records))
    flat = list(chain.from_iterable(ins))
    _only(ops, str)
    _only(outs, int)
    _only(flat, int)
    if not set(map(type, attrs)) <= _ATTR_TYPES:
        raise Reject
    op_index = {op: k for k, op in enumerate(dict.fromkeys(ops))}
    attr_table, codes = attr_codes(attrs)
    return Graph(types=list(index), leaf_ids=_int64(leaves), leaf_type=_int64(map(var_type.get, leaves)),
                 ops=list(op_index), op=_int64(map(op_index.__getitem__, ops)), attrs=attr_table,
                 attr=_int64(codes), nin=_int64(map(len, ins)), inputs=_int64(flat), output=_int64(outs),
                 out_type=_int64(map(var_type.get, outs)))


def _fast(tape: Tape, lim: Limits) -> None:
    """Every check of `explain`, in bulk: `check(graph_of(tape))` plus the checks of the
    variable table; raises `Reject` (or `LimitError`)."""
    mode = tape.values_mode
    if mode not in VALUE_MODES:
        raise Reject
    parts = tape.parts()
    values, avals = parts.values, parts.avals
    lim.check("max_records", len(parts.records), "the number of records")
    lim.check("max_variables", len(values) + len(avals), "the number of variables")
    g = graph_of(tape)
    total = check(g, lim)
    leaf_set = set(parts.leaves)
    out_set = set(g.output.tolist())
    if not parts.consts <= leaf_set or (mode != "none" and not leaf_set <= values.keys()) or (
            mode == "all" and not out_set <= values.keys()):
        raise Reject
    if len(values) + len(avals) != len(leaf_set) + len(out_set):  # every typed variable is defined
        raise Reject
    names = parts.names
    if not names.keys() <= leaf_set | out_set:
        raise Reject
    _only(names.values(), str)
    lim.check("max_total_elements", total, "the elements of all variables together")


# ---- the reference pass ---------------------------------------------------------------------

def _types(values: Mapping[int, Any], avals: Mapping[int, Any], lim: Limits) -> tuple[dict[int, Any], int]:
    """id -> (shape, dtype) for every variable, checked; and the total element count."""
    types: dict[int, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    sizes: dict[tuple[int, ...], int] = {}
    total = 0
    for source, has_value in ((values, True), (avals, False)):
        for vid, item in source.items():
            if type(vid) is not int:
                raise TapeFormatError(f"variable id {show(vid)} is not an integer")
            if has_value:
                if type(item) is not np.ndarray:
                    raise TapeFormatError(f"the value of v{vid} is not an ndarray but {show(item)}")
                shape, dtype = item.shape, item.dtype
            else:
                if vid in values:
                    raise TapeFormatError(f"v{vid} has both a stored value and a stored type")
                if type(item) is not tuple or len(item) != 2:
                    raise TapeFormatError(f"the stored type of v{vid} is not a (shape, dtype) pair")
                shape, dtype = item
                if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
                    raise TapeFormatError(f"the shape of v{vid} is not a tuple of non-negative integers")
            if _dtype_ok(dtype) is None:
                raise TapeFormatError(f"v{vid} has dtype {show(str(dtype))}, which is not allowed")
            elements = sizes.get(shape)
            if elements is None:
                elements = sizes[shape] = lim.elements(shape, "v{}", vid)
            total += elements
            types[vid] = (shape, dtype)
    return types, total


def _records(records: Any, types: dict[int, Any], defined: set[int], need_values: bool,
             values: Mapping[int, Any], lim: Limits) -> None:
    memo: dict[Any, Any] = {}
    last = -1
    for n, rec in enumerate(records):
        if type(rec) is not tuple or len(rec) < 3:
            raise TapeFormatError(f"record {n}: not an (op, attrs, output, *inputs) tuple")
        op, attrs, out = rec[OP], rec[ATTRS], rec[OUTPUT]
        ins = rec[INPUTS:]
        spec = REGISTRY.get(op) if type(op) is str else None  # the only use of a file's op name
        if spec is None:
            raise _fail(n, op, f"unknown op {show(op)}: not a built-in op and not registered in this process; "
                               "if the tape uses a custom op (tg.defop, tg.Function), import the module that defines "
                               "it before loading (a file never names code to run)")
        arity = spec.arity
        if (arity >= 0 and len(ins) != arity) or (arity < 0 and not ins):
            want = f"{arity}" if arity >= 0 else "at least 1"
            raise _fail(n, op, f"takes {want} inputs, the record has {len(ins)}")
        for i in ins:
            if type(i) is not int or i not in defined:
                raise _fail(n, op, f"input {'v' + str(i) if type(i) is int else show(i)} is used before it is defined")
        if type(out) is not int:
            raise _fail(n, op, "a record must have exactly one output id")
        if out in defined:
            raise _fail(n, op, f"output v{out} is defined twice")
        if out not in types:
            raise _fail(n, op, f"output v{out} has neither a value nor a stored type")
        if out <= last:
            raise _fail(n, op, f"output v{out} is not after the previous record's output v{last}")
        if need_values and out not in values:
            raise _fail(n, op, f"output v{out} has no stored value, but the tape stores values='all'")
        if type(attrs) not in _ATTR_TYPES:
            raise _fail(n, op, "attributes are not a dict or None")
        attrs = attrs or {}
        in_types = tuple(types[i] for i in ins)
        if attrs or spec.attrs:
            _check_attrs(n, spec, attrs, in_types, len(ins) - 1, lim)
            key: Any = (op, in_types, tuple(attrs.items()))
        else:
            key = (op, in_types)
        inferred = memo.get(key)
        if inferred is None:
            inferred = _infer(n, spec, in_types, attrs)
            memo[key] = inferred
        shape, dtype = types[out]
        if inferred[0] != shape or inferred[1] != dtype:
            raise _fail(n, op, f"output v{out} is recorded as {dtype_name(dtype)}{list(shape)}, but the op "
                               f"produces {dtype_name(inferred[1])}{list(inferred[0])} from its inputs")
        defined.add(out)
        last = out


def _check_attrs(n: int, spec: Any, attrs: Mapping[str, Any], in_types: tuple[Any, ...], n_arrays: int,
                 lim: Limits) -> None:
    names = spec.attr_names
    for key in attrs:
        if key not in names:
            raise _fail(n, spec.name, f"unknown attribute {show(key)}; the op takes {sorted(names) or 'none'}")
    ndim = len(in_types[0][0]) if in_types else 0
    for a in spec.attrs:
        if a.name not in attrs:
            raise _fail(n, spec.name, f"missing attribute {a.name!r}")
        why = check_stored(a.kind, attrs[a.name], ndim + a.extra_dims, n_arrays, lim.max_ndim)
        if why is not None:
            raise _fail(n, spec.name, f"attribute {a.name!r}: {why}")
        if a.kind in (SHAPE, NEWSHAPE):  # bounded like a variable's shape (each dimension too), before any rule uses it
            known = tuple(d for d in attrs[a.name] if d != -1)  # (reshape's -1 is the size that fits the input)
            lim.elements(known, "attribute {!r} of record {} ({})", a.name, n, spec.name)


def _infer(n: int, spec: Any, in_types: tuple[Any, ...], attrs: Mapping[str, Any]) -> tuple[tuple[int, ...], Any]:
    shapes = [t[0] for t in in_types]
    dtypes = [t[1] for t in in_types]
    try:
        shape, dtype = spec.infer(shapes, dtypes, attrs)
    except LimitError:
        raise
    except TapegradError as exc:
        raise _fail(n, spec.name, f"inconsistent inputs: {exc}") from None
    except Exception as exc:  # a shape rule tripping on odd input is still a bad tape, not a crash
        raise _fail(n, spec.name, f"cannot infer the output ({type(exc).__name__}: {str(exc)[:200]})") from None
    return tuple(shape), np.dtype(dtype)
