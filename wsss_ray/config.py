"""Typed configuration for every stage and method.

Configs are plain frozen dataclasses: they serialise to JSON (``to_dict``) so each
artifact can record the configuration that made it, and they travel to Ray workers
without pickling any module state.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


def require(ok: bool, message: str) -> None:
    """A config's range check: a wrong value stops at construction, before any work."""
    if not ok:
        raise ValueError(message)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def from_dict(cls, data: dict):
    """Rebuild a (possibly nested) config dataclass from ``to_dict`` output."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type in _NESTED):
            value = from_dict(_NESTED[f.type] if isinstance(f.type, str) else f.type, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tiny"            # tiny | resnet50 | efficientnet_lite0
    weights: str = "none"             # none | imagenet | <path to a state_dict file>
    freeze_backbone: bool = False     # linear probe: train the head only
    # EfficientNet-Lite0 was trained on (x - 0.5) / 0.5 inputs: "native" converts the
    # ImageNet-normalised input to that; "imagenet_raw" feeds it as is (the reference's choice)
    input_norm: str = "native"
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)

    def __post_init__(self):
        require(self.backbone in ("tiny", "resnet50", "efficientnet_lite0"),
                f"model.backbone {self.backbone!r}: choose tiny, resnet50 or efficientnet_lite0")
        require(self.input_norm in ("native", "imagenet_raw"), f"model.input_norm {self.input_norm!r}: native or imagenet_raw")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 16              # global batch, split across the Ray Train workers
    lr_backbone: float = 0.1
    lr_head: float = 1.0
    weight_decay: float = 1e-4
    # The authors' PolyOptimizer passes weight_decay into SGD's momentum slot, so
    # their "momentum" is 1e-4. We default to that value to reproduce their numbers
    # and expose it as a knob (see docs/DESIGN.md).
    momentum: float = 1e-4
    optimizer: str = "sgd"            # sgd | adam
    poly_power: float = 0.9
    resize_long: tuple = (320, 640)   # random long side range
    crop_size: int = 512              # 0 = no crop (the linear probe on a frozen backbone)
    hflip: bool = True
    num_workers: int = 2
    use_gpu: bool = False
    seed: int = 0
    keep_epochs: int = 2              # epoch states kept for resuming; 0 = keep every epoch
    checkpoint_every: int = 1         # epochs between checkpoints; a long run of short epochs
                                      # (min_steps on a small set) spends its time saving otherwise
    placement: str = "PACK"           # Ray Train's worker placement: PACK (fewest nodes) or SPREAD
    # ReCAM: lambda for the softmax cross-entropy term; 0 disables FC2 training.
    recam_lambda: float = 0.0
    recam_detach: bool = False
    lr_fc2: float = 5e-4
    # Train at least this many optimizer steps: epochs grow to reach it on small sets
    # (ReCAM's FC2 gets the paper's order of updates, ~2,600 on VOC, whatever the set size).
    min_steps: int = 0
    # Frozen backbone + fixed long side: compute each image's (and its flip's) feature map once,
    # in the crop window at offset 0, and train the heads on them (ReCAM's probe: seconds per
    # thousand steps). The crop's random pad offset is not drawn (docs/RESULTS.md measures it).
    cached_features: bool = False

    def __post_init__(self):
        require(self.optimizer in ("sgd", "adam"), f"train.optimizer {self.optimizer!r}: sgd or adam")
        require(self.placement in ("PACK", "SPREAD"), f"train.placement {self.placement!r}: PACK or SPREAD")
        require(self.epochs >= 0 and self.min_steps >= 0 and self.keep_epochs >= 0, "epochs, min_steps, keep_epochs >= 0")
        require(self.batch_size >= 1 and self.num_workers >= 1 and self.checkpoint_every >= 1,
                f"batch_size ({self.batch_size}), num_workers ({self.num_workers}), checkpoint_every "
                f"({self.checkpoint_every}) must be >= 1")
        require(min(self.lr_backbone, self.lr_head, self.lr_fc2, self.weight_decay, self.recam_lambda) >= 0,
                "learning rates, weight_decay and recam_lambda must be >= 0")
        require(len(self.resize_long) == 2 and 0 < self.resize_long[0] <= self.resize_long[1],
                f"resize_long {self.resize_long}: (low, high) with 0 < low <= high")
        require(self.crop_size >= 0, f"crop_size {self.crop_size}: >= 0 (0 = no crop)")


def recam_model(model: ModelConfig, unfreeze: bool) -> ModelConfig:
    """The model config ReCAM trains: the CAM stage's, with its backbone unfrozen when asked
    (a frozen-probe CAM stage whose ReCAM fine-tunes the backbone, as the paper's does)."""
    return dataclasses.replace(model, freeze_backbone=model.freeze_backbone and not unfreeze)


@dataclass(frozen=True)
class CamConfig:
    scales: tuple = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    store_stride: int = 4             # maps are stored at 1/store_stride of full resolution
    batch_size: int = 8
    num_actors: int = 1
    actor_cpus: float = 1.0
    use_gpu: bool = False
    max_side: int = 0                 # resize long side to this before extraction (0 = keep)
    resample: str = "pil"             # scales from the uint8 image, PIL bicubic (authors'); "torch": resize the tensor

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(v) for v in self.scales))
        require(len(self.scales) > 0 and min(self.scales) > 0, f"cam.scales {self.scales}: one or more, all > 0")
        require(self.store_stride >= 1 and self.batch_size >= 1 and self.num_actors >= 1 and self.actor_cpus > 0,
                "cam.store_stride, batch_size, num_actors >= 1 and actor_cpus > 0")
        require(self.max_side >= 0, f"cam.max_side {self.max_side}: >= 0 (0 = keep)")
        if self.resample not in ("pil", "torch"):
            raise ValueError(f"resample must be 'pil' (the authors') or 'torch', not {self.resample!r}")


@dataclass(frozen=True)
class LPCAMConfig:
    tau: float = 0.25
    k: int = 20
    mu_f: float = 0.9
    mu_b_low: float = 0.0
    mu_b_high: float = 0.5
    images_per_class: int = 100       # 0 = all images of the class
    max_positions_per_image: int = 0  # 0 = no cap
    kmeans_iters: int = 50
    kmeans_redo: int = 1              # best of N seeded k-means runs (faiss nredo); 1 = one run, as the authors
    seed: int = 0
    fg_only: bool = False             # LPCAM-F in the sweeps; the main job makes LPCAM-F from methods: lpcam_f
    fallback: str = "near_best"       # no centre passes mu_f: "near_best" (authors' COCO) | "best_one"

    def __post_init__(self):
        require(self.tau > 0, f"lpcam.tau {self.tau}: > 0")
        require(self.k >= 1 and self.kmeans_iters >= 1 and self.kmeans_redo >= 1, "lpcam.k, kmeans_iters, kmeans_redo >= 1")
        require(0 <= self.mu_f <= 1 and 0 <= self.mu_b_low <= self.mu_b_high <= 1,
                f"lpcam: 0 <= mu_f <= 1 and 0 <= mu_b_low <= mu_b_high <= 1 (got {self.mu_f}, {self.mu_b_low}, {self.mu_b_high})")
        require(self.images_per_class >= 0 and self.max_positions_per_image >= 0, "images_per_class, max_positions_per_image >= 0")
        if self.fallback not in ("near_best", "best_one"):
            raise ValueError(f"fallback must be 'near_best' (the authors' COCO rule) or 'best_one', "
                             f"not {self.fallback!r}")


# InferCam (WACV 2022): split & unite, iterate-and-erase. Defaults are the authors' code (split_img.py +
# infer_cam.py); the paper's text (per-class splits and erasing, patch-first erasing) and batching are options.
@dataclass(frozen=True)
class InferCamConfig:
    split: bool = True
    iterate: bool = True
    erase_threshold: float = 0.7
    stop_fraction: float = 0.02   # code 2%, paper 1%
    max_rounds: int = 5           # inferences per copy, the un-erased first one included
    buffer_one: int = 10          # px past the centre lines, one centre per split
    buffer_two: int = 20          # px around the two-class rectangle
    three_plus: str = "none"      # "none" (default, authors' code: 3+ classes keep the whole image);
                                  # "per_class" (paper's text): every class its own four patches
    max_batch: int = 16           # inputs per features_fn call (before flipping); bounds GPU memory
    bucket_px: int = 1            # 1 (default, authors' code): every patch at its own size, no padding.
                                  # > 1, e.g. 16: a speed lever, patches batch with others whose size rounds up
                                  # alike, padded with the fill colour, which changes the maps (0: one canvas a round)
    unite: str = "per_patch"      # "per_patch" (paper, code): each patch's map peaks at 1 before pasting;
                                  # "scaled": times the patch's raw first-round peak (normalised once, after)
    erase: str = "union"          # "union" (default, authors' code): one mask per patch, over all the image's
                                  # classes; "per_class" (paper's text: class-conditional, one mask per class)
    erase_scales: tuple = ()      # scales of the erased rounds (2..max_rounds); () = round 0's (paper, code).
                                  # A cost lever, not the paper's: (1.0,) infers erased patches once (+ flip)
    erase_flip: bool = True       # flipped inputs in the erased rounds too (paper, code); False: a cost lever
    buffer_side: float = 0.0      # > 0: both buffers are this fraction of the image's height (vertically) and
                                  # width (horizontally), replacing the px buffers; not the paper's. Absolute px
                                  # do not carry across image sizes: 0.25 is what helped coco_tiny and the demo
    erase_views: str = "scaled"   # "scaled" (default, authors' code): scale first (PIL, as round 0), then erase
                                  # each view with the mask nearest-resized from the previous view's (their chained
                                  # F.interpolate), the flipped view with the unflipped mask, filled with the view's
                                  # mean; "patch" (a departure): erase the scale-1 patch, then scale and flip it
                                  # (every view hides the same pixels)

    def __post_init__(self):
        if self.unite not in ("per_patch", "scaled"):
            raise ValueError(f"unite must be 'per_patch' or 'scaled', got {self.unite!r}")
        if self.erase not in ("per_class", "union"):
            raise ValueError(f"erase must be 'per_class' or 'union', got {self.erase!r}")
        if self.erase_views not in ("patch", "scaled"):
            raise ValueError(f"erase_views must be 'patch' or 'scaled', got {self.erase_views!r}")
        if self.three_plus not in ("per_class", "none"):
            raise ValueError(f"three_plus must be 'per_class' or 'none', got {self.three_plus!r}")
        if self.max_rounds < 1 or self.max_batch < 1 or self.bucket_px < 0:
            raise ValueError("max_rounds and max_batch must be >= 1, bucket_px >= 0")
        object.__setattr__(self, "erase_scales", tuple(float(s) for s in self.erase_scales))  # JSON gives lists
        if any(s <= 0 for s in self.erase_scales):
            raise ValueError(f"erase_scales must be positive, got {self.erase_scales}")
        if not 0 <= self.buffer_side <= 1:
            raise ValueError(f"buffer_side must be a fraction in [0, 1], got {self.buffer_side}")


# AdvCAM (CVPR 2021): adversarial climbing. Defaults are the authors' VOC settings.
@dataclass(frozen=True)
class AdvCamConfig:
    steps: int = 27             # climbing iterations per pair (T): maps of x_0..x_{T-1}; scale 0.5: fewer
    step_size: float = 0.08     # xi
    mu: float = 7.0             # regulariser weight
    mask_threshold: float = 0.5  # M: fraction of the current map's max
    max_batch: int = 16         # copies (flip copies included) per forward/backward; bounds memory

    def __post_init__(self):
        if self.steps < 1 or self.max_batch < 1:
            raise ValueError(f"steps and max_batch must be >= 1, got steps={self.steps}, "
                             f"max_batch={self.max_batch}")


@dataclass(frozen=True)
class EvalConfig:
    thresholds: tuple = tuple(round(0.05 * i, 2) for i in range(1, 20))     # 0.05 .. 0.95
    max_side: int = 0                 # evaluate at this long side (0 = native resolution)
    # up to this many images the driver scores the maps itself (Ray Data's start-up, ~10 s a pass
    # on 2 cores, is 100x the work of a small set); above, Ray Data tasks do. 0 = always Ray Data
    driver_max_images: int = 2000

    def __post_init__(self):
        require(self.driver_max_images >= 0, f"eval.driver_max_images {self.driver_max_images}: >= 0")
        object.__setattr__(self, "thresholds", tuple(float(v) for v in self.thresholds))
        require(len(self.thresholds) > 0 and all(0 <= t <= 1 for t in self.thresholds),
                f"eval.thresholds {self.thresholds}: one or more, each in [0, 1]")


@dataclass(frozen=True)
class DatasetConfig:
    kind: str = "demo"                # demo | coco | voc | folder
    root: str = ""
    split: str = "train"
    class_subset: str = ""            # e.g. "voc20" maps COCO onto the 20 VOC classes
    limit: int = 0                    # keep the first N images (0 = all)
    demo_size: str = "full"           # full | quick
    tags_file: str = ""               # folder datasets: CSV or JSONL of tags
    masks_dir: str = ""               # folder datasets: optional GT masks
    # the class names in class-id order: a folder's list (an unknown tag is then an error row);
    # for COCO, VOC and the demo, a pin that the dataset's own list must equal
    classes: tuple = ()

    def __post_init__(self):
        require(self.kind in ("demo", "coco", "voc", "folder"), f"dataset.kind {self.kind!r}: demo, coco, voc or folder")
        require(self.demo_size in ("full", "quick"), f"dataset.demo_size {self.demo_size!r}: full or quick")
        require(self.limit >= 0, f"dataset.limit {self.limit}: >= 0 (0 = all)")


ALL_METHODS = ("cam", "lpcam", "lpcam_f", "recam", "infercam", "advcam")
# ReCAM's class weights (the paper's Table 4) and the maps directory each is written to when asked
# for beside the chosen one; the chosen weight is always ``maps/recam``
RECAM_WEIGHTS = {"w": "recam_w", "w'": "recam_wp", "w+w'": "recam_wsum", "w*w'": "recam_wprod"}
# InferCam's ablation (the paper's Table 3): each half of the method alone, beside the full method
INFERCAM_ABLATION = {"infercam_split": {"split": True, "iterate": False},
                     "infercam_iter": {"split": False, "iterate": True}}


@dataclass(frozen=True)
class PipelineConfig:
    run_dir: str = "runs/demo"
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    recam_train: TrainConfig = TrainConfig()
    recam_unfreeze: bool = False  # ReCAM fine-tunes the backbone even where the CAM stage froze it
    cam: CamConfig = CamConfig()
    lpcam: LPCAMConfig = LPCAMConfig()
    eval: EvalConfig = EvalConfig()
    methods: tuple = ("cam", "lpcam", "lpcam_f")
    recam_weight: str = "w*w'"  # the class weight ReCAM's maps use: w, w', w+w' or w*w' (the paper's)
    recam_all_weights: bool = False  # also extract the other three weights (recam_w, recam_wp, ...)
    infercam: InferCamConfig = InferCamConfig()
    infercam_ablation: bool = False  # also extract split-only and iterate-only InferCam
    advcam: AdvCamConfig = AdvCamConfig()
    segment: tuple = ()         # methods taken on to pseudo masks and a segmentation network
    refiner: str = ""           # how seeds become pseudo masks: irn | crf; "" = the preset's (DEFAULT_REFINER)
    use_gpu_refine: bool = False
    strict: bool = False

    def __post_init__(self):
        if self.recam_weight not in RECAM_WEIGHTS:
            raise ValueError(f"recam_weight {self.recam_weight!r}: choose from {', '.join(RECAM_WEIGHTS)}")
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "segment", tuple(self.segment))
        unknown = sorted(set(self.methods) - set(ALL_METHODS))
        require(not unknown, f"methods {unknown}: choose from {', '.join(ALL_METHODS)}")
        require(self.refiner in ("", "irn", "crf"), f"refiner {self.refiner!r}: irn, crf or '' (the preset's)")
        unknown = [m for m in self.segment if m not in self.methods]      # fail before hours of seed work
        require(not unknown, f"--segment {','.join(unknown)}: not among --methods {','.join(self.methods)}")


_NESTED = {"ModelConfig": ModelConfig, "TrainConfig": TrainConfig, "CamConfig": CamConfig,
           "LPCAMConfig": LPCAMConfig, "EvalConfig": EvalConfig, "DatasetConfig": DatasetConfig,
           "InferCamConfig": InferCamConfig, "AdvCamConfig": AdvCamConfig, "PipelineConfig": PipelineConfig}
