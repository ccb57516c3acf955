#!/usr/bin/env bash
# Prints where the CPU build of torch comes from on this machine, one word:
#   local     a CPU wheel of the pinned version is on this machine (pip's find-links/config)
#   cpu-index PyTorch's own CPU wheel index (a plain `pip install torch` would pull CUDA)
# Used by setup.sh; tests/test_setup.py checks both answers.
set -euo pipefail
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if "${PYTHON:-python3}" -m pip download -q --no-deps --no-index -d "$tmp" "torch==${TORCH_VERSION}" >/dev/null 2>&1 \
   && ls "$tmp" | grep -q '+cpu'; then
  echo local
else
  echo cpu-index
fi
