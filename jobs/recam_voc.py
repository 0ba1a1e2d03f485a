"""ReCAM with the VOC preset: BCE classifier -> ReCAM (lambda 1.0, FC2 lr 5e-4, 4 epochs) ->
maps with each weight variant w, w', w+w', w*w' -> evaluation and a comparison table.

    python jobs/recam_voc.py --voc-root /data/VOCdevkit/VOC2012 --split train_aug --run-dir runs/recam_voc
    python jobs/recam_voc.py --run-dir runs/recam_demo            # the embedded demo world
    python jobs/recam_voc.py --demo-backbone efficientnet_lite0 --run-dir runs/recam_demo_imagenet
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.config import DatasetConfig, ModelConfig, PRESETS, TrainConfig  # noqa: E402
from wsss_ray.stages.pipeline import DEMO_BACKBONES, demo_config, run_pipeline  # noqa: E402


def voc_config(args):
    cfg = demo_config(args.run_dir, quick=False, methods=("cam", "recam"))
    train = TrainConfig(epochs=5, batch_size=16, num_workers=args.num_workers or 2, use_gpu=args.gpu)
    recam = dataclasses.replace(train, epochs=4, lr_backbone=5e-5, lr_head=5e-5, lr_fc2=5e-4,
                                recam_lambda=PRESETS["voc"].recam_lambda)
    return dataclasses.replace(
        cfg, dataset=DatasetConfig(kind="voc", root=args.voc_root, split=args.split),
        model=ModelConfig(backbone=args.backbone, weights=args.weights), train=train, recam_train=recam,
        cam=dataclasses.replace(cfg.cam, batch_size=4, use_gpu=args.gpu))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/recam_demo")
    p.add_argument("--voc-root", default="", help="VOCdevkit/VOC2012; empty = the embedded demo world")
    p.add_argument("--split", default="train")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--weights", default="imagenet", help="imagenet (torchvision cache) or a local .pth")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--demo-backbone", default="tiny", choices=list(DEMO_BACKBONES),
                   help="demo world only: tiny from scratch, or the ImageNet EfficientNet-Lite0 ReCAM fine-tunes")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()
    if args.voc_root:
        cfg = voc_config(args)
    else:
        cfg = demo_config(args.run_dir, quick=args.quick, methods=("cam", "recam"), backbone=args.demo_backbone)
    run_pipeline(cfg)
