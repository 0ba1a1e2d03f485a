"""The one manifest schema shared by every dataset (COCO, VOC, a folder, the demo world).

A manifest is a Parquet table, one row per image, plus ``classes.json`` naming the class
ids that ``labels`` and the GT masks use (mask value = class id + 1; 0 = background;
255 = ignore).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, asdict, field

import pyarrow as pa
import pyarrow.parquet as pq

IGNORE = 255

MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("uri", pa.string()),
    ("labels", pa.list_(pa.int32())),
    ("mask_uri", pa.string()),        # null when the dataset has no GT mask for the image
    ("split", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
])


@dataclass
class ManifestRow:
    image_id: int
    uri: str
    labels: list = field(default_factory=list)
    mask_uri: str | None = None
    split: str = "train"
    height: int = 0
    width: int = 0

    def as_row(self) -> dict:
        row = asdict(self)
        row["labels"] = sorted(int(c) for c in self.labels)
        return row


@dataclass(frozen=True)
class ClassSpace:
    """Names of the foreground classes, in class-id order."""
    dataset: str
    names: tuple

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_json(self) -> str:
        return json.dumps({"dataset": self.dataset, "names": list(self.names)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "ClassSpace":
        data = json.loads(text)
        return cls(data["dataset"], tuple(data["names"]))


def manifest_table(rows: list[ManifestRow]) -> pa.Table:
    return pa.Table.from_pylist([r.as_row() for r in rows], schema=MANIFEST_SCHEMA)


def write_manifest(rows: list[ManifestRow], classes: ClassSpace, directory: str, filesystem=None) -> None:
    """Write ``manifest.parquet`` and ``classes.json`` under ``directory``."""
    from wsss_ray.store import open_fs, write_bytes_atomic, write_table_atomic  # store depends on nothing here
    fs, path = open_fs(directory, filesystem)
    # both atomic, manifest.parquet last: the manifest stage takes its presence as "done"
    write_bytes_atomic(fs, f"{path}/classes.json", classes.to_json().encode())
    write_table_atomic(manifest_table(rows), fs, f"{path}/manifest.parquet")


def read_manifest(directory: str, filesystem=None) -> tuple[pa.Table, ClassSpace]:
    from wsss_ray.store import open_fs
    fs, path = open_fs(directory, filesystem)
    table = pq.read_table(f"{path}/manifest.parquet", filesystem=fs, schema=MANIFEST_SCHEMA)
    with fs.open_input_stream(f"{path}/classes.json") as f:
        classes = ClassSpace.from_json(f.read().decode())
    return table, classes
