#!/usr/bin/env bash
# Here, before a device call: copy what benchmarks/device_infercam.sh needs into .device_carry/
# (git-ignored through .git/info/exclude), to name in the device tool's `carry`. The accelerator
# machine has torch, numpy, pillow, pyarrow and psutil but no Ray or faiss, and cannot reach
# ../shared, so the trained checkpoints and coco_tiny travel as plain files (41 MB: the script prints it).
# Needs: /tmp/runs/full1 (RUN_DIR=/tmp/runs/full1 bash scripts/demo) and /tmp/runs/coco_ref2
# (the README's coco_tiny reference command with --run-dir /tmp/runs/coco_ref2).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.device_carry
grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
rm -rf "$CARRY" && mkdir -p "$CARRY/demo_ckpt" "$CARRY/coco_ckpt"
cp /tmp/runs/full1/checkpoints/cam/model.{pt,json} "$CARRY/demo_ckpt/"
cp /tmp/runs/coco_ref2/checkpoints/cam/model.{pt,json} "$CARRY/coco_ckpt/"
cp -r ../shared/data/coco_tiny "$CARRY/coco_tiny"
du -sh "$CARRY"
