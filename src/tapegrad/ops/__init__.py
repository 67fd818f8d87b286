"""The op registry (see `registry`) and the shape of its entries (see `spec`)."""

from .registry import NUMPY, REGISTRY, op_table_markdown
from .spec import Attr, Attrs, AttrValue, OpSpec, pass_on

__all__ = ["NUMPY", "REGISTRY", "op_table_markdown", "Attr", "Attrs", "AttrValue", "OpSpec", "pass_on"]
