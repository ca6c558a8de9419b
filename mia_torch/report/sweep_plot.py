"""The sweep summary's figure: attack metrics against each swept parameter."""

from __future__ import annotations

import math
from typing import Any, Sequence

from mia_torch.report.plots import new_figure
from mia_torch.report.sweep_jobs import SweepJob, attack_metric_keys, attack_value, swept_keys
from mia_torch.report.types import fpr_of_key

__all__ = ["MAX_LINES_PER_PANEL", "sweep_figure"]

#: Above this many lines per panel, the other swept keys are averaged out instead.
MAX_LINES_PER_PANEL = 12


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _axis(values: Sequence[Any], labels: Sequence[str]) -> tuple[str, list[float], list[str]]:
    """``(scale, x positions, tick labels)`` for swept ``values`` (shown as ``labels``).

    ``scale`` is ``"log"`` for positive numbers spanning more than a decade,
    ``"linear"`` for other numbers and ``"category"`` otherwise (ticks in order of
    first appearance; tick labels are only returned for categories).
    """
    if values and all(_is_number(v) for v in values):
        numbers = [float(v) for v in values]
        if all(v > 0 for v in numbers) and max(numbers) / min(numbers) > 10.0:
            return "log", numbers, []
        return "linear", numbers, []
    order = list(dict.fromkeys(labels))
    return "category", [float(order.index(v)) for v in labels], order


def sweep_figure(jobs: Sequence[SweepJob], *, title: str = "") -> Any:
    """AUC and TPR at the lowest FPR vs each swept key, one line per attack; None without results.

    One row of two panels per swept key (the job name is the x axis when nothing is
    swept). With several swept keys, each panel has one line per attack and combination
    of the other keys' values, or, above :data:`MAX_LINES_PER_PANEL` lines, one line
    per attack averaging over the other keys. Returns an Agg-backed figure.
    """
    done = [job for job in jobs if job.results is not None]
    if not done:
        return None
    keys = swept_keys(jobs) or ["job"]
    attacks, metrics = attack_metric_keys(done)
    tprs = [m for m in metrics if fpr_of_key(m) is not None]
    low_tpr = min(tprs, key=lambda m: fpr_of_key(m) or 1.0) if tprs else None
    panels = [("auc", "AUC")] + ([(low_tpr, f"TPR @ {100 * (fpr_of_key(low_tpr) or 0):g}% FPR")] if low_tpr else [])

    def value_of(job: SweepJob, key: str) -> tuple[Any, str]:
        if key == "job":
            return job.name, job.name
        shown = job.overrides.get(key)
        return job.values.get(key, shown), "(unset)" if shown is None else shown

    fig = new_figure(5.5 * len(panels), 3.8 * len(keys))
    axes = fig.subplots(len(keys), len(panels), squeeze=False)
    for row_axes, key in zip(axes, keys):
        others = [k for k in keys if k != key]
        pairs = [value_of(job, key) for job in done]
        scale, xs, ticks = _axis([p[0] for p in pairs], [p[1] for p in pairs])
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, job in enumerate(done):
            groups.setdefault(tuple(f"{k}={job.overrides.get(k)}" for k in others), []).append(i)
        average = len(groups) * len(attacks) > MAX_LINES_PER_PANEL
        if average:
            groups = {("mean over " + ", ".join(others),): list(range(len(done)))}
        for ax, (metric, label) in zip(row_axes, panels):
            for name in attacks:
                for group, members in groups.items():
                    points: dict[float, list[float]] = {}
                    for i in members:
                        value = attack_value(done[i].results.attacks.get(name), metric)
                        if _is_number(value):
                            points.setdefault(xs[i], []).append(float(value))
                    if not points:
                        continue
                    px = sorted(points)
                    py = [sum(points[x]) / len(points[x]) for x in px]
                    suffix = f" ({', '.join(group)})" if group and (len(groups) > 1 or average) else ""
                    ax.plot(px, py, marker="o", lw=1.5, label=f"{name}{suffix}")
            if metric == "auc":
                ax.axhline(0.5, ls="--", color="grey", lw=1, label="chance")
            elif fpr_of_key(metric) is not None:
                ax.axhline(fpr_of_key(metric), ls="--", color="grey", lw=1, label="chance")
            if scale == "log":
                ax.set_xscale("log")
            elif scale == "linear" and len(set(xs)) <= 10:
                ax.set_xticks(sorted(set(xs)))
            elif scale == "category":
                long = max(len(t) for t in ticks) > 8
                ax.set_xticks(range(len(ticks)))
                ax.set_xlim(-0.5, len(ticks) - 0.5)
                ax.set_xticklabels(ticks, rotation=30 if long else 0, ha="right" if long else "center")
            ax.set_xlabel(key)
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs {key}")
            ax.grid(True, alpha=0.3)
        row_axes[-1].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig
