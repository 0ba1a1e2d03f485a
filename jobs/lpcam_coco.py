"""The main job: manifest -> classifier (Ray Train) -> CAM (Ray Data) -> LPCAM prototypes
(faiss) -> LPCAM / LPCAM-F -> evaluation and a Table-1-style summary.

    python jobs/lpcam_coco.py --run-dir runs/demo              # embedded demo world
    python jobs/lpcam_coco.py --quick --run-dir runs/quick      # tiny demo, ~2 minutes
    python jobs/lpcam_coco.py --coco-root /data/coco --split train2014 --run-dir s3://bucket/run
    python jobs/lpcam_coco.py --config configs/coco_lpcam.yaml -o dataset.root=/data/coco -o lpcam.tau=0.25
    ray job submit --working-dir . -- python jobs/lpcam_coco.py --config configs/coco_lpcam.yaml -o dataset.root=...
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # run from a checkout

from wsss_ray.cli import add_pipeline_args, job_main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pipeline_args(parser, default_methods="cam,lpcam,lpcam_f")
    sys.exit(job_main(parser))
