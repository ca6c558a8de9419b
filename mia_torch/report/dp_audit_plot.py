"""The one-run DP audit's figures: a run's guesses' precision with the bound's curves; a study's bounds."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from mia_torch.report.plots import FIGURE_WIDTH, FONT_SIZE, new_figure
from mia_torch.report.types import RunResults

__all__ = ["dp_audit_figure", "dp_audit_study_figure"]


def dp_audit_figure(results: RunResults) -> Figure:
    """Precision of the r highest-scoring canaries guessed IN (and of r/2 IN + r/2 OUT) against r, log axis.

    Dashed: the precision r guesses need for the one-run bound (at the audit's Bonferroni
    level) to exceed the accountant's epsilon (a point above it refutes the claim) and the
    reported bound; dotted: e^eps / (1 + e^eps), the precision an eps-DP randomized response
    reaches on average at the accountant's epsilon. The cross marks the guesses that attain
    the bound.
    """
    audit = results.dp_audit
    if audit is None or audit.curve is None:
        raise ValueError("the run has no one-run DP audit to draw")
    curve = audit.curve
    fig = new_figure(FIGURE_WIDTH, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    r = np.asarray(curve.guesses, dtype=float)
    ax.plot(r, curve.precision, color="C0", lw=2, label="top r guessed IN")
    ax.plot(r, curve.two_sided, color="C1", lw=2, label="r/2 IN (top) + r/2 OUT (bottom)")
    for i, (label, needed) in enumerate(curve.needed.items()):
        ax.plot(r, needed, color=f"C{i + 2}", ls="--", lw=1.5, label=f"needed to exceed {label}")
    claimed = audit.accountant_epsilon(results)
    if claimed is not None and math.isfinite(claimed):
        ax.axhline(1 / (1 + math.exp(-claimed)), color="grey", ls=":", lw=1.5,
                   label=f"ε-DP randomized response at ε = {claimed:.2f}")
    best = audit.one_run
    if best.guesses > 0:
        ax.plot([best.guesses], [best.correct / best.guesses], "kx", ms=10, mew=2,
                label=f"one-run ε ≥ {best.epsilon:.2f} ({best.correct}/{best.guesses})")
    ax.axhline(0.5, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0.4, 1.02)
    ax.set_xlabel("guesses r", fontsize=FONT_SIZE)
    ax.set_ylabel("precision (fraction right)", fontsize=FONT_SIZE)
    ax.set_title(f"{audit.kind} canaries (m = {audit.canaries}), {audit.score}; δ = {audit.delta:.2g}",
                 fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE - 3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_SIZE - 5, loc="lower left")
    return fig


def dp_audit_study_figure(points: Sequence[Any]) -> Figure:
    """One panel per canary kind: each seed's one-run, Gaussian-DP and pooled empirical epsilon per setting.

    ``points`` are :class:`mia_torch.dp_audit.study.AuditPoint` (in setting order). The
    accountant's epsilon is a black bar (an arrow at the top when infinite); settings
    without DP-SGD have none.
    """
    settings = list(dict.fromkeys(p.setting for p in points))
    kinds = list(dict.fromkeys(p.kind for p in points))
    finite = [v for p in points for v in (p.one_run, p.gaussian, p.pooled, p.accountant, p.one_run_ceiling)
              if v is not None and math.isfinite(v)]
    top = 1.1 * max(finite + [1.0])
    fig = new_figure(max(FIGURE_WIDTH, 3.2 * len(kinds)), 4.8)
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    marks = (("one_run", "o", "C0", "one-run ε"), ("gaussian", "^", "C1", "Gaussian-DP ε"),
             ("pooled", "x", "C2", "pooled empirical ε"))
    for ax, kind in zip(axes, kinds):
        for x, setting in enumerate(settings):
            group = [p for p in points if p.kind == kind and p.setting == setting]
            for shift, (field, marker, color, label) in zip((-0.2, 0.0, 0.2), marks):
                values = [getattr(p, field) for p in group if getattr(p, field) is not None]
                ax.plot([x + shift] * len(values), values, marker, color=color, ms=7, mfc="none",
                        label=label if x == 0 else None)
            claimed = next((p.accountant for p in group if p.accountant is not None), None)
            if claimed is not None and math.isfinite(claimed):
                ax.plot([x - 0.35, x + 0.35], [claimed] * 2, color="black", lw=2.5,
                        label="accountant's ε" if x == len(settings) - 1 else None)
            elif claimed is not None:
                ax.annotate("ε = ∞", (x, top), ha="center", va="top", fontsize=FONT_SIZE - 4)
        ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=FONT_SIZE - 5)
        ax.set_title(f"{kind} canaries", fontsize=FONT_SIZE - 2)
        ax.set_ylim(-0.03 * top, top)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("ε (95% lower bounds)", fontsize=FONT_SIZE - 2)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=FONT_SIZE - 5)
    return fig
