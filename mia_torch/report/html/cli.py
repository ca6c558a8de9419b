"""``mia-report DIR``: rebuild ``DIR/report.html`` from a finished run's or sweep's files, recomputing nothing.

A run directory (with ``results.json``: a study, audit or forget check) gets the run's page; a
sweep directory (one folder per job) gets the sweep page, or the privacy-utility page when it
holds ``privacy_utility.csv``. Exit status: 0 when the page is written (files it would show
but cannot find or read are named, and the page says so where they would be), 2 when there is
nothing to build it from or it cannot be written (the message names the file and what is wrong).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "rebuild"]

#: Defaults of a privacy-utility study (as in :mod:`mia_torch.report.privacy_utility`, which imports the
#: metrics, scipy and torch: it is imported when a page is built, so that ``--help`` answers at once).
STUDY_FPR, ACCURACY_BUDGET = 0.01, 0.02


def _study_settings(sweep_dir: Path) -> dict[str, float]:
    """``fpr`` and ``accuracy_budget`` given to the sweep's privacy-utility callback (``multirun.yaml``), if any.

    Read as plain YAML, nothing resolved; a value that is absent, unreadable or not a number is left out.
    """
    import yaml

    try:
        with open(sweep_dir / "multirun.yaml", encoding="utf-8") as handle:
            callback = yaml.safe_load(handle)["hydra"]["callbacks"]["privacy_utility"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    if not isinstance(callback, dict):
        return {}
    return {k: float(v) for k, v in callback.items()
            if k in ("fpr", "accuracy_budget") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_sweep(directory: Path) -> bool:
    """Whether ``directory`` is a sweep's (Hydra's ``multirun.yaml``, or job folders) rather than one run's."""
    if (directory / "results.json").is_file():
        return False
    return (directory / "multirun.yaml").is_file() or any(
        (child / ".hydra").is_dir() or (child / "results.json").is_file() for child in directory.iterdir()
        if child.is_dir())


def rebuild(directory: Path, *, fpr: float | None = None, accuracy_budget: float | None = None) -> tuple[Path, list[str]]:
    """Write ``directory/report.html``; returns its path and the files it shows as missing or unreadable.

    Raises ``FileNotFoundError`` or ``ValueError`` (:class:`~mia_torch.report.html.page.ReportInputError` among
    them), naming what is wrong.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory: give a run directory (holding results.json) or a "
                                "sweep directory (one folder per job)")
    from mia_torch.report.html.page import build_run_page, render_run_page
    from mia_torch.report.html.render import write_page
    from mia_torch.report.html.sweeps import write_sweep_html
    from mia_torch.report.privacy_utility import CSV_NAME, read_privacy_utility
    from mia_torch.report.sweep import summary_table
    from mia_torch.report.sweep_jobs import collect_jobs

    if not _is_sweep(directory):
        page = build_run_page(directory)
        return write_page(directory / "report.html", render_run_page(page)), [str(directory / p) for p in page.problems]
    jobs = collect_jobs(directory)
    study = None
    if (directory / CSV_NAME).is_file():
        given = _study_settings(directory)
        study = read_privacy_utility(directory, jobs, fpr=fpr if fpr is not None else given.get("fpr", STUDY_FPR),
                                     accuracy_budget=accuracy_budget if accuracy_budget is not None
                                     else given.get("accuracy_budget", ACCURACY_BUDGET))
    return write_sweep_html(directory, jobs, summary_table(jobs), study=study), []


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, rebuild the page, say where it is (exit 0) or what is missing (exit 2)."""
    parser = argparse.ArgumentParser(prog="mia-report", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a run directory (results.json) or a sweep directory")
    parser.add_argument("--fpr", type=float, default=None,
                        help=f"privacy-utility studies: compare attacks at this FPR (default: the study's, else "
                             f"{STUDY_FPR})")
    parser.add_argument("--accuracy-budget", type=float, default=None,
                        help="privacy-utility studies: test accuracy a recommended defense may cost against no "
                             f"defense (default: the study's, else {ACCURACY_BUDGET})")
    args = parser.parse_args(argv)
    try:
        path, problems = rebuild(args.directory, fpr=args.fpr, accuracy_budget=args.accuracy_budget)
    except (OSError, ValueError) as err:  # a ReportInputError is a ValueError
        print(f"mia-report: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"mia-report: {problem}; the page says so where it would be shown", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
