"""MS COCO (2014 or 2017 layout) -> manifest rows and semantic GT masks.

Class ids are 0-based in COCO category-id order (read from the JSON, not a constant).
GT mask per image: 0 background; non-crowd instances painted largest area first so small
objects end on top, value = class id + 1; crowd regions, annotations of an unknown
category and (with a subset) objects outside the subset are 255 = ignore. All of them
take part in the one largest-first pass, so a pixel gets the value of the smallest
object covering it. Polygons and RLE go through pycocotools, COCO's reference API. An annotation whose
segmentation cannot be drawn keeps its label (its category is in the image) and makes its
bbox ignore (the whole image when the bbox is unusable too), with an error row naming it.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
from pycocotools import mask as mask_api
from tqdm import tqdm

from wsss_ray.data.classmap import ErrorCollector, apply_class_subset, map_labels
from wsss_ray.data.errors import ErrorRecord, ItemError
from wsss_ray.data.images import absolute_root, list_names, read_bytes, save_mask
from wsss_ray.store import join_uri, uri_exists
from wsss_ray.data.manifest import IGNORE, ClassSpace, ManifestRow
from wsss_ray.data.voc import VOC_NAMES

# COCO names that differ from VOC's; the other 14 VOC classes share the COCO name.
COCO_TO_VOC = {
    "airplane": "aeroplane", "dining table": "diningtable", "motorcycle": "motorbike",
    "potted plant": "pottedplant", "couch": "sofa", "tv": "tvmonitor",
    **{n: n for n in ("bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                      "dog", "horse", "person", "sheep", "train")},
}

_YEARS = ("2017", "2014")


# --------------------------------------------------------------------------- JSON

def _resolve_split(root: str, split: str) -> tuple[str, str]:
    """'train2017' / 'val2014' / 'train' -> (base split, folder name like 'train2017')."""
    m = re.fullmatch(r"([A-Za-z]+)(\d{4})", split)
    candidates = [m.group(0)] if m else [f"{split}{y}" for y in _YEARS]
    for name in candidates:
        if uri_exists(join_uri(root, "annotations", f"instances_{name}.json")):
            return (m.group(1) if m else split), name
    looked = ", ".join(join_uri(root, "annotations", f"instances_{c}.json") for c in candidates)
    raise ItemError(root, f"no COCO annotations for split '{split}' (looked for {looked})")


def _load_json(uri: str) -> dict:
    """Whole-file checks: a file failing them cannot yield any row, so they always raise."""
    try:
        doc = json.loads(read_bytes(uri))
    except (ValueError, UnicodeDecodeError) as e:
        raise ItemError(uri, f"not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ItemError(uri, f"top level must be a JSON object, got {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise ItemError(uri, f"missing key '{key}'")
        if not isinstance(doc[key], list):
            raise ItemError(uri, f"'{key}' must be a list, got {type(doc[key]).__name__}")
    return doc


def _categories(cats: list, uri: str) -> tuple[dict[int, int], list[str]]:
    """COCO category id -> 0-based class id (sorted by category id), and the names."""
    pairs = []
    for c in cats:
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise ItemError(uri, f"bad category entry {str(c)[:80]} (needs int 'id' and str 'name')")
        pairs.append((c["id"], c["name"]))
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise ItemError(uri, "duplicate category ids")
    if not pairs:
        raise ItemError(uri, "no categories")
    pairs.sort()
    return {cid: k for k, (cid, _) in enumerate(pairs)}, [n for _, n in pairs]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_image(entry) -> tuple[int, str, int, int]:
    if not isinstance(entry, dict):
        raise ValueError("image entry is not an object")
    iid, name, h, w = (entry.get(k) for k in ("id", "file_name", "height", "width"))
    if not _is_int(iid):
        raise ValueError(f"image entry without an integer 'id': {str(entry)[:80]}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"image {iid} has no 'file_name'")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        raise ValueError(f"image {iid} has a bad height/width ({h!r}, {w!r})")
    return iid, name, h, w


def _check_annotation(ann, images: dict) -> str | None:
    """Reason why the annotation is unusable, or None."""
    if not isinstance(ann, dict):
        return "annotation is not an object"
    for key in ("image_id", "category_id"):
        if not _is_int(ann.get(key)):
            return f"missing or non-integer '{key}'"
    if "segmentation" not in ann:
        return "no 'segmentation'"
    if ann["image_id"] not in images:
        return f"refers to missing image {ann['image_id']}"
    return None


def _ann_name(ann, k: int) -> str:
    aid = ann.get("id") if isinstance(ann, dict) else None
    return f"annotation {aid}" if aid is not None else f"annotation #{k} (no id)"


# --------------------------------------------------------------------------- masks
# Decoding and rasterising are pycocotools' (the COCO API's reference implementation, as
# in its annToMask: frPyObjects, merge, decode). The checks below only reject input the C
# code would not: it trusts every run length and reads each compressed number to its end.

_COORD_LIMIT = 1e8  # pycocotools scales polygon points by 5 into C ints


def _polygon_rle(polygons, height: int, width: int) -> dict:
    """COCO polygons ([[x1, y1, x2, y2, ...], ...]) -> one compressed RLE (their union)."""
    usable = []
    for poly in polygons:
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
            continue  # fewer than 3 points: no area
        pts = [float(v) for v in poly]
        if not all(math.isfinite(v) and abs(v) < _COORD_LIMIT for v in pts):
            raise ValueError(f"polygon coordinate not finite or beyond {_COORD_LIMIT:g}")
        usable.append(pts)
    if not usable:
        raise ValueError("no polygon with at least 3 points")
    return mask_api.merge(mask_api.frPyObjects(usable, height, width))


def _uncompressed_rle(counts, height: int, width: int) -> dict:
    """Run lengths (alternating 0s and 1s, 0s first, column-major) -> compressed RLE."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise ValueError("RLE counts must be a flat list of non-negative ints")
    if runs.sum() != height * width:
        raise ValueError(f"RLE counts sum to {runs.sum()}, expected {height}*{width}")
    return mask_api.frPyObjects({"size": [height, width], "counts": runs.tolist()}, height, width)


# a compressed count is 6-bit groups, chars '0'..'o'; 'P'..'o' say "more groups follow"
_BAD_RLE_CHAR = re.compile(r"[^0-o]")
_LONG_NUMBER = re.compile(r"[P-o]{7,}")  # a 32-bit run length needs at most 7 groups


def _compressed_rle(counts, height: int, width: int) -> dict:
    """COCO's compressed RLE string, checked so that pycocotools can decode it safely."""
    s = counts.decode("ascii") if isinstance(counts, bytes) else counts
    bad = _BAD_RLE_CHAR.search(s)
    if bad:
        raise ValueError(f"bad character {bad.group()!r} in RLE string")
    if s and s[-1] >= "P":
        raise ValueError("RLE string ends inside a number")
    if _LONG_NUMBER.search(s):
        raise ValueError("RLE string holds a number longer than 7 groups")
    rle = {"size": [height, width], "counts": s.encode("ascii")}
    # pycocotools refuses runs past the mask's end but leaves a short mask's tail unset:
    # the runs must also overrun a mask one pixel smaller, so they sum to height*width
    try:
        mask_api.decode({"size": [1, height * width - 1], "counts": rle["counts"]})
    except ValueError:
        return rle
    raise ValueError(f"RLE counts sum to less than {height}*{width}")


def segmentation_mask(seg, height: int, width: int) -> np.ndarray:
    """One annotation's segmentation (polygons, uncompressed or compressed RLE) -> bool mask."""
    if isinstance(seg, list):
        rle = _polygon_rle(seg, height, width)
    elif isinstance(seg, dict) and "counts" in seg:
        size = seg.get("size")
        if size is not None and list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from image size {[height, width]}")
        counts = seg["counts"]
        if isinstance(counts, (str, bytes)):
            rle = _compressed_rle(counts, height, width)
        else:
            rle = _uncompressed_rle(counts, height, width)
    else:
        raise ValueError(f"unknown segmentation format {type(seg).__name__}")
    try:
        m = mask_api.decode(rle)
    except ValueError as e:  # runs longer than the mask
        raise ValueError(f"RLE counts sum to more than {height}*{width}") from e
    return np.ascontiguousarray(m, dtype=bool)


def paint_semantic(height: int, width: int, layers) -> np.ndarray:
    """layers: (area, tie, value, bool mask). Largest first, so smaller objects win."""
    out = np.zeros((height, width), dtype=np.uint8)
    for _, _, value, m in sorted(layers, key=lambda t: (-t[0], t[1])):
        out[m] = value
    return out


# --------------------------------------------------------------------------- builder

def _resolve_subset(class_subset: str, names: list[str]) -> tuple[list[int | None] | None, tuple, str]:
    key = class_subset.lower()
    if key in ("", "all", "coco", "coco80"):
        return None, tuple(names), "coco"
    if key in ("voc", "voc20"):
        return apply_class_subset(names, VOC_NAMES, COCO_TO_VOC), VOC_NAMES, "coco_voc20"
    raise ValueError(f"unknown class_subset {class_subset!r} (use '' or 'voc20')")


class _Image:
    """What the builder needs to know about one image while it walks the annotations."""

    def __init__(self, iid, file_name, h, w):
        self.id, self.file_name, self.h, self.w = iid, file_name, h, w
        self.anns: list[tuple[int, dict]] = []


def _index(doc: dict, uri: str, errors: ErrorCollector) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    for entry in doc["images"]:
        try:
            iid, name, h, w = _check_image(entry)
        except ValueError as e:
            errors.add(uri, str(e))
            continue
        if iid in images:
            errors.add(f"image {iid}", "duplicate image id in the JSON; first entry kept")
            continue
        images[iid] = _Image(iid, name, h, w)
    for k, ann in enumerate(doc["annotations"]):
        reason = _check_annotation(ann, images)
        if reason:
            errors.add(_ann_name(ann, k), reason)
        else:
            images[ann["image_id"]].anns.append((k, ann))
    return images


def _layers(img: _Image, values: list, errors: ErrorCollector) -> list:
    layers = []
    for (k, ann), value in zip(img.anns, values):
        try:
            m = segmentation_mask(ann["segmentation"], img.h, img.w)
        except (ValueError, TypeError, OverflowError) as e:
            # the object is there (its label stays) but its pixels are unknown: ignore, never background
            m, region = _undrawable_region(ann.get("bbox"), img.h, img.w)
            errors.add(_ann_name(ann, k), f"bad segmentation (image {img.id}): {e}; its {region} is ignore (255)")
            value = IGNORE
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and not isinstance(area, bool) else float(m.sum())
        layers.append((area, k, value, m))
    return layers


def _undrawable_region(bbox, height: int, width: int) -> tuple[np.ndarray, str]:
    """Where an annotation that cannot be drawn may lie: its bbox when that is usable, else
    the whole image (the image then takes no part in the scores)."""
    m = np.zeros((height, width), dtype=bool)
    try:
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
        x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    except (TypeError, ValueError, OverflowError):
        x0 = y0 = x1 = y1 = 0
    if x1 > x0 and y1 > y0:
        m[y0:y1, x0:x1] = True
        return m, "bbox"
    m[:] = True
    return m, "image (no usable bbox)"


def _labels_and_values(img: _Image, cat_index, lut, errors) -> tuple[list[int], list[int]]:
    """Image labels (non-crowd, inside the subset) and the paint value of each annotation."""
    source, values = [], []
    for k, ann in img.anns:
        cls = cat_index.get(ann["category_id"])
        if cls is None:
            errors.add(_ann_name(ann, k), f"unknown category_id {ann['category_id']} (image {img.id})")
            values.append(IGNORE)  # an unknown object is still not background
            continue
        target = cls if lut is None else lut[cls]
        if ann.get("iscrowd", 0) or target is None:
            values.append(IGNORE)
        else:
            source.append(cls)
            values.append(target + 1)
    return map_labels(source, lut), values


def _on_disk(file_name: str, uri: str, listing: set[str]) -> bool:
    # the listing holds top-level names only; a file_name with a folder needs a stat
    return file_name in listing if "/" not in file_name else uri_exists(uri)


def build_coco_manifest(root: str, split: str, mask_dir: str, class_subset: str = "",
                        limit: int = 0, strict: bool = False
                        ) -> tuple[list[ManifestRow], ClassSpace, list[ErrorRecord]]:
    """Rows for one COCO split, sorted by image id, GT masks written to
    ``<mask_dir>/<image_id>.png`` (existing ones kept: reruns skip the painting).
    ``limit`` > 0 stops after that many usable rows. Whole-file problems raise
    ``ItemError``; bad single entries become records (or raise with ``strict``)."""
    root, mask_dir = absolute_root(root), absolute_root(mask_dir)
    base, folder = _resolve_split(root, split)
    ann_uri = join_uri(root, "annotations", f"instances_{folder}.json")
    doc = _load_json(ann_uri)
    cat_index, names = _categories(doc["categories"], ann_uri)
    lut, class_names, dataset = _resolve_subset(class_subset, names)
    errors = ErrorCollector(strict)
    images = _index(doc, ann_uri, errors)
    image_dir = join_uri(root, folder)
    on_disk = list_names(image_dir)
    if on_disk is None:
        raise ItemError(image_dir, "image directory not found")
    done_masks = list_names(mask_dir) or set()
    rows: list[ManifestRow] = []
    for iid in tqdm(sorted(images), desc=f"coco {folder}", unit="img", disable=None):
        if limit and len(rows) >= limit:
            break
        img = images[iid]
        uri = join_uri(image_dir, img.file_name)
        if not _on_disk(img.file_name, uri, on_disk):
            errors.add(uri, f"image {iid} listed in the JSON but missing on disk")
            continue
        labels, values = _labels_and_values(img, cat_index, lut, errors)
        if not labels:
            errors.add(uri, f"no labels: image {iid} has no non-crowd object"
                            + (" of the subset" if lut is not None else ""))
            continue
        mask_uri = join_uri(mask_dir, f"{iid}.png")
        if f"{iid}.png" not in done_masks:
            save_mask(paint_semantic(img.h, img.w, _layers(img, values, errors)), mask_uri)
        rows.append(ManifestRow(iid, uri, labels, mask_uri, base, img.h, img.w))
    return rows, ClassSpace(dataset, class_names), errors.records
