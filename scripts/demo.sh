#!/usr/bin/env bash
# The main job. Until MILAN pretraining lands (issue "MILAN pretraining end to end") this builds the release binaries,
# prints what the machine offers (BLAS, SIMD path, threads) and runs the kernel benchmark at ViT shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
.build/release/milan info
mkdir -p bench/results
.build/release/milan-bench --out bench/results/swift.json
echo "Kernel timings written to bench/results/swift.json (PyTorch side by side: bash bench/run.sh)."
