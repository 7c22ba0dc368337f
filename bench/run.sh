#!/usr/bin/env bash
# Runs the Swift kernel benchmark and its PyTorch twin in alternating rounds (same machine, same configs) and
# regenerates docs/benchmarks.md. Needs the reference venv (tools/setup_reference_env.sh) for the PyTorch side.
#   bash bench/run.sh [--only PREFIX]        (ROUNDS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MILAN_REF_VENV:-/work/venv-ref}/bin/python
ROUNDS=${ROUNDS:-2}
[ -x "$PY" ] || { echo "bench/run.sh: no reference venv at $PY; run tools/setup_reference_env.sh first" >&2; exit 1; }
mkdir -p bench/results
swift build -c release --product milan-bench
sw=(); th=()
for r in $(seq 1 "$ROUNDS"); do
  # OpenBLAS's own worker threads (used only by the raw-OpenBLAS GEMM rows) spin for a while after each call; on 2
  # cores that spinning thread would take a core from the library call timed right after it (per-call times
  # measured 2026-11-29: ours alternated between ~20 and ~38 ms on M=3200 N=1152 K=384). A short timeout lets
  # them sleep at once, so both sides of each pair start from the same state.
  OPENBLAS_THREAD_TIMEOUT=4 .build/release/milan-bench --out "bench/results/swift.$r.json" "$@"
  "$PY" bench/bench_torch.py --out "bench/results/torch.$r.json" "$@"
  sw+=("bench/results/swift.$r.json"); th+=("bench/results/torch.$r.json")
done
python3 bench/report.py --swift "${sw[@]}" --torch "${th[@]}" --out docs/benchmarks.md
echo "wrote docs/benchmarks.md"
