"""The per-record answer of an audit: ``records.csv`` and a printed summary."""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mia_torch.atomic import atomic_open
from mia_torch.audit.evidence import CAVEAT, RecordEvidence, verdicts
from mia_torch.report.check_results import AuditResult

__all__ = ["MAX_PRINTED", "describe_records", "write_records_csv"]

#: Up to this many candidates, the summary prints one line per record.
MAX_PRINTED = 10


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def write_records_csv(
    path: Path,
    *,
    ids: np.ndarray,
    source_ids: np.ndarray,
    classes: np.ndarray,
    evidence: RecordEvidence,
    scores: Mapping[str, np.ndarray],
    fpr: float,
    members: np.ndarray | None = None,
) -> Path:
    """One row per candidate (arrays already restricted to the candidates); written atomically."""
    verdict = verdicts(evidence.p_gaussian, fpr)
    header = ["id", "source_id", "class"] + (["member"] if members is not None else [])
    null = "out_references" if evidence.source == "references" else "calibration_records"
    header += [f"{name}_score" for name in scores] + ["phi", "p_gaussian", "p_rank", null]
    header += (["log_lr"] if evidence.log_lr is not None else []) + [f"verdict@fpr={fpr:g}"]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(len(ids)):
            row = [int(ids[i]), int(source_ids[i]), int(classes[i])]
            row += [int(members[i])] if members is not None else []
            row += [repr(float(s[i])) for s in scores.values()]
            row += [repr(float(evidence.phi[i])), repr(float(evidence.p_gaussian[i])),
                    repr(float(evidence.p_rank[i])), int(evidence.num_out[i])]
            row += [repr(float(evidence.log_lr[i]))] if evidence.log_lr is not None else []
            writer.writerow(row + [verdict[i]])
    return path


def false_flag_lines(audit: AuditResult) -> list[str]:
    """How many flags chance explains if a share π of the candidates are members, and the share of the flags that
    are then members (``audit.expected_false_flags``, ``audit.flagged_members``)."""
    if not audit.expected_false_flags:
        return []
    lines = ["  expected false flags if a share π of the candidates are members: "
             + ", ".join(f"{e:.1f} at π={100 * float(p):g}%" for p, e in audit.expected_false_flags.items())]
    if audit.flagged:
        lines.append(f"  so of the {audit.flagged} flagged, about "
                     + ", ".join(f"{share:.0%}" for share in audit.flagged_members.values())
                     + " are members (same priors; 0% means chance alone explains the flags)")
    return lines


def describe_records(
    ids: np.ndarray, classes: np.ndarray, evidence: RecordEvidence, *, fpr: float,
    audit: AuditResult, scores: Mapping[str, np.ndarray] | None = None, members: np.ndarray | None = None,
) -> str:
    """Lines for the printed summary: each record with its attack scores (few candidates), or the count flagged;
    with ``members`` (whether each candidate is a known member), the verdict's measured rates; from ``audit``, the
    run's answer, the false flags it expects at each membership prior."""
    verdict = verdicts(evidence.p_gaussian, fpr)
    flagged = int(np.count_nonzero(verdict == "member"))
    lines = [f"audit at FPR {fpr:g}: {flagged} of {len(ids)} candidate record(s) flagged as member"]
    lines += false_flag_lines(audit)
    gaussian, ranked = (("LiRA offline Gaussian", "OUT references") if evidence.source == "references" else
                        ("the quantile regression's Gaussian", "held-out public records"))
    if members is not None and members.any() and not members.all():
        hit, false = (int(np.count_nonzero(verdict[m] == "member")) for m in (members, ~members))
        lines.append(f"  known membership: {hit} of {int(members.sum())} members flagged; {false} of "
                     f"{int((~members).sum())} non-members flagged, a measured false-positive rate of "
                     f"{false / int((~members).sum()):.3g} for a verdict aimed at {fpr:g}")
    if len(ids) <= MAX_PRINTED:
        for i in range(len(ids)):
            lr = f", log LR {_fmt(evidence.log_lr[i])}" if evidence.log_lr is not None else ""
            lines.append(
                f"  record {int(ids[i])} (class {int(classes[i])}): {verdict[i]}; p = {_fmt(evidence.p_gaussian[i])} "
                f"({gaussian}), {_fmt(evidence.p_rank[i])} (rank among {int(evidence.num_out[i])} {ranked}){lr}")
            if scores:
                lines.append("    scores: " + ", ".join(f"{name} {_fmt(float(v[i]))}" for name, v in scores.items()))
    else:
        lines.append(f"  with no member among them, about {audit.expected_by_chance:.1f} would be flagged by chance")
    smallest = 1.0 / (1.0 + float(np.max(evidence.num_out))) if len(ids) else 1.0
    if smallest > fpr:
        more = "train more reference models (num_models)" if evidence.source == "references" else \
            "name more public records (audit.public)"
        lines.append(f"  note: with at most {int(np.max(evidence.num_out))} {ranked} the rank p-value cannot "
                     f"go below {smallest:.3g} > {fpr:g}; {more} for it to count")
    lines.append(f"  {CAVEAT}")
    return "\n".join(lines)
