#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
bash scripts/setup.sh
"$PYTHON" -m pytest -q tests "$@"
