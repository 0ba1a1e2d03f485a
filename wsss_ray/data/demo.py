"""The embedded demo world: a deterministic generated dataset with exact GT masks.

It is built so that the problems the three papers attack really occur (docs/DEMO_WORLD.md):

* shared parts: ``cat`` and ``dog`` bodies share shape, size and palette (~80% of the
  object) and differ in the head (yellow disc vs blue square, the discriminative part)
  and only subtly in the body pattern (stripes vs spots). The classifier keys on the
  head and CAM under-activates the body: what ReCAM and LPCAM address.
* context: ``boat`` always floats on ``water`` and ``train`` always stands on ``rails``;
  water and rails are background in the GT, and rarely appear without their object.
  The classifier uses them as evidence, so CAM leaks onto them (the train-on-rails case
  LPCAM's context prototypes subtract).
* multi-label confusable scenes: cat and dog often appear together, so the softmax
  re-activation of ReCAM has to separate them.
* ``bird`` was meant as a single-part control object. Measured, the tiny classifier
  scores it from the plain background instead, so its CAM covers the background
  (docs/RESULTS.md).

Every image is drawn from ``np.random.default_rng([seed, index])``: identical on every
machine and independent of how many images are made.
"""
from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw

from wsss_ray.data.errors import ErrorRecord
from wsss_ray.data.images import absolute_root, list_names, save_png
from wsss_ray.data.manifest import ClassSpace, ManifestRow
from wsss_ray.store import join_uri

DEMO_CLASSES = ("cat", "dog", "boat", "train", "bird")
CAT, DOG, BOAT, TRAIN, BIRD = range(5)
SIZES = {"full": 480, "quick": 96}
IMAGE_SIZE = 112
CONTEXT_TOP = 0.70            # water / rails occupy the image below this fraction
STRAY_CONTEXT_P = 0.35        # context drawn without its object: correlated with it, not a label


def demo_classes() -> ClassSpace:
    return ClassSpace("demo", DEMO_CLASSES)


def _poly_mask(size: int, draw_fn) -> np.ndarray:
    layer = Image.new("L", (size, size), 0)
    draw_fn(ImageDraw.Draw(layer))
    return np.asarray(layer) > 0


def _noise_texture(rng, size, base, amp) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, amp, (size, size, 3)), 0, 255)


def _pet_body(rng, size, cls, contrast: float = 1.0) -> np.ndarray:
    """Cat and dog bodies share shape, size and palette (brown on tan); the pattern is the
    only body cue: diagonal stripes for cats, spots for dogs. Weaker than the head, but
    class-specific: the non-discriminative part CAM under-activates. ``contrast`` < 1 moves
    the dark colour towards the light one (experiments/demo_world_variants.py)."""
    yy, xx = np.mgrid[:size, :size]
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period))
    if cls == CAT:
        dark = ((xx + yy + phase) // (period // 2 + 1)) % 2 == 1
    else:
        dark = (((xx + phase) % period) < period // 2) & (((yy + phase) % period) < period // 2)
    light_c, dark_c = np.array([200, 160, 110]), np.array([120, 72, 40])
    if contrast != 1.0:
        dark_c = light_c + contrast * (dark_c - light_c)
    img = np.where(dark[..., None], dark_c, light_c).astype(np.float32)
    return img + rng.normal(0, 8, img.shape)


def _place(rng, w, h, y_lo, y_hi, size=IMAGE_SIZE):
    x0 = int(rng.integers(2, size - w - 2))
    y0 = int(rng.integers(int(y_lo), max(int(y_lo) + 1, int(y_hi) - h)))
    return x0, y0


def _draw_pet(rng, canvas, labels, cls, y_hi, patterned_head: bool = False, contrast: float = 1.0):
    """Cat or dog: a body of shared shape and palette + a class-specific head.

    ``patterned_head`` (a diagnosis variant, experiments/demo_world_variants.py): a round
    head for both classes, filled with the body's pattern at ``contrast``, so the pattern
    is the only class cue."""
    rx, ry = int(rng.integers(15, 21)), int(rng.integers(9, 13))
    head = int(rng.integers(6, 8))
    x0, y0 = _place(rng, 2 * rx + 2 * head, 2 * ry + 2, 2, y_hi)
    face_left = bool(rng.integers(0, 2))
    bx0 = x0 + (2 * head if face_left else 0)
    body = _poly_mask(IMAGE_SIZE, lambda d: d.ellipse([bx0, y0, bx0 + 2 * rx, y0 + 2 * ry], fill=1))
    hx = bx0 - head + 2 if face_left else bx0 + 2 * rx + head - 2
    hy = y0 + ry - head // 2
    round_head = cls == CAT or patterned_head
    head_mask = _poly_mask(IMAGE_SIZE, lambda d: (d.ellipse if round_head else d.rectangle)(
        [hx - head, hy - head, hx + head, hy + head], fill=1))
    if patterned_head:
        pet = body | head_mask
        canvas[pet] = _pet_body(rng, IMAGE_SIZE, cls, contrast)[pet]
    else:
        head_colour = np.array([235, 205, 40]) if cls == CAT else np.array([40, 90, 225])
        canvas[body] = _pet_body(rng, IMAGE_SIZE, cls)[body]
        canvas[head_mask] = head_colour + rng.normal(0, 6, (int(head_mask.sum()), 3))
    eye = (hy - 2, hx + (-2 if face_left else 2))
    canvas[eye[0]:eye[0] + 2, eye[1]:eye[1] + 2] = 20
    labels[body | head_mask] = cls + 1


def _draw_bird(rng, canvas, labels, y_hi, radius=(7, 11)):
    r = int(rng.integers(*radius))
    cx, cy = _place(rng, 2 * r, 2 * r, 2, y_hi)
    cx, cy = cx + r, cy + r
    angles = np.linspace(0, 2 * np.pi, 11)[:-1] + rng.uniform(0, 1)
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    pts = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]
    mask = _poly_mask(IMAGE_SIZE, lambda d: d.polygon(pts, fill=1))
    canvas[mask] = np.array([60, 190, 70]) + rng.normal(0, 8, (int(mask.sum()), 3))
    labels[mask] = BIRD + 1


def _draw_water(rng, canvas):
    top = int(IMAGE_SIZE * CONTEXT_TOP)
    yy, xx = np.mgrid[top:IMAGE_SIZE, :IMAGE_SIZE]
    waves = np.sin(xx / 3.0 + yy * 1.3 + rng.uniform(0, 6)) > 0.6
    water = np.where(waves[..., None], [120, 170, 240], [30, 80, 170]).astype(np.float32)
    canvas[top:] = water + rng.normal(0, 6, water.shape)
    return top


def _draw_rails(rng, canvas):
    top = int(IMAGE_SIZE * CONTEXT_TOP)
    canvas[top:] = np.array([150, 140, 120]) + rng.normal(0, 10, canvas[top:].shape)   # ballast
    for x in range(int(rng.integers(0, 6)), IMAGE_SIZE, 7):                            # sleepers
        canvas[top + 4:top + 14, x:x + 3] = [90, 55, 25]
    for y in (top + 5, top + 11):                                                      # rails
        canvas[y:y + 2] = [70, 70, 80]
    return top


def _draw_boat(rng, canvas, labels, top):
    w, h = int(rng.integers(26, 38)), int(rng.integers(7, 10))
    x0 = int(rng.integers(2, IMAGE_SIZE - w - 2))
    y1 = top + int(rng.integers(2, 6))                  # the hull sits in the water
    hull = [(x0, y1 - h), (x0 + w, y1 - h), (x0 + w - 5, y1), (x0 + 5, y1)]
    mast_x = x0 + w // 2
    sail = [(mast_x, y1 - h - int(rng.integers(16, 24))), (mast_x, y1 - h - 1), (mast_x + w // 3, y1 - h - 1)]
    hull_mask = _poly_mask(IMAGE_SIZE, lambda d: d.polygon(hull, fill=1))
    sail_mask = _poly_mask(IMAGE_SIZE, lambda d: d.polygon(sail, fill=1))
    canvas[hull_mask] = [235, 235, 235]
    canvas[sail_mask] = [230, 90, 60]
    labels[hull_mask | sail_mask] = BOAT + 1


def _draw_train(rng, canvas, labels, top):
    """A locomotive (the discriminative part: yellow nose, black window) pulling bland
    blue-grey carriages (class-specific, weakly discriminative: CAM tends to miss them)."""
    cars, car_w, h = int(rng.integers(2, 4)), int(rng.integers(16, 22)), int(rng.integers(14, 19))
    x0 = int(rng.integers(0, max(1, IMAGE_SIZE - (cars + 1) * (car_w + 2))))
    y1 = top + 6
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    for i in range(cars + 1):
        cx = x0 + i * (car_w + 2)
        x_end = min(cx + car_w, IMAGE_SIZE)
        mask[y1 - h:y1, cx:x_end] = True
        if i == 0:                                              # locomotive
            canvas[y1 - h:y1, cx:x_end] = [245, 200, 30]
            canvas[y1 - h + 3:y1 - h + 8, cx + 3:cx + 9] = [20, 20, 20]
        else:                                                   # carriages
            canvas[y1 - h:y1, cx:x_end] = np.array([110, 125, 150]) + rng.normal(0, 5, (h, x_end - cx, 3))
    labels[mask] = TRAIN + 1


def _choose_classes(rng) -> list[int]:
    """1-3 classes; cat+dog often together; at most one of boat/train (both need the ground band)."""
    if rng.random() < 0.3:
        chosen = [CAT, DOG]
    else:
        chosen = [int(rng.integers(0, 5))]
    extra = int(rng.integers(0, 2))
    for _ in range(extra):
        c = int(rng.integers(0, 5))
        if c not in chosen and not ({c} | set(chosen)) >= {BOAT, TRAIN}:
            chosen.append(c)
    return chosen


def render_demo_image(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One scene: (RGB uint8 image, GT mask uint8 with 0 = background, class id + 1 = object, labels)."""
    rng = np.random.default_rng([seed, index])
    canvas = _noise_texture(rng, IMAGE_SIZE, rng.integers(80, 200, 3), 12)
    labels = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    chosen = _choose_classes(rng)
    top = IMAGE_SIZE
    if BOAT in chosen or (TRAIN not in chosen and rng.random() < STRAY_CONTEXT_P):
        top = _draw_water(rng, canvas)
    elif TRAIN in chosen or rng.random() < STRAY_CONTEXT_P:
        top = _draw_rails(rng, canvas)
    for _ in range(int(rng.integers(0, 3))):             # unlabelled grey distractor blobs
        r = int(rng.integers(3, 7))
        cx, cy = int(rng.integers(r, IMAGE_SIZE - r)), int(rng.integers(r, top - r)) if top > 2 * r + 1 else (0, 0)
        blob = _poly_mask(IMAGE_SIZE, lambda d: d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1))
        canvas[blob & (labels == 0)] = rng.integers(90, 160)
    for cls in chosen:
        if cls in (CAT, DOG):
            _draw_pet(rng, canvas, labels, cls, top - 2)
        elif cls == BIRD:
            _draw_bird(rng, canvas, labels, top - 2)
        elif cls == BOAT:
            _draw_boat(rng, canvas, labels, top)
        else:
            _draw_train(rng, canvas, labels, top)
    present = sorted({int(v) - 1 for v in np.unique(labels) if 0 < v < 255})
    return np.clip(canvas, 0, 255).astype(np.uint8), labels, present


def build_demo_manifest(out_dir: str, size: str = "full", seed: int = 0,
                        split: str = "train") -> tuple[list[ManifestRow], ClassSpace, list[ErrorRecord]]:
    """Render the demo world into ``out_dir/{images,masks}`` (a local path or URI), skipping
    images already there."""
    if size not in SIZES:
        raise ValueError(f"demo size must be one of {sorted(SIZES)}, got {size!r}")
    out_dir = absolute_root(out_dir)
    have_images = list_names(join_uri(out_dir, "images")) or set()
    have_masks = list_names(join_uri(out_dir, "masks")) or set()
    rows = []
    for index in range(SIZES[size]):
        name = f"{index:05d}.png"
        image_uri, mask_uri = join_uri(out_dir, "images", name), join_uri(out_dir, "masks", name)
        image, mask, present = render_demo_image(seed, index)
        if name not in have_images or name not in have_masks:
            save_png(image, image_uri)
            save_png(mask, mask_uri)
        rows.append(ManifestRow(image_id=index, uri=image_uri, labels=present, mask_uri=mask_uri,
                                split=split, height=IMAGE_SIZE, width=IMAGE_SIZE))
    return rows, demo_classes(), []
