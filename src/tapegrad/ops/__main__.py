"""`python -m tapegrad.ops`: print the op table that docs/FORMAT.md carries (generated from the registry)."""

from .registry import op_table_markdown

print(op_table_markdown())
