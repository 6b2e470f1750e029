#!/usr/bin/env bash
# Set up .venv/ if needed, then run the main job: train a ResNet-18 on scikit-learn's handwritten
# digits, offline, on the CPU (a few minutes on 2 cores): export the digits as an image folder,
# train (from scratch: no pretrained weights are reachable offline), evaluate the saved model on the
# held-out 20%, write the loss/accuracy curves, classify one held-out image of each digit.
# Usage: bash scripts/demo.sh [RUN_DIR]   (default runs/digits; re-running reuses the finished run)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
out="${1:-runs/digits}"
py="$root/.venv/bin/python"
megzoo="$root/.venv/bin/megzoo"

echo "== 1/4 data: sklearn digits -> $out/data/{train,val}/<digit>/*.png (32x32, 3 channels)"
"$py" examples/digits.py export "$out/data" --size 32

echo "== 2/4 train: megzoo train (ResNet-18, 32 px, 8 epochs; log, history, curves in $out)"
# the same options as TRAIN_ARGS in examples/digits.py
"$megzoo" train --data "$out/data" --output "$out" --model resnet18 --input-size 32 --resize-size 32 \
    --crop-scale 0.7 1 --hflip 0 --epochs 8 --batch-size 32 --lr 0.05 --schedule cosine --warmup-epochs 1 \
    --weight-decay 5e-4 --no-bn-decay --label-smoothing 0.1 --workers 0

echo "== 3/4 evaluate the saved model ($out/best.pkl) on the held-out images"
"$py" examples/digits.py evaluate "$out/best.pkl" "$out/data/val"
echo "curves: $out/curves.png"

echo "== 4/4 classify one held-out image of each digit (megzoo predict reads best.json: classes, 32-px preprocessing)"
mapfile -t images < <("$py" examples/digits.py samples "$out/data")
"$megzoo" predict "${images[@]}" --model resnet18 --weights "$out/best.pkl" --topk 1
