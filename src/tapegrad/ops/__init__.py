"""The op registry (see `registry`) and the shape of its entries (see `spec`)."""

from .registry import BUILTIN, NUMPY, REGISTRY, op_table_markdown
from .spec import Attr, Attrs, AttrValue, OpSpec, pass_on

__all__ = ["BUILTIN", "NUMPY", "REGISTRY", "op_table_markdown", "Attr", "Attrs", "AttrValue", "OpSpec", "pass_on"]
