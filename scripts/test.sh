#!/usr/bin/env bash
# Set up, then run the whole test suite (offline) and the type check. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# Python caches the bytecode of what the tests import (setup.sh does not compile it all ahead):
# where PYTHONDONTWRITEBYTECODE is set, every test process would compile its imports again
unset PYTHONDONTWRITEBYTECODE
# two workers (the test files shared out, each file whole on one worker): on 2 vCPUs the suite
# took 13.0 min in one process and 9.7 min in two (docs/reference.md)
# the type check runs beside the tests (one process, mostly while pytest's workers wait on
# exports and servers), and reports after them
mypy_log=$(mktemp)
# strict on the runtime (pyproject.toml [tool.mypy]); its cache outside the checkout, so a fresh
# clone on the same machine (CI) checks only what changed (26 s of CPU cold, 1 s warm)
python -m mypy --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/flare-onnx/mypy" > "$mypy_log" 2>&1 &
mypy_pid=$!
status=0
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@" || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
cat "$mypy_log"
rm -f "$mypy_log"
[ "$status" -eq 0 ] && [ "$mypy_status" -eq 0 ]
