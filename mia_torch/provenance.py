"""Record the software a run used: Python, torch, CUDA, the package and its git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch


def git_commit(path: Path | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` if it has changes), or None outside git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def environment_versions(package_version: str) -> dict[str, str | None]:
    """Versions that determine a run's numbers."""
    return {
        "mia_torch": package_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "numpy": np.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }
