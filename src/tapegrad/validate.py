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
- Time is linear in the number of records and variables (inference results are memoised by
  input types and attributes, so a long tape of identical ops infers once); nothing is
  allocated in proportion to the shapes it reads.
- It works on any `Tape` (recorded or loaded) and never mutates it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, compress
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any

import numpy as np

from .dtypes import dtype_name
from .errors import LimitError, TapeFormatError, TapegradError
from .ops import REGISTRY
from .ops.spec import check_stored, show
from .tape import VALUE_MODES, Tape
from .tape_format_limits import DEFAULT_LIMITS, Limits

__all__ = ["Limits", "explain", "show", "validate"]

_SHAPE_DTYPE = attrgetter("shape", "dtype")
_FIRST = itemgetter(0)
_THIRD = itemgetter(2)
_INPUTS = itemgetter(slice(3, None))
_SECOND = itemgetter(1)
_ATTR_TYPES = {dict, MappingProxyType, type(None)}  # None: a record without attributes

_DTYPE_NAMES: dict[Any, str | None] = {}


def _dtype_ok(dtype: Any) -> str | None:
    """The stored name of an allowed dtype object, else None."""
    if not isinstance(dtype, np.dtype):
        return None
    name = _DTYPE_NAMES.get(dtype, "?")
    if name == "?":
        name = dtype_name(dtype)
        _DTYPE_NAMES[dtype] = name
    return name


def _fail(n: int, op: Any, message: str) -> TapeFormatError:
    return TapeFormatError(f"record {n} ({show(op) if type(op) is not str else op}): {message}")


class _Reject(Exception):
    """A fast check failed; the reference pass explains why."""


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building or checking many small tuples.

    Building a tape's records allocates millions of small objects; with the collector running,
    each allocation burst triggers full traversals that cost more than the work itself.  Nested
    and concurrent users share one pause; the collector's previous state is restored by the last.
    """
    global _gc_users, _gc_was_enabled
    with _gc_lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()


_SMALL = 64  # records + variables below which `explain` alone is faster
_gc_lock = threading.Lock()
_gc_users = 0
_gc_was_enabled = True


def validate(tape: Tape, limits: Limits | None = None) -> None:
    """Raise `TapeFormatError` unless `tape` is a consistent tape within `limits` (see module doc).

    A vectorised pass checks everything; only when it finds a problem does the sequential
    reference pass (`explain`) run to name the first offending record.  Small tapes go straight
    to the reference pass.
    """
    lim = DEFAULT_LIMITS if limits is None else limits
    if len(tape._records) + len(tape._values) + len(tape._avals) < _SMALL:
        explain(tape, lim)  # small tapes: the reference pass is quicker than the vectorised set-up
        return
    with no_gc():
        try:
            _fast(tape, lim)
        except _Reject:
            explain(tape, lim)
            raise TapeFormatError("the tape is inconsistent") from None  # explain() should have raised


def explain(tape: Tape, limits: Limits | None = None) -> None:
    """The sequential reference validation: raises the error for the first problem in tape order."""
    lim = DEFAULT_LIMITS if limits is None else limits
    mode = tape.values_mode
    if mode not in VALUE_MODES:
        raise TapeFormatError(f"values mode must be one of {VALUE_MODES}, got {show(mode)}")
    values, avals, records = tape._values, tape._avals, tape._records
    lim.check("max_records", len(records), "the number of records")
    lim.check("max_variables", len(values) + len(avals), "the number of variables")
    types, total = _types(values, avals, lim)
    defined: set[int] = set()
    for vid in tape._leaves:
        if type(vid) is not int or vid not in types:
            raise TapeFormatError(f"leaf {show(vid)} has neither a value nor a stored type")
        if vid in defined:
            raise TapeFormatError(f"leaf v{vid} is listed twice")
        if mode != "none" and vid not in values:
            raise TapeFormatError(f"leaf v{vid} has no stored value, but the tape stores values={mode!r}")
        defined.add(vid)
    if not tape._consts <= defined:
        raise TapeFormatError("a constant is not a leaf of the tape")
    _records(records, types, defined, mode == "all", values, lim)
    if len(defined) != len(types):
        stray = min(set(types) - defined)
        raise TapeFormatError(f"v{stray} has a value or type but is neither a leaf nor a record output")
    for vid, name in tape._names.items():
        if vid not in defined or type(name) is not str:
            raise TapeFormatError(f"name {show(name)} belongs to {show(vid)}, which is not a variable of the tape")
    lim.check("max_total_elements", total, "the elements of all variables together")


def _only(items: Iterable[Any], *kinds: type) -> None:
    """Reject unless every item's exact type is one of `kinds`."""
    if not set(map(type, items)) <= set(kinds):
        raise _Reject


def _fast(tape: Tape, lim: Limits) -> None:
    """Every check of `explain`, done with C-level maps and numpy; raises `_Reject` (or LimitError).

    Variables' types are interned as small integers (loaded tapes share one (shape, dtype) tuple
    per distinct type, so most of the interning is by identity), and records are compared by
    integer signatures, so the cost per record is a few C-level operations.
    """
    mode = tape.values_mode
    if mode not in VALUE_MODES:
        raise _Reject
    values, avals, records, leaves = tape._values, tape._avals, tape._records, tape._leaves
    n = len(records)
    lim.check("max_records", n, "the number of records")
    lim.check("max_variables", len(values) + len(avals), "the number of variables")
    # -- the type of every variable, interned: tid[k] indexes `table` --
    _only(values, int)
    _only(avals, int)
    if not values.keys().isdisjoint(avals.keys()):
        raise _Reject
    held = list(values.values())
    _only(held, np.ndarray)
    stored = list(avals.values())
    _only(stored, tuple)
    by_id = {id(t): t for t in stored}  # distinct tuple objects (one per type in a loaded tape)
    if set(map(len, by_id.values())) - {2}:
        raise _Reject
    candidates = list(by_id.values())
    _only(map(_FIRST, candidates), tuple)
    _only(chain.from_iterable(map(_FIRST, candidates)), int)
    held_types = list(map(_SHAPE_DTYPE, held))
    index: dict[Any, int] = {t: k for k, t in enumerate(dict.fromkeys(chain(held_types, candidates)))}
    table = list(index)
    elements = []
    for shape, dtype in table:
        if not isinstance(dtype, np.dtype) or _dtype_ok(dtype) is None or min(shape, default=0) < 0:
            raise _Reject
        lim.check("max_ndim", len(shape), "the number of dimensions of a variable")
        count = 1
        for d in shape:
            count *= d
        lim.check("max_elements", count, f"the number of elements of a variable (shape {shape})")
        elements.append(count)
    object_tid = {key: index[t] for key, t in by_id.items()}
    tids = list(map(index.__getitem__, held_types))
    tids += map(object_tid.__getitem__, map(id, stored))
    ids = list(values)
    ids += avals
    total = sum(map(elements.__getitem__, tids))
    tid = dict(zip(ids, tids, strict=True))
    # -- leaves --
    _only(leaves, int)
    leaf_set = set(leaves)
    if len(leaf_set) != len(leaves) or not leaf_set <= tid.keys() or not tape._consts <= leaf_set:
        raise _Reject
    if mode != "none" and not leaf_set <= values.keys():
        raise _Reject
    out_set: set[int] = set()
    if n:
        out_set = _fast_records(records, tid, table, leaves, leaf_set, values if mode == "all" else None, lim)
    if len(leaf_set) + len(out_set) != len(tid):
        raise _Reject
    names = tape._names
    if not names.keys() <= (leaf_set | out_set):
        raise _Reject
    _only(names.values(), str)
    lim.check("max_total_elements", total, "the elements of all variables together")


def _int64(items: list[int]) -> Any:
    try:
        return np.array(items, dtype=np.int64)
    except OverflowError:
        raise _Reject from None


def _fast_records(records: Sequence[Any], tid: dict[int, int], table: list[Any], leaves: list[int],
                  leaf_set: set[int], values: Mapping[int, Any] | None, lim: Limits) -> set[int]:
    n = len(records)
    _only(records, tuple)
    if min(map(len, records)) < 3:
        raise _Reject
    ops = list(map(_FIRST, records))  # records are (op, attrs, output, *inputs)
    attrs = list(map(_SECOND, records))
    out = list(map(_THIRD, records))
    ins = list(map(_INPUTS, records))
    _only(ops, str)
    op_code = {op: k for k, op in enumerate(set(ops))}
    if not op_code.keys() <= REGISTRY.keys():
        raise _Reject
    _only(out, int)
    flat = list(chain.from_iterable(ins))
    _only(flat, int)
    if not set(map(type, attrs)) <= _ATTR_TYPES:
        raise _Reject
    nin = np.fromiter(map(len, ins), dtype=np.int64, count=n)
    arity = np.fromiter(map({op: REGISTRY[op].arity for op in op_code}.__getitem__, ops), dtype=np.int64, count=n)
    if np.any(np.where(arity >= 0, nin != arity, nin == 0)):
        raise _Reject
    out_set = set(out)
    if len(out_set) != n or not out_set.isdisjoint(leaf_set) or not out_set <= tid.keys():
        raise _Reject
    if values is not None and not out_set <= values.keys():
        raise _Reject
    order = _int64(out)
    if n > 1 and not np.all(order[1:] > order[:-1]):
        raise _Reject
    # -- inputs defined before use: outputs of earlier records (found by binary search), or leaves --
    inputs = _int64(flat)
    row_of = np.repeat(np.arange(n), nin)
    at = np.minimum(np.searchsorted(order, inputs), n - 1)
    from_record = order[at] == inputs
    if np.any(from_record & (at >= row_of)):
        raise _Reject
    if not np.all(from_record) and not set(compress(flat, ~from_record)) <= leaf_set:
        raise _Reject
    # -- attributes: checked once per distinct (op, attributes, input rank, index arrays) --
    with_schema = {op for op in op_code if REGISTRY[op].attrs}
    attr_id = [0] * n
    checked: dict[Any, int] = {}
    needs_check = np.fromiter(map(bool, attrs), dtype=bool, count=n)
    if with_schema:
        needs_check |= np.fromiter(map(with_schema.__contains__, ops), dtype=bool, count=n)
    for row in np.flatnonzero(needs_check).tolist():
        a = attrs[row] or {}
        try:
            items = tuple(a.items())
            first = ins[row][0] if ins[row] else None
            key = (ops[row], items, len(table[tid[first]][0]) if first is not None else 0, len(ins[row]) - 1)
            known = checked.get(key)
        except TypeError:
            raise _Reject from None
        if known is None:
            in_types = tuple(table[tid[i]] for i in ins[row])
            try:
                _check_attrs(row, REGISTRY[ops[row]], a, in_types, len(ins[row]) - 1, lim)
            except TapeFormatError:
                raise _Reject from None
            checked[key] = known = len(checked) + 1
        attr_id[row] = known
    # -- the recorded output type must be what the op produces: one inference per signature --
    typed = np.fromiter(map(tid.__getitem__, flat), dtype=np.int64, count=len(flat))
    starts = np.cumsum(nin) - nin
    columns = []
    for k in range(3):  # the types of the first three inputs (-1: absent); longer rows below
        has = nin > k
        columns.append(np.where(has, typed[np.minimum(starts + k, max(len(flat) - 1, 0))] if len(flat) else -1,
                                -1).tolist())
    extra: list[Any] = [()] * n
    for row in np.flatnonzero(nin > 3).tolist():
        extra[row] = tuple(map(tid.__getitem__, ins[row][3:]))
    keys = list(zip(map(op_code.__getitem__, ops), *columns, extra, attr_id, strict=True))
    first_row = dict(zip(reversed(keys), range(n - 1, -1, -1), strict=True))  # earliest row of each key
    expected = {}
    for signature, row in first_row.items():
        in_types = tuple(table[tid[i]] for i in ins[row])
        try:
            inferred = _infer(row, REGISTRY[ops[row]], in_types, attrs[row] or {})
        except LimitError:
            raise
        except TapeFormatError:
            raise _Reject from None
        expected[signature] = index_of(table, inferred)
    if list(map(tid.__getitem__, out)) != list(map(expected.__getitem__, keys)):
        raise _Reject
    return out_set


def index_of(table: list[Any], item: Any) -> int:
    """Position of `item` in `table` (-1 if absent); tables of distinct types are short."""
    for k, entry in enumerate(table):
        if entry == item:
            return k
    return -1


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
            if _dtype_ok(dtype) is None:
                raise TapeFormatError(f"v{vid} has dtype {show(str(dtype))}, which is not allowed")
            elements = sizes.get(shape)
            if elements is None:
                if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
                    raise TapeFormatError(f"the shape of v{vid} is not a tuple of non-negative integers")
                lim.check("max_ndim", len(shape), f"the number of dimensions of v{vid}")
                elements = 1
                for d in shape:
                    elements *= d
                lim.check("max_elements", elements, f"the number of elements of v{vid} (shape {shape})")
                sizes[shape] = elements
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
        op, attrs, out = rec[0], rec[1], rec[2]
        ins = rec[3:]
        spec = REGISTRY.get(op) if type(op) is str else None  # the only use of a file's op name
        if spec is None:
            raise _fail(n, op, f"unknown op {show(op)}; known ops are {', '.join(sorted(REGISTRY))}")
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
