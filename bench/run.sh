#!/usr/bin/env bash
# Runs the Swift kernel benchmark and its PyTorch twin back to back (same machine, same configs) and regenerates
# docs/benchmarks.md. Needs the reference venv (tools/setup_reference_env.sh) for the PyTorch side.
#   bash bench/run.sh [--only PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MILAN_REF_VENV:-/work/venv-ref}/bin/python
[ -x "$PY" ] || { echo "bench/run.sh: no reference venv at $PY; run tools/setup_reference_env.sh first" >&2; exit 1; }
mkdir -p bench/results
swift build -c release --product milan-bench
.build/release/milan-bench --out bench/results/swift.json "$@"
"$PY" bench/bench_torch.py --out bench/results/torch.json "$@"
python3 bench/report.py --swift bench/results/swift.json --torch bench/results/torch.json --out docs/benchmarks.md
echo "wrote docs/benchmarks.md"
