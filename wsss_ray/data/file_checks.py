"""The manifest stage's look at every image file: its header decodes and its size is the one
the annotations give. A bad item is dropped here, once, so that training, extraction and
evaluation all skip the same set; with ``strict`` the first one stops the job."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from wsss_ray.data.classmap import ErrorCollector
from wsss_ray.data.errors import ItemError
from wsss_ray.data.images import image_size
from wsss_ray.data.manifest import ManifestRow

READERS = 16        # header reads wait on storage, not the CPU: threads overlap them


def _header_or_error(row: ManifestRow):
    try:
        return image_size(row.uri)
    except ItemError as e:
        return e


def size_mismatch(row: ManifestRow, height: int, width: int) -> str:
    return (f"image {row.image_id}: the file is {width}x{height} but its annotation says {row.width}x{row.height}; "
            f"skipped (its mask is drawn at the annotation's size)")


def check_image_files(rows: list[ManifestRow], errors: ErrorCollector) -> list[ManifestRow]:
    """The rows whose image header decodes and, where the row gives a size, matches it."""
    kept = []
    with ThreadPoolExecutor(READERS) as pool:
        headers = pool.map(_header_or_error, rows)      # in row order: strict stops at the first bad row
        for row, header in tqdm(zip(rows, headers), total=len(rows), desc="check images", unit="img",
                                disable=None, leave=False):
            if isinstance(header, ItemError):
                errors.add_error(header)
            elif row.height and (row.height, row.width) != header:
                errors.add(row.uri, size_mismatch(row, *header))
            else:
                kept.append(row)
    return kept
