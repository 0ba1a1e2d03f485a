"""LPCAM seeds from the command line, no Python written, on a VOC-layout tree, a COCO tree and a
folder of tagged images: each a config file (``base: quick`` + its dataset) through
``wsss-ray run``. The VOC and folder trees are built here from demo-world scenes (so the
seeds can be scored); the COCO tree is coco_tiny."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_ray import cli
from wsss_ray.data.demo import DEMO_CLASSES, render_demo_image
from wsss_ray.data.voc import VOC_NAMES

N_SCENES = 24
FAST = ("train.epochs=2", "methods=cam,lpcam", "cam.scales=[1.0,0.5]")


def scenes():
    """(name, image, mask, classes) of the first demo scenes that show an object."""
    out = []
    for index in range(N_SCENES):
        image, mask, present = render_demo_image(0, index)
        if present:
            out.append((f"scene_{index:03d}", image, mask, present))
    return out


def make_voc_tree(root: Path) -> Path:
    """JPEGImages, Annotations, SegmentationClass (palette PNG), ImageSets/Segmentation/train.txt;
    demo class c is VOC class c (mask value c + 1, as VOC)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    names = []
    for name, image, mask, present in scenes():
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        objects = "".join(f"<object><name>{VOC_NAMES[c]}</name><difficult>0</difficult></object>" for c in present)
        h, w = mask.shape
        (voc / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>")
        png = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
        png.putpalette([v for i in range(256) for v in (i, i, i)])
        png.save(voc / "SegmentationClass" / f"{name}.png")
        names.append(name)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    return voc


def make_folder_tree(root: Path) -> tuple[Path, Path, Path]:
    """images/*.png, tags.csv (``file,labels``, names joined by ;), masks/*.png in the ids of the
    class list a folder dataset infers (the sorted names)."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    order = sorted(DEMO_CLASSES)
    lut = np.zeros(256, np.uint8)
    lut[255] = 255
    for c, name in enumerate(DEMO_CLASSES):
        lut[c + 1] = order.index(name) + 1
    lines = ["file,labels"]
    for name, image, mask, present in scenes():
        Image.fromarray(image).save(images / f"{name}.png")
        Image.fromarray(lut[mask]).save(masks / f"{name}.png")
        lines.append(f"{name}.png,{';'.join(DEMO_CLASSES[c] for c in present)}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")
    return images, root / "tags.csv", masks


def run_config(tmp_path: Path, dataset: dict, overrides=()) -> dict:
    config = tmp_path / "mine.yaml"
    config.write_text(f"base: quick\ndataset: {json.dumps(dataset)}\n")
    run_dir = tmp_path / "run"
    argv = ["run", str(config), "--run-dir", str(run_dir)] + [a for o in FAST + tuple(overrides) for a in ("-o", o)]
    assert cli.main(argv) == 0
    return {m: json.loads((run_dir / "eval" / f"{m}.json").read_text()) for m in ("cam", "lpcam")}


def assert_scored(results: dict, images: int) -> None:
    for method, result in results.items():
        assert result["num_images"] == images, method
        assert 0 < result["best"]["miou"] <= 1, method


@pytest.mark.slow
def test_lpcam_on_a_voc_tree_from_the_command_line(ray_session, tmp_path):
    voc = make_voc_tree(tmp_path / "data")
    results = run_config(tmp_path, {"kind": "voc", "root": str(voc), "split": "train"})
    assert_scored(results, len(scenes()))
    assert results["cam"]["class_names"] == ["background", *VOC_NAMES]


@pytest.mark.slow
def test_lpcam_on_a_tagged_folder_from_the_command_line(ray_session, tmp_path):
    images, tags, masks = make_folder_tree(tmp_path / "data")
    results = run_config(tmp_path, {"kind": "folder", "root": str(images), "tags_file": str(tags),
                                    "masks_dir": str(masks)})
    assert_scored(results, len(scenes()))


@pytest.mark.slow
@pytest.mark.coco
def test_lpcam_on_a_coco_tree_from_the_command_line(ray_session, tmp_path, coco_tiny):
    results = run_config(tmp_path, {"kind": "coco", "root": str(coco_tiny), "split": "val", "class_subset": "voc20",
                                    "limit": 20}, overrides=("cam.max_side=128",))
    assert 0 < results["cam"]["num_images"] <= 20
    assert_scored(results, results["cam"]["num_images"])


def test_strict_stops_in_the_manifest_stage_before_training(ray_session, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["file,labels"]
    for name, image, _, present in scenes()[:6]:
        Image.fromarray(image).save(images / f"{name}.png")
        lines.append(f"{name}.png,{';'.join(DEMO_CLASSES[c] for c in present)}")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a PNG")
    lines.append("broken.png,cat")
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    code = cli.main(["run", "folder", "--run-dir", str(run_dir), "-o", f"dataset.root={images}",
                     "-o", f"dataset.tags_file={tmp_path / 'tags.csv'}", "-o", "strict=true"])
    assert code == 1 and time.perf_counter() - start < 60
    out = capsys.readouterr().out
    assert f"stopped at a bad item (strict): {images / 'broken.png'}: not a readable image" in out
    assert "train_cam" not in out and not (run_dir / "checkpoints").exists()
