#!/usr/bin/env python
"""Rebuild a privacy-utility study: `<sweep_dir>/privacy_utility.{csv,md,png}`.

The same files the `PrivacyUtilityCallback` of `experiment=privacy_utility` writes when the
multirun ends, for sweeps whose launching process did not (a cluster array, a sweep still
in progress: unfinished settings are listed as missing) or to compare at another FPR.

Usage: python scripts/privacy_utility.py outputs/multirun/2024-05-01/12-00-00 [--fpr 0.01]
Exit status: 0 when written, 2 when there is no sweep there or the FPR is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mia_torch.refusal import status_of  # noqa: E402
from mia_torch.report.privacy_utility import STUDY_FPR, describe_study, write_privacy_utility  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the study, print its points and where the files are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep's hydra.sweep.dir (holds one folder per setting)")
    parser.add_argument("--fpr", type=float, default=STUDY_FPR,
                        help=f"compare attacks by their TPR at this FPR (default {STUDY_FPR}; must be in fpr_targets)")
    args = parser.parse_args(argv)
    return status_of("privacy_utility", lambda: print(describe_study(write_privacy_utility(args.sweep_dir,
                                                                                           fpr=args.fpr))))


if __name__ == "__main__":
    sys.exit(main())
