"""ReCAM's job: BCE classifier -> ReCAM -> maps with the chosen class weight (w*w' by default;
``--recam-all-weights`` adds w, w', w+w') -> evaluation and a comparison table. The same flags,
config files and exit codes as ``wsss-ray run``; without a config, the demo world on the
ImageNet EfficientNet-Lite0 that ReCAM fine-tunes (the tiny CNN is where ReCAM loses to CAM).

    python jobs/recam_voc.py --config configs/voc_recam.yaml -o dataset.root=/data/VOCdevkit/VOC2012
    python jobs/recam_voc.py --run-dir runs/recam_demo                        # demo world, ImageNet backbone
    python jobs/recam_voc.py --demo-backbone tiny --run-dir runs/recam_demo_tiny
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.cli import add_pipeline_args, job_main  # noqa: E402


def job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(parser, default_methods="cam,recam")
    parser.set_defaults(demo_backbone="efficientnet_lite0", run_dir="runs/recam_demo")
    return parser


if __name__ == "__main__":
    sys.exit(job_main(job_parser()))
