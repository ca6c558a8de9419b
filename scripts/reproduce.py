#!/usr/bin/env python
"""Rerun a finished run and check that it reproduces: `python scripts/reproduce.py <run_dir>` (= `mia-reproduce`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mia_torch.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
