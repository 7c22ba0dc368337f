#!/usr/bin/env bash
# Creates the PyTorch reference environment used by tools/make_fixtures.py and bench/bench_torch.py.
# Never needed by `swift build` or `swift test`.
#
#   tools/setup_reference_env.sh            # venv at ${MILAN_REF_VENV:-/work/venv-ref}
#   MILAN_REF_VENV=/tmp/ref tools/setup_reference_env.sh
#   MILAN_REF_EXTRAS=0 tools/setup_reference_env.sh   # skip the optional extras
#
# torch is pinned to the CPU build (a wheel in /opt/wheels on these machines). An unpinned
# `pip install torch` resolves to a ~3 GB CUDA build that will not import usefully here.
#
# Optional extras (timm, open_clip_torch, onnx, onnxruntime, torchvision) are for teacher/model
# parity checks. The torchvision wheel from PyPI is a CUDA build whose C++ operators fail to
# register against the CPU torch; before importing torchvision, timm or open_clip, run:
#
#   import torch.library as L
#   _register_fake = L.register_fake
#   def _skip_torchvision_fakes(op, func=None, /, *args, **kwargs):
#       if isinstance(op, str) and op.startswith("torchvision::"):
#           return (lambda f: f) if func is None else func
#       return _register_fake(op, func, *args, **kwargs)
#   L.register_fake = _skip_torchvision_fakes
#
# Failures installing the extras are reported but do not fail this script.
set -euo pipefail

VENV="${MILAN_REF_VENV:-/work/venv-ref}"
TORCH_PIN="torch==2.13.0+cpu"
WHEELS="${MILAN_WHEELS:-/opt/wheels}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --disable-pip-version-check)
if [ -d "$WHEELS" ]; then
    PIP+=(--find-links "$WHEELS")
fi

"${PIP[@]}" "$TORCH_PIN"
# Keep torch pinned while installing everything else.
"${PIP[@]}" "$TORCH_PIN" safetensors numpy

if [ "${MILAN_REF_EXTRAS:-1}" != "0" ]; then
    if ! "${PIP[@]}" "$TORCH_PIN" 'torchvision==0.28.*' timm open_clip_torch onnx onnxruntime 'transformers==5.24.0' pillow; then
        echo "warning: optional extras (torchvision/timm/open_clip/onnx/onnxruntime/transformers) failed to install;" \
             "tools/make_fixtures.py and the benchmarks do not need them; tools/make_model_fixtures.py does" >&2
    fi
fi

"$VENV/bin/python" - <<'PY'
import torch, safetensors, numpy
print("torch", torch.__version__, "| threads", torch.get_num_threads(),
      "| safetensors", safetensors.__version__, "| numpy", numpy.__version__)
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
echo "reference venv ready: $VENV"
