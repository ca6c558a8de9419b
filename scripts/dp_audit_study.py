#!/usr/bin/env python
"""Rebuild a one-run DP audit study: `<sweep_dir>/dp_audit_study.{csv,md,png}`.

The same files the `DpAuditStudyCallback` of `experiment=dp_audit` writes when the multirun
ends, for sweeps whose launching process did not (a cluster array, a sweep still in
progress: unfinished jobs are listed as missing).

Usage: python scripts/dp_audit_study.py outputs/multirun/2024-05-01/12-00-00
Exit status: 0 when written, 2 when there is no sweep there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mia_torch.dp_audit.study import describe_audit_study, write_dp_audit_study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the study, print its summary and where the files are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep's hydra.sweep.dir (one folder per job)")
    args = parser.parse_args(argv)
    try:
        print(describe_audit_study(*write_dp_audit_study(args.sweep_dir)))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
