"""The demo pipeline with some classifier-training knobs overridden, for diagnosis.

    PYTHONPATH=. .venv/bin/python experiments/demo_variant.py RUN_DIR cam,lpcam,lpcam_f '{"lr_head": 2e-3}'

The third argument is a JSON object of TrainConfig fields replacing the demo preset's
(jobs/lpcam_coco.py's defaults); everything else is the main job's demo flow. Used in
docs/RESULTS.md to test whether an over-confident demo classifier is what costs LPCAM.
"""
import dataclasses
import json
import sys

from wsss_ray.stages.pipeline import demo_config, run_pipeline


def main(run_dir: str, methods: str, overrides: str) -> None:
    cfg = demo_config(run_dir, quick=False, methods=tuple(methods.split(",")))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **json.loads(overrides)))
    run_pipeline(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:4])
