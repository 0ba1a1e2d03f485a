"""Helpers shared by the manifest builders: class-subset mapping, error collection,
stable ids."""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

from wsss_ray.data.errors import ErrorRecord, ItemError

STAGE = "manifest"


class ErrorCollector:
    """One place for the strict-vs-collect policy: ``strict`` raises at the first bad
    item (useful when curating a dataset), otherwise each bad item becomes a record and
    the build goes on."""

    def __init__(self, strict: bool = False, stage: str = STAGE):
        self.strict = strict
        self.stage = stage
        self.records: list[ErrorRecord] = []

    def add(self, item, reason: str) -> None:
        if self.strict:
            raise ItemError(str(item), reason)
        self.records.append(ErrorRecord(self.stage, str(item), reason))

    def add_error(self, err: ItemError) -> None:
        self.add(err.item, err.reason)


def apply_class_subset(source_names: Sequence[str], target_names: Sequence[str],
                       rename: Mapping[str, str] | None = None) -> list[int | None]:
    """Lookup table: source class id -> target class id, or None for a class outside
    the subset (its pixels become ignore, it never becomes a label)."""
    rename = rename or {}
    index = {n: i for i, n in enumerate(target_names)}
    return [index.get(rename.get(n, n)) for n in source_names]


def map_labels(source_ids: Iterable[int], lut: Sequence[int | None] | None) -> list[int]:
    """Sorted distinct target ids of the source ids that fall inside the subset."""
    if lut is None:
        return sorted(set(int(c) for c in source_ids))
    return sorted({lut[c] for c in source_ids if lut[c] is not None})


def stable_id(text: str) -> int:
    """63-bit id from a name, the same on every machine and run (Python's hash() is
    salted per process), and non-negative so it fits int64 image_id."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)
