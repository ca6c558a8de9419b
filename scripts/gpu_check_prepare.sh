#!/usr/bin/env bash
# Prepare the files scripts/gpu_check.sh needs on a GPU machine that has Python 3.12 with
# torch, torchvision, tensorboard, scikit-learn and matplotlib, but no network:
#   .wheels/                 wheels of the other dependencies, for that Python (hydra-core,
#                            omegaconf, antlr4-python3-runtime, pyyaml, tqdm, pytest and theirs)
#   .data/cifar10_jpeg.npz   the CIFAR-10 JPEG container the study decodes
# Both folders are git-ignored; carry them along to the GPU machine with the checkout.
#
# Usage: scripts/gpu_check_prepare.sh [CIFAR10_JPEG_NPZ]
#   CIFAR10_JPEG_NPZ   the container to copy (default ../shared/data/cifar10_jpeg.npz)
# Variables: PYTHON (runs pip; default .venv/bin/python if present, else python3),
#   TARGET_PYTHON (the GPU machine's Python version, default 3.12),
#   TARGET_PLATFORM (its wheel platform, default manylinux2014_x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:-../shared/data/cifar10_jpeg.npz}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
TARGET_PLATFORM=${TARGET_PLATFORM:-manylinux2014_x86_64}
if [[ ! -f $SOURCE ]]; then
    echo "error: CIFAR-10 JPEG container $SOURCE not found: pass its path as the first argument" >&2
    exit 1
fi
mkdir -p .wheels .data
cp "$SOURCE" .data/cifar10_jpeg.npz
PIP=("$PYTHON" -m pip --disable-pip-version-check --quiet)
# PyPI has antlr4-python3-runtime 4.9.3 (omegaconf's pin) only as a source archive: build its pure-Python wheel here
"${PIP[@]}" wheel --no-deps --wheel-dir .wheels "antlr4-python3-runtime==4.9.3"
"${PIP[@]}" download --dest .wheels --find-links .wheels --only-binary=:all: \
    --python-version "$TARGET_PYTHON" --implementation cp --abi "cp${TARGET_PYTHON/./}" --platform "$TARGET_PLATFORM" \
    hydra-core omegaconf pyyaml tqdm pytest
echo "prepared .wheels ($(du -sh .wheels | cut -f1)): $(cd .wheels && ls | tr '\n' ' ')"
echo "prepared .data/cifar10_jpeg.npz ($(du -sh .data/cifar10_jpeg.npz | cut -f1))"
