"""The printed summary of a run: setting, targets, one table row per attack, footnotes, slices,
privacy (accountant's and empirical ε), sanity."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from mia_torch.report.types import RELIABLE_FALSE_POSITIVES, Interval, RocMetrics, RunResults, reported_values

__all__ = ["aligned", "describe_setting", "format_interval", "format_number", "format_percent", "format_summary",
           "format_table", "precision_lines", "quantile_lines", "tpr_mark", "PROXY_CAVEAT", "UNRELIABLE_MARK",
           "UNRESOLVABLE_MARK"]

#: Appended to a TPR@FPR whose FPR is below 10/N (N non-members): fewer than 10 false positives.
UNRELIABLE_MARK = "*"
#: Appended instead when the FPR is below 1/N: the TPR at zero false positives.
UNRESOLVABLE_MARK = "**"
#: Printed when a target was audited from its outputs alone (``TargetResult.proxy_references``).
PROXY_CAVEAT = ("references: stand-ins trained by mia_torch with the configured model and train recipe, a proxy for "
                "the audited model's own architecture: every attack's strength is a lower bound")


def format_percent(value: float, digits: int = 2) -> str:
    """``value`` as a percentage with ``digits`` decimals (0.1234 -> ``12.34%``); ``nan`` when not finite."""
    return "nan" if not math.isfinite(value) else f"{100.0 * value:.{digits}f}%"


def format_number(value: float, fmt: str = ".3f") -> str:
    """``value`` in format ``fmt``; ``∞`` / ``-∞`` for infinities (e.g. DP-SGD without noise), ``nan`` for NaN."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format(value, fmt)


def format_interval(value: float, ci: Interval | None, fmt: str = ".3f") -> str:
    """``value [low, high]`` in format ``fmt`` (as :func:`format_number`); ``value`` alone without ``ci``."""
    text = format_number(value, fmt)
    return text if ci is None else f"{text} [{format_number(ci[0], fmt)}, {format_number(ci[1], fmt)}]"


def tpr_mark(metrics: RocMetrics, fpr: float) -> str:
    """``**`` when ``fpr`` is below 1/N, ``*`` when below 10/N, else empty (N non-members)."""
    if not metrics.is_resolvable(fpr):
        return UNRESOLVABLE_MARK
    return "" if metrics.is_reliable(fpr) else UNRELIABLE_MARK


def _tpr_cell(m: RocMetrics, fpr: float) -> str:
    if fpr not in m.tpr:
        return "-"
    text = format_percent(m.tpr[fpr]) + tpr_mark(m, fpr)
    if fpr in m.tpr_exact_ci:
        low, high = m.tpr_exact_ci[fpr]
        text += f" [{format_percent(low)[:-1]}, {format_percent(high)[:-1]}]"
    return text


def format_table(results: RunResults) -> str:
    """Aligned table, one row per attack (pooled over targets): AUC with its bootstrap interval,
    TPR at each FPR target with its Clopper–Pearson interval (marked when unreliable), balanced
    accuracy, and each reported per-attack field."""
    fprs: list[float] = []
    for attack in results.attacks.values():
        fprs += [f for f in attack.pooled.tpr if f not in fprs]
    fprs.sort(reverse=True)
    extra: dict[str, str] = {}
    for attack in results.attacks.values():
        extra.update({k: label for k, (label, _, _) in reported_values(attack).items()})
    header = ["attack", "AUC [95% CI]"] + [f"TPR@{100 * f:g}%FPR [95% CI]" for f in fprs] + ["bal. acc"]
    header += list(extra.values())
    table = [header]
    for name, attack in results.attacks.items():
        values = reported_values(attack)
        pooled = attack.pooled
        row = [name, format_interval(pooled.auc, pooled.ci.get("auc"))] + [_tpr_cell(pooled, f) for f in fprs]
        row.append(format_number(pooled.balanced_accuracy))
        row += [format_number(values[k][2], values[k][1]) if k in values else "-" for k in extra]
        table.append(row)
    return aligned(table)


def aligned(table: Sequence[Sequence[str]]) -> str:
    """Rows of cells as an aligned text table: the first row is the header (underlined), the first column
    left-aligned, the others right-aligned."""
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join([line(table[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in table[1:]])


def _footnotes(results: RunResults) -> list[str]:
    pooled = [a.pooled for a in results.attacks.values()]
    if not pooled:
        return []
    reference = min(pooled, key=lambda m: m.num_nonmembers)
    lines = [f"resolvable FPR: 1/N = {format_percent(reference.resolvable_fpr, 3)} with N = "
             f"{reference.num_nonmembers} non-members (pooled over {len(results.target_ids)} target(s)); "
             f"intervals: AUC bootstrap, TPR Clopper-Pearson on the {reference.num_members} members"]
    if any(not m.is_reliable(f) for m in pooled for f in m.tpr):
        lines.append(f"{UNRELIABLE_MARK} unreliable: FPR below {RELIABLE_FALSE_POSITIVES}/N = "
                     f"{format_percent(reference.reliable_fpr, 3)} "
                     f"(fewer than {RELIABLE_FALSE_POSITIVES} false positives)")
    if any(not m.is_resolvable(f) for m in pooled for f in m.tpr):
        lines.append(f"{UNRESOLVABLE_MARK} below the resolvable FPR 1/N = "
                     f"{format_percent(reference.resolvable_fpr, 3)}: not measurable with N non-members; "
                     "this is the TPR at zero false positives")
    return lines


def _slices_line(results: RunResults) -> list[str]:
    name = results.strongest_attack()
    attack = results.attacks.get(name) if name else None
    if attack is None or not attack.slices:
        return []
    parts = []
    exposed = attack.most_exposed_class()
    if exposed is not None:
        parts.append(f"most exposed class {exposed.name.removeprefix('class=')} "
                     f"(AUC {format_number(exposed.metrics.auc)} vs {format_number(attack.pooled.auc)} overall, "
                     f"{exposed.num_members} members)")
    for piece in attack.slices:
        if piece.kind == "classification" and piece.metrics is not None:
            parts.append(f"{piece.name} AUC {format_number(piece.metrics.auc)}")
    lines = [f"slices ({name}, the strongest attack): " + "; ".join(parts or ["none evaluated"])]
    skipped = [s for s in attack.slices if s.skipped]
    if skipped:
        lines.append("  skipped slices: " + "; ".join(f"{s.name}: {s.skipped}" for s in skipped))
    return lines


def _epsilon_text(value: Any) -> str:
    """A configured ε: a number, or ``∞`` (``.inf``, written as null in ``results.json``)."""
    return "∞" if value is None else format_number(float(value), "g")


def describe_setting(config: Mapping[str, Any], *, delta: float | None = None) -> str:
    """The defense and the served output of a run's resolved ``config``, in one line.

    E.g. ``defense: dpsgd (epsilon 1, delta 0.000667, max_grad_norm 0.5, applied to all
    models); output: topk (k 1)``. ``delta`` is the δ in effect when the config leaves it
    to the population size.
    """
    defense = dict(config.get("defense") or {"name": "none"})
    text = f"defense: {defense.get('name', 'none')}"
    if defense.get("name") == "dpsgd":
        used = defense.get("delta") if defense.get("delta") is not None else delta
        text += (f" (epsilon {_epsilon_text(defense.get('epsilon'))}, delta "
                 + ("1/population" if used is None else f"{used:.3g}")
                 + f", max_grad_norm {defense.get('max_grad_norm')}, applied to "
                 + ("the targets only" if defense.get("apply_to") == "target" else "all models") + ")")
    output = dict(config.get("output") or {"name": "logits"})
    params = ", ".join(f"{k} {v}" for k, v in output.items() if k != "name")
    return text + f"; output: {output.get('name', 'logits')}" + (f" ({params})" if params else "")


def _privacy_lines(results: RunResults) -> list[str]:
    """The accountant's ε (DP-SGD targets) beside the largest empirical lower bound over attacks."""
    bounds = {n: a.epsilon_bound for n, a in results.attacks.items() if a.epsilon_bound is not None}
    if not bounds:
        return []
    name = max(bounds, key=lambda n: bounds[n].epsilon)
    bound = bounds[name]
    spent = [t.dp_epsilon for t in results.targets.values() if t.dp_epsilon is not None]
    accountant = (f"accountant's ε {format_number(max(spent), '.2f')} (DP-SGD, largest over targets)" if spent
                  else "no accountant's ε (not trained with DP-SGD)")
    how = (f"{bound.confidence:.0%} lower bound from each attack's pooled ROC, Clopper-Pearson with a Bonferroni "
           "correction over its thresholds")
    if bound.epsilon > 0:
        found = (f"empirical ε ≥ {format_number(bound.epsilon, '.2f')} ({name}: TPR {format_percent(bound.tpr)} "
                 f"at FPR {format_percent(bound.fpr)}; {how})")
    else:
        found = f"empirical ε ≥ 0: no attack bounds ε above 0 ({how})"
    lines = [f"privacy at δ = {bound.delta:.3g}: {accountant}; {found}"]
    if spent and bound.epsilon > max(spent):
        lines.append("  THE EMPIRICAL LOWER BOUND EXCEEDS THE ACCOUNTANT'S ε: the training is not as private as "
                     "accounted (or the pooled examples are far from independent)")
    return lines


def precision_lines(results: RunResults) -> list[str]:
    """Of the records each attack flags, the share that are members, at each membership prior and FPR target
    (pooled ROC), with its exact interval: the auditor's precision."""
    points = [(p.prior, p.fpr_target) for a in results.attacks.values() for p in a.precision]
    columns = sorted(dict.fromkeys(points), key=lambda c: (-c[1], -c[0]))
    if not columns:
        return []
    header = ["precision of flags"] + [f"π={100 * prior:g}% @{100 * fpr:g}%FPR" for prior, fpr in columns]
    table = [header]
    for name, attack in results.attacks.items():
        cells = {(p.prior, p.fpr_target): p for p in attack.precision}
        row = [name]
        for column in columns:
            p = cells.get(column)
            row.append("-" if p is None else "none flagged" if math.isnan(p.ppv) else
                       f"{format_percent(p.ppv, 1)} [{format_percent(p.ppv_ci[0], 1)[:-1]}, "
                       f"{format_percent(p.ppv_ci[1], 1)[:-1]}]")
        table.append(row)
    return [aligned(table), "precision = π·TPR / (π·TPR + (1 − π)·FPR) at the ROC point of each FPR target, when a "
            "share π of the records asked about are members (95% interval, exact at that threshold)"]


#: How the summary names the quantile attack's regression models (``attack.quantile.model``).
REGRESSION_WORDS = {"target": "a regression network of the target's architecture", "mlp": "a regression MLP",
                    "hgb": "gradient-boosted quantile regression"}


def quantile_lines(results: RunResults) -> list[str]:
    """For each attack fitted on public records (quantile): what it trained on, what it was evaluated on, and
    its cost beside the reference models'."""
    references = [m for m in results.models if m.get("model") not in results.target_ids]
    timed = [float(m["train_seconds"]) for m in references if isinstance(m.get("train_seconds"), (int, float))]
    if timed:
        cost = (f"this run trained {len(references)} reference model(s) in {sum(timed):.1f} s "
                f"({sum(timed) / len(timed):.1f} s each)")
    else:
        cost = f"this run used {len(references)} reference model(s)" if references else \
            "this run trained no reference model"
    lines = []
    for name, attack in results.attacks.items():
        fitted = [row.fitted_params for row in attack.per_target if "num_public" in row.fitted_params]
        if not fitted:
            continue
        sources = ", ".join(f"{v} {k}" for k, v in fitted[0].get("public_sources", {}).items() if v)
        seconds = sum(float(f.get("fit_seconds", 0.0)) for f in fitted) / len(fitted)
        model = REGRESSION_WORDS.get(fitted[0].get("regression_model"), fitted[0].get("regression_model"))
        lines.append(f"{name}: {model} trained on "
                     f"{fitted[0]['num_public']} public non-member records per target ({sources}), never evaluated; "
                     f"evaluated on {attack.pooled.num_members} members and {attack.pooled.num_nonmembers} "
                     f"non-members (pooled); fitted in {seconds:.1f} s per target with no reference model "
                     f"({cost})")
    return lines


def format_summary(results: RunResults) -> str:
    """The summary printed at the end of a run (also what the README shows)."""
    spent_delta = next((t.dp_delta for t in results.targets.values() if t.dp_delta is not None), None)
    lines = [describe_setting(results.config, delta=spent_delta)]
    for target, info in results.targets.items():
        values = reported_values(info).values()
        lines.append(f"target {target}: " + ", ".join(f"{label} {format_number(v, fmt)}" for label, fmt, v in values))
    if any(t.proxy_references for t in results.targets.values()):
        lines.append(PROXY_CAVEAT)
    lines.append(format_table(results))
    lines += _footnotes(results)
    lines += _slices_line(results)
    lines += _privacy_lines(results)
    lines += quantile_lines(results)
    lines += precision_lines(results)
    if results.blind_baseline is not None:
        lines.append(results.blind_baseline.message())
    if results.dp_audit is not None:
        lines += results.dp_audit.summary_lines(results)
    checked = {n: a.sanity for n, a in results.attacks.items() if a.sanity is not None}
    if checked:
        failed = [n for n, s in checked.items() if not s.chance_in_ci]
        lines.append("sanity (untrained target, AUC should be 0.5): "
                     + ("ok" if not failed else f"0.5 OUTSIDE THE 99% INTERVAL for {', '.join(failed)}"))
    return "\n".join(lines)
