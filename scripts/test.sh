#!/usr/bin/env bash
# The test command: installs the system libraries if missing, builds in release (numeric code is 10-100x slower in
# debug) and runs every test. PyTorch is never needed: golden values are committed fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release --build-tests
swift test -c release --skip-build
