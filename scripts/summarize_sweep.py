#!/usr/bin/env python
"""Summarise a Hydra multirun sweep: `<sweep_dir>/sweep_summary.{csv,md,png}`.

The same summary the `SweepSummaryCallback` writes when a multirun ends, for sweeps
whose launching process did not run it (e.g. a SLURM array submitted and left, or a
sweep still in progress: unfinished jobs are listed as missing).

Usage: python scripts/summarize_sweep.py outputs/multirun/2024-05-01/12-00-00
Exit status: 0 when written (missing jobs included), 2 when there is no sweep there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mia_torch.refusal import status_of  # noqa: E402
from mia_torch.report.sweep import describe, write_sweep_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the summary, print where it is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep's hydra.sweep.dir (holds one folder per job)")
    args = parser.parse_args(argv)
    return status_of("summarize_sweep", lambda: print(describe(write_sweep_summary(args.sweep_dir))))


if __name__ == "__main__":
    sys.exit(main())
