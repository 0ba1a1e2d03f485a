"""Per-item error records: bad input becomes a row naming the item, never a crashed job."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import pyarrow as pa

ERRORS_SCHEMA = pa.schema([
    ("stage", pa.string()),
    ("item", pa.string()),     # image id, file path or annotation id
    ("reason", pa.string()),
])


class ItemError(Exception):
    """An input item that cannot be used; ``item`` names it, the message says why."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"{item}: {reason}")
        self.item = str(item)
        self.reason = reason


@dataclass(frozen=True)
class ErrorRecord:
    stage: str
    item: str
    reason: str

    def as_row(self) -> dict:
        return asdict(self)


def errors_table(records: list[ErrorRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.as_row() for r in records], schema=ERRORS_SCHEMA)
