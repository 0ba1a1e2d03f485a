"""Train DeepLab on a method's pseudo masks (Ray Train), then predict the evaluation images
with multi-scale + flip and score them into eval/seg_<method>.json.

    python jobs/train_segmentation.py --run-dir runs/demo --method cam
    python jobs/train_segmentation.py --run-dir runs/quick --method cam --quick
    python jobs/train_segmentation.py --run-dir runs/voc --method lpcam --preset voc --saliency-dir /data/sal
    ray job submit --working-dir . -- python jobs/train_segmentation.py --run-dir s3://b/run --preset coco --gpu
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.models.segmentation import ARCHS, SEG_PRESETS  # noqa: E402
from wsss_ray.rundir import RunDir  # noqa: E402
from wsss_ray.stages.segment import evaluate_segmentation, seg_config, train_segmentation  # noqa: E402
from wsss_ray.stages.session import ensure_ray  # noqa: E402


def preset_name(args) -> str:
    if args.preset:
        return args.preset
    run = RunDir(args.run_dir)
    kind = run.read_json(run.uri("config.json"))["dataset"]["kind"] if run.exists(run.uri("config.json")) else "voc"
    if kind == "demo":
        return "quick" if args.quick else "demo"
    return "coco" if kind == "coco" else "voc"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--method", default="cam", help="names checkpoints/seg_<method> and eval/seg_<method>.json")
    p.add_argument("--masks", default="", help="pseudo-mask set under masks/ (default: the method; e.g. cam_crf)")
    p.add_argument("--quick", action="store_true", help="the quick preset (tiny net, 40 iterations)")
    p.add_argument("--preset", default="", choices=["", *SEG_PRESETS])
    p.add_argument("--arch", default="", choices=["", *ARCHS])
    p.add_argument("--backbone-weights", default="", help="none | imagenet (torch hub cache) | <path>")
    p.add_argument("--iterations", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--crop-size", type=int, default=0)
    p.add_argument("--saliency-dir", default="", help="<dir>/<image stem>.png saliency maps: InferCam's loss")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--eval-split", default="val", help="falls back to train when the manifest has no such split")
    p.add_argument("--limit", type=int, default=0, help="first N images for training and for evaluation")
    p.add_argument("--max-side", type=int, default=0, help="evaluate at this long side (0 = native)")
    p.add_argument("--eval-crf", action="store_true", help="dense CRF on the predictions before scoring")
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()
    cfg = seg_config(SEG_PRESETS[preset_name(args)], arch=args.arch, backbone_weights=args.backbone_weights,
                     iterations=args.iterations, batch_size=args.batch_size, crop_size=args.crop_size,
                     num_workers=args.num_workers)
    cfg = dataclasses.replace(cfg, use_gpu=args.gpu, eval_crf=args.eval_crf)
    ensure_ray()
    train = train_segmentation(args.run_dir, args.method, cfg, args.saliency_dir, args.masks, args.limit)
    print(json.dumps(train, indent=1, default=str), flush=True)
    res = evaluate_segmentation(args.run_dir, args.method, cfg, args.eval_split, args.limit, args.num_actors,
                                max_side=args.max_side)
    print(json.dumps({k: res[k] for k in ("method", "split", "num_images", "best")}, indent=1, default=str))


if __name__ == "__main__":
    main()
