#!/usr/bin/env bash
# The GPU targets of the GPU issue in one run of about 8 minutes on one H100/H200 (the device budget is 15 minutes
# in all), from the repository root of a checkout whose environment has torch, timm, MONAI, numpy (and, for the
# DeepSpeed and end-to-end rows, the stack packed by ../shared/gpu/pack.sh). Results land in $OUT (default: .).
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-.}
step() { echo "== $*"; timeout "${BUDGET:-170}" "$@" || echo "!! exit $?: $*"; }
# 3D MAE ViT-B standalone: bf16 weights, eager and compiled, the batch sweep; bf16 autocast at 32 for comparison
BUDGET=170 step python benchmarks/gpu_step.py --only mae3d --precisions bf16 --batches 8,32,128,256 --steps 10 --warmup 3 --out "$OUT/mae3d.json"
BUDGET=60 step python benchmarks/gpu_step.py --only mae3d --precisions bf16-autocast --batches 32 --no-compile --steps 10 --warmup 3 --out "$OUT/mae3d_autocast.json"
# UNETR fine-tuning step and sliding-window inference (bf16 weights), Genesis corruptions on the GPU
BUDGET=120 step python benchmarks/gpu_step.py --only unetr,sliding_window,genesis,cnn_mae --precisions bf16 --batches 2,4,8 --sw-batches 4,16,32 --steps 10 --warmup 3 --out "$OUT/finetune_infer.json"
# rayssl's own DeepSpeed step (bf16, ZeRO 0 and 2), compiled, at the batches that fill the GPU
BUDGET=120 step python benchmarks/gpu_step.py --only genesis --deepspeed --compile-only --batches 128 --steps 10 --warmup 3 --out "$OUT/deepspeed.json"
# the crops a GPU needs at 40% MFU against what DeviceCrops cuts on it
BUDGET=60 step python benchmarks/feed_rate.py --repeats 3
# jobs/pretrain.py --preset mae3d_btcv end to end on one GPU: first loss line and samples/s
BUDGET=200 step python benchmarks/gpu_step.py --only genesis --e2e --e2e-batch 128 --e2e-steps 60 --e2e-timeout 180 --out "$OUT/e2e.json"
