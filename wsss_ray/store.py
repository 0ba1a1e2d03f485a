"""Run-directory storage: filesystems, the Parquet schema of map shards, map encoding.

Maps are stored as uint8 at 1/``stride`` of full resolution (one byte per value, values
are per-class max-normalised to [0, 1]); readers need only pyarrow and numpy:

    row = pq.read_table(shard).to_pylist()[0]
    maps = np.frombuffer(row["data"], np.uint8).reshape(row["map_shape"]) / 255.0

The authors store float32 at full resolution: 4 * H * W bytes per class map. Storing
1 byte at stride 4 is 64x smaller before Parquet's own compression; the eval stage
upsamples bilinearly to full resolution, which is what the authors' pipeline does with
its strided maps anyway (benchmarks/storage.py measures the mIoU cost).
"""
from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

MAPS_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("classes", pa.list_(pa.int32())),       # class id of each stored map, in order
    ("height", pa.int32()),                  # full-resolution image size
    ("width", pa.int32()),
    ("map_shape", pa.list_(pa.int32())),     # [num_classes, map_h, map_w]
    ("data", pa.binary()),                   # uint8, C-order, value / 255 = normalised map
])


def open_fs(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """Resolve a local path or a pyarrow-understood URI (file://, s3://, gs://, mock://).

    Filesystem options ride in the query, as pyarrow reads them, e.g.
    ``s3://bucket/run?endpoint_override=minio:9000&scheme=http`` for an S3-compatible store."""
    if filesystem is not None:
        return filesystem, uri
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join_uri(root: str, *parts) -> str:
    """Join with '/' (URIs never use the OS separator); keeps a scheme and a query intact."""
    base, sep, query = root.partition("?")
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return f"{out}{sep}{query}"


def read_table_uri(uri: str, **kwargs) -> pa.Table:
    fs, path = open_fs(uri)
    return pq.read_table(path, filesystem=fs, **kwargs)


def write_table_uri(table: pa.Table, uri: str) -> None:
    fs, path = open_fs(uri)
    write_table_atomic(table, fs, path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def encode_maps(maps: np.ndarray) -> bytes:
    """float maps in [0, 1] -> uint8 bytes (rounded, not truncated, to halve the error)."""
    q = np.clip(np.rint(np.asarray(maps, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return q.tobytes()


def decode_maps(data: bytes, shape) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(tuple(shape)).astype(np.float32) / 255.0


def read_map_rows(maps_dir: str, image_ids, shard: str = "") -> dict[int, dict]:
    """The stored map rows of ``image_ids`` in a maps directory, by image id (absent ids are
    simply missing; files whose names start with '_' or '.' are skipped).

    ``shard``: the file the rows should be in (the same chunk of an earlier pass); only ids it
    lacks are looked up across the directory, so a run of N chunks opens N files, not N^2.
    """
    fs, path = open_fs(maps_dir)
    wanted = {int(i) for i in image_ids}
    found = {}
    if shard and exists(fs, f"{path}/{shard}"):
        rows = pq.read_table(f"{path}/{shard}", filesystem=fs).to_pylist()
        found = {r["image_id"]: r for r in rows if r["image_id"] in wanted}
    missing = wanted - found.keys()
    if missing:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        if dataset.files:            # no shard written yet: no schema to filter on
            table = dataset.to_table(filter=pads.field("image_id").isin(sorted(missing)))
            found.update({r["image_id"]: r for r in table.to_pylist()})
    return found


def map_row(image_id: int, classes, height: int, width: int, maps: np.ndarray) -> dict:
    return {
        "image_id": int(image_id),
        "classes": [int(c) for c in classes],
        "height": int(height),
        "width": int(width),
        "map_shape": [int(s) for s in maps.shape],
        "data": encode_maps(maps),
    }


def write_table_atomic(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half shard that a
    reader would take as complete (readers skip names starting with '_' or '.')."""
    parent = path.rsplit("/", 1)[0]
    tmp = f"{parent}/_tmp.{os.getpid()}.{path.rsplit('/', 1)[1]}"
    fs.create_dir(parent, recursive=True)
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, path)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` under a temporary name beside ``path``, then rename: a crash never leaves a
    half file that a rerun would take as done (readers skip names starting with '_')."""
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"_tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}.{name}"
    if parent:
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/{tmp}"
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


def uri_exists(uri: str, filesystem: pafs.FileSystem | None = None) -> bool:
    fs, path = open_fs(uri, filesystem)
    return exists(fs, path)


def list_shards(fs: pafs.FileSystem, directory: str) -> list[str]:
    if not exists(fs, directory):
        return []
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=False))
    names = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    return sorted(p for p in names if not p.rsplit("/", 1)[1].startswith(("_", ".")))


def read_shards(fs: pafs.FileSystem, directory: str, columns=None) -> pa.Table:
    shards = list_shards(fs, directory)
    if not shards:
        return MAPS_SCHEMA.empty_table() if columns is None else MAPS_SCHEMA.empty_table().select(columns)
    return pa.concat_tables([pq.read_table(s, filesystem=fs, columns=columns) for s in shards])


def done_ids(fs: pafs.FileSystem, directory: str) -> set[int]:
    """Image ids already present in complete shards of ``directory``."""
    table = read_shards(fs, directory, columns=["image_id"])
    return set(table.column("image_id").to_pylist())


def read_rows(directory: str, ids, columns=None) -> dict[int, dict]:
    """Rows of the shards under ``directory`` for ``ids`` (shards are sorted by image_id, so
    Parquet statistics skip the shards that cannot hold them)."""
    fs, path = open_fs(directory)
    shards = list_shards(fs, path)
    if not shards:
        return {}
    dataset = pads.dataset(shards, filesystem=fs, format="parquet")
    table = dataset.to_table(columns=columns, filter=pads.field("image_id").isin(list(ids)))
    return {r["image_id"]: r for r in table.to_pylist()}
