"""Figures a researcher looks at: the confidence gap, the most exposed records, the slices.

Built on matplotlib's Agg canvas (no pyplot), sized and lettered to be read at their
native size in TensorBoard's image tab and as PNGs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from mia_torch.report.plots import FIGURE_WIDTH, FONT_SIZE, new_figure
from mia_torch.report.types import RunResults

__all__ = ["ImageSource", "confidence_figure", "exposed_records_figure", "slices_figure"]

#: The slice heatmap shows at most this many classes (the most exposed ones).
MAX_CLASS_ROWS = 20


@dataclass(frozen=True)
class ImageSource:
    """Normalised images ``x`` (``[N, C, H, W]``, any device) and the per-channel ``mean``/``std`` to undo it."""

    x: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, data: Any) -> "ImageSource | None":
        """The images of a dataset (``data.x``, ``data.mean``, ``data.std``), or None for non-image data.

        Data is an image when ``x`` is ``[N, C, H, W]`` with 1 or 3 channels and both sides
        larger than 1; tabular features (``[N, F]``) have no gallery.
        """
        shape = tuple(getattr(data.x, "shape", ()))
        if len(shape) != 4 or shape[1] not in (1, 3) or min(shape[2:]) < 2:
            return None
        return cls(data.x, tuple(getattr(data, "mean", ()) or ()), tuple(getattr(data, "std", ()) or ()))

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Images ``indices`` for display: float ``[K, H, W, C]`` in [0, 1]."""
        x = self.x[list(indices)]
        x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
        if len(self.mean) == x.shape[1] and len(self.std) == x.shape[1]:
            x = x * np.asarray(self.std)[None, :, None, None] + np.asarray(self.mean)[None, :, None, None]
        low = x.min(axis=(1, 2, 3), keepdims=True)
        high = x.max(axis=(1, 2, 3), keepdims=True)
        outside = (low < 0) | (high > 1)  # not a [0, 1] image after un-normalising: stretch it
        x = np.where(outside, (x - low) / np.maximum(high - low, 1e-12), x)
        return np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)


_GROUPS = (("members", "tab:red"), ("non-members", "tab:blue"))


def _histograms(ax: Any, member: np.ndarray, nonmember: np.ndarray, bins: np.ndarray, xlabel: str) -> None:
    for values, (_, color) in zip((member, nonmember), _GROUPS):
        ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=color)
        ax.hist(values, bins=bins, density=True, histtype="step", lw=2, color=color)
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE)
    ax.set_ylabel("density", fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 2)
    ax.grid(True, alpha=0.3)


def confidence_figure(confidence: np.ndarray, phi: np.ndarray, members: np.ndarray, *, title: str) -> Figure:
    """Member vs non-member histograms of the true-class confidence ``p_y`` and of φ = log(p_y / (1 - p_y)).

    ``confidence``, ``phi`` and boolean ``members`` are per evaluated example of one target.
    The top panel shows the confidence gap as it is; the bottom one spreads out the
    confident end (p_y near 1), where members and non-members pile up. The legend gives
    each group's size and means.
    """
    from matplotlib.patches import Patch

    members = np.asarray(members, dtype=bool)
    fig = new_figure(FIGURE_WIDTH, 10.5)
    ax_p, ax_phi = fig.subplots(2, 1)
    _histograms(ax_p, confidence[members], confidence[~members], np.linspace(0, 1, 41), "confidence p_y (true class)")
    finite = phi[np.isfinite(phi)]
    low, high = (np.percentile(finite, [0.5, 99.5]) if finite.size else (-1.0, 1.0))
    bins = np.linspace(low, high if high > low else low + 1.0, 41)
    _histograms(ax_phi, np.clip(phi[members], bins[0], bins[-1]), np.clip(phi[~members], bins[0], bins[-1]), bins,
                "φ = log(p_y / (1 − p_y))")
    ax_p.set_title("the confidence gap", fontsize=FONT_SIZE)
    ax_phi.set_title("logit scale: the confident end spread out", fontsize=FONT_SIZE)
    labels = []
    for (name, _), group in zip(_GROUPS, (members, ~members)):
        mean_phi = np.mean(phi[group & np.isfinite(phi)]) if np.any(group & np.isfinite(phi)) else math.nan
        labels.append(f"{name} (n={int(group.sum())}): mean p_y {np.mean(confidence[group]):.3f}, φ {mean_phi:.2f}")
    handles = [Patch(facecolor=color, edgecolor=color, alpha=0.5, lw=2) for _, color in _GROUPS]
    fig.legend(handles, labels, loc="outside lower center", fontsize=FONT_SIZE - 2)
    fig.suptitle(title, fontsize=FONT_SIZE + 1)
    return fig


def exposed_records_figure(
    images: np.ndarray,
    *,
    labels: Sequence[int],
    scores: Sequence[float],
    p_values: Sequence[float],
    record_ids: Sequence[int],
    title: str,
    columns: int = 4,
) -> Figure:
    """A grid of records (``images``: ``[K, H, W, C]`` in [0, 1]), each captioned with its id,
    label, attack score and empirical p-value."""
    count = len(images)
    rows = max(1, math.ceil(count / columns))
    fig = new_figure(FIGURE_WIDTH / 4 * columns, 2.3 * rows + 0.4 * (title.count("\n") + 1))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        image = images[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                  vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"#{record_ids[i]} label {labels[i]}\nscore {scores[i]:.3g}\np = {p_values[i]:.2g}",
                     fontsize=FONT_SIZE - 2)
    fig.suptitle(title, fontsize=FONT_SIZE)
    return fig


def _shown_slices(results: RunResults, attacks: Sequence[str]) -> tuple[list[str], str]:
    """Slice names for the heatmap, and a note when classes were left out: with more than
    :data:`MAX_CLASS_ROWS` classes, the most exposed ones under the strongest attack."""
    slices = results.attacks[attacks[0]].slices
    classes = [s.name for s in slices if s.kind == "class"]
    if len(classes) <= MAX_CLASS_ROWS:
        return [s.name for s in slices], ""
    strongest = results.attacks[results.strongest_attack() or attacks[0]]
    ranked = sorted((s for s in strongest.slices if s.kind == "class" and s.metrics is not None),
                    key=lambda s: -s.metrics.auc)
    shown = {s.name for s in ranked[:MAX_CLASS_ROWS]}
    names = [s.name for s in slices if s.name in shown or s.kind != "class"]
    return names, f"; the {len(shown)} most exposed of {len(classes)} classes"


def slices_figure(results: RunResults) -> Figure | None:
    """Heatmap of each attack's AUC (columns) on each slice (rows; skipped slices blank); None without slices."""
    attacks = [n for n, a in results.attacks.items() if a.slices]
    if not attacks:
        return None
    names, note = _shown_slices(results, attacks)
    auc = np.full((len(names), len(attacks)), np.nan)
    for j, name in enumerate(attacks):
        for i, slice_name in enumerate(names):
            piece = results.attacks[name].slice(slice_name)
            if piece is not None and piece.metrics is not None:
                auc[i, j] = piece.metrics.auc
    fig = new_figure(FIGURE_WIDTH, 0.45 * len(names) + 0.18 * max(len(a) for a in attacks) + 1.6)
    ax = fig.subplots()
    spread = max(0.05, float(np.nanmax(np.abs(auc - 0.5)))) if np.isfinite(auc).any() else 0.5
    image = ax.imshow(auc, cmap="RdBu_r", vmin=0.5 - spread, vmax=0.5 + spread, aspect="auto")
    small = FONT_SIZE - 2 if len(attacks) <= 6 else FONT_SIZE - 4
    for i in range(len(names)):
        for j in range(len(attacks)):
            dark = abs(auc[i, j] - 0.5) > 0.6 * spread
            ax.text(j, i, "–" if math.isnan(auc[i, j]) else f"{auc[i, j]:.2f}".lstrip("0"), ha="center", va="center",
                    fontsize=small, color="white" if dark else "black")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.replace("class=", "class ") for n in names], fontsize=FONT_SIZE - 3)
    ax.set_xticks(range(len(attacks)))
    ax.set_xticklabels(attacks, rotation=60, ha="right", rotation_mode="anchor", fontsize=FONT_SIZE - 3)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05)
    colorbar.set_label("AUC (0.5 = chance)", fontsize=FONT_SIZE - 2)
    colorbar.ax.tick_params(labelsize=FONT_SIZE - 3)
    ax.set_title(f"AUC per slice, pooled over targets\n(– = too few records{note})", fontsize=FONT_SIZE)
    return fig
