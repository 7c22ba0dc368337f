#!/usr/bin/env bash
# The test suite's representative part under AddressSanitizer and ThreadSanitizer: the C kernels (SIMD row and
# element-wise bodies, AdamW, FMA loop), the codecs (libjpeg-turbo / libpng error paths through setjmp/longjmp),
# every reader of outside bytes (safetensors, ONNX, IDX, gzip, JSON; the fuzz smoke pass), staged checkpoint files,
# the GEMM split across threads, the spinning worker pool (ParallelTests), the buffer pool, and a folder pretraining
# run with its background image decoder. Each sanitizer builds in its own folder (.build-address, .build-thread;
# Swift in debug, as sanitizers need) and ends with a summary line; a finding makes the test fail (ASan aborts, TSan
# is made fatal by halt_on_error). The C kernels build at -O1 (`-Xcc -O1`, still instrumented): at -O0 every 64-byte
# vector copy in the packed kernel's register tile is a memcpy call the sanitizer intercepts, and the suites that
# train small models on that kernel ran for most of an hour under TSan.
#   bash scripts/sanitizers.sh [address|thread]...     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
which=("${@:-address thread}")
filter='MilanTensorTests.ParallelTests|PretrainerTests|EvaluationTests|GoldenTests|KernelTests|OverwriteModeTests|FMAPeakTests|TensorIOTests|ImageDecodingTests|ImageFolderTests|HostileDataTests|IDXTests|SafeTensors|ONNXModelTests|StagedFileTests|FuzzSmokeTests|FLOPsTests|FolderPretrainingTests|GradientTests'
for s in ${which[*]}; do
  dir=.build-$s
  # ThreadSanitizer's runtime cannot start under a small RLIMIT_FSIZE (it takes SIGBUS in its own shadow-memory
  # access, before main; reproduced with `prlimit --fsize=420 milan --help`), which the disk-full test imposes on its
  # child process. That test runs under AddressSanitizer and in the normal suite.
  skip=()
  [ "$s" = thread ] && skip=(--skip aFailedCheckpointSaveKeepsThePreviousCheckpointWhole)
  echo "sanitizers: building with --sanitize=$s in $dir"
  swift build --build-tests --sanitize="$s" --scratch-path "$dir" -Xcc -O1 2>&1 | tail -2
  echo "sanitizers: testing ($filter)"
  start=$(date +%s)
  set +e
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    swift test --skip-build --sanitize="$s" --scratch-path "$dir" --filter "$filter" "${skip[@]}" > "/tmp/milan-$s.log" 2>&1
  status=$?
  set -e
  grep -E "Test run with|✘|ERROR: (Address|Thread)Sanitizer|WARNING: ThreadSanitizer" "/tmp/milan-$s.log" | head -20 || true
  echo "sanitizers: $s: exit $status in $(( $(date +%s) - start )) s (log /tmp/milan-$s.log)"
  [ "$status" = 0 ] || exit "$status"
done
