"""The one-run DP audit study: the accountant's epsilon against the one-run bounds over a sweep.

A multirun of ``experiment=dp_audit`` (over ``setting``, ``dp_audit.kind`` and ``seed``)
writes into its sweep directory, when it ends (:class:`DpAuditStudyCallback`, or
``scripts/dp_audit_study.py <sweep_dir>``):

- ``dp_audit_study.csv``: one row per job: setting, canary kind, seed, the accountant's
  epsilon, the one-run epsilon with its guesses and ceiling, the Gaussian-DP mu and
  epsilon, the pooled empirical epsilon of the study's own records and the test accuracy;
- ``dp_audit_study.md``: per setting and kind, over seeds: the mean and largest of each
  bound, and whether any exceeded the accountant's epsilon;
- ``dp_audit_study.png``: per canary kind, each bound of each seed against the setting,
  with the accountant's epsilon.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mia_torch.atomic import atomic_open
from mia_torch.report.sweep import csv_text, report_after_sweep
from mia_torch.report.sweep_jobs import SweepJob, collect_jobs

__all__ = ["AuditPoint", "DpAuditStudyCallback", "audit_points", "describe_audit_study", "write_dp_audit_study"]

CSV_NAME, MARKDOWN_NAME, FIGURE_NAME = "dp_audit_study.csv", "dp_audit_study.md", "dp_audit_study.png"


@dataclass(frozen=True)
class AuditPoint:
    """One job: its ``setting`` (``no DP`` or ``DP-SGD ε=...``), canary ``kind``, ``seed`` and measurements."""

    setting: str
    kind: str
    seed: int
    accountant: float | None
    one_run: float
    one_run_ceiling: float
    guesses: int
    correct: int
    gaussian_mu: float
    gaussian: float
    pooled: float | None
    test_acc: float | None
    job: str

    @property
    def exceeds(self) -> bool:
        """Whether the one-run epsilon exceeds the accountant's (the (epsilon, delta) claim refuted)."""
        return self.accountant is not None and self.one_run > self.accountant


def _setting(config: dict[str, Any]) -> tuple[str, tuple[int, float]]:
    """The job's setting label and its order (no DP first, then DP-SGD by decreasing epsilon)."""
    defense = config.get("defense") or {}
    if defense.get("name") != "dpsgd":
        return "no DP", (0, 0.0)
    eps = defense.get("epsilon")
    eps = math.inf if eps is None else float(eps)
    return f"DP-SGD ε={'∞' if math.isinf(eps) else format(eps, 'g')}", (1, -eps)


def audit_points(jobs: Sequence[SweepJob]) -> tuple[list[AuditPoint], list[tuple[str, str]]]:
    """``(points, missing)``: one point per job with a one-run audit, ordered by setting, kind and seed."""
    points, order, missing = [], {}, []
    for job in jobs:
        results = job.results
        if results is None or results.dp_audit is None:
            missing.append((job.name, job.missing_reason or "no dp_audit entry in results.json"))
            continue
        audit, (setting, rank) = results.dp_audit, _setting(results.config)
        order[setting] = rank
        points.append(AuditPoint(
            setting=setting, kind=audit.kind, seed=int(results.config.get("seed", 0)),
            accountant=audit.accountant_epsilon(results), one_run=audit.one_run.epsilon,
            one_run_ceiling=audit.one_run.ceiling, guesses=audit.one_run.guesses, correct=audit.one_run.correct,
            gaussian_mu=audit.gaussian.mu or 0.0, gaussian=audit.gaussian.epsilon,
            pooled=audit.pooled_epsilon(results), test_acc=results.mean_over_targets("test_acc"), job=job.name))
    points.sort(key=lambda p: (order[p.setting], p.kind, p.seed))
    return points, missing


CSV_COLUMNS = ["setting", "kind", "seed", "accountant_epsilon", "one_run_epsilon", "one_run_ceiling", "guesses",
               "correct", "gaussian_mu", "gaussian_epsilon", "pooled_epsilon", "test_acc", "exceeds", "job"]


def _csv_row(p: AuditPoint) -> dict[str, Any]:
    return {"setting": p.setting, "kind": p.kind, "seed": p.seed, "accountant_epsilon": p.accountant,
            "one_run_epsilon": p.one_run, "one_run_ceiling": p.one_run_ceiling, "guesses": p.guesses,
            "correct": p.correct, "gaussian_mu": p.gaussian_mu, "gaussian_epsilon": p.gaussian,
            "pooled_epsilon": p.pooled, "test_acc": p.test_acc, "exceeds": p.exceeds, "job": p.job}


def _eps(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def _groups(points: Sequence[AuditPoint]) -> dict[tuple[str, str], list[AuditPoint]]:
    groups: dict[tuple[str, str], list[AuditPoint]] = {}
    for p in points:
        groups.setdefault((p.setting, p.kind), []).append(p)
    return groups


def _mean_max(values: Sequence[float | None]) -> str:
    found = [v for v in values if v is not None]
    return "—" if not found else f"{statistics.fmean(found):.2f} / {max(found):.2f}"


def _markdown_text(sweep_dir: Path, points: Sequence[AuditPoint], missing: Sequence[tuple[str, str]]) -> str:
    lines = [f"# One-run DP audit study: `{sweep_dir}`", "",
             "Per setting and canary kind, over seeds: the accountant's ε, and the mean / largest of each 95% lower "
             "bound: the one-run ε (Steinke et al. 2023), its ceiling for the guesses made, the Gaussian-DP ε (f-DP "
             "one run, Mahloujifar et al. 2024) and the pooled empirical ε of the study's own records (a heuristic: "
             "the records of one model are not independent trials).", "",
             "| setting | canaries | seeds | accountant ε | one-run ε | ceiling | Gaussian-DP ε | pooled emp. ε | "
             "test acc | one-run ε > accountant |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (setting, kind), group in _groups(points).items():
        accountant = {p.accountant for p in group}
        acc = [p.test_acc for p in group if p.test_acc is not None]
        lines.append(
            f"| {setting} | {kind} | {len(group)} | {', '.join(sorted({_eps(a) for a in accountant}))} | "
            f"{_mean_max([p.one_run for p in group])} | {_mean_max([p.one_run_ceiling for p in group])} | "
            f"{_mean_max([p.gaussian for p in group])} | {_mean_max([p.pooled for p in group])} | "
            f"{statistics.fmean(acc):.3f} | " + (f"{sum(p.exceeds for p in group)} of {len(group)}"
                                                 if None not in accountant else "—") + " |")
    if missing:
        lines += ["", "## Jobs without an audit", ""] + [f"- `{name}`: {reason}" for name, reason in missing]
    return "\n".join(lines) + "\n"


def write_dp_audit_study(sweep_dir: str | Path) -> tuple[list[AuditPoint], list[tuple[str, str]], list[Path]]:
    """Write ``dp_audit_study.{csv,md,png}`` into ``sweep_dir``; ``(points, missing, files written)``.

    Raises like :func:`~mia_torch.report.sweep.collect_jobs` when there is no sweep there.
    """
    sweep_dir = Path(sweep_dir)
    points, missing = audit_points(collect_jobs(sweep_dir))
    written = [sweep_dir / CSV_NAME, sweep_dir / MARKDOWN_NAME]
    with atomic_open(written[0], "w", newline="") as fh:
        fh.write(csv_text(CSV_COLUMNS, [_csv_row(p) for p in points]))
    with atomic_open(written[1], "w") as fh:
        fh.write(_markdown_text(sweep_dir, points, missing))
    if points:
        from mia_torch.report.dp_audit_plot import dp_audit_study_figure
        from mia_torch.report.plots import save_figure

        written.append(save_figure(dp_audit_study_figure(points), sweep_dir / FIGURE_NAME))
    return points, missing, written


def describe_audit_study(points: Sequence[AuditPoint], missing: Sequence[tuple[str, str]],
                         written: Sequence[Path]) -> str:
    """A few lines: per setting and kind the largest one-run bound against the accountant's, and the files."""
    lines = [f"one-run DP audit study of {len(points)} job(s):"]
    for (setting, kind), group in _groups(points).items():
        lines.append(f"  {setting:<16} {kind:<11} accountant ε {_eps(group[0].accountant):>5}  largest one-run ε "
                     f"{max(p.one_run for p in group):.2f}, Gaussian-DP ε {max(p.gaussian for p in group):.2f} "
                     f"over {len(group)} seed(s)" + ("  EXCEEDS THE ACCOUNTANT" if any(p.exceeds for p in group)
                                                    else ""))
    lines += [f"  missing {name}: {reason}" for name, reason in missing]
    return "\n".join(lines + [f"  {path}" for path in written])


class DpAuditStudyCallback(Callback):
    """Hydra callback of ``experiment=dp_audit``: write the study into ``hydra.sweep.dir`` when a multirun ends
    (single runs are untouched; a failure is reported, never raised: rerun ``scripts/dp_audit_study.py``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the study of the sweep that just finished and print its summary."""
        report_after_sweep(config, "one-run DP audit study", "scripts/dp_audit_study.py",
                           lambda sweep_dir: describe_audit_study(*write_dp_audit_study(sweep_dir)))
