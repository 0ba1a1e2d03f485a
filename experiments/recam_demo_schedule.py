"""Is ReCAM on the demo world just undertrained? Train ReCAM from a finished demo run's CAM
checkpoint with a longer schedule, then extract and evaluate the w*w', w' and w maps.

    PYTHONPATH=. .venv/bin/python jobs/lpcam_coco.py --methods cam,recam --run-dir runs/demo_all
    PYTHONPATH=. .venv/bin/python experiments/recam_demo_schedule.py runs/demo_all recam15 15 5e-5 1e-2
    PYTHONPATH=. .venv/bin/python experiments/recam_demo_schedule.py runs/demo_all bce4 4 2e-4 2e-3 0

An optional sixth argument sets lambda (default: the preset's 1.0); lambda = 0 is the same
continued training with BCE alone, which separates what the SCE term does from what four more
epochs of training do to the backbone and to w. A seventh argument ``detach`` stops the SCE
gradient at the CAM M_k (the ReCAM option; by default it flows, as in the authors' code).
"""
import dataclasses
import sys

from wsss_ray.rundir import RunDir
from wsss_ray.stages.evaluate import evaluate_maps
from wsss_ray.stages.extract import extract_maps
from wsss_ray.stages.pipeline import demo_config
from wsss_ray.stages.session import ensure_ray
from wsss_ray.stages.train import train_classifier


def main(run_dir: str, name: str, epochs: int, lr_backbone: float, lr_fc2: float,
         recam_lambda: float | None = None, detach: bool = False) -> None:
    cfg, run = demo_config(run_dir), RunDir(run_dir)
    ensure_ray()
    recam = dataclasses.replace(cfg.recam_train, epochs=epochs, lr_backbone=lr_backbone, lr_head=lr_backbone,
                                lr_fc2=lr_fc2)
    if recam_lambda is not None:
        recam = dataclasses.replace(recam, recam_lambda=recam_lambda)
    recam = dataclasses.replace(recam, recam_detach=detach)
    print(train_classifier(run, name, cfg.model, recam, init_from=run.uri("checkpoints", "cam")))
    for variant, tag in [("w*w'", "wprod"), ("w'", "wp"), ("w", "w")]:
        extract_maps(run, f"{name}_{tag}", "cam", run.uri("checkpoints", name), cfg.cam, {"variant": variant})
        best = evaluate_maps(run, f"{name}_{tag}", "demo", cfg.eval)["best"]
        print("RESULT", name, tag, best["threshold"], round(best["miou"], 4), [round(x, 3) for x in best["per_class_iou"]])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
         float(sys.argv[6]) if len(sys.argv) > 6 else None, len(sys.argv) > 7 and sys.argv[7] == "detach")
