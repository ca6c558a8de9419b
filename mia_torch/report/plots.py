"""ROC figures: all attacks overlaid on log-log and linear axes.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no display, no global
figure registry), so they are safe in headless and multi-threaded runs.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mia_torch.metrics.roc import LEGEND_FPR, MAX_CURVE_POINTS, curve_points, tpr_at_fpr

from mia_torch.atomic import atomic_write_bytes

__all__ = ["FIGURE_WIDTH", "FONT_SIZE", "MAX_DRAWN_POINTS", "MIN_LOG_FPR", "drawn_points", "figure_to_array", "new_figure",
           "roc_figure", "save_figure", "save_png"]

#: Lowest FPR shown on the log-log panel (the left edge is never below this).
MIN_LOG_FPR = 1e-5
#: Width of every report figure in inches (at 100 dpi). TensorBoard's image tab shows an
#: image 350 pixels wide unless "Show actual image size" is ticked, so figures are narrow
#: and lettered large: FONT_SIZE points on 650 pixels read as about 11-pixel letters there.
FIGURE_WIDTH = 6.5
#: Base font size of every report figure, in points.
FONT_SIZE = 15


def new_figure(width: float, height: float) -> Figure:
    """An Agg-backed figure of ``width`` x ``height`` inches at 100 dpi (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_curve(name: str, fpr: np.ndarray, tpr: np.ndarray) -> None:
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size < 2:
        raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D arrays of equal length >= 2")
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        raise ValueError(f"curve {name!r}: fpr and tpr must be finite")


#: Most ROC points drawn per curve (see :func:`drawn_points`).
MAX_DRAWN_POINTS = MAX_CURVE_POINTS


def drawn_points(fpr: np.ndarray, tpr: np.ndarray, *, max_points: int = MAX_DRAWN_POINTS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The points of a ROC curve to draw (:func:`~mia_torch.metrics.roc.curve_points`)."""
    chosen = curve_points(fpr, max_points=max_points)
    return fpr[chosen], tpr[chosen]


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    *,
    title: str = "",
    reliable_fpr: float | None = None,
) -> Figure:
    """Overlay the ROC curves of several attacks on two panels: log-log and linear.

    ``curves`` maps an attack name to ``(fpr, tpr, auc)``. The log-log panel spans FPR
    from the smallest non-zero FPR among the curves (1 / number of non-members) but not
    below :data:`MIN_LOG_FPR`, up to 1; points at FPR or TPR 0 are drawn at that left /
    bottom edge. Both panels carry the chance diagonal. With ``reliable_fpr`` (10/N) the
    log-log panel shades the FPRs below it, where fewer than 10 false positives are
    allowed. Legend entries (below the panels) read ``name (AUC=0.xxx, TPR@0.1%=y.y%)``,
    the TPR at FPR 0.1%. The panels are stacked (log-log on top) in a :data:`FIGURE_WIDTH`
    wide figure, legible where TensorBoard shows it. A curve of more than :data:`MAX_DRAWN_POINTS`
    points is drawn through :func:`drawn_points` (its legend from every point).
    """
    prepared = []
    min_pos = 1.0
    for name, curve in curves.items():
        if len(curve) != 3:
            raise ValueError(f"curve {name!r} must be a (fpr, tpr, auc) tuple")
        fpr = np.asarray(curve[0], dtype=np.float64)
        tpr = np.asarray(curve[1], dtype=np.float64)
        _check_curve(name, fpr, tpr)
        auc = float(curve[2])
        pos = fpr[fpr > 0]
        if pos.size:
            min_pos = min(min_pos, float(pos.min()))
        low_tpr = tpr_at_fpr(fpr, tpr, LEGEND_FPR)
        label = f"{name} (AUC={auc:.3f}, TPR@0.1%={100.0 * low_tpr:.1f}%)"
        prepared.append((*drawn_points(fpr, tpr), label))
    lower = max(MIN_LOG_FPR, min_pos) if min_pos < 1.0 else MIN_LOG_FPR

    fig = new_figure(FIGURE_WIDTH, 11.5 + 0.3 * (len(prepared) + 2))
    ax_log, ax_lin = fig.subplots(2, 1)
    for fpr, tpr, label in prepared:
        ax_log.plot(np.clip(fpr, lower, 1.0), np.clip(tpr, lower, 1.0), lw=2, label=label)
        ax_lin.plot(fpr, tpr, lw=2)
    ax_log.plot([lower, 1.0], [lower, 1.0], ls="--", color="grey", lw=1, label="chance")
    ax_lin.plot([0.0, 1.0], [0.0, 1.0], ls="--", color="grey", lw=1)
    if reliable_fpr is not None and reliable_fpr > lower:
        ax_log.axvspan(lower, min(reliable_fpr, 1.0), color="grey", alpha=0.15, lw=0,
                       label="FPR < 10/N: < 10 false positives")

    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ax_log.set_xlim(lower, 1.0)
    ax_log.set_ylim(lower, 1.0)
    ax_log.set_title("log-log: the low-FPR regime", fontsize=FONT_SIZE)
    ax_lin.set_xlim(0.0, 1.0)
    ax_lin.set_ylim(0.0, 1.0)
    ax_lin.set_title("linear", fontsize=FONT_SIZE)
    for ax in (ax_log, ax_lin):
        ax.set_xlabel("false positive rate", fontsize=FONT_SIZE)
        ax.set_ylabel("true positive rate", fontsize=FONT_SIZE)
        ax.tick_params(labelsize=FONT_SIZE - 1)
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=FONT_SIZE - 1)
    fig.suptitle(f"ROC\n{title}" if title else "ROC", fontsize=FONT_SIZE + 1)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` with Agg and return its pixels as ``uint8[H, W, 3]``."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:, :, :3])


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> Path:
    """Save ``uint8[H, W, 3]`` pixels (e.g. from :func:`figure_to_array`) as PNG at ``path``, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
