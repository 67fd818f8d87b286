"""Safety limits for loading and validating tapes from untrusted sources.

Contract:
- `Limits` is a frozen dataclass of upper bounds, every one an `int`; `DEFAULT_LIMITS` holds the
  documented defaults (see docs/FORMAT.md, "Limits").  Pass `Limits(max_records=...)` (or
  `DEFAULT_LIMITS.replace(...)`) to `load`, `loads`, `load_path` or `validate` to change them.
- `Limits.check(name, value, what, *args)` raises `LimitError` when `value` exceeds the limit
  `name`; the message (`what.format(*args)`, formatted only then) names the limit, the offending
  size and how to raise the limit.  `Limits.elements(shape, whose)` is the element count of a
  shape, checked against `max_ndim` and `max_elements` (which also bounds each dimension and the
  product of the non-zero dimensions, so a zero-size shape cannot be one numpy refuses).
- Sizes are always Python ints (numpy products overflow silently), so checks cannot wrap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import LimitError

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Upper bounds applied while loading and validating a tape (all inclusive)."""

    max_total_bytes: int = 64 * GiB
    """Size of the whole tape (file or bytes) that will be read into memory."""
    max_frame_bytes: int = 4 * MiB
    """Payload of one structure frame (HEAD, VARS, RECS, NAME, FOOT); arrays are not counted.

    Decoding a frame briefly takes up to ~64 bytes of Python objects per payload byte."""
    max_array_bytes: int = 16 * GiB
    """Stored payload of one array."""
    max_records: int = 10_000_000
    """Op records on the tape."""
    max_variables: int = 20_000_000
    """Variables (leaves plus record outputs) on the tape."""
    max_elements: int = 1 << 32
    """Elements of any one variable, stored or inferred (broadcast_to 10**10 is refused); also
    each dimension, and the product of the non-zero dimensions, of every shape."""
    max_total_elements: int = 1 << 36
    """Elements summed over all variables: the footprint a full replay would compute."""
    max_ndim: int = 32
    """Dimensions of any one variable."""
    max_nesting: int = 16
    """Nesting depth of metadata values: the metadata map is at depth 0, a value inside a map or
    array at depth d is at depth d + 1 (docs/FORMAT.md, HEAD frame)."""
    max_string_bytes: int = 1 * MiB
    """One string or bytes value (names, metadata strings)."""

    def check(self, name: str, value: int, what: str, *args: object) -> None:
        """Raise `LimitError` if `value` exceeds the limit called `name`; `what` describes the
        value, formatted with `args` (`str.format`) only then."""
        limit = getattr(self, name)
        if value > limit:
            what = what.format(*args)
            raise LimitError(f"{what} is {value:,}, over the limit {name}={limit:,}; if you trust this "
                             f"tape, raise the limit: load(..., limits=Limits({name}=...))")

    def elements(self, shape: tuple[int, ...], whose: str, *args: object) -> int:
        """The element count of `shape` (non-negative ints), after checking `max_ndim` and then
        `max_elements`, which bounds every dimension and the product of the non-zero dimensions
        too: an empty array of shape (2**62, 0) is refused like one of 2**62 elements, since numpy
        cannot make either.  `whose` names the variable in messages (formatted with `args`)."""
        self.check("max_ndim", len(shape), "the number of dimensions of " + whose, *args)
        count = 1
        extent = 1  # the product of the non-zero dimensions: what numpy must be able to address
        for d in shape:
            count *= d  # Python ints: no overflow
            if d:
                extent *= d
        if not count and extent > self.max_elements:  # (a zero-size shape: its element count says nothing)
            self.check("max_elements", extent, "the product of the non-zero dimensions of " + whose + " (shape {})",
                       *args, _shown(shape))
        self.check("max_elements", count, "the number of elements of " + whose + " (shape {})", *args, _shown(shape))
        return count

    def replace(self, **changes: Any) -> Limits:
        """A copy with some limits changed."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise TypeError(f"Limits.{f.name} must be a non-negative int, got {value!r}")


def _shown(shape: tuple[int, ...]) -> str:
    """A shape for a message: its first dimensions when it has many."""
    return str(shape) if len(shape) <= 8 else f"({', '.join(map(str, shape[:8]))}, ... {len(shape)} dimensions)"


DEFAULT_LIMITS = Limits()
"""The limits used when a loader or `validate` is given `limits=None`."""
