#!/usr/bin/env bash
# On the accelerator machine (device tool: `run`, carry [".device_carry"], after
# benchmarks/device_prepare.sh here): InferCam against CAM on the GPU, the wall-clock kind of
# figure the InferCam paper's "3x" is (40 against 13 minutes on VOC's train set, their GPU).
# Times the job's path (split centres from the CAM maps) with the 16 px size buckets and with
# one canvas a round (fewer, larger calls: a launch-bound GPU may prefer them), on 64 demo
# images and 16 coco_tiny images. Writes the JSON results and the log under $OUT.
# A dry run here on the CPU: TAG=dry DEVICE=cpu REPEATS=1 DEMO_IMAGES=16 COCO_IMAGES=2 bash benchmarks/device_infercam.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
C=.device_carry
export PYTHONPATH=.:benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
VARIANTS=infercam_split_from_cam_maps,infercam_iterate,infercam_both_from_cam_maps,infercam_both_one_canvas_from_cam_maps,infercam_both_code_from_cam_maps,infercam_both_erase_s1_from_cam_maps
COMMON=(--device "${DEVICE:-cuda}" --max-wait 5 --repeats "${REPEATS:-3}" --variants "$VARIANTS"
        --demo-ckpt "$C/demo_ckpt" --coco-ckpt "$C/coco_ckpt" --coco-root "$C/coco_tiny" --work-dir /tmp/wsss_bench)
python3 benchmarks/infercam_cost.py "${COMMON[@]}" --skip-coco --demo-images "${DEMO_IMAGES:-64}" --tag "${TAG:-gpu}_demo" 2>&1 | tee "$OUT/demo.log"
python3 benchmarks/infercam_cost.py "${COMMON[@]}" --skip-demo --coco-images "${COCO_IMAGES:-16}" --tag "${TAG:-gpu}_coco" 2>&1 | tee "$OUT/coco.log"
cp benchmarks/results/infercam_cost_"${TAG:-gpu}"_{demo,coco}.json "$OUT/" 2>/dev/null
