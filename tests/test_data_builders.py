"""Manifest builders on real COCO (coco_tiny) and on small synthetic VOC / folder trees."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_ray.data.classmap import stable_id
from wsss_ray.data.coco import COCO_TO_VOC, build_coco_manifest, segmentation_mask
from wsss_ray.data.errors import ItemError
from wsss_ray.data.folder import build_folder_manifest
from wsss_ray.data.images import load_mask, load_rgb
from wsss_ray.data.manifest import manifest_table
from wsss_ray.data.voc import VOC_NAMES, build_voc_manifest

COCO_TINY = Path(__file__).resolve().parents[2] / "shared/data/coco_tiny"


# --------------------------------------------------------------------------- COCO

def _coco_json(split: str) -> dict:
    return json.loads((COCO_TINY / f"annotations/instances_{split}2017.json").read_text())


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Both splits, all classes and the voc20 subset: built once for the module."""
    if not COCO_TINY.is_dir():
        pytest.skip(f"coco_tiny not found at {COCO_TINY}")
    out = {}
    for subset in ("", "voc20"):
        for split in ("train", "val"):
            mask_dir = tmp_path_factory.mktemp(f"masks_{subset or 'all'}_{split}")
            out[subset, split] = build_coco_manifest(str(COCO_TINY), split, str(mask_dir), class_subset=subset)
    return out


def _expected_labels(doc: dict, lut=None) -> dict[int, list[int]]:
    """Independent re-derivation from the JSON: non-crowd categories of each image."""
    index = {c["id"]: k for k, c in enumerate(sorted(doc["categories"], key=lambda c: c["id"]))}
    out: dict[int, set] = {img["id"]: set() for img in doc["images"]}
    for a in doc["annotations"]:
        if not a["iscrowd"]:
            cls = index[a["category_id"]]
            if lut is None:
                out[a["image_id"]].add(cls)
            elif lut[cls] is not None:
                out[a["image_id"]].add(lut[cls])
    return {k: sorted(v) for k, v in out.items() if v}


def _voc_lut(doc: dict) -> list:
    names = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]
    return [VOC_NAMES.index(COCO_TO_VOC[n]) if n in COCO_TO_VOC else None for n in names]


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_rows_and_classes(coco, split):
    rows, classes, errors = coco["", split]
    doc = _coco_json(split)
    assert len(rows) == 80 and errors == []
    assert classes.num_classes == 80
    assert list(classes.names) == [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]
    assert [r.image_id for r in rows] == sorted(r.image_id for r in rows)
    assert {r.split for r in rows} == {split}
    assert {r.image_id: r.labels for r in rows} == _expected_labels(doc)
    sizes = {i["id"]: (i["height"], i["width"]) for i in doc["images"]}
    assert all((r.height, r.width) == sizes[r.image_id] for r in rows)
    assert manifest_table(rows).num_rows == 80


def test_coco_masks_shape_and_values(coco):
    for split in ("train", "val"):
        rows, _, _ = coco["", split]
        for r in rows:
            m = load_mask(r.mask_uri)
            assert m.shape == (r.height, r.width)
            allowed = {0, 255} | {c + 1 for c in r.labels}
            assert set(np.unique(m).tolist()) <= allowed
            assert (m[(m != 0) & (m != 255)] > 0).any()  # some foreground painted
    # the images themselves decode at the JSON size (one of them is grayscale)
    for r in coco["", "train"][0][:5]:
        assert load_rgb(r.uri).shape == (r.height, r.width, 3)


def _instance_masks(doc, image):
    h, w = image["height"], image["width"]
    anns = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
    return [(a, segmentation_mask(a["segmentation"], h, w)) for a in anns]


def test_coco_crowd_pixels_are_ignore(coco):
    checked = 0
    for split in ("train", "val"):
        doc = _coco_json(split)
        rows = {r.image_id: r for r in coco["", split][0]}
        crowd_ids = {a["image_id"] for a in doc["annotations"] if a["iscrowd"]}
        for image in (i for i in doc["images"] if i["id"] in crowd_ids):
            inst = _instance_masks(doc, image)
            crowd = np.any([m for a, m in inst if a["iscrowd"]], axis=0)
            objects = np.any([m for a, m in inst if not a["iscrowd"]] or [np.zeros_like(crowd)], axis=0)
            only_crowd = crowd & ~objects
            mask = load_mask(rows[image["id"]].mask_uri)
            assert (mask[only_crowd] == 255).all()
            checked += int(only_crowd.sum())
    assert checked > 0


@pytest.mark.parametrize("split,count", [("train", 65), ("val", 69)])
def test_coco_voc20_subset(coco, split, count):
    rows, classes, errors = coco["voc20", split]
    doc = _coco_json(split)
    assert classes.names == VOC_NAMES and classes.num_classes == 20
    assert len(rows) == count
    assert len(errors) == 80 - count and all("no labels" in e.reason for e in errors)
    assert {r.image_id: r.labels for r in rows} == _expected_labels(doc, _voc_lut(doc))


def test_coco_voc20_other_classes_are_ignore(coco):
    doc = _coco_json("val")
    lut = _voc_lut(doc)
    index = {c["id"]: k for k, c in enumerate(sorted(doc["categories"], key=lambda c: c["id"]))}
    images = {i["id"]: i for i in doc["images"]}
    checked = 0
    for r in coco["voc20", "val"][0]:
        inst = _instance_masks(doc, images[r.image_id])
        voc = [m for a, m in inst if not a["iscrowd"] and lut[index[a["category_id"]]] is not None]
        other = [m for a, m in inst if not a["iscrowd"] and lut[index[a["category_id"]]] is None]
        if not other:
            continue
        only_other = np.any(other, axis=0) & ~np.any(voc, axis=0)
        mask = load_mask(r.mask_uri)
        assert (mask[only_other] == 255).all()
        assert set(np.unique(mask).tolist()) <= {0, 255} | {c + 1 for c in r.labels}
        checked += int(only_other.sum())
    assert checked > 0


def test_coco_limit_and_rerun_keeps_masks(tmp_path):
    if not COCO_TINY.is_dir():
        pytest.skip("coco_tiny absent")
    rows, _, _ = build_coco_manifest(str(COCO_TINY), "val2017", str(tmp_path), limit=3)
    assert [r.image_id for r in rows] == sorted(i["id"] for i in _coco_json("val")["images"])[:3]
    # a rerun must not repaint masks that exist (sentinel survives)
    Path(rows[0].mask_uri).write_bytes(b"sentinel")
    again, _, _ = build_coco_manifest(str(COCO_TINY), "val", str(tmp_path), limit=3)
    assert again == rows
    assert Path(rows[0].mask_uri).read_bytes() == b"sentinel"


def test_coco_2014_layout_builds_same_rows(tmp_path):
    if not COCO_TINY.is_dir():
        pytest.skip("coco_tiny absent")
    doc = _coco_json("val")
    keep = sorted(i["id"] for i in doc["images"])[:6]
    (tmp_path / "val2014").mkdir()
    (tmp_path / "annotations").mkdir()
    images = []
    for img in doc["images"]:
        if img["id"] in keep:
            new = dict(img, file_name=f"COCO_val2014_{img['id']:012d}.jpg")
            os.symlink(COCO_TINY / "val2017" / img["file_name"], tmp_path / "val2014" / new["file_name"])
            images.append(new)
    doc14 = dict(doc, images=images, annotations=[a for a in doc["annotations"] if a["image_id"] in keep])
    (tmp_path / "annotations/instances_val2014.json").write_text(json.dumps(doc14))

    ref, ref_classes, _ = build_coco_manifest(str(COCO_TINY), "val", str(tmp_path / "m17"), limit=6)
    for split in ("val", "val2014"):
        rows, classes, errors = build_coco_manifest(str(tmp_path), split, str(tmp_path / f"m_{split}"))
        assert errors == [] and classes == ref_classes
        assert [(r.image_id, r.labels, r.split, r.height, r.width) for r in rows] == \
               [(r.image_id, r.labels, r.split, r.height, r.width) for r in ref]
        assert all(r.uri.endswith(f"COCO_val2014_{r.image_id:012d}.jpg") for r in rows)
        for a, b in zip(rows, ref):
            assert np.array_equal(load_mask(a.mask_uri), load_mask(b.mask_uri))
    with pytest.raises(ItemError, match="instances_train2017.json"):
        build_coco_manifest(str(tmp_path), "train", str(tmp_path / "m"))


# --------------------------------------------------------------------------- masks

def _rle_encode_string(counts: list[int]) -> str:
    """COCO's compressed RLE, written from the format description (test oracle)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
    return np.diff(np.concatenate([[0], change])).tolist()


def test_rle_uncompressed_is_column_major():
    m = segmentation_mask({"size": [2, 3], "counts": [1, 2, 3]}, 2, 3)
    assert m.dtype == bool
    assert m.tolist() == [[False, True, False], [True, False, False]]


def test_rle_compressed_known_string():
    # runs 2, 40, 1, 5 on 6x8: '2', 'X1' (40 = 8 + 1<<5), '1', then 5 - 40 = -35 as 'mN'
    m = segmentation_mask({"size": [6, 8], "counts": "2X11mN"}, 6, 8)
    expected = np.ones((6, 8), dtype=bool)
    expected[0, 0] = expected[1, 0] = False  # the first run of 2, down column 0
    expected[0, 7] = False                   # pixel 42 = row 0 of the last column
    assert np.array_equal(m, expected)
    assert np.array_equal(segmentation_mask({"counts": b"2X11mN"}, 6, 8), expected)


def test_polygon_masks_take_pixel_centres():
    # a rectangle x 1..4, y 1..3 covers the pixel centres of columns 1-3, rows 1-2
    m = segmentation_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:4] = True
    assert np.array_equal(m, expected)
    # triangle x + y < 5.5: centre (c + .5, r + .5) inside iff c + r <= 4 (15 pixels);
    # a second part of the same object is added, a 2-point "polygon" is skipped
    m = segmentation_mask([[0, 0, 5.5, 0, 0, 5.5], [5, 5, 6, 5, 6, 6, 5, 6], [0, 0, 1, 1]], 6, 6)
    rows, cols = np.indices((6, 6))
    expected = (rows + cols <= 4) | ((rows == 5) & (cols == 5))
    assert np.array_equal(m, expected) and m.sum() == 16


@pytest.mark.parametrize("seg,message", [
    ({"counts": [5, 5]}, "sum to 10"),
    ({"counts": [3, -1, 598]}, "non-negative"),
    ({"size": [20, 31], "counts": [620]}, "differs from image size"),
    ({"counts": "0hb"}, "ends inside a number"),
    ({"counts": "0h b0"}, "bad character"),
    ({"counts": "55"}, "less than"),
    ({"counts": "0ob0"}, "more than"),
    ({"counts": "0" + "o" * 7 + "0"}, "longer than 7"),
    ([[1, 1, 2, 2]], "at least 3 points"),
    ([[0, 0, 1, float("nan"), 2, 2]], "not finite"),
    ({"area": 3}, "unknown segmentation format"),
])
def test_bad_segmentations_raise(seg, message):
    with pytest.raises(ValueError, match=message):
        segmentation_mask(seg, 20, 30)


def test_rle_compressed_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 60, size=2)
        mask = rng.random((h, w)) < rng.random()
        mask[: h // 2, : w // 3] = True  # long runs: multi-char numbers and deltas
        counts = _runs(mask)
        assert sum(counts) == h * w
        assert np.array_equal(segmentation_mask({"counts": counts}, h, w), mask)
        seg = {"size": [int(h), int(w)], "counts": _rle_encode_string(counts)}
        assert np.array_equal(segmentation_mask(seg, h, w), mask)


# --------------------------------------------------------------------------- VOC

def _palette_png(path: Path, arr: np.ndarray) -> None:
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
    img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def _voc_xml(objects: list[str], h: int, w: int) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def make_voc(root: Path, items: dict[str, tuple[list[str], bool]], splits: dict[str, list[str]]) -> Path:
    """items: name -> (object names, has SegmentationClass mask)."""
    voc = root / "VOCdevkit/VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for k, (name, (objects, has_mask)) in enumerate(items.items()):
        h, w = 20 + k, 30 + k
        Image.new("RGB", (w, h), (k * 40, 0, 0)).save(voc / "JPEGImages" / f"{name}.jpg")
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(objects, h, w))
        if has_mask:
            arr = np.zeros((h, w), np.uint8)
            arr[2:8, 3:9] = VOC_NAMES.index(objects[0]) + 1
            arr[0, :] = 255
            _palette_png(voc / "SegmentationClass" / f"{name}.png", arr)
    for split, names in splits.items():
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return voc


def test_voc_builder(tmp_path):
    voc = make_voc(tmp_path, {"2007_000032": (["aeroplane", "person", "aeroplane"], True),
                              "2007_000033": (["dog"], False),
                              "2008_000001": (["tvmonitor"], True)},
                   {"train": ["2007_000033", "2007_000032"], "val": ["2008_000001"]})
    rows, classes, errors = build_voc_manifest(str(voc), "train")
    assert errors == [] and classes.names == VOC_NAMES and classes.dataset == "voc"
    assert [r.image_id for r in rows] == [2007000032, 2007000033]
    assert rows[0].labels == [0, 14] and rows[1].labels == [11]
    assert (rows[0].height, rows[0].width) == (20, 30)
    assert rows[0].mask_uri.endswith("SegmentationClass/2007_000032.png") and rows[1].mask_uri is None
    m = load_mask(rows[0].mask_uri)  # palette indices, not colours
    assert m.shape == (20, 30) and set(np.unique(m).tolist()) == {0, 1, 255}
    val, _, _ = build_voc_manifest(str(voc), "val")
    assert [(r.image_id, r.labels, r.split) for r in val] == [(2008000001, [19], "val")]
    assert len(build_voc_manifest(str(voc), "train", limit=1)[0]) == 1


def test_voc_train_aug(tmp_path):
    voc = make_voc(tmp_path, {"2007_000032": (["cat"], True), "2007_000033": (["cow"], False)}, {})
    with pytest.raises(ItemError, match="SegmentationAug/train_aug.txt"):
        build_voc_manifest(str(voc), "train_aug")
    (voc / "ImageSets/SegmentationAug").mkdir()
    (voc / "ImageSets/SegmentationAug/train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n")
    (voc / "SegmentationClassAug").mkdir()
    Image.fromarray(np.zeros((21, 31), np.uint8)).save(voc / "SegmentationClassAug/2007_000033.png")
    rows, _, errors = build_voc_manifest(str(voc), "train_aug")
    assert errors == []
    assert rows[0].mask_uri.endswith("SegmentationClass/2007_000032.png")
    assert rows[1].mask_uri.endswith("SegmentationClassAug/2007_000033.png")
    assert {r.split for r in rows} == {"train_aug"}


# --------------------------------------------------------------------------- folder

def make_folder(root: Path) -> Path:
    (root / "imgs/sub").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "imgs/a.jpg")
    Image.new("L", (25, 50)).save(root / "imgs/sub/b.png")
    Image.new("RGB", (10, 10)).save(root / "imgs/c.jpg")
    (root / "masks/sub").mkdir(parents=True)
    Image.fromarray(np.zeros((50, 25), np.uint8)).save(root / "masks/sub/b.png")
    return root / "imgs"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_builder(tmp_path, fmt):
    images = make_folder(tmp_path)
    if fmt == "csv":
        tags = tmp_path / "tags.csv"
        tags.write_text("file,labels\na.jpg,dog;cat\nsub/b.png,bird|dog\nc.jpg,cat\n")
    else:
        tags = tmp_path / "tags.jsonl"
        tags.write_text('{"file": "a.jpg", "labels": ["dog", "cat"]}\n\n'
                        '{"file": "sub/b.png", "labels": ["bird", "dog"]}\n'
                        '{"file": "c.jpg", "labels": ["cat"]}\n')
    rows, classes, errors = build_folder_manifest(str(images), str(tags), masks_dir=str(tmp_path / "masks"))
    assert errors == [] and classes.names == ("bird", "cat", "dog")
    assert [r.labels for r in rows] == [[1, 2], [0, 2], [1]]
    assert [(r.height, r.width) for r in rows] == [(30, 40), (50, 25), (10, 10)]
    assert [r.image_id for r in rows] == [stable_id("a.jpg"), stable_id("sub/b.png"), stable_id("c.jpg")]
    assert all(0 <= r.image_id < 2 ** 63 for r in rows)
    assert rows[0].mask_uri is None and rows[1].mask_uri.endswith("masks/sub/b.png")
    again, _, _ = build_folder_manifest(str(images), str(tags))
    assert [r.image_id for r in again] == [r.image_id for r in rows]  # stable across reruns


def test_folder_integer_ids_and_given_names(tmp_path):
    images = make_folder(tmp_path)
    tags = tmp_path / "tags.csv"
    tags.write_text("file,labels\na.jpg,0;2\nsub/b.png,horse\nc.jpg,1\n")
    rows, classes, errors = build_folder_manifest(str(images), str(tags), class_names=["cow", "dog", "horse"])
    assert errors == [] and classes.names == ("cow", "dog", "horse")
    assert [r.labels for r in rows] == [[0, 2], [2], [1]]
    tags.write_text("file,labels\na.jpg,0;3\nc.jpg,1\n")  # only ids, no names: ids kept
    rows, classes, errors = build_folder_manifest(str(images), str(tags))
    assert classes.names == ("0", "1", "2", "3") and [r.labels for r in rows] == [[0, 3], [1]]


def _pet(patterned_head: bool, contrast: float = 1.0, cls: int = 0):
    from wsss_ray.data.demo import IMAGE_SIZE, _draw_pet
    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128.0, np.float32)
    labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    _draw_pet(np.random.default_rng(7), canvas, labels, cls, IMAGE_SIZE - 2, patterned_head, contrast)
    return canvas, labels


def test_demo_patterned_head_variant_keeps_the_cat_and_drops_its_yellow_head():
    plain, plain_labels = _pet(patterned_head=False)
    patterned, patterned_labels = _pet(patterned_head=True)
    assert (plain_labels == patterned_labels).all() and (plain_labels == 1).sum() > 500
    yellow = lambda img: ((img[..., 0] > 200) & (img[..., 1] > 180) & (img[..., 2] < 90)).sum()
    assert yellow(plain) > 100 and yellow(patterned) == 0
    # a dog's head turns round as well: its mask differs only there
    assert (_pet(False, cls=1)[1] != _pet(True, cls=1)[1]).sum() > 0


def test_demo_pattern_contrast_fades_the_dark_colour():
    from wsss_ray.data.demo import _pet_body
    spread = lambda c: _pet_body(np.random.default_rng(3), 64, 0, c)[..., 0].std()
    assert spread(1.0) > 30 and spread(0.0) < 10 and spread(1.0) > spread(0.5) > spread(0.0)
    # the shipped world's call (no contrast) draws the same pixels as contrast 1.0
    assert (_pet_body(np.random.default_rng(3), 64, 1) == _pet_body(np.random.default_rng(3), 64, 1, 1.0)).all()
