"""Confident models: statistics and attack scores keep their resolution where softmax saturates.

Logits with true-class margins of 20-80 make float32 (and, above ~37, float64) softmax
probabilities round to exactly 1, so a naive loss is 0 for most examples and members
and non-members tie. References here are computed with mpmath at 50 significant digits
from the same float32 logits, and compared by rank (the ROC only depends on the order).
"""
import math

import mpmath
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from mia_torch.attacks import LiRA, PopulationAttack, ReferenceSignals, RMIA, ShokriAttack, ThresholdAttack
from mia_torch.metrics import membership_metrics
from mia_torch.signals.stats import logit_scaled_confidence

mpmath.mp.dps = 50
FPRS = (0.01, 0.001)


def draw(n: int, c: int = 10, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and a random membership for n examples."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g), torch.rand(n, generator=g) < 0.5


def saturated_logits(labels: torch.Tensor, member: torch.Tensor, q: int, *, seed: int, low: float = 20.0,
                     c: int = 10) -> torch.Tensor:
    """float32 logits ``[n, q, c]``: true-class margin ~U(low, low + 50), +8 for members; other logits ~N(0, 2)."""
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    margin = low + 50 * torch.rand(n, generator=g) + 8 * member.float()
    z = 2 * torch.randn(n, q, c, generator=g)
    onehot = torch.nn.functional.one_hot(labels, c)[:, None, :]
    return (z + onehot * (margin[:, None, None] + torch.rand(n, q, 1, generator=g))).float()


def exact_statistics(z: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """Query-mean statistics of float32 logits ``[n, q, c]`` in 50-digit arithmetic."""
    out = {k: [] for k in ("loss", "confidence", "entropy", "modified_entropy", "phi")}
    for zn, y in zip(z.double().tolist(), labels.tolist()):
        acc = {k: mpmath.mpf(0) for k in out}
        for zq in zn:
            zq = [mpmath.mpf(v) for v in zq]
            e = [mpmath.exp(v) for v in zq]
            log_total = mpmath.log(mpmath.fsum(e))
            logp = [v - log_total for v in zq]  # log p_j, exact algebra
            p = [mpmath.exp(v) for v in logp]
            rest = 1 - p[y]  # 50 digits hold 1 - p_y down to ~1e-35 with 15 digits to spare
            acc["loss"] -= logp[y]
            acc["confidence"] += p[y]
            acc["entropy"] -= mpmath.fsum(pi * lpi for pi, lpi in zip(p, logp))
            acc["modified_entropy"] += -rest * logp[y] - mpmath.fsum(
                p[j] * mpmath.log1p(-p[j]) for j in range(len(p)) if j != y
            )
            acc["phi"] += logp[y] - mpmath.log(rest)
        for k in out:
            out[k].append(acc[k] / len(zn))
    return out


def ranks(values: list) -> np.ndarray:
    """Ranks 0..n-1 of exact values (distinct here), as float64: the exact order in floats."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = np.empty(len(values))
    r[order] = np.arange(len(values))
    return r


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    return float(tpr[fpr <= target].max())


SIGNS = {"loss": -1, "confidence": 1, "entropy": -1, "modified_entropy": -1, "phi": 1}


@pytest.fixture(scope="module")
def saturated():
    labels, member = draw(2000, seed=0)
    z = saturated_logits(labels, member, 2, seed=0)
    return z, labels, member, exact_statistics(z, labels)


def test_threshold_scores_are_distinct_exactly_ordered_and_give_the_exact_low_fpr_tpr(saturated):
    z, labels, member, exact = saturated
    naive_loss = torch.nn.functional.cross_entropy(z[:, 0], labels, reduction="none")
    assert (naive_loss == 0).float().mean() > 0.9  # the float32 route ties almost everything
    for name, sign in SIGNS.items():
        scores = ThresholdAttack(name).score(z, labels)
        assert scores.dtype == torch.float64
        s = scores.numpy()
        assert np.unique(s).size == s.size, name  # every example distinct
        exact_rank = ranks([sign * v for v in exact[name]])
        assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(exact_rank, kind="stable")), name
        fpr, tpr, _ = roc_curve(member.numpy(), exact_rank)
        ours = membership_metrics(s, member.numpy(), fpr_targets=FPRS)
        for target in FPRS:
            assert ours[f"tpr@{target:g}fpr"] == tpr_at(fpr, tpr, target), (name, target)
        assert ours[f"tpr@{0.001:g}fpr"] > 0, name  # a real signal at 0.1% FPR, not a tie at 0


def test_phi_is_exact_at_saturation(saturated):
    z, labels, _, exact = saturated
    phi = logit_scaled_confidence(z, labels[:, None]).mean(-1)
    np.testing.assert_allclose(phi.numpy(), [float(v) for v in exact["phi"]], rtol=1e-13)
    # the population attack and LiRA build on this phi: distinct scores for every example
    pop = PopulationAttack().score(z, labels)
    assert torch.equal(pop, phi)
    keep = torch.rand(4, 2000, generator=torch.Generator().manual_seed(1)) < 0.5
    ref = ReferenceSignals(torch.stack([saturated_logits(labels, k, 2, seed=1 + i) for i, k in enumerate(keep)]),
                           keep, labels)
    lira = LiRA(online=False).fit(ref).score(z, labels)
    assert lira.dtype == torch.float64 and torch.unique(lira).numel() == 2000


def exact_rmia_log_ratio(ref_z, keep, target_z, labels, *, online: bool, a: float, temperature: float) -> list:
    """log Pr(x | theta) - log Pr(x) in 50-digit arithmetic (probabilities averaged over queries)."""

    def mean_p(zn, y):
        ps = []
        for zq in zn:
            e = [mpmath.exp(mpmath.mpf(v) / temperature) for v in zq]
            ps.append(e[y] / mpmath.fsum(e))
        return mpmath.fsum(ps) / len(ps)

    out = []
    ref_list, keep_list = ref_z.double().tolist(), keep.tolist()
    for n, (zn, y) in enumerate(zip(target_z.double().tolist(), labels.tolist())):
        p_ref = [mean_p(ref_list[r][n], y) for r in range(len(ref_list))]
        if online:
            pr_x = mpmath.fsum(p_ref) / len(p_ref)
        else:
            outs = [p for p, k in zip(p_ref, keep_list) if not k[n]]
            pr_x = (1 + a) / 2 * mpmath.fsum(outs) / len(outs) + (1 - a) / 2
        out.append(mpmath.log(mean_p(zn, y)) - mpmath.log(pr_x))
    return out


@pytest.mark.parametrize("online, temperature", [(False, 1.0), (True, 1.0), (False, 2.0)])
def test_rmia_log_ratio_is_exact_for_confident_models(online, temperature):
    n = 200
    labels, member = draw(n, seed=2)
    keep = torch.zeros(4, n, dtype=torch.bool)
    keep[0], keep[2] = member, ~member
    keep[1], keep[3] = ~member, member  # every example has two IN and two OUT references
    ref_z = torch.stack([saturated_logits(labels, k, 2, seed=3 + r) for r, k in enumerate(keep)])
    target_z = saturated_logits(labels, member, 2, seed=2)
    ref = ReferenceSignals(ref_z, keep, labels)
    attack = RMIA(online=online, a=0.3, temperature=temperature).fit(ref)
    ours = attack.log_ratio(target_z, labels).numpy()
    exact = np.array([float(v) for v in exact_rmia_log_ratio(ref_z, keep, target_z, labels, online=online,
                                                               a=0.3, temperature=temperature)])
    np.testing.assert_allclose(ours, exact, rtol=1e-9, atol=1e-300)
    if temperature == 1.0 and online:
        # probabilities round to 1 here, yet the ratios keep their (tiny) values
        assert np.abs(exact).max() < 1e-6 and np.unique(ours).size == n


def test_shokri_logit_features_resolve_confident_outputs():
    # Margins of 40-98: every probability rounds to 1 or to ~0 even in float64; only the
    # log-odds features keep the members' +8 margin (a threshold on it reaches AUC ~0.65).
    r, n = 4, 1000
    labels, member = draw(n, seed=4)
    keep = torch.rand(r, n, generator=torch.Generator().manual_seed(5)) < 0.5
    ref = ReferenceSignals(torch.stack([saturated_logits(labels, k, 1, seed=10 + i, low=40) for i, k in enumerate(keep)]),
                           keep, labels)
    target_z = saturated_logits(labels, member, 1, seed=20, low=40)
    auc = {}
    for features in ("logit", "probability"):
        scores = ShokriAttack(features=features, epochs=100, seed=0).fit(ref).score(target_z, labels)
        fpr, tpr, _ = roc_curve(member.numpy(), scores.numpy())
        auc[features] = float(np.trapezoid(tpr, fpr))
    assert auc["logit"] > 0.6, auc
    assert auc["logit"] > auc["probability"] + 0.08, auc
