#!/usr/bin/env bash
# Issue 11's end-to-end check, as a user walks it: a ResNet trained on mean/std-normalised
# Fashion-MNIST -> fs-convert --search with spike-coded input -> the reference on the whole
# test set -> Loihi (lowered, 2 samples on nengo-loihi's emulator, compared spike for spike).
# About 25 min for training plus 3 min for conversion, 5 for the reference and 20 for Loihi
# on a 2-core machine.
#   bash scripts/check_user_resnet.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/fs-hw-user-resnet}
mkdir -p "$OUT"
[ -f "$OUT/user_resnet.pt2" ] || .venv/bin/python scripts/train_user_resnet.py "$OUT/user_resnet.pt2" --epochs 4
.venv/bin/fs-convert "$OUT/user_resnet.pt2" --out "$OUT/user_resnet.fsnet" --force \
    --input-mean 0.2860 --input-std 0.3530 --search --search-K 5,6,7,8 \
    --search-policies percentile:99.9,percentile:99.99,percentile:99.999 --search-scales 1,1.41421356 \
    --loss-budget 0.1 --calibration 2000 --validation 5000 --evaluate 10000
.venv/bin/fs-deploy "$OUT/user_resnet.fsnet" --target reference --samples 10000 --report "$OUT/reference.json" --force
printf 'samples = 2\n[target]\nchips = 32\ncores_per_chip = 128\nbatch_size = 2\nd_digits = 3\n' > "$OUT/loihi_32chips.toml"
.venv/bin/fs-deploy "$OUT/user_resnet.fsnet" --target loihi --config "$OUT/loihi_32chips.toml" --samples 2 \
    --report "$OUT/loihi.json" --force
