"""Eager history: segments, the short implicit tapes that ops outside `record()` append to.

Contract:
- Outside `record()` and `no_record()`, every op result is appended to a `Segment`: its records
  (`RawRecord`s in the order they were appended, a topological order), every value they
  mention, the Variables from outside the segment that they used (`edge`: leaves, results of
  other segments, results of recorded tapes; held strongly, so that gradients reach them and
  go on through their own history), and which ids are constants (arrays held in `values`).
  An eager result's `_link` is its segment; leaves and recorded results have none.
- `y.backward()` from an eager result is then a reverse pass over records in order, as over a
  recorded tape (`history` gathers the segments `y` depends on; one engine pass per segment),
  instead of a walk over a graph of per-result links first (issue 12: the walk cost about as
  much as the reverse pass itself).  It differentiates the values the ops computed with: a
  Variable whose `.data` is rebound later does not change it (as in a recording).
- Which segment an op joins: the newest (`seq`) of its inputs' segments, unless that one is
  full (then the one that followed it, while that lives and has room: `fresh`); an op on
  leaves, constants and recorded results only starts a new one.  So a segment's edges only
  ever point to older segments: segments form no reference cycles and are freed by reference
  counting alone, as soon as no Variable made on them is left.
- Memory (DESIGN.md: eager use never leaks): a segment lives exactly as long as some Variable
  made on it, and holds at most `ROOM` bytes of values it made (counting `RECORD_BYTES` per
  record), plus the last record that crossed that.  So nothing global grows; what a live
  Variable keeps beyond its own history is bounded by its segment, `ROOM`.  A training loop
  starts a new segment each step (its first op reads only parameters and data), and the
  previous step's segment is freed with its loss.
- Segments are shared by threads like the Variables on them: appends are single list and dict
  operations, so records stay in a topological order whichever thread appends them.
- This module reads Variables only through their slots (`_link`, `_tapegrad_serial`, `data`)
  and imports nothing from the tracer.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Set
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from .tape import OUTPUT, RawRecord

ROOM = 1 << 20
"""Bytes of values (plus `RECORD_BYTES` per record) a segment takes before it is full."""
RECORD_BYTES = 256
"""What one record costs a segment's room besides its value's bytes (the tuple, the array object)."""

_NDARRAY = np.ndarray
_seqs = itertools.count()
_by_seq = attrgetter("seq")


class Segment:
    """One stretch of eager history (see the module docstring).

    - `records`: the records appended, in order; `values`: id -> array for every id they
      mention (outputs, edge inputs' data, constants); `edge`: id -> Variable, the inputs from
      outside; `consts`: the ids of constant arrays; `seq`: creation order (newer is larger);
      `room`: bytes left before the segment is full (`ROOM` at first); `following`: once full,
      the segment that ops on its Variables append to instead (held weakly, see `fresh`).
    """

    __slots__ = ("__weakref__", "consts", "edge", "following", "records", "room", "seq", "values")

    def __init__(self) -> None:
        self.records: list[RawRecord] = []
        self.values: dict[int, Any] = {}
        self.edge: dict[int, Any] = {}
        self.consts: set[int] = set()
        self.seq = next(_seqs)
        self.room = ROOM
        self.following: weakref.ref[Segment] | None = None  # (see `fresh`)

    def enter(self, s: int, u: Any) -> None:
        """Make id `s` known to this segment: `u` is a Variable from outside it, or a constant's array."""
        if type(u) is _NDARRAY:
            self.values[s] = u
            self.consts.add(s)
        else:
            self.values[s] = u.data
            self.edge[s] = u

    def append(self, rec: RawRecord, out: Any) -> None:
        """Append `rec`, whose output value is `out` (the general path; the tracer's fast paths inline this)."""
        self.records.append(rec)
        self.values[rec[OUTPUT]] = out
        self.room -= out.nbytes + RECORD_BYTES


def fresh(full: Segment | None) -> Segment:
    """The segment an eager op appends to when its inputs' newest segment is `full` (None: they
    have none): the one that followed `full` while it lives and has room, else a new one.  (A
    Variable made last on a full segment and then used many times would otherwise start a
    segment per use.)  That one is newer than `full`, so edges still point only to older ones."""
    if full is not None and full.following is not None:
        seg = full.following()
        if seg is not None and seg.room > 0:
            return seg
    seg = Segment()
    if full is not None:
        full.following = weakref.ref(seg)
    return seg


def join(inputs: tuple[Any, ...], ids: tuple[int, ...]) -> Segment:
    """The segment an eager op on `inputs` (Variables, and constants' arrays, with ids `ids`)
    appends to, with every input it did not know entered."""
    seg: Segment | None = None
    for u in inputs:
        if type(u) is not _NDARRAY:
            link = u._link
            if link is not None and (seg is None or link.seq > seg.seq):
                seg = link
    if seg is None or seg.room <= 0:
        seg = fresh(seg)
    values = seg.values
    for u, s in zip(inputs, ids, strict=True):
        if s not in values:
            seg.enter(s, u)
    return seg


class History(NamedTuple):
    """The eager history of a Variable (see `history`), by serial."""

    segments: list[Segment]  # older first
    stretches: list[tuple[list[RawRecord], dict[int, Any]]]  # (records, values) of each, newest first
    edge: dict[int, Any]  # where the history stops: leaves, recorded results, serials in `stop`
    crossing: set[int]  # ids one segment made and a newer one used (their cotangents cross over)
    consts: set[int]  # constants (their arrays are in the segments' values)

    def holds(self, s: int) -> bool:
        """Whether id `s` is a value of this history."""
        return any(s in seg.values for seg in self.segments)


def history(y: Any, stop: Set[int]) -> History:
    """The segments eager result `y` depends on, gathered from its own through their edges (not
    past Variables whose serials are in `stop`).

    A reverse pass goes through the stretches newest first, each on its own segment's values (which
    hold what its records read), carrying cotangents from one to the next: a record only uses
    values of its own segment's earlier records and of older segments, so that is a topological
    order, and nothing is merged or sorted.  Targets (`stop`) made on these segments keep their
    cotangents: their records are left out of the stretches."""
    first: Segment = y._link
    segments = [first]
    seen = {id(first)}
    edge: dict[int, Any] = {}
    crossing: set[int] = set()
    k = 0
    while k < len(segments):
        for s, u in segments[k].edge.items():
            link = u._link
            if link is None or s in stop:
                edge[s] = u
                continue
            crossing.add(s)
            if id(link) not in seen:
                seen.add(id(link))
                segments.append(link)
        k += 1
    segments.sort(key=_by_seq)
    consts = first.consts if len(segments) == 1 else set().union(*(seg.consts for seg in segments))
    inside = {s for s in stop if s not in edge and any(s in seg.values for seg in segments)} if stop else ()
    stretches = []
    for seg in reversed(segments):
        # (a snapshot of the records: a traced reverse pass appends to the segment)
        records = [rec for rec in seg.records if rec[OUTPUT] not in inside] if inside else seg.records[:]
        stretches.append((records, seg.values))
    return History(segments, stretches, edge, crossing, consts)


Node = Callable[[Any, int], Any]


class Nodes(dict[int, Any]):
    """The Variables standing for a history's values in a traced reverse pass, made on demand:
    an edge Variable where a segment has one, a constant's array, else `node(segment, id)`."""

    def __init__(self, found: History, node: Node) -> None:
        super().__init__()
        self.found, self.node = found, node

    def __missing__(self, s: int) -> Any:
        segments = self.found.segments
        v = next((seg.edge[s] for seg in segments if s in seg.edge), None)
        if v is None:
            seg = next(seg for seg in segments if s in seg.values)
            v = seg.values[s] if s in self.found.consts else self.node(seg, s)
        self[s] = v
        return v
