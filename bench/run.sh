#!/usr/bin/env bash
# Runs the Swift kernel benchmark and its PyTorch twin in alternating rounds (same machine, same configs) and
# regenerates docs/benchmarks.md. Needs the reference venv (tools/setup_reference_env.sh) for the PyTorch side.
#   bash bench/run.sh [--only PREFIX]        (ROUNDS=3 by default)
# Each round: the Swift rows (which start by measuring the FMA peak), then each MILAN-step configuration in its own
# Swift process, then the FMA peak again right before the PyTorch rows and each PyTorch step process. One process per
# step configuration keeps the maximum RSS per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MILAN_REF_VENV:-/work/venv-ref}/bin/python
ROUNDS=${ROUNDS:-3}
[ -x "$PY" ] || { echo "bench/run.sh: no reference venv at $PY; run tools/setup_reference_env.sh first" >&2; exit 1; }
mkdir -p bench/results
rm -f bench/results/*.json
swift build -c release --product milan-bench
BENCH=.build/release/milan-bench
steps=$(python3 -c 'import json; print(" ".join(s["name"] for s in json.load(open("bench/configs.json")).get("milan_steps", [])))')
wants_steps=1
if [ "${1:-}" = "--only" ] && [[ "milan_step" != "${2:-}"* ]]; then wants_steps=0; fi
args=()
for r in $(seq 1 "$ROUNDS"); do
  # OpenBLAS's own worker threads (used only by the raw-OpenBLAS GEMM rows) spin for a while after each call; on 2
  # cores that spinning thread would take a core from the library call timed right after it (per-call times
  # measured 2026-11-29: ours alternated between ~20 and ~38 ms on M=3200 N=1152 K=384). A short timeout lets
  # them sleep at once, so both sides of each pair start from the same state.
  OPENBLAS_THREAD_TIMEOUT=4 $BENCH --no-steps --out "bench/results/swift.$r.json" "$@"
  args+=(--swift "bench/results/swift.$r.json")
  if [ $wants_steps = 1 ]; then
    for s in $steps; do
      $BENCH --only milan_step --step "$s" --out "bench/results/swift.$r.step-$s.json"
      args+=(--swift "bench/results/swift.$r.step-$s.json")
    done
  fi
  $BENCH --peak-only --out "bench/results/peak.$r.json"
  "$PY" bench/bench_torch.py --no-steps --out "bench/results/torch.$r.json" "$@"
  args+=(--torch "bench/results/torch.$r.json" --torch-peak "bench/results/peak.$r.json")
  if [ $wants_steps = 1 ]; then
    for s in $steps; do
      "$PY" bench/bench_torch.py --only milan_step --step "$s" --out "bench/results/torch.$r.step-$s.json"
      args+=(--torch "bench/results/torch.$r.step-$s.json")
    done
  fi
done
python3 bench/report.py "${args[@]}" --out docs/benchmarks.md
echo "wrote docs/benchmarks.md"
