"""Training batches made in Ray Data's CPU tasks (numpy + PIL, no torch): decoding and
augmentation stay off the training workers, which only compute.

Each callable takes one row of a training plan (one step of one rank: its epoch, step and
the step's images) and returns that step's whole batch as arrays. The random draws of an
image come from a generator seeded by (seed, epoch, the image's position in the training
set), so a batch is the same whichever task makes it, however many workers train, and a
resumed run makes the same batches as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsss_ray.data.augment import (augment, augment_pair, image_at, normalise_image, pad_batch, resize_long_side,
                                   window_at_origin)
from wsss_ray.data.errors import ErrorRecord, ItemError, errors_table
from wsss_ray.data.images import decode_png, load_mask, load_rgb
from wsss_ray.store import join_uri, read_rows, write_table_uri


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def multi_hot(labels, num_classes: int) -> np.ndarray:
    out = np.zeros(num_classes, np.float32)
    out[np.asarray(list(labels), np.int64)] = 1.0
    return out


def record_skipped(errors_dir: str, image_id: int, err: ItemError) -> None:
    """One error row per image a training step could not use (``errors/<stage>/``, the stage
    named by the folder), named by the image: every epoch rewrites the same file, so the
    stage's error table lists each image once."""
    if errors_dir:
        stage, item = errors_dir.rstrip("/").rsplit("/", 1)[-1], f"{image_id} ({err.item})"
        write_table_uri(errors_table([ErrorRecord(stage, item, err.reason)]), f"{errors_dir}/item-{image_id}.parquet")


def _items(row: dict) -> list[tuple]:
    """(index, uri, labels, image_id) of each image of a plan row."""
    n = len(row["index"])
    labels = row.get("labels", [()] * n)
    ids = row.get("image_id", [-1] * n)
    return [(int(i), str(u), list(c), int(d)) for i, u, c, d in zip(row["index"], row["uri"], labels, ids)]


@dataclass(frozen=True)
class ClassifierBatches:
    """The classifier's step: the authors' augmentation of every image, multi-hot targets."""
    num_classes: int
    resize_long: tuple
    crop: int
    hflip: bool
    mean: tuple
    std: tuple
    seed: int
    errors_dir: str = ""                 # errors/train_<name>: the images a step skipped

    def __call__(self, row: dict) -> dict:
        xs, ys = [], []
        for index, uri, labels, image_id in _items(row):
            try:
                image = load_rgb(uri)
            except ItemError as err:         # a header that reads but pixels that do not (a cut file)
                record_skipped(self.errors_dir, image_id, err)
                continue
            rng = sample_rng(self.seed, int(row["epoch"]), index)
            xs.append(augment(image, rng, self.resize_long, self.crop, self.hflip, self.mean, self.std))
            ys.append(multi_hot(labels, self.num_classes))
        if not xs:                           # keep DDP in step: a zero-target sample
            xs, ys = [np.zeros((3, self.crop, self.crop), np.float32)], [np.zeros(self.num_classes, np.float32)]
        return {"epoch": row["epoch"], "step": row["step"], "x": np.stack(xs), "y": np.stack(ys)}


@dataclass(frozen=True)
class ProbeImages:
    """The linear probe's one pass: each image at the fixed long side, normalised (no draws);
    with ``crop``, in a crop x crop zero container at offset 0 (the window ``augment`` draws)."""
    long_side: int
    mean: tuple
    std: tuple
    crop: int = 0
    errors_dir: str = ""

    def __call__(self, row: dict) -> dict:
        (index, uri, labels, image_id), = _items(row)
        try:
            x = normalise_image(resize_long_side(load_rgb(uri), self.long_side), self.mean, self.std)
            if self.crop:
                x = window_at_origin(x, self.crop)
        except ItemError as err:
            record_skipped(self.errors_dir, image_id, err)
            x = np.zeros((3, 0, 0), np.float32)          # an empty image: left out of the probe
        return {"epoch": row["epoch"], "step": row["step"], "index": index, "x": x,
                "y": np.asarray(labels, np.int64)}


def saliency_uri(saliency_dir: str, image_uri: str) -> str:
    """``<saliency_dir>/<image stem>.png``: the layout saliency models (and InferCam) write."""
    stem = image_uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return join_uri(saliency_dir, f"{stem}.png")


def load_saliency(saliency_dir: str, image_uri: str, height: int, width: int) -> np.ndarray:
    """Foreground probability (H, W) in [0, 1] from an 8-bit grayscale PNG."""
    from PIL import Image
    sal = load_mask(saliency_uri(saliency_dir, image_uri))
    if sal.shape != (height, width):
        sal = np.asarray(Image.fromarray(sal).resize((width, height), Image.BILINEAR))
    return sal.astype(np.float32) / 255.0


@dataclass(frozen=True)
class PairBatches:
    """An image and its label mask (confident labels for IRN's boundary head, pseudo masks
    for the segmentation net) through the same random scale, flip and crop.

    ``long_side`` draws the scale as IRN's classifier rule does (a random long side);
    otherwise the scale is drawn from ``scale_range`` (DeepLab's rule)."""
    labels_dir: str
    scale_range: tuple
    crop: int
    hflip: bool
    mean: tuple
    std: tuple
    seed: int
    long_side: bool = False
    max_side: int = 0
    saliency_dir: str = ""
    errors_dir: str = ""

    def __call__(self, row: dict) -> dict:
        items = _items(row)
        labels = read_rows(self.labels_dir, [i[3] for i in items], ["image_id", "png"])
        xs, ys, ss = [], [], []
        for index, uri, _, image_id in items:
            if image_id not in labels:
                continue
            try:
                label = decode_png(labels[image_id]["png"])
                image = image_at(load_rgb(uri, max_side=self.max_side), *label.shape)
                sal = load_saliency(self.saliency_dir, uri, *label.shape) if self.saliency_dir else None
            except ItemError as err:         # unreadable image or no saliency map
                record_skipped(self.errors_dir, image_id, err)
                continue
            rng = sample_rng(self.seed, int(row["epoch"]), index)
            scale = self.scale_range
            if self.long_side:
                side = int(rng.integers(self.scale_range[0], self.scale_range[1] + 1)) / max(label.shape)
                scale = (side, side)
            x, y, s = augment_pair(image, label, rng, scale, self.crop, self.hflip, self.mean, self.std, sal)
            xs.append(x)
            ys.append(y)
            ss.append(s)
        if not xs:                           # keep DDP in step: one all-ignore sample
            side = max(self.crop, 16)
            xs, ys = [np.zeros((3, side, side), np.float32)], [np.full((side, side), 255, np.uint8)]
            ss = [np.zeros((side, side), np.float32)] if self.saliency_dir else [None]
        x, y, s = pad_batch(xs, ys, ss)
        out = {"epoch": row["epoch"], "step": row["step"], "x": x, "y": y}
        if s is not None:
            out["saliency"] = s
        return out
