"""InferCam (METHODS.md section 3; seed 004): class-conditional inference on a fixed classifier.

Pipeline per call (all images share one size H x W):

1. **Baseline and centres** (split only). The usual multi-scale CAM at ``out_size`` (the stride-4
   grid the pipeline stores); per GT class the intensity-weighted centre of mass on that grid,
   mapped to image coordinates (pixel-centre convention, as bilinear with ``align_corners=False``)
   and truncated, as the authors' ``int(center_of_mass)``. Max-normalisation does not move a centre of mass, so the raw map is
   used, or the CAM pass's stored maps when the caller passes them (``baselines``: one baseline
   inference less per image; at the store's 8-bit precision a centre can move by a pixel). An
   all-zero map gives the image centre (the authors' fallback).
2. **Split** (:func:`split_boxes`, :func:`class_boxes`). One class: four quadrants around the
   centre, each reaching ``buffer_one`` px past the centre lines (``img[0:c + b]``, ``img[c - b:]``). Two classes: the rectangle
   spanned by both centres (+ ``buffer_two``) lies in all four patches. Three or more:
   ``three_plus="none"`` (the default, authors' code) keeps the whole image;
   ``"per_class"`` (the paper's text) gives every class its own four patches around its own
   centre (``buffer_one``, since each split has one centre). Buffers are absolute pixels (paper, code), or with ``buffer_side`` a fraction of
   the image's height and width; borders clamp to the image (the authors' numpy slicing wraps
   around on negative starts).
3. **Iterative inference** (:func:`iterate_copies`). A *copy* is one (image, class, patch). Each
   round computes the multi-scale + flip CAM of every active copy, max-normalises it inside the
   patch, keeps an element-wise running max, and erases (fills with the image's mean colour, in
   normalised space) every pixel whose running max is >= ``erase_threshold``; the next round
   infers the original patch with that mask. By default (``erase="union"``, the authors' code,
   which erases the max over the image's classes) the copies of one patch share one mask (the
   union of theirs), one input a round and one stop test; ``erase="per_class"`` (the paper's
   class-conditional text) gives each class its own mask. A copy stops when the newly erased
   area is below ``stop_fraction`` of its patch or after ``max_rounds`` inferences (the first,
   un-erased one included, as in the code's ``range(5)``). By default (``erase_views="scaled"``,
   the authors' code) each input is scaled first and erased with a mask nearest-resized from the
   previous input's, the flipped inputs with the unflipped mask, filled with the input's own mean;
   ``erase_views="patch"`` (a departure) builds the erased patch once and then scales and flips it,
   so the flipped input hides the mirrored pixels and the fused map refers to one set of physical
   pixels.
   Patches are scaled as the CAM pass scales images: PIL from the uint8 patch when the pyramid
   carries its pixels (``resample="pil"``, the authors' loader), else torch bicubic; with
   ``"patch"`` the erased rounds are torch-resized (an erased normalised patch has no uint8 form).
4. **Unite** (:func:`unite`). Patch maps are pasted into a full-resolution (H, W) map per class
   with a max over overlaps, resized bilinearly to ``out_size`` and max-normalised. As in the
   paper and code, the whole-image baseline is not part of the union.

Batching: patches go through the network in groups whose sizes round up to the same multiple of
``bucket_px``; each is pasted at the top-left of its group's canvas, padded with the image's mean
colour (the same filler as erasing), so a round is one ``features_fn`` call per group, scale and
``max_batch`` inputs. The default ``bucket_px=1`` infers every patch at its own size, unpadded, as
the authors' code does (tested against a patch-by-patch loop); ``bucket_px=16`` is a speed lever
(fewer, larger calls) whose padding changes the maps; ``0`` pads all to the round's largest patch,
which on the demo world doubled the pixels inferred. In round 0 all classes of an image see the
same un-erased patch, so shared (image, patch) inputs are inferred once.

Cost (default config, one 112x112 image, 2 classes, 4 scales, flip): CAM = 8 backbone inputs in 4
calls. InferCam = baseline 8 + round 0 on 4 shared patches 32 + up to 4 more rounds on the same
4 patches (``erase="union"``: one mask per patch), 32 each: at most 168 inputs (21x CAM's count);
the patches (about 78x76 px with centres near the middle) make that about 10x CAM's pixels at
most. With ``bucket_px=1`` each distinct patch size is its own call per scale (at most 4 + 4 x 4
x 5 = 84 calls); ``bucket_px=16`` mostly puts the four patches in one call per scale (24 calls).
``erase="per_class"`` infers the erased rounds on 8 (patch, class) copies, 64 inputs each: at
most 296 inputs (37x), about 18x CAM's pixels.
With ``baselines`` (the main job passes the CAM pass's stored maps) the baseline's 8 inputs go.
``erase_scales=(1.0,)`` (not the paper's) infers the erased rounds at one scale: 2 inputs per
copy a round instead of 8, and about 1/7.5 of their pixels (scales 1, 0.5, 1.5, 2 sum to 7.5x
the scale-1 pixels); the first round keeps every scale, so the centre of the method, the
un-erased class-conditional map, is unchanged. ``erase_flip=False`` (not the paper's either)
drops the flipped copy of the erased rounds, halving their inputs again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss_ray.cams.cam import (ScalePyramid, base_batch, class_activation, fuse_flips, multiscale_cam,
                               normalise_per_map, scaled_batch, select_and_normalise)
from wsss_ray.config import InferCamConfig  # noqa: F401  (typed configs live in config.py)

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open, in image pixels
FeaturesFn = Callable[[torch.Tensor], torch.Tensor]


class Iterated(NamedTuple):
    maps: torch.Tensor      # (M, Hc, Wc) running max of the per-round normalised maps
    rounds: torch.Tensor    # (M,) inferences made
    peaks: torch.Tensor     # (M,) raw peak of the un-erased first round, inside the patch


@dataclass(frozen=True)
class Copy:
    """One (image, class, patch) inference unit; ``slot`` is the class's index in its image's list."""
    image: int
    slot: int
    cls: int
    box: Box


# ------------------------------------------------------------------ centres and splits


def centre_of_mass(cam: torch.Tensor) -> tuple[float, float]:
    """Intensity-weighted (y, x) centre of a (h, w) map in its own pixel coordinates.

    Negative values are ignored; an all-zero map gives the map centre.
    """
    h, w = cam.shape[-2:]
    cam = cam.reshape(h, w).clamp_min(0).double()
    total = cam.sum()
    if total <= 0:
        return (h - 1) / 2, (w - 1) / 2
    ys = torch.arange(h, dtype=cam.dtype, device=cam.device)
    xs = torch.arange(w, dtype=cam.dtype, device=cam.device)
    return float((cam.sum(1) * ys).sum() / total), float((cam.sum(0) * xs).sum() / total)


def grid_to_image(point: tuple[float, float], grid_size: tuple[int, int],
                  image_size: tuple[int, int]) -> tuple[int, int]:
    """The image pixel holding a point on a grid spanning the image (pixel centres aligned): the
    point in image coordinates, truncated as the authors' ``int(center_of_mass)`` (on a
    full-resolution grid the point itself, truncated)."""
    return tuple(min(max(math.floor((p + 0.5) * n / g - 0.5), 0), n - 1)
                 for p, g, n in zip(point, grid_size, image_size))


def split_boxes(centres: Sequence[tuple[int, int]], height: int, width: int,
                buffer: int | tuple[int, int]) -> list[Box]:
    """Four overlapping patches (top-left, top-right, bottom-left, bottom-right).

    The split lines are the sides of the rectangle spanned by ``centres`` (one centre: a point);
    every patch reaches ``buffer`` px (an int, or (vertical, horizontal)) past the rectangle:
    ``buffer`` px before its far side, ``buffer - 1`` after it (the authors' ``img[0:c + b]`` and
    ``img[c - b:]``), so neighbouring patches overlap by ``2 * buffer`` px plus the rectangle.
    Borders clamp to the image.
    """
    by, bx = (buffer, buffer) if isinstance(buffer, int) else buffer
    ys = [min(max(int(c[0]), 0), height - 1) for c in centres]
    xs = [min(max(int(c[1]), 0), width - 1) for c in centres]
    top_end = min(max(max(ys) + by, 1), height)
    bottom_start = max(min(ys) - by, 0)
    left_end = min(max(max(xs) + bx, 1), width)
    right_start = max(min(xs) - bx, 0)
    return [(0, top_end, 0, left_end), (0, top_end, right_start, width),
            (bottom_start, height, 0, left_end), (bottom_start, height, right_start, width)]


def split_buffers(cfg: InferCamConfig, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(vertical, horizontal) px buffers of one-centre and two-centre splits."""
    if cfg.buffer_side > 0:
        side = (round(cfg.buffer_side * height), round(cfg.buffer_side * width))
        return side, side
    return (cfg.buffer_one, cfg.buffer_one), (cfg.buffer_two, cfg.buffer_two)


def class_boxes(n_classes: int, centres, height: int, width: int, cfg: InferCamConfig) -> list[list[Box]]:
    """Patches each GT class of one image is inferred on (its map is their union)."""
    full = [(0, height, 0, width)]
    if not cfg.split or n_classes == 0:
        return [full] * n_classes
    one, two = split_buffers(cfg, height, width)
    if n_classes == 1:
        return [split_boxes(centres, height, width, one)]
    if n_classes == 2:
        return [split_boxes(centres, height, width, two)] * 2
    if cfg.three_plus == "none":
        return [full] * n_classes
    return [split_boxes([c], height, width, one) for c in centres]


def class_centres(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, classes,
                  out_size: tuple[int, int], scales, flip: bool) -> list[list[tuple[int, int]]]:
    """Per image, per GT class: centre of mass of the baseline CAM, in image pixels."""
    cams = multiscale_cam(features_fn, weight, images, out_size, scales, flip, high_res=False)
    return centres_from_maps([cams[i, list(cls)] for i, cls in enumerate(classes)], tuple(images.shape[-2:]))


def centres_from_maps(baselines: Sequence[torch.Tensor], image_size: tuple[int, int]) -> list[list[tuple[int, int]]]:
    """Per image, per map of its (len(classes), h, w) baseline: the centre of mass in image
    pixels. Any per-map scaling gives the same centre, so stored max-normalised CAM maps serve."""
    return [[grid_to_image(centre_of_mass(m), tuple(maps.shape[-2:]), image_size) for m in maps]
            for maps in baselines]


def needs_centres(classes, cfg: InferCamConfig) -> bool:
    # Only split images look at centres; 3+ classes without a per-class split do not.
    return cfg.split and any(1 <= len(c) <= 2 or (len(c) >= 3 and cfg.three_plus == "per_class") for c in classes)


def plan_copies(classes, centres, height: int, width: int, cfg: InferCamConfig) -> list[Copy]:
    copies = []
    for i, cls in enumerate(classes):
        per_class = class_boxes(len(cls), centres[i] if centres else None, height, width, cfg)
        copies += [Copy(i, k, int(c), box) for k, (c, boxes) in enumerate(zip(cls, per_class)) for box in boxes]
    return copies


# ------------------------------------------------------------------ batched inference


def build_inputs(images: torch.Tensor, fill: torch.Tensor, owners: Sequence[int], boxes: Sequence[Box],
                 size: tuple[int, int], erased: torch.Tensor | None = None) -> torch.Tensor:
    """Patches at the top-left of a fill-coloured (U,3,*size) canvas; erased pixels get the fill.

    The canvas is built before scaling and flipping, so every view hides the same physical pixels.
    """
    colour = fill[list(owners)][:, :, None, None]
    out = colour.expand(-1, -1, *size).clone()
    for u, (i, (y0, y1, x0, x1)) in enumerate(zip(owners, boxes)):
        out[u, :, :y1 - y0, :x1 - x0] = images[i, :, y0:y1, x0:x1]
    if erased is not None:
        out = torch.where(erased[:, None], colour, out)
    return out


def fused_cams(features_fn: FeaturesFn, weight: torch.Tensor, inputs: torch.Tensor,
               flipped: torch.Tensor | None, max_batch: int) -> torch.Tensor:
    """ReLU CAM of all classes, each input's map plus its flipped input's map flipped back (none:
    no flip), in chunks of ``max_batch`` inputs: (U,C,h,w)."""
    parts = []
    for lo in range(0, inputs.shape[0], max_batch):
        chunk = inputs[lo:lo + max_batch]
        both = chunk if flipped is None else torch.cat([chunk, flipped[lo:lo + max_batch]])
        parts.append(fuse_flips(torch.relu(class_activation(features_fn(both), weight)), flipped is not None))
    return torch.cat(parts)


class PatchPixels:
    """uint8 patches of a pyramid's images scaled with PIL and normalised as the pyramid's levels
    (as the authors' data loader scales their patch files), pasted at the top-left of a
    fill-coloured canvas of the scaled canvas size; cached per (image, patch, scale)."""

    def __init__(self, images: ScalePyramid):
        self.pixels, self.mean, self.std = images.pixels, images.mean, images.std
        self.device, self.dtype = images.device, images.base.dtype
        self.cache: dict = {}

    def patch(self, image: int, box: Box, scale: float) -> torch.Tensor:
        key = (image, box, scale)
        if key not in self.cache:
            from wsss_ray.data.augment import normalise_image, scale_image
            y0, y1, x0, x1 = box
            crop = np.ascontiguousarray(self.pixels[image, y0:y1, x0:x1])
            x = normalise_image(scale_image(crop, scale), self.mean, self.std)
            self.cache[key] = torch.from_numpy(x).to(self.device, self.dtype)
        return self.cache[key]

    def canvas(self, sources, fill: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor:
        h, w = size if scale == 1.0 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        out = fill[[i for i, _ in sources]][:, :, None, None].expand(-1, -1, h, w).clone()
        for u, (i, box) in enumerate(sources):
            x = self.patch(i, box, scale)[:, :h, :w]
            out[u, :, :x.shape[1], :x.shape[2]] = x
        return out


class Views:
    """One round's network inputs at each scale: [views, flipped views] (the second None without
    flip). Call it with the scales in their order: the authors' mask chain follows that order.

    Un-erased canvases (and every canvas with ``erase_views="scaled"``) are scaled as the CAM pass
    scales images: PIL from the uint8 patch where the pyramid carries its pixels, else torch.
    ``erase_views="patch"``: the erased scale-1 canvas is resized (torch) and flipped, so every view
    hides the same physical pixels. ``"scaled"`` (the authors' code): each scaled view is erased
    with the mask nearest-resized from the previous view's (their chained ``F.interpolate``), the
    flipped view with the same, unflipped mask; hidden pixels get the view's own mean colour.
    """

    def __init__(self, pixels: PatchPixels | None, canvases: torch.Tensor, plain: torch.Tensor,
                 hidden: torch.Tensor | None, sources, fill: torch.Tensor, flip: bool, cfg: InferCamConfig):
        self.pixels, self.canvases, self.plain, self.hidden = pixels, canvases, plain, hidden
        self.sources, self.fill, self.flip, self.cfg = sources, fill, flip, cfg
        self.keep = None if hidden is None else (~hidden)[:, None].to(plain.dtype)

    def scaled_plain(self, scale: float) -> torch.Tensor:
        if self.pixels is None:
            return scaled_batch(self.plain, scale)
        return self.pixels.canvas(self.sources, self.fill, tuple(self.plain.shape[-2:]), scale)

    def __call__(self, scale: float):
        if self.hidden is None:
            x = self.scaled_plain(scale)
        elif self.cfg.erase_views == "patch":
            x = scaled_batch(self.canvases, scale)
        else:
            x = self.scaled_plain(scale)
            self.keep = F.interpolate(self.keep, size=tuple(x.shape[-2:]))      # nearest, chained
            keep = self.keep > 0.5
            colour = x.mean((2, 3))[:, :, None, None]
            flipped = torch.where(keep, x.flip(-1), colour) if self.flip else None
            return torch.where(keep, x, colour), flipped
        return x, (x.flip(-1) if self.flip else None)


def canvas_cams(features_fn: FeaturesFn, weight: torch.Tensor, views: Views, size: tuple[int, int],
                owner: torch.Tensor, cls: torch.Tensor, scales, max_batch: int) -> torch.Tensor:
    """Multi-scale CAM of class ``cls[m]`` on input ``owner[m]``, summed over scales as CAM does,
    at canvas resolution: (M, Hc, Wc)."""
    total = None
    for scale in scales:
        cams = fused_cams(features_fn, weight, *views(scale), max_batch)
        picked = F.interpolate(cams[owner, cls][:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        total = picked if total is None else total + picked
    return total


def box_masks(copies: Sequence[Copy], size: tuple[int, int], device) -> torch.Tensor:
    """(M, *size) True inside each copy's patch (pasted at the canvas's top-left)."""
    heights = torch.tensor([c.box[1] - c.box[0] for c in copies], device=device)
    widths = torch.tensor([c.box[3] - c.box[2] for c in copies], device=device)
    rows = torch.arange(size[0], device=device)[None, :, None] < heights[:, None, None]
    cols = torch.arange(size[1], device=device)[None, None, :] < widths[:, None, None]
    return rows & cols


def canvas_size(copies: Sequence[Copy]) -> tuple[int, int]:
    return max(c.box[1] - c.box[0] for c in copies), max(c.box[3] - c.box[2] for c in copies)


def shared_inputs(images, fill, copies: Sequence[Copy], size, erased: torch.Tensor | None = None):
    """One input per unique (image, patch) for copies that see the same pixels: every round 0,
    and every round when erasing is per patch ("union"). ``erased`` is per copy, (M, *size); the
    copies of one patch then hold the same mask, so the first one's is used. Returns the inputs'
    (image, box) sources, their masks (None when ``erased`` is) and each copy's input index."""
    first: dict[tuple, int] = {}
    for m, c in enumerate(copies):
        first.setdefault((c.image, c.box), m)
    keys = list(first)
    index = {k: u for u, k in enumerate(keys)}
    hidden = None if erased is None else erased[[first[k] for k in keys]]
    owner = torch.tensor([index[(c.image, c.box)] for c in copies], device=images.device)
    return keys, hidden, owner


def size_groups(copies: Sequence[Copy], active: torch.Tensor, bucket_px: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """Active copies grouped by patch size rounded up to ``bucket_px`` (0: one group), each with
    its canvas size. A patch is padded (with the fill colour) by less than ``bucket_px`` px per
    side instead of up to the largest patch of the round; that padding was half of the pixels."""
    live = active.tolist()
    cap = canvas_size([copies[m] for m in live])
    if bucket_px <= 0:
        return [(active, cap)]

    def bucket(c: Copy) -> tuple[int, int]:
        up = lambda n, limit: min(-(-n // bucket_px) * bucket_px, limit)
        return up(c.box[1] - c.box[0], cap[0]), up(c.box[3] - c.box[2], cap[1])
    groups: dict[tuple[int, int], list[int]] = {}
    for m in live:
        groups.setdefault(bucket(copies[m]), []).append(m)
    return [(torch.tensor(ms, device=active.device), size) for size, ms in sorted(groups.items())]


def round_maps(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, fill: torch.Tensor,
               copies: Sequence[Copy], group: torch.Tensor, size: tuple[int, int], cls: torch.Tensor,
               erased: torch.Tensor | None, scales, flip: bool, cfg: InferCamConfig,
               pixels: PatchPixels | None = None):
    """One round's maps of the copies in ``group`` on a ``size`` canvas, max-normalised inside
    each patch, (len(group), *size), and each map's raw peak before that, (len(group),).
    ``erased`` None is the first, un-erased round; ``pixels``: PIL-scaled patches (else torch)."""
    live = [copies[m] for m in group.tolist()]
    if erased is None or cfg.erase == "union":
        sources, hidden, owner = shared_inputs(images, fill, live, size, erased)
    else:
        sources, hidden = [(c.image, c.box) for c in live], erased
        owner = torch.arange(len(live), device=images.device)
    owners, boxes = [i for i, _ in sources], [b for _, b in sources]
    plain = build_inputs(images, fill, owners, boxes, size)
    canvases = plain if hidden is None else build_inputs(images, fill, owners, boxes, size, hidden)
    views = Views(pixels, canvases, plain, hidden, sources, fill, flip, cfg)
    maps = canvas_cams(features_fn, weight, views, size, owner, cls[group], scales, cfg.max_batch)
    maps = maps * box_masks(live, size, images.device)
    return normalise_per_map(maps), maps.flatten(1).amax(1)


def iterate_copies(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, fill: torch.Tensor,
                   copies: Sequence[Copy], scales, flip: bool, cfg: InferCamConfig,
                   pixels: PatchPixels | None = None):
    """Hide-and-re-infer every copy: running-max maps (M,Hc,Wc), inferences per copy (M,) and
    each copy's raw first-round peak (M,).

    Maps are max-normalised per round inside the patch (so the threshold means "0.7 of this
    round's peak") and live at the canvas's top-left, patch-pixel resolution.
    """
    device = images.device
    size = canvas_size(copies)
    inside = box_masks(copies, size, device)
    area = inside.sum((1, 2)).to(images.dtype)
    acc = images.new_zeros(len(copies), *size)
    erased = torch.zeros_like(inside)
    rounds = torch.zeros(len(copies), dtype=torch.long, device=device)
    peaks = images.new_zeros(len(copies))
    cls = torch.tensor([c.cls for c in copies], device=device)
    patch = patch_index(copies, device)
    active = torch.arange(len(copies), device=device)
    for r in range(cfg.max_rounds if cfg.iterate else 1):
        # each round's map is max-normalised, so the erased rounds may sum fewer scales
        round_scales = scales if r == 0 or not cfg.erase_scales else cfg.erase_scales
        round_flip = flip and (r == 0 or cfg.erase_flip)
        for group, (h, w) in size_groups(copies, active, cfg.bucket_px):
            hidden = None if r == 0 else erased[group, :h, :w]
            maps, peak = round_maps(features_fn, weight, images, fill, copies, group, (h, w), cls, hidden,
                                    round_scales, round_flip, cfg, pixels)
            acc[group, :h, :w] = torch.maximum(acc[group, :h, :w], maps)
            if r == 0:
                peaks[group] = peak
        rounds[active] += 1
        now = (acc[active] >= cfg.erase_threshold) & inside[active]
        if cfg.erase == "union":
            now = union_by_patch(now, patch[active])
        newly = (now & ~erased[active]).sum((1, 2)) / area[active]
        erased[active] = now
        active = active[newly >= cfg.stop_fraction]
        if len(active) == 0:
            break
    return Iterated(acc, rounds, peaks)


def patch_index(copies: Sequence[Copy], device) -> torch.Tensor:
    """(M,) index of each copy's (image, patch) pair."""
    keys = {k: u for u, k in enumerate(dict.fromkeys((c.image, c.box) for c in copies))}
    return torch.tensor([keys[(c.image, c.box)] for c in copies], dtype=torch.long, device=device)


def union_by_patch(masks: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Each (M, H, W) mask replaced by the union of the masks of the copies on its patch."""
    _, local = torch.unique(patch, return_inverse=True)
    hits = masks.new_zeros(int(local.max()) + 1, *masks.shape[1:], dtype=torch.int32)
    hits.index_add_(0, local, masks.to(torch.int32))
    return hits[local] > 0


# ------------------------------------------------------------------ unite


def unite(acc: torch.Tensor, copies: Sequence[Copy], classes, image_size: tuple[int, int],
          out_size: tuple[int, int]) -> list[torch.Tensor]:
    """Paste patch maps at full resolution (max over overlaps), resize to out_size, normalise."""
    full = [acc.new_zeros(len(cls), *image_size) for cls in classes]
    for m, c in enumerate(copies):
        y0, y1, x0, x1 = c.box
        region = full[c.image][c.slot, y0:y1, x0:x1]
        region.copy_(torch.maximum(region, acc[m, :y1 - y0, :x1 - x0]))
    out = []
    for maps in full:
        if len(maps) == 0:
            out.append(acc.new_zeros(0, *out_size))
            continue
        small = F.interpolate(maps[None], size=out_size, mode="bilinear", align_corners=False)[0]
        out.append(normalise_per_map(small))
    return out


class InferCamRun(NamedTuple):
    maps: list              # per image (len(classes[i]), *out_size), each map max-normalised
    copies: list            # the (image, class, patch) units inferred; empty without split or iterate
    rounds: torch.Tensor    # (len(copies),) inferences each copy made (the cost benchmarks read it)


def infercam_maps(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, classes,
                  out_size: tuple[int, int], scales=(1.0, 0.5, 1.5, 2.0), flip: bool = True,
                  cfg: InferCamConfig = InferCamConfig(), baselines: Sequence[torch.Tensor] | None = None,
                  ) -> list[torch.Tensor]:
    """InferCam maps: list of N tensors (len(classes[i]), *out_size), each map max-normalised.

    ``baselines``: each image's baseline CAM maps of its GT classes (as the CAM pass stores
    them), so the split takes its centres from them instead of inferring the baseline again.
    """
    return infercam_run(features_fn, weight, images, classes, out_size, scales, flip, cfg, baselines).maps


def infercam_run(features_fn: FeaturesFn, weight: torch.Tensor, images: torch.Tensor, classes,
                 out_size: tuple[int, int], scales=(1.0, 0.5, 1.5, 2.0), flip: bool = True,
                 cfg: InferCamConfig = InferCamConfig(), baselines: Sequence[torch.Tensor] | None = None,
                 ) -> InferCamRun:
    """:func:`infercam_maps` with the copies it planned and the inferences each made."""
    out_size = tuple(out_size)
    no_rounds = torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        if not cfg.split and not cfg.iterate:
            cams = multiscale_cam(features_fn, weight, images, out_size, scales, flip, high_res=False)
            return InferCamRun(select_and_normalise(cams, classes), [], no_rounds)
        # patches and erasing work on the scale-1.0 pixels; each round's scales resize the canvas
        pixels = base_batch(images)
        height, width = pixels.shape[-2:]
        centres = None
        if needs_centres(classes, cfg):
            centres = centres_from_maps(baselines, (height, width)) if baselines is not None else \
                class_centres(features_fn, weight, images, classes, out_size, scales, flip)
        copies = plan_copies(classes, centres, height, width, cfg)
        if not copies:
            return InferCamRun([pixels.new_zeros(len(cls), *out_size) for cls in classes], [], no_rounds)
        fill = pixels.mean((2, 3))  # each image's mean colour, in normalised space
        patches = PatchPixels(images) if isinstance(images, ScalePyramid) and images.pixels is not None else None
        done = iterate_copies(features_fn, weight, pixels, fill, copies, scales, flip, cfg, patches)
        # "scaled": a patch with little of the object keeps its low activation instead of a peak of 1
        acc = done.maps * done.peaks[:, None, None] if cfg.unite == "scaled" else done.maps
        return InferCamRun(unite(acc, copies, classes, (height, width), out_size), copies, done.rounds)
