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

from mia_torch.metrics.roc import tpr_at_fpr

from mia_torch.atomic import atomic_write_bytes

__all__ = ["roc_figure", "save_figure", "figure_to_array", "MIN_LOG_FPR"]

#: Lowest FPR shown on the log-log panel (the left edge is never below this).
MIN_LOG_FPR = 1e-5


def _check_curve(name: str, fpr: np.ndarray, tpr: np.ndarray) -> None:
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size < 2:
        raise ValueError(f"curve {name!r}: fpr and tpr must be 1-D arrays of equal length >= 2")
    if not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        raise ValueError(f"curve {name!r}: fpr and tpr must be finite")


def roc_figure(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], *, title: str = ""
) -> Figure:
    """Overlay the ROC curves of several attacks on two panels: log-log and linear.

    ``curves`` maps an attack name to ``(fpr, tpr, auc)``. The log-log panel spans FPR
    from the smallest non-zero FPR among the curves (1 / number of non-members) but not
    below :data:`MIN_LOG_FPR`, up to 1; points at FPR or TPR 0 are drawn at that left /
    bottom edge. Both panels carry the chance diagonal. Legend entries read
    ``name (AUC=0.xxx, TPR@0.1%=y.y%)``. Returns an Agg-backed figure.
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
        low_tpr = tpr_at_fpr(fpr, tpr, 1e-3)
        label = f"{name} (AUC={auc:.3f}, TPR@0.1%={100.0 * low_tpr:.1f}%)"
        prepared.append((fpr, tpr, label))
    lower = max(MIN_LOG_FPR, min_pos) if min_pos < 1.0 else MIN_LOG_FPR

    fig = Figure(figsize=(12, 5.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_log, ax_lin = fig.subplots(1, 2)
    for fpr, tpr, label in prepared:
        ax_log.plot(np.clip(fpr, lower, 1.0), np.clip(tpr, lower, 1.0), lw=1.5, label=label)
        ax_lin.plot(fpr, tpr, lw=1.5, label=label)
    ax_log.plot([lower, 1.0], [lower, 1.0], ls="--", color="grey", lw=1, label="chance")
    ax_lin.plot([0.0, 1.0], [0.0, 1.0], ls="--", color="grey", lw=1, label="chance")

    ax_log.set_xscale("log")
    ax_log.set_yscale("log")
    ax_log.set_xlim(lower, 1.0)
    ax_log.set_ylim(lower, 1.0)
    ax_log.set_title("ROC (log-log)")
    ax_lin.set_xlim(0.0, 1.0)
    ax_lin.set_ylim(0.0, 1.0)
    ax_lin.set_aspect("equal")
    ax_lin.set_title("ROC (linear)")
    for ax in (ax_log, ax_lin):
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(True, which="major", alpha=0.3)
    ax_lin.legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` with Agg and return its pixels as ``uint8[H, W, 3]``."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[:, :, :3])


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
