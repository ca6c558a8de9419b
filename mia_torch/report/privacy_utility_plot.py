"""The privacy-utility figure: target test accuracy against the strongest attack's TPR at low FPR and AUC."""

from __future__ import annotations

import math
from typing import Any, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from mia_torch.report.plots import new_figure
from mia_torch.report.privacy_utility_points import StudyPoint, reference_point
from mia_torch.report.table import format_number

__all__ = ["KIND_COLORS", "privacy_utility_figure"]

#: Marker colour of each kind of setting.
KIND_COLORS = {"none": "black", "regularization": "tab:blue", "dp": "tab:red", "output": "tab:green"}
_KIND_LABELS = {"none": "no defense", "regularization": "regularization", "dp": "DP-SGD", "output": "output defense"}
#: Where a point's label may go, in points from the point, tried in order: nearest first, right before left.
_LABEL_SPOTS = tuple((round(r * math.cos(a)), round(r * math.sin(a)))
                     for r in (9, 22, 38, 56) for a in (math.radians(d) for d in (20, -20, 160, -160, 60, -60, 120, -120)))
_BAD_QUADRANT = "#f4cccc"


def _label(point: StudyPoint) -> str:
    if point.kind == "dp" and point.epsilon is not None:
        return f"{point.setting}\nε = {format_number(point.epsilon, '.2g')}"
    return point.setting


def _gap(box: Bbox, point: Any) -> float:
    """Distance in pixels from ``point`` (display coordinates) to the nearest edge of ``box`` (0 inside)."""
    return math.hypot(max(box.x0 - point[0], 0.0, point[0] - box.x1), max(box.y0 - point[1], 0.0, point[1] - box.y1))


def _place_labels(ax: Any, xs: Sequence[float], ys: Sequence[float], points: Sequence[StudyPoint]) -> None:
    """Label each point at the first spot of ``_LABEL_SPOTS`` inside the panel that overlaps no marker and no
    other label and is nearer its own point than any other, joined to its point by a thin line."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    centres = ax.transData.transform(list(zip(xs, ys)))
    taken = [Bbox.from_bounds(x - 6, y - 6, 12, 12) for x, y in centres]
    for i, (x, y, point) in enumerate(zip(xs, ys, points)):
        color = KIND_COLORS.get(point.kind, "grey")
        for dx, dy in _LABEL_SPOTS:
            text = ax.annotate(_label(point), (x, y), xytext=(dx, dy), textcoords="offset points",
                               ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top", fontsize=8.5,
                               color=color, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                                  "alpha": 0.8},
                               arrowprops={"arrowstyle": "-", "color": color, "lw": 0.8, "shrinkA": 0, "shrinkB": 4})
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the words only, not the line to the point
            own = _gap(box, centres[i])
            if (inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
                    and not any(box.overlaps(other) for other in taken)
                    and all(own < _gap(box, c) for j, c in enumerate(centres) if j != i)):
                break
            if (dx, dy) != _LABEL_SPOTS[-1]:
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
        ax.plot(x, y, "o", ms=8, color=color, zorder=4 if p.kind == "none" else 3)  # the reference on top
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
    fig.draw_without_rendering()  # the layout is final: labels are placed where they will be drawn
    fig.set_layout_engine("none")
    _place_labels(left, [p.test_acc for p in points], [100 * p.tpr for p in points], points)
    _place_labels(right, [p.test_acc for p in points], [p.auc for p in points], points)
    return fig
