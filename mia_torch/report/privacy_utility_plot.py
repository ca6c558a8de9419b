"""The privacy-utility figure: target test accuracy against the strongest attack's TPR at low FPR and AUC."""

from __future__ import annotations

from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox

from mia_torch.report.plots import new_figure
from mia_torch.report.privacy_utility import StudyPoint, reference_point
from mia_torch.report.table import format_number

__all__ = ["KIND_COLORS", "privacy_utility_figure"]

#: Marker colour of each kind of setting.
KIND_COLORS = {"none": "black", "regularization": "tab:blue", "dp": "tab:red", "output": "tab:green"}
_KIND_LABELS = {"none": "no defense", "regularization": "regularization", "dp": "DP-SGD", "output": "output defense"}
#: Where a point's label may go, in points from the point: (dx, dy, horizontal alignment), tried in order.
_LABEL_SPOTS = ((7, 3, "left"), (7, -13, "left"), (-7, 3, "right"), (-7, -13, "right"), (0, 9, "center"),
                (0, -22, "center"), (12, 14, "left"), (-12, 14, "right"), (12, -26, "left"), (-12, -26, "right"))
_BAD_QUADRANT = "#f4cccc"


def _label(point: StudyPoint) -> str:
    if point.kind == "dp" and point.epsilon is not None:
        return f"{point.setting}\nε = {format_number(point.epsilon, '.2g')}"
    return point.setting


def _place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], points: Sequence[StudyPoint]) -> None:
    """Label each point at the first spot of ``_LABEL_SPOTS`` that overlaps no marker and no other label."""
    renderer = ax.figure.canvas.get_renderer()
    to_display = ax.transData.transform
    taken = [Bbox.from_bounds(*(to_display((x, y)) - 6), 12, 12) for x, y in zip(xs, ys)]
    for x, y, point in zip(xs, ys, points):
        color = KIND_COLORS.get(point.kind, "grey")
        for dx, dy, ha in _LABEL_SPOTS:
            text = ax.annotate(_label(point), (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha,
                               va="bottom", fontsize=8.5, color=color,
                               bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
            if (dx, dy, ha) != _LABEL_SPOTS[-1]:
                text.remove()
        taken.append(box)


def _panel(ax: Any, points: Sequence[StudyPoint], ys: list[float], errors: Sequence[tuple[float, float] | None], *,
           chance: float, ylabel: str) -> None:
    xs = [p.test_acc for p in points]
    for x, y, error, p in zip(xs, ys, errors, points):
        color = KIND_COLORS.get(p.kind, "grey")
        low, high = error if error is not None else (y, y)
        ax.errorbar(x, y, yerr=[[max(0.0, y - low)], [max(0.0, high - y)]], xerr=p.test_acc_std or None, fmt="none",
                    ecolor=color, alpha=0.45, capsize=3, lw=1)
        ax.plot(x, y, "o", ms=8, color=color, zorder=3)
    ax.axhline(chance, ls="--", color="grey", lw=1)
    low = min(x - p.test_acc_std for x, p in zip(xs, points))
    high = max(x + p.test_acc_std for x, p in zip(xs, points))
    pad = max(0.005, 0.06 * (high - low))
    ax.set_xlim(low - pad, high + 4 * pad)
    top = max(max(e[1] if e is not None else y, y) for e, y in zip(errors, ys))
    ax.set_ylim(min(chance, min(ys)) - 0.05 * (top - chance), top + 0.1 * (top - chance))
    reference = reference_point(points)
    if reference is not None:
        rx, ry = reference.test_acc, ys[points.index(reference)]
        ax.axvline(rx, ls=":", color="black", lw=1)
        ax.axhline(ry, ls=":", color="black", lw=1)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ax.fill_between([x0, rx], ry, y1, color=_BAD_QUADRANT, alpha=0.5, lw=0, zorder=0)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_xlabel("target test accuracy (mean ± std over targets)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    _place_labels(ax, xs, ys, points)


def privacy_utility_figure(points: Sequence[StudyPoint], *, fpr: float, title: str = "") -> Figure:
    """Two panels, one point per setting: test accuracy vs the strongest attack's TPR at ``fpr`` (Clopper–Pearson
    95% error bars) and vs its AUC (bootstrap 95% error bars; x error bars: std over targets).

    Colours mark the kind of setting and DP points carry the accountant's ε. Dotted lines
    cross at the undefended setting (``none``); the shaded quadrant left of and above it
    holds the defenses that cost accuracy and buy no privacy. Chance is dashed.
    """
    fig = new_figure(13.5, 6.0)
    left, right = fig.subplots(1, 2)
    at = f"{100 * fpr:g}% FPR"
    _panel(left, points, [100 * p.tpr for p in points], [(100 * p.tpr_ci[0], 100 * p.tpr_ci[1]) for p in points],
           chance=100 * fpr, ylabel=f"TPR at {at} of the strongest attack (%)")
    _panel(right, points, [p.auc for p in points], [p.auc_ci for p in points], chance=0.5,
           ylabel="AUC of the strongest attack")
    left.set_title(f"leakage at {at} (lower is more private)")
    right.set_title("AUC (lower is more private)")
    kinds = [k for k in KIND_COLORS if any(p.kind == k for p in points)]
    handles = [Line2D([], [], marker="o", ls="", color=KIND_COLORS[k], label=_KIND_LABELS[k]) for k in kinds]
    handles += [Line2D([], [], ls="--", color="grey", label="chance")]
    if reference_point(points) is not None:
        handles += [Line2D([], [], ls=":", color="black", label="no defense"),
                    Patch(color=_BAD_QUADRANT, label="less accurate and no more private")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title or f"Privacy vs utility: one point per setting, its strongest attack at {at}")
    return fig
