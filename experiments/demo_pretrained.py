"""Diagnosis for the ReCAM demo target: the demo world with an ImageNet backbone.

    PYTHONPATH=. .venv/bin/python experiments/demo_pretrained.py RUN_DIR [LAMBDA] [FREEZE] [SEED]

The demo world and its GT, but the classifier of ../shared/REFERENCE_RESULTS.md's protocol
instead of the tiny CNN trained from scratch (``demo_config(backbone="efficientnet_lite0")``,
the job's ``--demo-backbone efficientnet_lite0``): ImageNet EfficientNet-Lite0, frozen, a
linear head trained with Adam (lr 1e-3, 30 epochs) on the images upscaled to 224 px (the
112 px scenes would give a 4 x 4 feature map). Then ReCAM from that checkpoint: 4 epochs,
FC2 lr 5e-4, backbone and FC1 lr 5e-5, lambda LAMBDA (default 1.0, the demo and VOC
preset; 0 is the control: the same fine-tuning with BCE only), the backbone frozen as in
the CAM stage when FREEZE is 1 (the default) and fine-tuned when it is 0, as the job does.
SEED (default 0, the job's) seeds the ReCAM stage only (batch order, crops, FC2's
initialisation), to see how much of a margin over CAM one ReCAM training run is. CAM is
extracted and evaluated by the main job's stages (``eval/cam.json``); the four ReCAM weights (and two sign-aware
products) are evaluated in one backbone pass by ``recam_weight_signs.py``'s function, at
the same scales: (2, 1, 3, 4) on the 112 px images, i.e. the usual (1, 0.5, 1.5, 2) around
the 224 px training size.

Writes ``experiments/results/demo_pretrained_lambda<LAMBDA>[_finetuned][_seed<SEED>].json``
(no suffix for seed 0).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import torch

from benchmarks._common import write_results
from recam_weight_signs import evaluate_weights, sign_shares, weight_variants
from wsss_ray.config import recam_model
from wsss_ray.rundir import RunDir
from wsss_ray.stages.extract import ModelRunner
from wsss_ray.stages.pipeline import demo_config, run_pipeline
from wsss_ray.stages.train import train_classifier


def main(run_dir: str, recam_lambda: str = "1.0", freeze: str = "1", seed: str = "0") -> None:
    torch.set_num_threads(2)
    cfg = demo_config(run_dir, methods=("cam",), backbone="efficientnet_lite0")
    cfg = dataclasses.replace(cfg, recam_train=dataclasses.replace(cfg.recam_train, recam_lambda=float(recam_lambda),
                                                                   seed=int(seed)))
    suffix = ("" if freeze != "0" else "_finetuned") + ("" if seed == "0" else f"_seed{seed}")
    start = time.time()
    run_pipeline(cfg)                                 # manifest, CAM classifier, CAM maps, eval/cam.json
    run = RunDir(run_dir)
    name = f"recam_l{recam_lambda}" + ("" if freeze != "0" else "_ft") + ("" if seed == "0" else f"_s{seed}")
    model = recam_model(cfg.model, unfreeze=freeze == "0")
    train_classifier(run, name, model, cfg.recam_train, init_from=run.uri("checkpoints", "cam"))
    runner = ModelRunner(run.uri("checkpoints", name), use_gpu=False)
    w = runner.model.head.weight.detach().flatten(1)
    w2 = runner.model.fc2.weight.detach().flatten(1)
    with open(run.uri("eval", "cam.json")) as f:
        cam = json.load(f)["best"]
    record = {"run_dir": run_dir, "recam_lambda": float(recam_lambda), "backbone_frozen_in_recam": freeze != "0",
              "recam_seed": int(seed),
              "cam": {"threshold": cam["threshold"], "miou": round(cam["miou"], 4),
                      "per_class_iou": [round(v, 3) for v in cam["per_class_iou"]]},
              "signs": sign_shares(w, w2),
              "recam": evaluate_weights(runner, weight_variants(w, w2), run, cfg.cam, list(cfg.eval.thresholds)),
              "seconds": round(time.time() - start, 1)}
    print(f"CAM                        thr {cam['threshold']} mIoU {record['cam']['miou']} {record['cam']['per_class_iou']}")
    for variant, best in record["recam"].items():
        print(f"ReCAM {variant:20s} thr {best['threshold']} mIoU {best['miou']} {best['per_class_iou']}")
    write_results(f"demo_pretrained_lambda{recam_lambda}{suffix}", record)


if __name__ == "__main__":
    main(*sys.argv[1:5])
