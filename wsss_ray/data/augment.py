"""Training-time image preparation in numpy + PIL only: it runs in Ray Data's CPU tasks,
whose workers must start without importing torch (DESIGN.md, "Training input").

``augment`` is the authors' classifier augmentation; ``augment_pair`` the joint one of
an image and its label mask (IRN's boundary head, the segmentation net)."""
from __future__ import annotations

import numpy as np

IGNORE = 255


def normalise_image(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (H,W,3) -> float32 (3,H,W) normalised."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def scale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H,W,3) at ``scale`` with PIL bicubic (antialiased), size rounded as IRN's
    ``pil_rescale`` rounds it; scale 1 returns the image."""
    from PIL import Image
    h, w = image.shape[:2]
    size = (max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale))))
    if size == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))


def resize_long_side(image: np.ndarray, long_side: int, resample=None) -> np.ndarray:
    from PIL import Image
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if abs(scale - 1.0) < 1e-9:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, resample if resample is not None else Image.BICUBIC))


def resize_to(a: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """An image, label mask (nearest) or float map resized to (H, W) with PIL."""
    from PIL import Image
    if a.shape[:2] == tuple(size_hw):
        return a
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if a.dtype == np.float32:
        return np.asarray(Image.fromarray(a, mode="F").resize(size_hw[::-1], mode))
    return np.asarray(Image.fromarray(a).resize(size_hw[::-1], mode))


def augment(image: np.ndarray, rng: np.random.Generator, resize_long: tuple, crop: int, hflip: bool,
            mean, std) -> np.ndarray:
    """The authors' augmentation: random long side, hflip, normalise, random crop with zero pad."""
    if crop <= 0:
        raise ValueError("crop_size 0 (no crop) is only for the frozen-backbone linear probe; "
                         "image batches need a fixed crop size")
    image = resize_long_side(image, int(rng.integers(resize_long[0], resize_long[1] + 1)))
    if hflip and rng.random() < 0.5:
        image = image[:, ::-1]
    x = normalise_image(image, mean, std)
    _, h, w = x.shape
    out = np.zeros((3, crop, crop), np.float32)
    # a window of the crop size over the (possibly smaller) image: pad where it does not reach
    top, left = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
    ch, cw = min(crop, h), min(crop, w)
    oy, ox = int(rng.integers(0, crop - ch + 1)), int(rng.integers(0, crop - cw + 1))
    out[:, oy:oy + ch, ox:ox + cw] = x[:, top:top + ch, left:left + cw]
    return out


def window_at_origin(x: np.ndarray, crop: int) -> np.ndarray:
    """(3, h, w) -> (3, crop, crop): ``augment``'s crop window with every offset 0 (top-left
    part of a larger image, zero pad right and below a smaller one)."""
    out = np.zeros((x.shape[0], crop, crop), x.dtype)
    ch, cw = min(crop, x.shape[1]), min(crop, x.shape[2])
    out[:, :ch, :cw] = x[:, :ch, :cw]
    return out


def augment_pair(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, scale_range, crop: int,
                 hflip: bool, mean, std, extra: np.ndarray | None = None):
    """Joint random scale, hflip and crop of an image, its label (nearest; padded 255) and an
    optional float map (saliency; padded 0). crop 0: no crop. Returns (x (3,c,c), label, extra)."""
    scale = float(rng.uniform(*scale_range)) if scale_range[0] != scale_range[1] else float(scale_range[0])
    size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    image, label = resize_to(image, size, False), resize_to(label, size, True)
    extra = None if extra is None else resize_to(extra.astype(np.float32), size, False)
    if hflip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
        extra = None if extra is None else extra[:, ::-1]
    x = normalise_image(np.ascontiguousarray(image), mean, std)
    if crop <= 0:
        return x, np.ascontiguousarray(label), None if extra is None else np.ascontiguousarray(extra)
    h, w = label.shape
    top, left = int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))
    ch, cw = min(crop, h), min(crop, w)
    out_x = np.zeros((3, crop, crop), np.float32)          # 0 = the mean colour after normalising
    out_y = np.full((crop, crop), IGNORE, np.uint8)
    out_x[:, :ch, :cw] = x[:, top:top + ch, left:left + cw]
    out_y[:ch, :cw] = label[top:top + ch, left:left + cw]
    out_e = None
    if extra is not None:
        out_e = np.zeros((crop, crop), np.float32)
        out_e[:ch, :cw] = extra[top:top + ch, left:left + cw]
    return out_x, out_y, out_e


def pad_batch(xs: list[np.ndarray], ys: list[np.ndarray], extras: list | None = None):
    """Stack different-size samples, padding images with 0, labels with 255, extras with 0."""
    h = max(x.shape[1] for x in xs)
    w = max(x.shape[2] for x in xs)
    bx = np.zeros((len(xs), 3, h, w), np.float32)
    by = np.full((len(xs), h, w), IGNORE, np.uint8)
    be = None if not extras or extras[0] is None else np.zeros((len(xs), h, w), np.float32)
    for i, (x, y) in enumerate(zip(xs, ys)):
        bx[i, :, :x.shape[1], :x.shape[2]] = x
        by[i, :y.shape[0], :y.shape[1]] = y
        if be is not None:
            be[i, :extras[i].shape[0], :extras[i].shape[1]] = extras[i]
    return bx, by, be


def image_at(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The image at the size its maps or labels were made at (the extraction may have resized)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
