#!/usr/bin/env bash
# Create .venv (once) and install mia_torch with its test tools into it.
# PYTHON picks the interpreter (default python3, >= 3.10); EXTRAS adds extras (e.g. EXTRAS=dev,joblib).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-dev}]"
