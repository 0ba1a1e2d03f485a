"""Bad input battery: every problem becomes an ItemError / ErrorRecord naming the item,
the good rows still come out, and strict=True raises instead."""
from __future__ import annotations

import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from wsss_ray.data.coco import build_coco_manifest
from wsss_ray.data.errors import ItemError
from wsss_ray.data.folder import build_folder_manifest
from wsss_ray.data.images import MAX_PIXELS, image_size, load_mask, load_rgb, save_mask
from wsss_ray.data.voc import build_voc_manifest

COCO_TINY = Path(__file__).resolve().parents[2] / "shared/data/coco_tiny"


def _noise_jpeg(path: Path, w=256, h=192) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
    return path.read_bytes()


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose IHDR claims w x h, with no pixel data: cheap stand-in for huge files."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- decoding

def test_corrupt_jpeg(tmp_path):
    p = tmp_path / "corrupt.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    with pytest.raises(ItemError) as e:
        load_rgb(str(p))
    assert e.value.item == str(p)


def test_truncated_jpeg(tmp_path):
    real = sorted((COCO_TINY / "train2017").glob("*.jpg"))[:1] if COCO_TINY.is_dir() else []
    data = real[0].read_bytes() if real else _noise_jpeg(tmp_path / "full.jpg")
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ItemError, match="truncated") as e:
        load_rgb(str(p))
    assert e.value.item == str(p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "half.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ItemError):
        load_rgb(str(p))


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(ItemError, match="not found"):
        load_rgb(str(tmp_path / "nope.jpg"))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ItemError, match="empty"):
        load_rgb(str(tmp_path / "empty.jpg"))
    with pytest.raises(ItemError, match="not found"):
        load_mask(str(tmp_path / "nope.png"))


def test_file_uri(tmp_path):
    Image.new("RGB", (7, 5), (1, 2, 3)).save(tmp_path / "x.png")
    assert load_rgb(f"file://{tmp_path}/x.png")[0, 0].tolist() == [1, 2, 3]


def test_grayscale(tmp_path):
    Image.new("L", (12, 8), 77).save(tmp_path / "g.jpg")
    a = load_rgb(str(tmp_path / "g.jpg"))
    assert a.shape == (8, 12, 3) and a.dtype == np.uint8
    assert (a[..., 0] == a[..., 1]).all() and abs(int(a[0, 0, 0]) - 77) <= 2


def test_coco_tiny_grayscale_image():
    """coco_tiny's grayscale photo is stored as a 3-channel JPEG with equal channels."""
    if not COCO_TINY.is_dir():
        pytest.skip("coco_tiny absent")
    for p in sorted(COCO_TINY.glob("train2017/*.jpg")):
        a = load_rgb(str(p))
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            with Image.open(p) as im:
                assert a.shape == (im.height, im.width, 3)
            return
    pytest.fail("coco_tiny should hold a grayscale image")


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))       # white
    img.paste((0, 255, 255, 0), (0, 0, 8, 16))            # left half red
    img.save(tmp_path / "cmyk.jpg", quality=95)
    a = load_rgb(str(tmp_path / "cmyk.jpg")).astype(int)
    assert a.shape == (16, 16, 3)
    assert (abs(a[8, 12] - [255, 255, 255]) <= 8).all()
    assert (abs(a[8, 2] - [255, 0, 0]) <= 8).all()


def test_rgba_png_drops_alpha(tmp_path):
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert load_rgb(str(tmp_path / "a.png"))[1, 1].tolist() == [10, 20, 30]
    Image.new("LA", (4, 3), (90, 128)).save(tmp_path / "la.png")
    assert load_rgb(str(tmp_path / "la.png"))[0, 0].tolist() == [90, 90, 90]


def test_palette_png(tmp_path):
    img = Image.frombytes("P", (2, 1), bytes([0, 1]))
    img.putpalette([200, 10, 20, 5, 6, 7] + [0] * 762)
    img.save(tmp_path / "p.png")
    assert load_rgb(str(tmp_path / "p.png")).tolist() == [[[200, 10, 20], [5, 6, 7]]]
    img.save(tmp_path / "pt.png", transparency=1)  # palette with a transparent entry
    assert load_rgb(str(tmp_path / "pt.png")).tolist() == [[[200, 10, 20], [5, 6, 7]]]
    assert load_mask(str(tmp_path / "p.png")).tolist() == [[0, 1]]  # masks keep indices


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
    a = load_rgb(str(tmp_path / "d.png"))
    assert a[0, :, 0].tolist() == [0, 1, 128, 255] and (a[..., 1] == a[..., 2]).all()


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (9, 8, 7)).save(tmp_path / "one.png")
    assert load_rgb(str(tmp_path / "one.png"), max_side=448).tolist() == [[[9, 8, 7]]]  # never upscaled


def test_zero_size_and_too_large_headers(tmp_path):
    _png_header_only(tmp_path / "zero.png", 0, 10)
    with pytest.raises(ItemError):
        load_rgb(str(tmp_path / "zero.png"))
    _png_header_only(tmp_path / "huge.png", 30000, 30000)
    assert 30000 * 30000 > MAX_PIXELS
    with pytest.raises(ItemError, match="too large"):
        load_rgb(str(tmp_path / "huge.png"))


def test_8000_square_image(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 6000), (10, 200, 30)).save(p, quality=90)
    small = load_rgb(str(p), max_side=500)
    assert small.shape == (375, 500, 3)
    assert (abs(small[100, 100].astype(int) - [10, 200, 30]) <= 3).all()
    Image.new("L", (8000, 8000), 33).save(tmp_path / "big.png", compress_level=1)
    full = load_rgb(str(tmp_path / "big.png"))
    assert full.shape == (8000, 8000, 3) and full[7999, 7999].tolist() == [33, 33, 33]
    assert image_size(str(tmp_path / "big.png")) == (8000, 8000)


def test_mask_io(tmp_path):
    m = np.arange(12, dtype=np.uint8).reshape(3, 4)
    m[0, 0] = 255
    save_mask(m, str(tmp_path / "d/m.png"))
    assert np.array_equal(load_mask(str(tmp_path / "d/m.png")), m)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["m.png"]  # no temp file left
    fs = pafs._MockFileSystem()
    save_mask(m, "x/m.png", filesystem=fs)
    assert np.array_equal(load_mask("x/m.png", filesystem=fs), m)
    Image.new("RGB", (3, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ItemError, match="mode RGB"):
        load_mask(str(tmp_path / "rgb.png"))


# --------------------------------------------------------------------------- COCO entries

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def make_coco(root: Path, images=None, annotations=None, categories=CATS, on_disk=None) -> Path:
    """A 2017-layout COCO tree with small solid JPEGs; ``on_disk`` limits which exist."""
    images = images if images is not None else [
        {"id": i, "file_name": f"{i:012d}.jpg", "height": 20, "width": 30} for i in (1, 2, 3)]
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for img in images:
        if on_disk is None or img["id"] in on_disk:
            Image.new("RGB", (img["width"], img["height"])).save(root / "val2017" / img["file_name"])
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "segmentation": _square(2, 2, 10)},
            {"id": 11, "image_id": 2, "category_id": 3, "iscrowd": 0, "area": 36.0, "segmentation": _square(5, 5, 6)},
            {"id": 12, "image_id": 3, "category_id": 18, "iscrowd": 0, "area": 16.0, "segmentation": _square(1, 1, 4)},
        ]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations/instances_val2017.json").write_text(json.dumps(doc))
    return root


def test_coco_image_with_no_labels(tmp_path):
    crowd_rle = {"size": [20, 30], "counts": "0hb0"}  # compressed: 0 zeros, then 600 ones
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "segmentation": _square(2, 2, 10)},
        {"id": 11, "image_id": 2, "category_id": 3, "iscrowd": 1, "area": 600.0, "segmentation": crowd_rle},
    ]
    root = make_coco(tmp_path / "c", annotations=anns)
    rows, _, errors = build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert [r.image_id for r in rows] == [1]
    reasons = {e.item.rsplit("/", 1)[-1]: e.reason for e in errors}
    assert "no labels" in reasons["000000000002.jpg"] and "no labels" in reasons["000000000003.jpg"]
    with pytest.raises(ItemError, match="no labels"):
        build_coco_manifest(str(root), "val", str(tmp_path / "m2"), strict=True)


def test_coco_crowd_compressed_rle_is_ignore(tmp_path):
    # 20*30 = 600 px: 300 zeros then 300 ones, column-major -> right half (cols 15..29)
    counts = "".join(chr(c + 48) for c in (0x0C | 0x20, 0x09, 0x0C | 0x20, 0x09))  # 300, 300
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0, "segmentation": _square(20, 5, 2)},
        {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": 300.0,
         "segmentation": {"size": [20, 30], "counts": counts}},
    ]
    root = make_coco(tmp_path / "c", annotations=anns, images=[
        {"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}])
    rows, _, errors = build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert errors == [] and rows[0].labels == [0]  # the crowd car is no label
    m = load_mask(rows[0].mask_uri)
    assert (m[:, :15] == 0).all()
    assert m[6, 21] == 1  # the small person on top of the crowd
    assert (m[0, 15:] == 255).all() and (m[19, 15:] == 255).all()


def test_coco_unknown_category(tmp_path):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "segmentation": _square(2, 2, 10)},
        {"id": 77, "image_id": 1, "category_id": 999, "iscrowd": 0, "area": 9.0, "segmentation": _square(20, 10, 3)},
        {"id": 12, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 16.0, "segmentation": _square(1, 1, 4)},
    ]
    root = make_coco(tmp_path / "c", annotations=anns)
    rows, _, errors = build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert [(r.image_id, r.labels) for r in rows] == [(1, [0]), (2, [2])]  # image 1 still used
    bad = [e for e in errors if e.item == "annotation 77"]
    assert len(bad) == 1 and "999" in bad[0].reason
    assert load_mask(rows[0].mask_uri)[11, 21] == 255  # the unknown object is not background
    with pytest.raises(ItemError, match="999"):
        build_coco_manifest(str(root), "val", str(tmp_path / "m2"), strict=True)


def test_coco_not_json(tmp_path):
    root = make_coco(tmp_path / "c")
    ann = root / "annotations/instances_val2017.json"
    ann.write_text("{not json")
    with pytest.raises(ItemError, match="not valid JSON") as e:
        build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert e.value.item == str(ann)


@pytest.mark.parametrize("doc,message", [
    ({"images": [], "categories": CATS}, "missing key 'annotations'"),
    ({"annotations": [], "categories": CATS}, "missing key 'images'"),
    ({"images": {}, "annotations": [], "categories": CATS}, "'images' must be a list"),
    ([1, 2], "top level"),
    ({"images": [], "annotations": [], "categories": [{"id": "x"}]}, "bad category"),
])
def test_coco_malformed_structure(tmp_path, doc, message):
    root = make_coco(tmp_path / "c")
    (root / "annotations/instances_val2017.json").write_text(json.dumps(doc))
    with pytest.raises(ItemError, match=message) as e:
        build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert e.value.item.endswith("instances_val2017.json")


def test_coco_bad_entries_are_records(tmp_path):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "segmentation": _square(2, 2, 10)},
        {"id": 50, "image_id": 12345, "category_id": 1, "iscrowd": 0, "segmentation": _square(1, 1, 3)},
        {"id": 51, "image_id": 2, "category_id": "car", "segmentation": _square(1, 1, 3)},
        {"id": 52, "image_id": 2, "category_id": 3, "iscrowd": 0, "segmentation": {"size": [20, 30], "counts": [5, 5]}},
        {"id": 12, "image_id": 3, "category_id": 18, "iscrowd": 0, "area": 16.0, "segmentation": _square(1, 1, 4)},
    ]
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 30} for i in (1, 2, 3, 4)]
    images.append({"id": 5, "file_name": "5.jpg", "height": "big", "width": 30})
    root = make_coco(tmp_path / "c", images=images, annotations=anns, on_disk={1, 2, 3})
    rows, _, errors = build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert [r.image_id for r in rows] == [1, 2, 3]
    by_item = {e.item: e.reason for e in errors}
    assert "missing image 12345" in by_item["annotation 50"]
    assert "category_id" in by_item["annotation 51"]
    assert "bad segmentation" in by_item["annotation 52"]  # counts do not cover the image
    assert any(i.endswith("/4.jpg") and "missing on disk" in r for i, r in by_item.items())
    assert any("image 5" in r and "height" in r for r in by_item.values())
    with pytest.raises(ItemError, match="image 5 has a bad height"):  # first problem in file order
        build_coco_manifest(str(root), "val", str(tmp_path / "m2"), strict=True)


def test_unknown_subset_is_an_argument_error(tmp_path):
    with pytest.raises(ValueError, match="class_subset"):
        build_coco_manifest(str(make_coco(tmp_path / "c")), "val", str(tmp_path / "m"), class_subset="ade")


# --------------------------------------------------------------------------- VOC / folder

def test_voc_bad_entries(tmp_path):
    voc = tmp_path / "VOC2012"
    for d in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for name, objs in (("2007_000001", ["dog", "unicorn"]), ("2007_000002", ["unicorn"]), ("2007_000003", ["cat"])):
        Image.new("RGB", (8, 6)).save(voc / "JPEGImages" / f"{name}.jpg")
        body = "".join(f"<object><name>{o}</name></object>" for o in objs)
        (voc / "Annotations" / f"{name}.xml").write_text(f"<annotation>{body}</annotation>")  # no <size>
    (voc / "Annotations/2007_000003.xml").write_text("<annotation><object>")  # broken XML
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n2007_000002\n2007_000003\n2007_000004\n")
    rows, _, errors = build_voc_manifest(str(voc), "train")
    assert [(r.image_id, r.labels, r.height, r.width) for r in rows] == [(2007000001, [11], 6, 8)]
    items = [e.item.rsplit("/", 1)[-1] for e in errors]
    assert items == ["2007_000001.xml", "2007_000002.xml", "2007_000002.jpg", "2007_000003.xml", "2007_000004.jpg"]
    assert "unicorn" in errors[0].reason and "no labels" in errors[2].reason
    assert "malformed XML" in errors[3].reason and "missing" in errors[4].reason
    with pytest.raises(ItemError, match="unicorn"):
        build_voc_manifest(str(voc), "train", strict=True)
    with pytest.raises(ItemError, match="not found"):
        build_voc_manifest(str(voc), "val")


def test_folder_bad_rows(tmp_path):
    (tmp_path / "imgs").mkdir()
    for n in ("a", "b", "c", "d"):
        Image.new("RGB", (5, 4)).save(tmp_path / "imgs" / f"{n}.jpg")
    (tmp_path / "imgs/bad.jpg").write_bytes(b"not an image")
    tags = tmp_path / "tags.csv"
    tags.write_text("file,labels\n"
                    "a.jpg,dog\n"           # 2 ok
                    "b.jpg,unicorn\n"       # 3 unknown class
                    "c.jpg,\n"              # 4 no labels
                    "missing.jpg,dog\n"     # 5 missing file
                    "d.jpg,cat;7\n"         # 6 id out of range
                    "bad.jpg,cat\n"         # 7 unreadable image
                    "a.jpg,cat\n"           # 8 duplicate
                    "x.jpg\n")              # 9 malformed
    rows, _, errors = build_folder_manifest(str(tmp_path / "imgs"), str(tags), class_names=["cat", "dog"])
    assert [(r.uri.rsplit("/", 1)[-1], r.labels) for r in rows] == [("a.jpg", [1])]
    got = {e.item.rsplit("/", 1)[-1]: e.reason for e in errors}
    assert "unknown class 'unicorn'" in got["tags.csv:3"]
    assert "no labels" in got["tags.csv:4"]
    assert "not found" in got["missing.jpg"]
    assert "outside" in got["tags.csv:6"]
    assert "not a readable image" in got["bad.jpg"]
    assert "duplicate" in got["tags.csv:8"] and "malformed" in got["tags.csv:9"]
    with pytest.raises(ItemError, match="unicorn"):
        build_folder_manifest(str(tmp_path / "imgs"), str(tags), class_names=["cat", "dog"], strict=True)


def test_folder_bad_jsonl_and_names(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "imgs/a.jpg")
    tags = tmp_path / "tags.jsonl"
    tags.write_text('{"file": "a.jpg", "labels": ["dog"]}\n'
                    '{"file": "a.jpg", "labels": [\n'
                    '{"labels": ["dog"]}\n'
                    '{"file": "a.jpg", "labels": ["dog", 0]}\n')
    rows, classes, errors = build_folder_manifest(str(tmp_path / "imgs"), str(tags))
    assert len(rows) == 1 and classes.names == ("dog",)
    got = {e.item.rsplit("/", 1)[-1]: e.reason for e in errors}
    assert "malformed JSON" in got["tags.jsonl:2"] and "malformed line" in got["tags.jsonl:3"]
    assert "needs class_names" in got["tags.jsonl:4"]
    (tmp_path / "tags.txt").write_text("a.jpg dog\n")
    with pytest.raises(ItemError, match=".csv"):
        build_folder_manifest(str(tmp_path / "imgs"), str(tmp_path / "tags.txt"))
    (tmp_path / "t.csv").write_text("name,tags\na.jpg,dog\n")
    with pytest.raises(ItemError, match="header"):
        build_folder_manifest(str(tmp_path / "imgs"), str(tmp_path / "t.csv"))


# --------------------------------------------------------------------------- ground truth that never lies

def test_coco_undrawable_annotation_is_ignore_in_its_bbox_and_keeps_its_label(tmp_path):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0, "segmentation": _square(2, 2, 10)},
        # a string in place of coordinates, with a usable bbox: that box becomes ignore
        {"id": 20, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 40.0, "bbox": [15, 4, 8, 5],
         "segmentation": [["15", "4", "x", "4", "23", "9"]]},
        # a malformed polygon and no bbox: the whole image is ignore
        {"id": 30, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 9.0, "segmentation": [[1, 2, 3]]},
    ]
    root = make_coco(tmp_path / "c", images=[{"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 30}
                                             for i in (1, 2)], annotations=anns)
    rows, _, errors = build_coco_manifest(str(root), "val", str(tmp_path / "m"))
    assert [(r.image_id, r.labels) for r in rows] == [(1, [0, 1]), (2, [2])]      # labels kept
    by_item = {e.item: e.reason for e in errors}
    assert "its bbox is ignore (255)" in by_item["annotation 20"]
    assert "its image (no usable bbox) is ignore (255)" in by_item["annotation 30"]
    one, two = load_mask(rows[0].mask_uri), load_mask(rows[1].mask_uri)
    assert (one[4:9, 15:23] == 255).all() and one[3, 15] == 0 and one[9, 23] == 0   # the box, nothing more
    assert (one[2:12, 2:12] == 1).all()                                            # the good object is drawn
    assert (two == 255).all()                     # no pixel of image 2 is scored as background


def test_manifest_stage_drops_mis_sized_and_unreadable_images_with_error_rows(tmp_path):
    from wsss_ray.config import DatasetConfig
    from wsss_ray.data.errors import ERRORS_SCHEMA
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.manifest import build_manifest
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 30} for i in (1, 2, 3)]
    root = make_coco(tmp_path / "c", images=images)
    Image.new("RGB", (40, 20)).save(root / "val2017" / "2.jpg")           # the JSON says 30 x 20
    (root / "val2017" / "3.jpg").write_text("not an image, despite the name")
    cfg = DatasetConfig(kind="coco", root=str(root), split="val")
    out = build_manifest(RunDir(str(tmp_path / "run")), cfg)
    table, _ = read_manifest(str(tmp_path / "run" / "manifest"))
    assert table.column("image_id").to_pylist() == [1] and out["errors"] == 2
    rows = pq.read_table(tmp_path / "run" / "errors" / "manifest", schema=ERRORS_SCHEMA).to_pylist()
    reasons = {r["item"].rsplit("/", 1)[-1]: r["reason"] for r in rows}
    assert reasons["2.jpg"] == ("image 2: the file is 40x20 but its annotation says 30x20; skipped "
                                "(its mask is drawn at the annotation's size)")
    assert reasons["3.jpg"] == "not a readable image: not an image format PIL can identify"
    with pytest.raises(ItemError, match="2.jpg: image 2: the file is 40x20"):      # strict: the first bad one
        build_manifest(RunDir(str(tmp_path / "strict")), cfg, strict=True)
    assert not (tmp_path / "strict" / "manifest" / "manifest.parquet").exists()


def test_error_reasons_are_short_stable_sentences(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("a text file named .jpg")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(_noise_jpeg(tmp_path / "full.jpg")[:2000])
    reasons = []
    for _ in range(2):
        for read in (load_rgb, image_size):
            for path in (text, truncated):
                try:
                    read(str(path))
                    reasons.append(None)             # a header-only read of a cut file succeeds
                except ItemError as e:
                    assert e.reason and "0x" not in e.reason and not e.reason.endswith(": "), e.reason
                    reasons.append(e.reason)
    assert reasons[:4] == reasons[4:]                # the same in every run
    assert reasons[0] == reasons[2] == "not a readable image: not an image format PIL can identify"
    assert reasons[1].startswith("corrupt or truncated image: OSError: image file is truncated")


def test_training_steps_record_the_images_they_skip(tmp_path):
    from wsss_ray.data.errors import ERRORS_SCHEMA
    from wsss_ray.data.train_batches import ClassifierBatches
    good, cut = tmp_path / "good.jpg", tmp_path / "cut.jpg"
    cut.write_bytes(_noise_jpeg(good)[:2000])
    errors_dir = tmp_path / "errors" / "train_cam"
    make = ClassifierBatches(3, (32, 48), 32, True, (0.5,) * 3, (0.25,) * 3, 0, str(errors_dir))
    row = {"epoch": 0, "step": 0, "index": [0, 1], "uri": [str(good), str(cut)], "labels": [[0], [2]],
           "image_id": [7, 8]}
    for epoch in (0, 1):                              # every epoch meets it: still one row
        batch = make({**row, "epoch": epoch})
        assert batch["x"].shape[0] == 1
    rows = pq.read_table(errors_dir, schema=ERRORS_SCHEMA).to_pylist()
    assert len(rows) == 1 and rows[0]["stage"] == "train_cam" and rows[0]["item"] == f"8 ({cut})"
    assert rows[0]["reason"].startswith("corrupt or truncated image: OSError: image file is truncated")


def test_a_folder_class_list_is_pinned_or_printed_with_its_likely_typos(tmp_path, capsys):
    from wsss_ray.config import DatasetConfig
    from wsss_ray.config_file import ConfigError
    from wsss_ray.data.errors import ERRORS_SCHEMA
    from wsss_ray.data.manifest import read_manifest
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.manifest import build_manifest
    images = tmp_path / "images"
    images.mkdir()
    tags = ["cat", "dog", "cat;dog", "dgo", "dog"]                # one misspelt tag
    for k in range(len(tags)):
        Image.new("RGB", (12, 10), (40 * k, 0, 0)).save(images / f"{k}.png")
    (tmp_path / "tags.csv").write_text("file,labels\n" + "".join(f"{k}.png,{t}\n" for k, t in enumerate(tags)))
    inferred = DatasetConfig(kind="folder", root=str(images), tags_file=str(tmp_path / "tags.csv"))
    build_manifest(RunDir(str(tmp_path / "a")), inferred)
    out = capsys.readouterr().out
    assert "3 classes inferred from the tags (manifest/classes.json): cat, dgo, dog" in out
    assert "pin them with -o dataset.classes=cat,dgo,dog. Seen on one image only, likely typos: dgo" in out
    assert json.loads((tmp_path / "a" / "manifest" / "class_counts.json").read_text()) == {"cat": 2, "dgo": 1, "dog": 3}

    pinned = dataclasses.replace(inferred, classes=("cat", "dog"))
    build_manifest(RunDir(str(tmp_path / "b")), pinned)
    assert "inferred" not in capsys.readouterr().out
    table, classes = read_manifest(str(tmp_path / "b" / "manifest"))
    assert classes.names == ("cat", "dog") and table.num_rows == 4       # ids do not shift
    errors = pq.read_table(tmp_path / "b" / "errors" / "manifest", schema=ERRORS_SCHEMA).to_pylist()
    assert [(e["item"].rsplit("/", 1)[-1], e["reason"]) for e in errors] == [("tags.csv:5", "unknown class 'dgo' (file 3.png)")]

    coco = make_coco(tmp_path / "c")
    wrong = DatasetConfig(kind="coco", root=str(coco), split="val", classes=("person", "dog", "car"))
    with pytest.raises(ConfigError, match=r"dataset.classes differs from the coco dataset's class list "
                                          r"\(the same names in another order\)"):
        build_manifest(RunDir(str(tmp_path / "d")), wrong)
    build_manifest(RunDir(str(tmp_path / "e")), dataclasses.replace(wrong, classes=("person", "car", "dog")))


def test_a_dataset_with_no_usable_image_stops_in_the_manifest_stage(tmp_path):
    from wsss_ray.config import DatasetConfig
    from wsss_ray.config_file import ConfigError
    from wsss_ray.rundir import RunDir
    from wsss_ray.stages.manifest import build_manifest
    root = make_coco(tmp_path / "c", categories=[{"id": 1, "name": "toaster"}, {"id": 3, "name": "oven"},
                                                 {"id": 18, "name": "sink"}])
    cfg = DatasetConfig(kind="coco", root=str(root), split="val", class_subset="voc20")
    with pytest.raises(ConfigError, match=r"the coco dataset .* split 'val' with class_subset 'voc20' has no usable "
                                          r"image \(3 error rows in errors/manifest, most often: 3 x no labels\)"):
        build_manifest(RunDir(str(tmp_path / "run")), cfg)
    assert (tmp_path / "run" / "errors" / "manifest" / "part-00000.parquet").exists()   # the rows say which
