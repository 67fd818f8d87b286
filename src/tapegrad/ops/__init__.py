"""The op registry (see `registry`) and the shape of its entries (see `spec`)."""

from .registry import NUMPY, REGISTRY
from .spec import Attr, Attrs, AttrValue, OpSpec, pass_on

__all__ = ["NUMPY", "REGISTRY", "Attr", "Attrs", "AttrValue", "OpSpec", "pass_on"]
