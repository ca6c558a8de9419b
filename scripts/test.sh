#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the fast test suite; extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the slow tests, `-m gpu` on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 "$@"
