"""The privacy-utility study: what each defense costs in accuracy and what it buys in privacy.

A study is a Hydra multirun whose jobs differ by their defense setting, e.g. the sweep over
the ``setting`` group of ``experiment=privacy_utility`` (configs/setting/: one file per
defense on top of a shared base recipe). :func:`write_privacy_utility` reads every job's
``results.json`` (through :func:`mia_torch.report.sweep_jobs.collect_jobs`) and writes, into the
sweep directory:

- ``privacy_utility.csv`` and ``privacy_utility.md``: one row per setting: the targets'
  test and train accuracy (mean over targets), the strongest attack of that setting (the
  highest pooled TPR at ``fpr``, 1% by default; ties by AUC), its TPR there with the
  Clopper–Pearson 95% interval, its AUC with the bootstrap 95% interval, the accountant's
  ε (DP-SGD, mean over targets), the largest empirical lower bound on ε over the attacks,
  the targets' ECE and member vs non-member confidence gap, and the change in accuracy and
  TPR against the undefended setting (``none``);
- ``privacy_utility.png``: test accuracy against the strongest attack's TPR at ``fpr`` and
  against its AUC (:func:`mia_torch.report.privacy_utility_plot.privacy_utility_figure`).

A setting is named by its ``setting=`` override, or by the job's swept overrides.
:class:`PrivacyUtilityCallback` writes the files when the multirun ends;
``scripts/privacy_utility.py <sweep_dir>`` rebuilds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mia_torch.atomic import atomic_open
from mia_torch.report.html.sweeps import write_sweep_html
from mia_torch.report.privacy_utility_points import (
    ACCURACY_BUDGET,
    STUDY_FPR,
    StudyPoint,
    costs_more_than_it_buys,
    recommend,
    reference_point,
    study_points,
)
from mia_torch.report.sweep import csv_text, report_after_sweep, summary_table
from mia_torch.report.sweep_jobs import SweepJob, collect_jobs
from mia_torch.report.table import format_interval, format_number

__all__ = ["PrivacyUtilityCallback", "PrivacyUtilityStudy", "describe_study", "read_privacy_utility",
           "write_privacy_utility"]


CSV_NAME = "privacy_utility.csv"
MARKDOWN_NAME = "privacy_utility.md"
FIGURE_NAME = "privacy_utility.png"


@dataclass
class PrivacyUtilityStudy:
    """What :func:`write_privacy_utility` wrote and found; ``accuracy_budget`` is the accuracy a defense may cost
    for :attr:`recommended` to pick it."""

    sweep_dir: Path
    fpr: float
    points: list[StudyPoint]
    missing: list[tuple[str, str]]
    csv: Path
    markdown: Path
    figure: Path | None
    accuracy_budget: float = ACCURACY_BUDGET
    html: Path | None = None

    @property
    def reference(self) -> StudyPoint | None:
        """The undefended setting (:func:`reference_point`)."""
        return reference_point(self.points)

    @property
    def recommended(self) -> StudyPoint | None:
        """The most private setting within the accuracy budget (:func:`recommend`)."""
        return recommend(self.points, accuracy_budget=self.accuracy_budget)

    @property
    def accuracy_floor(self) -> float | None:
        """The lowest test accuracy the budget allows (from no defense, else the most accurate setting)."""
        base = self.reference or max(self.points, key=lambda p: p.test_acc, default=None)
        return None if base is None else base.test_acc - self.accuracy_budget

    def beyond_budget(self) -> list[StudyPoint]:
        """Settings more private than the recommended one that cost more accuracy than the budget allows."""
        best, floor = self.recommended, self.accuracy_floor
        return [] if best is None or floor is None else [p for p in self.points if p.tpr < best.tpr and p.test_acc < floor]

    def paying_for_nothing(self) -> list[StudyPoint]:
        """Settings that :func:`costs_more_than_it_buys` against the undefended setting."""
        return [p for p in self.points if costs_more_than_it_buys(p, self.reference)]


CSV_COLUMNS = ["setting", "kind", "defense", "output", "train_acc", "test_acc", "test_acc_std", "attack",
               "tpr", "tpr_low", "tpr_high", "auc", "auc_low", "auc_high", "dp_epsilon", "empirical_epsilon",
               "ece", "confidence_gap", "costs_more_than_it_buys", "job", "dir"]


def _csv_row(p: StudyPoint, reference: StudyPoint | None) -> dict[str, Any]:
    auc_low, auc_high = p.auc_ci if p.auc_ci is not None else (None, None)
    return {"setting": p.setting, "kind": p.kind, "defense": p.defense, "output": p.output,
            "train_acc": p.train_acc, "test_acc": p.test_acc, "test_acc_std": p.test_acc_std, "attack": p.attack,
            "tpr": p.tpr, "tpr_low": p.tpr_ci[0], "tpr_high": p.tpr_ci[1], "auc": p.auc, "auc_low": auc_low,
            "auc_high": auc_high, "dp_epsilon": p.epsilon, "empirical_epsilon": p.empirical_epsilon, "ece": p.ece,
            "confidence_gap": p.confidence_gap, "costs_more_than_it_buys": costs_more_than_it_buys(p, reference),
            "job": p.job, "dir": str(p.path)}


def _cell(value: float | None, fmt: str = ".3f") -> str:
    return "—" if value is None else format_number(value, fmt)


def _versus(p: StudyPoint, reference: StudyPoint | None) -> str:
    """Accuracy and TPR change against the undefended setting, flagged when accuracy is paid for nothing."""
    if reference is None or p is reference:
        return "—"
    text = f"{p.test_acc - reference.test_acc:+.3f} acc, {100 * (p.tpr - reference.tpr):+.2f} pts TPR"
    return text + (": accuracy paid, no privacy bought" if costs_more_than_it_buys(p, reference) else "")


def _markdown_text(study_dir: Path, points: Sequence[StudyPoint], missing: Sequence[tuple[str, str]],
                   fpr: float) -> str:
    at = f"{100 * fpr:g}% FPR"
    reference = reference_point(points)
    lines = [f"# Privacy-utility study: `{study_dir}`", "",
             f"{len(points)} setting(s). Per setting: the targets' mean test accuracy (± std over targets), and the "
             f"strongest attack (highest pooled TPR at {at}) with its TPR there (95% Clopper-Pearson interval) and "
             "its AUC (95% bootstrap interval); the change in accuracy and TPR against no defense. ε: the DP-SGD "
             "accountant's (spent, mean over targets) and the largest empirical 95% lower bound over the attacks. "
             "ECE on the targets' non-members; confidence gap = mean true-class probability on members minus "
             "non-members.",
             "",
             f"| setting | test acc | train acc | strongest attack | TPR@{at} [95% CI] | AUC [95% CI] | "
             "vs no defense | accountant ε | empirical ε | ECE | conf. gap |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in points:
        gap = "—" if p.confidence_gap is None else f"{100 * p.confidence_gap:.1f}%"
        lines.append(
            f"| {p.setting} | {p.test_acc:.3f} ± {p.test_acc_std:.3f} | {_cell(p.train_acc)} | {p.attack} | "
            f"{format_interval(100 * p.tpr, (100 * p.tpr_ci[0], 100 * p.tpr_ci[1]), '.2f')}% | "
            f"{format_interval(p.auc, p.auc_ci)} | {_versus(p, reference)} | {_cell(p.epsilon, '.2f')} | "
            f"{_cell(p.empirical_epsilon, '.2f')} | {_cell(p.ece)} | {gap} |")
    if missing:
        lines += ["", "## Settings without a point", ""] + [f"- `{name}`: {reason}" for name, reason in missing]
    return "\n".join(lines) + "\n"


def read_privacy_utility(sweep_dir: str | Path, jobs: Sequence[SweepJob], *, fpr: float = STUDY_FPR,
                         accuracy_budget: float = ACCURACY_BUDGET) -> PrivacyUtilityStudy:
    """The study of ``sweep_dir``'s ``jobs`` (:func:`~mia_torch.report.sweep.collect_jobs`), writing nothing: its
    files are those already there. ``ValueError`` when ``fpr`` is not in (0, 1) or the budget is negative."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr={fpr!r} must lie in (0, 1)")
    if not accuracy_budget >= 0:
        raise ValueError(f"accuracy_budget={accuracy_budget!r} must be >= 0 (test accuracy a defense may cost)")
    sweep_dir = Path(sweep_dir)
    points, missing = study_points(jobs, fpr=fpr)
    figure = sweep_dir / FIGURE_NAME
    return PrivacyUtilityStudy(sweep_dir=sweep_dir, fpr=fpr, points=points, missing=missing, csv=sweep_dir / CSV_NAME,
                               markdown=sweep_dir / MARKDOWN_NAME, figure=figure if figure.is_file() else None,
                               accuracy_budget=accuracy_budget)


def write_privacy_utility(sweep_dir: str | Path, *, fpr: float = STUDY_FPR,
                          accuracy_budget: float = ACCURACY_BUDGET) -> PrivacyUtilityStudy:
    """Write ``privacy_utility.{csv,md,png}`` and ``report.html`` into ``sweep_dir`` (see the module docstring).

    The PNG is skipped (``figure=None``) when no setting has a point. Files are written
    atomically. Raises like :func:`~mia_torch.report.sweep_jobs.collect_jobs` when there is no
    sweep, and like :func:`read_privacy_utility` for a bad ``fpr`` or ``accuracy_budget``.
    """
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    study = read_privacy_utility(sweep_dir, jobs, fpr=fpr, accuracy_budget=accuracy_budget)
    points, missing = study.points, study.missing
    csv_path, md_path = sweep_dir / CSV_NAME, sweep_dir / MARKDOWN_NAME
    reference = reference_point(points)
    with atomic_open(csv_path, "w", newline="") as fh:
        fh.write(csv_text(CSV_COLUMNS, [_csv_row(p, reference) for p in points]))
    with atomic_open(md_path, "w") as fh:
        fh.write(_markdown_text(sweep_dir, points, missing, fpr))
    figure_path = None
    if points:
        from mia_torch.report.plots import save_figure
        from mia_torch.report.privacy_utility_plot import privacy_utility_figure

        figure_path = save_figure(privacy_utility_figure(points, fpr=fpr), sweep_dir / FIGURE_NAME)
    study.figure = figure_path
    study.html = write_sweep_html(sweep_dir, jobs, summary_table(jobs), study=study)
    return study


def describe_study(study: PrivacyUtilityStudy) -> str:
    """A few lines: each setting's accuracy and leakage, and where the files are."""
    lines = [f"privacy-utility study of {len(study.points)} setting(s) (TPR at {100 * study.fpr:g}% FPR of the "
             "strongest attack):"]
    reference = reference_point(study.points)
    for p in study.points:
        lines.append(f"  {p.setting:<24} test acc {p.test_acc:.3f}  {p.attack:<14} TPR {100 * p.tpr:5.2f}%  "
                     f"AUC {p.auc:.3f}" + ("  (accuracy paid, no privacy bought)"
                                           if costs_more_than_it_buys(p, reference) else ""))
    lines += [f"  missing {name}: {reason}" for name, reason in study.missing]
    best = study.recommended
    if best is not None:
        lines.append(f"  recommended within {study.accuracy_budget:g} of test accuracy: {best.setting}")
    lines += [f"  {path}" for path in (study.csv, study.markdown, study.figure, study.html) if path is not None]
    return "\n".join(lines)


class PrivacyUtilityCallback(Callback):
    """Hydra callback: write the privacy-utility study into ``hydra.sweep.dir`` when a multirun ends.

    Registered by ``experiment=privacy_utility`` (``hydra.callbacks.privacy_utility``);
    ``fpr`` is the FPR of the comparison (default 1%), ``accuracy_budget`` the test accuracy a
    defense may cost for the page to recommend it (default 0.02). Single runs are untouched. A
    failure is reported but does not fail the finished sweep; rerun it with
    ``scripts/privacy_utility.py <sweep_dir>``.
    """

    def __init__(self, fpr: float = STUDY_FPR, accuracy_budget: float = ACCURACY_BUDGET) -> None:
        self.fpr = float(fpr)
        self.accuracy_budget = float(accuracy_budget)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the study of the sweep that just finished and print its points."""
        report_after_sweep(config, "privacy-utility study", "scripts/privacy_utility.py",
                           lambda sweep_dir: describe_study(write_privacy_utility(
                               sweep_dir, fpr=self.fpr, accuracy_budget=self.accuracy_budget)))
