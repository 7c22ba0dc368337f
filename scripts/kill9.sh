#!/usr/bin/env bash
# kill -9 at any moment: runs `milan pretrain` or `milan finetune` (Fashion-MNIST subset; pretraining with the real
# DINOv2 teacher) and kills it with SIGKILL again and again — at random times, while a checkpoint's files are being
# staged, and between the renames that commit them (MILAN_TEST_COMMIT_PAUSE_MS widens that window) — sometimes also
# tearing the newest files as a power loss would (the end of log.jsonl, the temporary files of a save). After each
# kill it resumes (--resume when a checkpoint exists, else a fresh start), until a run finishes. Then it checks that
# every resume succeeded, that log.jsonl holds every iteration exactly once with no torn line, and that the final
# weights and optimizer state equal an uninterrupted run's bit for bit.
#   bash scripts/kill9.sh [KILLS] [pretrain|finetune]     (default 30 pretrain; one line per kill and a summary)
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-30}
KIND=${2:-pretrain}
MILAN=${MILAN:-.build/release/milan}
[ -x "$MILAN" ] || swift build -c release --product milan
TEACHER=$(bash scripts/fetch-teacher.sh)
work=$(mktemp -d /tmp/milan-kill9.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Both kinds: 256 training images in batches of 32, 8 iterations an epoch, 16 epochs, a checkpoint per epoch.
case $KIND in
  pretrain)
    args=(pretrain --teacher "$TEACHER" --train-images 256 --batch-size 32 --epochs 16 --warmup-epochs 1 --no-report)
    resume_args=(pretrain --teacher "$TEACHER" --no-report --resume)
    state=state.json; weights=model.safetensors; moments=optimizer.safetensors ;;
  finetune)
    echo "kill9: a short pretraining run to finetune from"
    "$MILAN" pretrain --teacher "$TEACHER" --train-images 256 --batch-size 32 --epochs 1 --no-report -o "$work/base" \
      > "$work/base.log" 2>&1 || { cat "$work/base.log"; exit 1; }
    args=(finetune --checkpoint "$work/base" --train-images 256 --test-images 64 --batch-size 32 --epochs 16 --warmup-epochs 1)
    resume_args=("${args[@]}" --resume)
    state=finetune-state.json; weights=classifier.safetensors; moments=finetune-optimizer.safetensors ;;
  *) echo "kill9: the kind is pretrain or finetune, not $KIND"; exit 2 ;;
esac

echo "kill9: reference run (uninterrupted)"
"$MILAN" "${args[@]}" -o "$work/ref" > "$work/ref.log" 2>&1

kills=0; resumes=0; fresh=0; in_staging=0; in_commit=0; random_kills=0; torn=0; attempt=0; runs=0
rnd() { python3 -c "import random,sys; random.seed($1); print(random.uniform($2,$3))"; }
# Runs until KILLS kills have landed: each run is killed and resumed until it finishes, then checked.
while [ $kills -lt "$KILLS" ]; do
runs=$((runs + 1))
run="$work/run$runs"
finished=0
while [ $finished = 0 ]; do
  attempt=$((attempt + 1))
  if [ -f "$run/$state" ] || [ -f "$run/.milan-commit.json" ]; then cmd=("${resume_args[@]}"); resumes=$((resumes + 1)); else cmd=("${args[@]}"); fresh=$((fresh + 1)); fi
  if [ $kills -ge "$KILLS" ]; then
    # Enough kills: let this one finish.
    "$MILAN" "${cmd[@]}" -o "$run" > "$work/last.log" 2>&1 || { echo "kill9: the final resume failed"; cat "$work/last.log"; exit 1; }
    finished=1
    break
  fi
  mode=$((attempt % 4))  # 0: random time, 1: during staging, 2: between the commit's renames, 3: random + torn files
  MILAN_TEST_COMMIT_PAUSE_MS=$([ $mode = 2 ] && echo 150 || echo 0) \
    "$MILAN" "${cmd[@]}" -o "$run" > "$work/attempt.$attempt.log" 2>&1 &
  pid=$!
  case $mode in
    1|2)
      # Wait for the save to start: a temporary file (staging) or the commit journal (renames).
      pattern=$([ $mode = 1 ] && echo '*.tmp-*' || echo '.milan-commit.json')
      for _ in $(seq 1 4000); do
        if compgen -G "$run/$pattern" > /dev/null || ! kill -0 $pid 2>/dev/null; then break; fi
        sleep 0.005
      done ;;
    *) sleep "$(rnd $attempt 0.3 12)" ;;
  esac
  if kill -9 $pid 2>/dev/null; then
    wait $pid 2>/dev/null || true
    kills=$((kills + 1))
    where=$(case $mode in 1) echo "while staging a checkpoint";; 2) echo "inside the commit (between renames)";; *) echo "at a random time";; esac)
    [ $mode = 1 ] && in_staging=$((in_staging + 1)); [ $mode = 2 ] && in_commit=$((in_commit + 1))
    [ $mode = 0 ] || [ $mode = 3 ] && random_kills=$((random_kills + 1))
    if [ $mode = 3 ] && [ -f "$run/log.jsonl" ]; then
      # Power loss: what was not fsync'ed loses its last bytes — the end of the log past the lines the checkpoint
      # holds (the log is fsync'ed before every checkpoint) and any temporary file.
      durable=$(python3 -c "
import json, os
d = '$run'
try:
    s = json.load(open(os.path.join(d, '$state'))); s = s.get('loop', s)
    keep = s['epoch'] * 8 + s['iteration']  # 8 iterations an epoch: 256 images, batch 32
except Exception:
    keep = 0
n = 0
for i, line in enumerate(open(os.path.join(d, 'log.jsonl'), 'rb')):
    if i >= keep: break
    n += len(line)
print(n)")
      size=$(stat -c %s "$run/log.jsonl"); cut=$(( size - 17 > durable ? size - 17 : durable ))
      truncate -s $cut "$run/log.jsonl"
      for f in "$run"/*.tmp-*; do [ -f "$f" ] && truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"; done
      torn=$((torn + 1)); where="$where, then tore log.jsonl and the temporary files"
    fi
    echo "kill9: kill $kills ($where); checkpoint at step $(python3 -c "import json;s=json.load(open('$run/$state'));print(s.get('loop', s)['step'])" 2>/dev/null || echo none)"
  else
    wait $pid || { echo "kill9: attempt $attempt failed on its own"; cat "$work/attempt.$attempt.log"; exit 1; }
    finished=1
  fi
done
cmp "$work/ref/$weights" "$run/$weights" || { echo "kill9: final weights differ from the uninterrupted run"; exit 1; }
cmp "$work/ref/$moments" "$run/$moments" || { echo "kill9: final optimizer state differs"; exit 1; }
python3 - "$work/ref/log.jsonl" "$run/log.jsonl" <<'EOF'
import json, sys
def its(path):
    out = []
    for n, line in enumerate(open(path), 1):
        try:
            o = json.loads(line)
        except ValueError:
            sys.exit(f"kill9: {path} line {n} is torn: {line!r}")
        out.append((o["iteration"], o["loss"]))
    return out
ref, got = its(sys.argv[1]), its(sys.argv[2])
if [i for i, _ in got] != list(range(1, len(ref) + 1)):
    sys.exit(f"kill9: log.jsonl iterations are {[i for i, _ in got]}, expected 1..{len(ref)} once each")
if [l for _, l in got] != [l for _, l in ref]:
    sys.exit("kill9: logged losses differ from the uninterrupted run's")
print(f"kill9: log.jsonl holds iterations 1..{len(ref)} once each, losses equal to the uninterrupted run's")
EOF
leftovers=$(ls -A "$run" | grep -E 'tmp-|milan-commit' || true)
[ -z "$leftovers" ] || { echo "kill9: leftover files: $leftovers"; exit 1; }
done

echo "kill9 ($KIND): $runs runs, $kills kills ($random_kills at random times of which $torn with torn files, $in_staging while staging a checkpoint, $in_commit between a commit's renames); $resumes resumes and $fresh fresh starts, all succeeded; final weights and optimizer state equal the uninterrupted run's bit for bit"
