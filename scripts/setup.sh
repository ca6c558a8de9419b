#!/usr/bin/env bash
# Create .venv (once) and install mia_torch with its test tools into it.
# PYTHON picks the interpreter (default python3, >= 3.10); EXTRAS picks the extras (default dev,dp: test tools and Opacus for DP-SGD).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS:-dev,dp}]"
