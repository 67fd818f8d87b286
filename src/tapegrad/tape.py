"""The in-memory tape: a flat, topologically ordered list of op records plus a variable table.

Contract:
- A `Record` is plain data: an op name from the registry, input ids, output ids and a read-only
  attribute mapping of plain values.  No callables, closures or object references.
- Record order is a topological order: every input id is defined (a leaf, or the output of an
  earlier record) before the record that uses it, and every id is assigned once.
- Internally ids are the process-wide serial numbers the tracer gives variables (so records can
  be shared with eager graphs).  Everything public (`records`, listings, files) shows dense ids:
  `v0, v1, ...` in definition order, identical for identical recordings.
- Variables are looked up by unique name, dense integer id, or the Variable object itself;
  failures raise `TapegradError` listing what the tape has.
- `Tape` owns its fields (documented on the class).  A loader builds a tape with
  `Tape.from_parts`; readers outside the tracer and replay (the format package) read it through
  `parts()` (a `TapeParts`) and `source_runs()`, and a streaming sink sets its next call with
  `sink_due_at()`.  The tracer, replay and plan modules still use the fields directly (their
  hot loops append to and read them).
"""

from __future__ import annotations

import os
import weakref
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeVar, cast

import numpy as np

from .checksum import crc32
from .errors import TapegradError, escape, quote
from .ops.spec import AttrValue

_T = TypeVar("_T")

RawRecord = tuple[Any, ...]
"""How a tape stores a record internally: one flat tuple `(op, attrs, output, *inputs)`, with
`attrs` None when the op has no attributes.  It holds only strings, ints and (rarely) a dict of
plain values, so the garbage collector stops tracking it at its first collection.  Nested
tuples would not do: the collector reorders a new record after its inner tuples and leaves it
tracked, and a recording's records then pile up in the oldest generation, where every full
collection walks them (measured: 2x slower recording on tiny ops).  `Record` is the public view.
"""


OP, ATTRS, OUTPUT, INPUTS = 0, 1, 2, 3
"""Named positions in a `RawRecord`: `rec[OP]`, `rec[ATTRS]`, `rec[OUTPUT]`, `rec[INPUTS:]`.  The hot
loops (the tracer's fast paths, `engine.reverse`, `Plan.run`) index by number instead."""


class Record(NamedTuple):
    """One op application: `outputs = op(*inputs, **attrs)` (the public, read-only view, with
    dense ids, in the field order of `RawRecord`)."""

    op: str
    attrs: Mapping[str, AttrValue]
    outputs: tuple[int, ...]
    inputs: tuple[int, ...]


class VarInfo(NamedTuple):
    """What the tape knows of one variable (by dense id)."""

    id: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    name: str | None
    kind: str  # "input", "const" or "op" (produced by a record)
    producer: int | None  # index of the record that defines it, for kind "op"


_SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "int64": "i64", "int32": "i32",
          "int16": "i16", "int8": "i8", "uint64": "u64", "uint32": "u32", "uint16": "u16",
          "uint8": "u8", "bool": "bool"}


_LISTED = 20  # names an unknown-name error lists

ERROR_TYPE_BYTES = 256
ERROR_MESSAGE_BYTES = 4096
"""Caps on the stored exception of a recording that raised (`Tape.error`): UTF-8 bytes of the
type's name and of the message.  Files store at most this much (docs/FORMAT.md, FOOT frame)."""


def _capped(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 bytes (cut at a character boundary, with a note), with
    characters UTF-8 cannot encode (lone surrogates) written as escapes."""
    raw = text.encode("utf-8", "backslashreplace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    note = f"... ({len(raw):,} bytes, cut)"
    return raw[:limit - len(note)].decode("utf-8", "ignore") + note


def stored_error(kind: str, message: str) -> tuple[str, str]:
    """(type name, message) capped as a tape stores them (`Tape.error`)."""
    return _capped(kind, ERROR_TYPE_BYTES), _capped(message, ERROR_MESSAGE_BYTES)


def describe_exception(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of `exc` as a tape stores them (`Tape.error`), each capped: the
    type's qualified name (with its module unless built in) and `str(exc)`."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # a __str__ that raises must not hide the exception being recorded
        message = "<the exception's message could not be computed>"
    return stored_error(name, message)


def aval(shape: Sequence[int], dtype: np.dtype[Any]) -> str:
    """`f64[3,2]` style type annotation."""
    return f"{_SHORT.get(dtype.name, dtype.name)}[{','.join(map(str, shape))}]"


VALUE_MODES = ("all", "inputs", "none")

SHARE_BYTES = 1 << 16
"""Input arrays of at least this many bytes are shared with the user, not copied, by a recording
(`Tape._kept`)."""


def _fingerprint(value: Any) -> int:
    """CRC-32 of a C-contiguous array's bytes (read in place, by the fastest CRC installed)."""
    return crc32(value)


_FIRST = itemgetter(0)


def _output(rec: RawRecord) -> int:
    return int(rec[OUTPUT])


class TapeSink(Protocol):
    """Where a streaming recording sends what it records (see `tape_format.stream.StreamWriter`).

    Leaves and names are reported as they happen.  Records are not: the tracer appends them to
    the tape and calls `due()` once the tape holds `tape._sink_at` records (a call per record
    would cost more than a tiny op's recording); the sink then takes the new records from the
    tape and sets the next count with `tape.sink_due_at(count)`.
    """

    def leaf(self, vid: int, value: Any, name: str | None, const: bool) -> None: ...
    def due(self) -> None: ...
    def name(self, vid: int, name: str | None) -> None: ...
    def close(self) -> None: ...


class TypedValues(Protocol):
    """What a loaded tape's values mapping (`tape_format.stored.StoredValues`, the only `_values`
    that is not a dict) adds: shapes and dtypes without making arrays, of one value
    (`shape_dtype`) or of them all in bulk (`typed_items`: `(id, (shape, dtype))` pairs)."""

    def shape_dtype(self, vid: int) -> tuple[tuple[int, ...], np.dtype[Any]] | None: ...
    def typed_items(self) -> Iterator[tuple[int, tuple[tuple[int, ...], np.dtype[Any]]]]: ...


class TapeParts(NamedTuple):
    """A tape's variable table and records as the tape holds them: internal ids, the tape's own
    containers (not copies; read them, never modify them).  See `Tape` for what each holds."""

    leaves: Sequence[int]
    consts: AbstractSet[int]
    records: Sequence[RawRecord]
    values: Mapping[int, Any]
    avals: Mapping[int, tuple[tuple[int, ...], np.dtype[Any]]]
    names: Mapping[int, str]


class Tape:
    """A recorded program: records in order, values, names, and which leaves are constants.

    `values` says what a saved file keeps: "all" values, only the leaves' ("inputs": replay
    recomputes the rest) or "none" (structure only).  A recorded tape holds every value in
    memory regardless; a loaded tape holds what its file stored, and `_avals` gives shape and
    dtype of the variables without a value.

    Public fields:
    - `values_mode`: "all", "inputs" or "none" (the `values` argument).
    - `metadata`: a dict of plain data, stored in the file's header.
    - `source`: whether recording keeps each record's user file and line (`record(source=...)`).
    - `recovery`: None, or what a `recover=True` load dropped (a `tape_format.Recovery`).
    - `error`: None, or (type name, message) of the exception that ended the recording (the
      `record()` block exited by raising; see `describe_exception`); files keep it.

    The graph (what `parts()` returns and `from_parts` takes), by internal id:
    - `_leaves`: the inputs and constants, each once, in the order they entered the tape.
    - `_consts`: the leaves that are constants (a subset of `_leaves`): not replaceable by
      `forward(inputs=...)` and never given a gradient.
    - `_records`: `RawRecord`s `(op, attrs, output, *inputs)` in tape order, a topological
      order: every input is a leaf or the output of an earlier record, every output is assigned
      once and is no leaf, and outputs increase in tape order.
    - `_values`: id -> value (a C-contiguous ndarray): a dict while recording; a loaded tape's
      is a read-only `TypedValues` mapping (`tape_format.stored.StoredValues`, also kept as
      `_typed`) that makes each array when it is read; `_avals`: id -> (shape, dtype) for the ids
      without a value.  Every leaf and every output has exactly one of the two, and no other id
      has either.  A recording holds every value (`_avals` is empty).
    - `_names`: id -> name, for variables of the tape only.  Names need not be unique (lookup by
      name then reports the ambiguity).
    Internal ids are the tracer's serial numbers, which grow as variables are made; a loaded tape
    uses the file's dense ids.  Dense (public) ids rank the internal ids: `_ids()` sorts them.

    Sources (empty unless the tape has them): `_source_pos` holds one position per record (a
    bytecode offset while recording, a line once loaded), and `_source_runs` a run `(first
    record, code object or file name)` wherever that changes (`_source_last`: the last run's);
    `source_of(n)` resolves them, `source_runs()` gives both to the writer.

    Input arrays (`_kept`): `_shared`, the fingerprint of each leaf whose array the user also
    holds, checked by `check_shared`; `copy_inputs`, set by `record(copy_inputs=True)`, copies
    them all instead.  `_by_name`: name -> ids, the index behind lookups by name, built at the
    first one and kept up to date.  `_scalar_ids`: (Python number, dtype) -> (array, id) of the
    const leaf recording made for it, reused by later uses of the same number (tracer).

    Caches and links, owned by their users: `_dense_cache` (for `_ids()`, valid while the
    record and leaf counts are unchanged), `_plans` (replay plans, likewise), `_leaf_vars`
    (id -> the Variable that entered as an input, while it lives: a weak mapping, since the
    Variable refers to the tape; tracer), `_shape_guarded` (ids a shape guard
    checks; tracer), `_sink` and `_sink_at` (a streaming
    `TapeSink` and the record count at which the tracer calls its `due()`).
    """

    def __init__(self, values: str = "all", metadata: Mapping[str, Any] | None = None) -> None:
        if values not in VALUE_MODES:
            raise TapegradError(f"values must be one of {VALUE_MODES}, got {values!r}")
        self.values_mode = values
        self.source = False  # record() switches this on: records keep the user's file and line
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._records: list[RawRecord] = []
        self._values: MutableMapping[int, Any] = {}  # id -> ndarray (C-contiguous)
        self._typed: TypedValues | None = None  # `_values` again when it is a loaded tape's (not a dict)
        self._avals: dict[int, tuple[tuple[int, ...], np.dtype[Any]]] = {}  # ids without a value
        self._names: dict[int, str] = {}
        self._consts: set[int] = set()
        self._leaves: list[int] = []  # input and const ids, in definition order
        self._dense_cache: tuple[int, int, list[int], dict[int, int]] | None = None
        self._sink: TapeSink | None = None
        self._sink_at = 0  # the record count at which the tracer calls `_sink.due()`
        # id -> the Variable that entered as an input, held weakly: it holds the tape (`_tape`)
        self._leaf_vars: MutableMapping[int, Any] = weakref.WeakValueDictionary()
        self._shape_guarded: set[int] = set()  # (tracer) ids whose shape a shape guard already checks
        # Where the user's code made each record: a bytecode offset per record in the code
        # object of its run, while recording, or a line per record in the file named by its run,
        # once loaded.  A run `(first record, code or file name)` starts wherever that changes,
        # so recording appends one int per record.  Both lists are empty without sources.
        self._source_pos: list[int] = []
        self._source_runs: list[tuple[int, Any]] = []
        self._source_last: Any = None  # the code or file name of the last run
        self.recovery: Any = None  # set by a load with recover=True: what was dropped (a Recovery)
        self.error: tuple[str, str] | None = None  # the exception that ended the recording, if any
        self._plans: dict[Any, Any] = {}  # replay plans by request, valid while len(records) is unchanged
        self._by_name: dict[str, list[int]] | None = None  # name -> ids, built at the first lookup by name
        self.copy_inputs = False  # record(copy_inputs=True): keep a private copy of every leaf
        self._shared: dict[int, int] = {}  # leaf id -> fingerprint of a user array the tape shares
        self._scalar_ids: dict[tuple[Any, np.dtype[Any]], tuple[Any, int]] = {}  # (Python number, dtype) -> (array, id)

    # -- for the format package: a constructor and read accessors --
    @classmethod
    def from_parts(cls, values_mode: str, metadata: Mapping[str, Any] | None, *, leaves: list[int], consts: set[int],
                   records: list[RawRecord], values: MutableMapping[int, Any],
                   avals: dict[int, tuple[tuple[int, ...], np.dtype[Any]]], names: dict[int, str],
                   sources: tuple[Sequence[str], Sequence[int]] | None = None) -> Tape:
        """A tape made of decoded parts (what a loader builds; see the class docstring for each).

        The tape takes the containers over (they are not copied): the caller must not keep
        using them.  `sources`, if given, is each record's file name and line.  Nothing is
        checked here: a loader runs `tape_format.validate.validate` on the result before anyone
        else sees it.
        """
        tape = cls(values_mode, metadata)
        tape._leaves = leaves
        tape._consts = consts
        tape._records = records
        tape._values = values
        tape._typed = None if type(values) is dict else cast("TypedValues", values)
        tape._avals = avals
        tape._names = names
        if sources is not None:
            tape._add_sources(*sources)
        return tape

    def parts(self) -> TapeParts:
        """The tape's variable table and records (internal ids), for readers such as the writer
        and the validator: the tape's own containers, read-only by contract (not copies).  Checks
        first that no shared input array changed (`check_shared`)."""
        if self._shared:
            self.check_shared()
        return TapeParts(self._leaves, self._consts, self._records, self._values, self._avals, self._names)

    def source_runs(self) -> tuple[Sequence[tuple[int, Any]], Sequence[int]]:
        """(the source runs, the per-record positions): the raw form of `source_of` (see the
        class docstring); both empty without sources, and not copies."""
        return self._source_runs, self._source_pos

    def input_variables(self) -> dict[int, Any]:
        """The Variables that entered this recording as inputs, by internal id (a new dict)."""
        return dict(self._leaf_vars)

    def name_of(self, vid: int) -> str | None:
        """The name of internal id `vid`, if it has one."""
        return self._names.get(vid)

    def cached(self, key: Any, build: Callable[[], _T]) -> _T:
        """`build()`, kept under `key` while the tape has as many records and leaves as when it
        was built (replay keeps its compiled plans here).  What is kept must not refer to the
        tape (a plan holds it weakly): a cycle would keep the tape and its values, and a mapped
        tape's file, until the garbage collector runs."""
        stamp = (len(self._records), len(self._leaves))
        hit = self._plans.get(key)
        if hit is not None and hit[0] == stamp:
            return cast("_T", hit[1])
        built = build()
        self._plans[key] = (stamp, built)
        return built

    def sink_due_at(self, count: int) -> None:
        """Have the tracer call the streaming sink's `due()` once the tape holds `count` records."""
        self._sink_at = count

    # -- building (the tracer calls these; `from_parts` uses `_add_sources`) --
    def _add_leaf(self, vid: int, value: Any, name: str | None, const: bool, *, users: bool = False) -> None:
        """Add leaf `vid` with `value`; `users`: the value is an array the user holds (see `_kept`)."""
        if users:
            value = self._kept(vid, value)
        self._values[vid] = value
        self._leaves.append(vid)
        if name is not None:
            self._names[vid] = name
            if self._by_name is not None:
                self._by_name.setdefault(name, []).append(vid)
        if const:
            self._consts.add(vid)
        if self._sink is not None:
            self._sink.leaf(vid, value, name, const)

    def _kept(self, vid: int, value: Any) -> Any:
        """What the tape stores for a user's array `value` entering as leaf `vid`.

        Recording must not copy every input on every step (a training step would hold its
        batch and parameters twice), yet later mutation of the user's array must never change
        a recording silently.  So an array of `SHARE_BYTES` or more, C-contiguous, is shared
        and fingerprinted (CRC-32, ~4 GB/s: no allocation): every read of the tape's values
        through `parts()` or `value()` checks it and raises `TapegradError` naming the
        variable if the array was changed in place.  Smaller arrays (a copy costs less than a
        fingerprint's checks), other layouts, streamed recordings (the stream reads leaves at its
        next flush) and `record(copy_inputs=True)` keep a private C-ordered copy.
        """
        if (value.nbytes < SHARE_BYTES or self.copy_inputs or self._sink is not None
                or not value.flags.c_contiguous):
            return np.array(value, order="C", copy=True)
        self._shared[vid] = _fingerprint(value)
        return value

    def check_shared(self) -> None:
        """Raise `TapegradError` if a user array the tape shares (see `_kept`) has changed since
        it entered the recording."""
        for vid, print_ in self._shared.items():
            if _fingerprint(self._values[vid]) != print_:
                name = self._names.get(vid)
                label = f"v{self.dense_ids()[vid]}" + ("" if name is None else f" ({escape(name)!r})")
                raise TapegradError(
                    f"the array of input {label} was changed in place after it was recorded, so the tape no "
                    "longer holds what was computed; record(copy_inputs=True) keeps private copies of inputs")

    def _set_name(self, vid: int, name: str | None) -> None:
        old = self._names.get(vid)
        if name is None:
            self._names.pop(vid, None)
        else:
            self._names[vid] = name
        if self._by_name is not None and old != name:
            if old is not None:
                ids = self._by_name[old]
                ids.remove(vid)
                if not ids:
                    del self._by_name[old]
            if name is not None:
                self._by_name.setdefault(name, []).append(vid)
        if self._sink is not None:
            self._sink.name(vid, name)

    def _ids_named(self, name: str) -> list[int]:
        """The ids named `name` (an index built at the first call, then kept up to date)."""
        index = self._by_name
        if index is None:
            index = self._by_name = {}
            for vid, known in self._names.items():
                index.setdefault(known, []).append(vid)
        return index.get(name, [])

    def producer(self, vid: int) -> int | None:
        """Index of the record that defines internal id `vid` (None for leaves); O(log n)."""
        records = self._records
        n = bisect_left(records, vid, key=_output)
        return n if n < len(records) and records[n][2] == vid else None

    def _source_run(self, where: Any, n: int) -> None:
        """Record `n` and on come from `where` (a code object or file name): a new run starts
        unless the last run's is the same."""
        if where is not self._source_last and where != self._source_last:
            self._source_runs.append((n, where))
            self._source_last = where

    def _add_sources(self, wheres: Sequence[Any], positions: Sequence[int]) -> None:
        """Append per-record sources: code objects or file names, and offsets or lines.

        The same runs as `_source_run` for each record in turn.  A run can start only where the
        source differs from the record before's, so those places are found in bulk (numpy
        compares the column with itself shifted by one) and only they go through `_source_run`.
        """
        first = len(self._source_pos)
        count = len(wheres)
        changes: Sequence[int] = range(count)
        if count > 32:
            column = np.fromiter(wheres, dtype=object, count=count)
            changes = [0, *(np.flatnonzero(column[1:] != column[:-1]) + 1).tolist()]
        for k in changes:
            self._source_run(wheres[k], first + k)
        self._source_pos += positions

    def source_of(self, n: int) -> tuple[str, int] | None:
        """(file, line) of the user code that made record `n`, if the tape recorded sources."""
        if not 0 <= n < len(self._source_pos):
            return None
        where, pos = self._source_runs[bisect_right(self._source_runs, n, key=_FIRST) - 1][1], self._source_pos[n]
        if isinstance(where, str):
            return where, pos
        line = next((ln for start, end, ln in where.co_lines() if start <= pos < end and ln is not None),
                    where.co_firstlineno)
        return where.co_filename, line

    def shape_dtype(self, vid: int) -> tuple[tuple[int, ...], np.dtype[Any]]:
        """Shape and dtype of internal id `vid` (from its value, or the stored table); a loaded
        tape's values (`TypedValues`) give them without making the value's array."""
        typed = self._typed
        if typed is not None:
            found = typed.shape_dtype(vid)
            return self._avals[vid] if found is None else found
        value = self._values.get(vid)
        if value is None:
            return self._avals[vid]
        return tuple(value.shape), value.dtype

    # -- dense ids --
    def _ids(self) -> tuple[list[int], dict[int, int]]:
        """(every internal id in definition order, internal id -> dense public id), cached while
        the tape does not grow.  Callers must not modify them."""
        cache = self._dense_cache
        if cache is None or cache[0] != len(self._records) or cache[1] != len(self._leaves):
            order = sorted(self._values.keys() | self._avals.keys()) if self._avals else sorted(self._values)
            cache = self._dense_cache = (len(self._records), len(self._leaves), order,
                                         {vid: n for n, vid in enumerate(order)})
        return cache[2], cache[3]

    def dense_ids(self) -> dict[int, int]:
        """Internal id -> dense public id (rank in definition order)."""
        return self._ids()[1]

    def ids_in_order(self) -> list[int]:
        """Every internal id, in definition order (a dense id indexes it)."""
        return self._ids()[0]

    # -- files --
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this tape to `path` atomically: a forwarder to `tapegrad.tape_format.save`.

        The format package depends on this module (it builds and reads `Tape`s), so this one
        imports it only when called: at import time `tape` depends on nothing of the format.
        """
        from .tape_format import save

        save(self, path)

    # -- public view --
    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> Sequence[Record]:
        """The op records with dense ids, numbered from 0 in tape order."""
        d = self.dense_ids()
        return tuple(Record(rec[OP], MappingProxyType(dict(rec[ATTRS] or {})), (d[rec[OUTPUT]],), tuple(d[i] for i in rec[INPUTS:]))
                     for rec in self._records)

    @property
    def names(self) -> Mapping[str, int]:
        """Name -> dense id for every uniquely named variable."""
        d = self.dense_ids()
        out: dict[str, int] = {}
        for vid, name in self._names.items():
            out[name] = -1 if name in out else d[vid]
        return MappingProxyType({k: v for k, v in out.items() if v >= 0})

    def var(self, ref: Any) -> VarInfo:
        """Describe one variable (by name, dense id or Variable)."""
        vid = self.resolve(ref)
        d = self.dense_ids()
        shape, dtype = self.shape_dtype(vid)
        producer = self.producer(vid)
        kind = "op" if producer is not None else "const" if vid in self._consts else "input"
        return VarInfo(d[vid], shape, dtype, self._names.get(vid), kind, producer)

    def value(self, ref: Any) -> Any:
        """The recorded value of a variable, read-only view."""
        vid = self.resolve(ref)
        if vid in self._shared:
            self.check_shared()
        values = self._values
        value = values.get(vid)
        if value is None:
            raise TapegradError(f"v{self.dense_ids()[vid]} has no stored value on this tape (values={self.values_mode!r})")
        if self._typed is not None:
            return value  # a loaded tape's (`TypedValues`): made for this read, read-only already
        v = value.view()
        v.flags.writeable = False
        return v

    @property
    def inputs(self) -> tuple[int, ...]:
        """Dense ids of the non-constant leaves (what `forward(inputs=...)` may replace)."""
        d = self.dense_ids()
        return tuple(d[v] for v in self._leaves if v not in self._consts)

    # -- lookup --
    def resolve(self, ref: Any) -> int:
        """Internal id of a variable given by name, dense id or Variable; TapegradError if absent."""
        if isinstance(ref, str):
            hits = self._ids_named(ref)
            if len(hits) == 1:
                return hits[0]
            d = self.dense_ids()
            if hits:
                ids = ", ".join(f"v{d[h]}" for h in sorted(hits))
                raise TapegradError(f"name {quote(ref)} is ambiguous on this tape: variables {ids}")
            names = sorted(set(self._names.values()))
            known = ", ".join(quote(n, 60) for n in names[:_LISTED]) or "none"  # (names come from files)
            more = f" and {len(names) - _LISTED:,} more" if len(names) > _LISTED else ""
            raise TapegradError(f"no variable named {quote(ref)} on this tape; names: {known}{more}")
        serial = getattr(ref, "_tapegrad_serial", None)
        if serial is not None:
            if serial in self._values or serial in self._avals:
                return int(serial)
            raise TapegradError(f"variable {ref!r} is not on this tape")
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            order = self.ids_in_order()
            if 0 <= ref < len(order):
                return order[int(ref)]
            raise TapegradError(f"no variable v{ref} on this tape (ids are v0..v{len(order) - 1})")
        raise TapegradError(f"cannot look up a variable by {type(ref).__name__} {ref!r}")

    def last_output(self) -> int:
        if not self._records:
            raise TapegradError("the tape has no records, so there is no output to differentiate")
        return int(self._records[-1][2])

    # -- listing --
    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __str__(self) -> str:
        return "\n".join(self.listing())

    def __repr__(self) -> str:
        return f"<Tape {len(self._records)} records, {len(self.ids_in_order())} variables>"

    def listing(self) -> list[str]:
        """The lines of `str(tape)`: one per variable in id order (see `listing_lines`)."""
        return [line.text for line in self.listing_lines()]

    def listing_lines(self, start: int = 0, stop: int | None = None) -> Iterator[ListingLine]:
        """The listing, lazily, one `ListingLine` per variable in dense id order.

        A record reads `    3 v7:f64[3] = mul v3 v5 axis=...`, a leaf `      v0:f64[2,8] = input`
        (or `= const 2.`); a comment from column 40 on gives the variable's name and the
        record's source line, `# loss @ train.py:42`, where the tape has them (source files
        shown by their shortest path suffix that no other file of the tape shares).  Every
        string that came from the tape is escaped (`escape`).

        `start` and `stop` select records as `records[start:stop]` does, with the lines of the
        leaves that enter the tape among them, just before record `start` included: the lines
        after record `start - 1`'s up to record `stop - 1`'s (up to the end if `stop` is the end).
        Linear in the lines produced, after one pass to find where to start.
        """
        records = self._records
        count = len(records)
        start, stop, _ = slice(start, stop).indices(count)
        stop = max(start, stop)
        order, dense = self._ids()
        lo = dense[records[start - 1][OUTPUT]] + 1 if start > 0 else 0
        hi = len(order) if stop == count else dense[records[stop - 1][OUTPUT]] + 1 if stop > 0 else 0
        values, names, consts = self._values, self._names, self._consts
        shown = short_paths(self.source_files())
        sources = self._sources_from(start)
        types: dict[Any, str] = {}

        def head(vid: int) -> str:
            key = self.shape_dtype(vid)
            typ = types.get(key)
            if typ is None:
                typ = types[key] = aval(*key)
            return f"v{dense[vid]}:{typ}"

        def line(code: str, vid: int, where: tuple[str, int] | None) -> str:
            name = names.get(vid)
            if name is None and where is None:
                return code
            note = "" if name is None else escape(name)
            if where is not None:
                note += f"{' @ ' if note else ''}{shown[where[0]]}:{where[1]}"
            return f"{code}{' ' * max(2, _COMMENT_COLUMN - len(code))}# {note}"

        n = start
        for vid in order[lo:hi]:
            if n < count and records[n][OUTPUT] == vid:
                rec = records[n]
                args = " ".join([f"v{dense[i]}" for i in rec[INPUTS:]])
                attrs = "".join([f" {k}={v!r}" for k, v in rec[ATTRS].items()]) if rec[ATTRS] else ""
                op = rec[OP] if rec[OP].isidentifier() else escape(rec[OP])
                yield ListingLine(n, dense[vid], line(f"{n:5d} {head(vid)} = {op} {args}{attrs}", vid, next(sources)))
                n += 1
            elif vid in consts:
                value = values.get(vid)
                small = ""
                if value is not None and value.size <= 6:
                    small = " " + np.array2string(value, threshold=6).replace("\n", " ")
                yield ListingLine(None, dense[vid], line(f"      {head(vid)} = const{small}", vid, None))
            else:  # every id is a record's output or a leaf
                yield ListingLine(None, dense[vid], line(f"      {head(vid)} = input", vid, None))

    def source_files(self) -> list[str]:
        """The files the tape's records come from, in order of first use (empty without sources)."""
        files = [where if isinstance(where, str) else where.co_filename for _, where in self._source_runs]
        return list(dict.fromkeys(files))

    def sources(self, start: int = 0) -> Iterator[tuple[str, int] | None]:
        """`source_of(n)` for n = start, start + 1, ... (endless: None after the last record
        with a source), in linear time."""
        return self._sources_from(start)

    def _sources_from(self, start: int) -> Iterator[tuple[str, int] | None]:
        positions, runs = self._source_pos, self._source_runs
        k = bisect_right(runs, start, key=_FIRST) - 1
        resolved: dict[tuple[int, int], tuple[str, int] | None] = {}  # (id of a code, offset) -> source
        for n in range(max(start, 0), len(positions)):
            while k + 1 < len(runs) and runs[k + 1][0] <= n:
                k += 1
            where = runs[k][1]
            if isinstance(where, str):
                yield where, positions[n]
                continue
            key = (id(where), positions[n])
            if key not in resolved:
                resolved[key] = self.source_of(n)
            yield resolved[key]
        yield from repeat(None)


_COMMENT_COLUMN = 40
"""The column where a listing line's comment (name, source line) starts, if the code leaves room."""


class ListingLine(NamedTuple):
    """One line of a tape listing: the record it shows (None for a leaf), the dense id of the
    variable it defines, and its text."""

    record: int | None
    id: int
    text: str


def short_paths(files: Sequence[str]) -> dict[str, str]:
    """Each file -> its shortest trailing run of path components that no other file of `files`
    ends with (`train.py`, or `model/train.py` beside `data/train.py`), escaped for printing."""
    split = {f: tuple(f.replace("\\", "/").split("/")) for f in files}
    out: dict[str, str] = {}
    k = 1
    while len(out) < len(split):  # one round per suffix length: linear in the files for each
        counts = Counter(parts[-k:] for parts in split.values())
        for f, parts in split.items():
            if f not in out and (counts[parts[-k:]] == 1 or k >= len(parts)):
                out[f] = escape("/".join(parts[-k:]))
        k += 1
    return out
