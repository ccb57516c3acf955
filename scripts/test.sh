#!/usr/bin/env bash
# Set up, then run the whole test suite (offline) and the type check. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# two workers (the test files shared out, each file whole on one worker): on 2 vCPUs the suite
# took 13.0 min in one process and 9.7 min in two (docs/reference.md)
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
python -m mypy   # strict on the runtime (pyproject.toml [tool.mypy])
