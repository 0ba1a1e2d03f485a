"""PASCAL VOC 2012 (and the SBD-augmented train_aug list) -> manifest rows.

``root`` is ``VOCdevkit/VOC2012``. Labels come from ``Annotations/<name>.xml`` (every
object, difficult ones included: the image-level tag is true either way); GT masks are
the palette PNGs of ``SegmentationClass/`` (indices = class id + 1, 255 = ignore), which
exist only for the segmentation subset, so ``mask_uri`` may be None.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from tqdm import tqdm

from wsss_ray.data.classmap import ErrorCollector, stable_id
from wsss_ray.data.errors import ErrorRecord, ItemError
from wsss_ray.data.images import absolute_root, image_size, list_names, read_bytes
from wsss_ray.store import join_uri, uri_exists
from wsss_ray.data.manifest import ClassSpace, ManifestRow

VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
_VOC_INDEX = {n: i for i, n in enumerate(VOC_NAMES)}


def voc_image_id(name: str) -> int:
    """2007_000032 -> 2007000032; a name that is not digits falls back to a stable hash."""
    digits = name.replace("_", "")
    return int(digits) if digits.isdigit() else stable_id(name)


def _split_list_uri(root: str, split: str) -> str:
    if split == "train_aug":
        uri = join_uri(root, "ImageSets/SegmentationAug/train_aug.txt")
        if not uri_exists(uri):
            raise ItemError(uri, "train_aug list not found (looked for "
                                 "ImageSets/SegmentationAug/train_aug.txt under the VOC2012 root)")
        return uri
    uri = join_uri(root, f"ImageSets/Segmentation/{split}.txt")
    if not uri_exists(uri):
        raise ItemError(uri, f"split list for '{split}' not found")
    return uri


def _read_names(uri: str) -> list[str]:
    """Image names of a split list. Some train_aug.txt copies hold
    '/JPEGImages/x.jpg /SegmentationClassAug/x.png' pairs: keep the image's stem."""
    try:
        text = read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ItemError(uri, f"not a UTF-8 text file: {e}") from e
    names = []
    for line in text.splitlines():
        if line.strip():
            base = line.split()[0].rsplit("/", 1)[-1]
            names.append(base[:-4] if base.lower().endswith((".jpg", ".png")) else base)
    return list(dict.fromkeys(names))  # a name listed twice is one image


def _parse_xml(uri: str, errors: ErrorCollector) -> tuple[list[int], int, int]:
    """(labels, height, width) from a VOC annotation; unknown object names are recorded
    and skipped, the others kept. height/width are 0 when <size> is missing."""
    try:
        tree = ET.fromstring(read_bytes(uri))
    except ET.ParseError as e:
        raise ItemError(uri, f"malformed XML: {e}") from e
    labels = set()
    for obj in tree.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name in _VOC_INDEX:
            labels.add(_VOC_INDEX[name])
        else:
            errors.add(uri, f"unknown object name {name!r}")
    try:
        h = int(float(tree.findtext("size/height") or 0))
        w = int(float(tree.findtext("size/width") or 0))
    except ValueError:
        h = w = 0
    return sorted(labels), h, w


def _find_mask(root: str, name: str, mask_dirs: dict[str, set[str] | None]) -> str | None:
    for d, names in mask_dirs.items():
        if names is not None and f"{name}.png" in names:
            return join_uri(root, d, f"{name}.png")
    return None


def _voc_row(root: str, name: str, split: str, jpegs: set[str], mask_dirs, errors) -> ManifestRow:
    uri = join_uri(root, "JPEGImages", f"{name}.jpg")
    if f"{name}.jpg" not in jpegs:
        raise ItemError(uri, "image listed in the split but missing on disk")
    labels, h, w = _parse_xml(join_uri(root, "Annotations", f"{name}.xml"), errors)
    if not labels:
        raise ItemError(uri, "no labels: the annotation has no known VOC object")
    if h <= 0 or w <= 0:
        h, w = image_size(uri)  # <size> missing or broken: the JPEG header knows
    return ManifestRow(voc_image_id(name), uri, labels, _find_mask(root, name, mask_dirs), split, h, w)


def build_voc_manifest(root: str, split: str, strict: bool = False, limit: int = 0
                       ) -> tuple[list[ManifestRow], ClassSpace, list[ErrorRecord]]:
    """Rows of a VOC split (train, val, trainval, train_aug, or any ImageSets/Segmentation
    list), sorted by image id; ``limit`` > 0 stops after that many usable rows."""
    root = absolute_root(root)
    names = _read_names(_split_list_uri(root, split))
    jpegs = list_names(join_uri(root, "JPEGImages"))
    if jpegs is None:
        raise ItemError(join_uri(root, "JPEGImages"), "image directory not found")
    dirs = ["SegmentationClass"] + (["SegmentationClassAug"] if split == "train_aug" else [])
    mask_dirs = {d: list_names(join_uri(root, d)) for d in dirs}
    errors = ErrorCollector(strict)
    rows: list[ManifestRow] = []
    for name in tqdm(sorted(names, key=voc_image_id), desc=f"voc {split}", unit="img", disable=None):
        if limit and len(rows) >= limit:
            break
        try:
            rows.append(_voc_row(root, name, split, jpegs, mask_dirs, errors))
        except ItemError as e:
            errors.add_error(e)
    return rows, ClassSpace("voc", VOC_NAMES), errors.records
