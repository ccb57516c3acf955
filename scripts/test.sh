#!/usr/bin/env bash
# Set up, then run the whole test suite (offline) and the type check. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
python -m pytest "$@"
python -m mypy   # strict on the runtime (pyproject.toml [tool.mypy])
