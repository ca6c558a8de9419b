"""The jobs of a Hydra multirun sweep: each job's directory, swept overrides and typed results.

A sweep directory (``hydra.sweep.dir``) holds one subdirectory per job, each with the
job's ``.hydra/overrides.yaml`` and, once the job has finished its report,
``results.json``. :func:`collect_jobs` reads them all into :class:`SweepJob` (results as
:class:`~mia_torch.report.types.RunResults`); the sweep summary
(:mod:`mia_torch.report.sweep`), its figure (:mod:`mia_torch.report.sweep_plot`) and the
privacy-utility study (:mod:`mia_torch.report.privacy_utility`) read them from here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mia_torch.metrics.roc import tpr_key
from mia_torch.report.json_file import read_json
from mia_torch.report.types import AttackEvaluation, RunResults, fpr_of_key, reported_values

__all__ = ["SweepJob", "attack_metric_keys", "attack_value", "collect_jobs", "swept_keys"]

log = logging.getLogger(__name__)

_NUM = re.compile(r"(\d+)")


@dataclass
class SweepJob:
    """One job of a sweep: its directory, parsed overrides and results (None when missing)."""

    name: str
    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    results: RunResults | None = None
    missing_reason: str | None = None


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in _NUM.split(text)]


def _parse_overrides(lines: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """``key -> value as written`` and ``key -> typed value`` of a job's override strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    shown: dict[str, str] = {}
    typed: dict[str, Any] = {}
    for line in lines:
        line = str(line)
        try:
            override = parser.parse_override(line)
        except Exception:  # noqa: BLE001 - an odd override is still shown as written
            key, _, value = line.lstrip("+~").partition("=")
            shown[key], typed[key] = value, value
            continue
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        shown[key] = line.partition("=")[2]
        try:
            typed[key] = override.value()
        except Exception:  # noqa: BLE001
            typed[key] = shown[key]
    return shown, typed


def _job_dirs(sweep_dir: Path) -> list[Path]:
    found = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml")
             if p.parent.name == ".hydra" and ".submitit" not in p.parts}
    found |= {p.parent for p in sweep_dir.glob("*/results.json")}
    return sorted(found, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def _saved_stage(job_dir: Path) -> Any:
    """``stage`` of the job's saved config (``.hydra/config.yaml``), or None."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(job_dir / ".hydra" / "config.yaml").get("stage")
    except Exception:  # noqa: BLE001 - absent or unreadable: unknown
        return None


def collect_jobs(sweep_dir: str | Path) -> list[SweepJob]:
    """Every job under ``sweep_dir`` (directories with ``.hydra/overrides.yaml`` or ``results.json``).

    Jobs are ordered by their directory name (job numbers numerically). A job whose
    ``results.json`` is absent or unreadable gets ``results=None`` and a
    ``missing_reason``. Raises ``FileNotFoundError`` when ``sweep_dir`` does not exist
    and ``ValueError`` when it holds no job.
    """
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    jobs = []
    for path in _job_dirs(sweep_dir):
        name = path.relative_to(sweep_dir).as_posix()
        job = SweepJob(name=name if name != "." else path.name, path=path)
        overrides_file = path / ".hydra" / "overrides.yaml"
        if overrides_file.is_file():
            try:
                lines = OmegaConf.to_container(OmegaConf.load(overrides_file))
                job.overrides, job.values = _parse_overrides(lines if isinstance(lines, list) else [])
            except Exception as err:  # noqa: BLE001 - a broken file marks the job, not the sweep
                log.warning("cannot read %s: %s", overrides_file, err)
        results_file = path / "results.json"
        if results_file.is_file():
            try:
                job.results = RunResults.from_dict(read_json(results_file), path=str(results_file))
            except Exception as err:  # noqa: BLE001
                job.missing_reason = f"unreadable results.json ({err})"
        elif job.values.get("stage", _saved_stage(path)) == "train":
            job.missing_reason = "stage=train (trains models only, writes no results.json)"
        elif job.values.get("stage", _saved_stage(path)) == "attack":
            job.missing_reason = "stage=attack (scores its targets into the store; stage=report writes results.json)"
        else:
            job.missing_reason = "no results.json (job failed or has not finished)"
        jobs.append(job)
    if not jobs:
        raise ValueError(f"no Hydra jobs under {sweep_dir}: expected job folders with .hydra/overrides.yaml")
    return jobs


def swept_keys(jobs: Sequence[SweepJob]) -> list[str]:
    """Override keys whose value differs between jobs, in order of first appearance."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k in job.overrides if k not in keys)
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def attack_value(attack: AttackEvaluation | None, metric: str) -> float | None:
    """``auc``, ``tpr@<f>fpr`` (pooled over targets) or a reported field of ``attack``; None when absent."""
    if attack is None:
        return None
    if metric == "auc":
        return attack.pooled.auc
    fpr = fpr_of_key(metric)
    if fpr is not None:
        return attack.pooled.tpr.get(fpr)
    found = reported_values(attack).get(metric)
    return found[2] if found else None


def attack_metric_keys(jobs: Sequence[SweepJob]) -> tuple[list[str], list[str]]:
    """Attack names and metric keys over jobs: ``auc``, ``tpr@<f>fpr`` by decreasing FPR, reported fields."""
    attacks: list[str] = []
    fprs: set[float] = set()
    extra: list[str] = []
    for job in jobs:
        for name, attack in (job.results.attacks if job.results else {}).items():
            if name not in attacks:
                attacks.append(name)
            fprs.update(attack.pooled.tpr)
            extra += [k for k in reported_values(attack) if k not in extra]
    tprs = [tpr_key(f) for f in sorted(fprs, reverse=True)]
    return attacks, ["auc", *tprs, *extra]
