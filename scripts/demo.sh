#!/usr/bin/env bash
# The main job: set up, export osiria/flare-it (offline: the Flare-IT-shaped reference
# checkpoint, said so), run fill-mask, and compare with PyTorch. Extra args go to `flare-onnx demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
flare-onnx demo "$@"
