"""The quantile-regression attack against cases with a known answer.

A synthetic target whose non-member score on a record is Gaussian with a mean and spread
that depend on the record, and whose members score ``d`` spreads higher: the optimal test
is the standardised residual, with AUC Phi(d / sqrt 2). A raw threshold on the score, which
ignores each record's own difficulty, does much worse.
"""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mia_torch.attacks.quantile import QuantileAttack, hinge, split_public
from mia_torch.metrics import auc_score, roc_curve
from mia_torch.models.cnn import SmallCNN

SHIFT = 1.0
OPTIMAL_AUC = norm.cdf(SHIFT / math.sqrt(2))  # 0.760


def _factors(n: int, seed: int) -> torch.Tensor:
    """What a record's difficulty depends on: two factors uniform in [-1, 1] per record."""
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 2)))


def _table(factors: torch.Tensor) -> torch.Tensor:
    """Tabular records: the two factors and a column of noise."""
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (len(factors), 1)))
    return torch.cat([factors, noise], 1).float()


def _images(factors: torch.Tensor) -> torch.Tensor:
    """8x8 images: brightness from the first factor, contrast between top and bottom halves from the second."""
    sign = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    sign[..., 4:, :] = -1
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (len(factors), 1, 8, 8)))
    return (factors[:, 0, None, None, None] + factors[:, 1, None, None, None] * sign + noise).float()


def _target(factors: torch.Tensor, members: np.ndarray, seed: int) -> torch.Tensor:
    """Served logits [N, 1, 2] whose phi (and hinge) is the synthetic score, with label 0."""
    mean, spread = 4.0 * factors[:, 0], 0.3 + 0.5 * factors[:, 1].abs()
    noise = torch.from_numpy(np.random.default_rng(seed).normal(size=len(factors)))
    score = mean + spread * (noise + SHIFT * torch.from_numpy(members).double())
    return torch.stack([score, torch.zeros_like(score)], -1).unsqueeze(1).float()


def _auc(scores, members) -> float:
    fpr, tpr, _ = roc_curve(np.asarray(scores), members)
    return auc_score(fpr, tpr)


def _run(attack: QuantileAttack, factors: torch.Tensor, *, kind: str, network=None, seed: int = 0):
    n = len(factors)
    records = _images(factors) if kind == "image" else _table(factors)
    labels = torch.zeros(n, dtype=torch.long)
    rng = np.random.default_rng(seed)
    public = np.arange(n) < n // 2  # the public half: non-members the regression trains on
    members = np.zeros(n, bool)
    members[~public] = rng.random(n - n // 2) < 0.5
    logits = _target(factors, members, seed)
    attack.fit_public(records[public], labels[public], attack.statistic_of(logits[public], labels[public]),
                      num_classes=1, kind=kind, network=network)
    evaluated = ~public
    scores = attack.bind(records[evaluated], labels[evaluated]).score(logits[evaluated], labels[evaluated])
    raw = attack.statistic_of(logits[evaluated], labels[evaluated])
    return _auc(scores, members[evaluated]), _auc(raw, members[evaluated])


def test_boosted_quantiles_reach_the_optimal_auc_on_tabular_records():
    auc, raw = _run(QuantileAttack(model="auto"), _factors(2000, 0), kind="tabular")
    assert OPTIMAL_AUC - 0.05 < auc < OPTIMAL_AUC + 0.03, (auc, OPTIMAL_AUC)  # an estimate cannot beat the optimum
    assert auc > raw + 0.1  # the record's own difficulty is what the regression adds


def test_the_target_architecture_learns_the_score_of_images():
    network = lambda outputs: SmallCNN(input_shape=(1, 8, 8), num_classes=outputs, width=8, hidden=32)  # noqa: E731
    attack = QuantileAttack(model="auto", epochs=40, patience=5, lr=3e-3, weight_decay=0.0)
    auc, raw = _run(attack, _factors(2000, 1), kind="image", network=network, seed=1)
    assert attack.fitted_params()["regression_model"] == "target" and attack.fitted_params()["num_public"] == 1000
    assert auc > OPTIMAL_AUC - 0.06 and auc > raw + 0.08, (auc, raw, OPTIMAL_AUC)


def test_a_target_without_membership_information_scores_chance():
    factors = _factors(2000, 2)
    records, labels = _table(factors), torch.zeros(2000, dtype=torch.long)
    logits = _target(factors, np.zeros(2000, bool), 2)  # nobody is a member: labels below are arbitrary
    attack = QuantileAttack(model="mlp", epochs=30, patience=5)
    attack.fit_public(records[:1000], labels[:1000], attack.statistic_of(logits[:1000], labels[:1000]),
                      num_classes=1, kind="tabular")
    scores = attack.bind(records[1000:], labels[1000:]).score(logits[1000:], labels[1000:]).numpy()
    claimed = np.random.default_rng(3).random(1000) < 0.5
    auc = _auc(scores, claimed)
    half_width = 1.96 * math.sqrt((claimed.sum() + (~claimed).sum() + 1) / (12 * claimed.sum() * (~claimed).sum()))
    assert abs(auc - 0.5) < half_width, (auc, half_width)  # Mann-Whitney's null spread


def test_ensemble_is_a_gaussian_mixture_and_scores_are_float64():
    factors = _factors(400, 4)
    records, labels = _table(factors), torch.zeros(400, dtype=torch.long)
    logits = _target(factors, np.zeros(400, bool), 4)
    values = QuantileAttack().statistic_of(logits, labels)
    attack = QuantileAttack(model="mlp", ensemble=2, epochs=2).fit_public(records, labels, values, num_classes=1,
                                                                kind="tabular")
    parts = [r.predict(records, labels) for r in attack._regressors]
    mean, std = attack.predict(records, labels)
    assert torch.allclose(mean, (parts[0][0] + parts[1][0]) / 2)
    mixture = ((parts[0][1] ** 2 + parts[0][0] ** 2 + parts[1][1] ** 2 + parts[1][0] ** 2) / 2 - mean ** 2).sqrt()
    assert torch.allclose(std, mixture.clamp(min=attack.min_std))
    assert attack.bind(records, labels).score(logits, labels).dtype == torch.float64


def test_hinge_and_phi_statistics():
    logits = torch.tensor([[[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]]])  # one record, two queries, label 0
    labels = torch.tensor([0])
    assert hinge(logits, labels[:, None]).tolist() == [[1.0, -5.0]]
    assert QuantileAttack(statistic="hinge").statistic_of(logits, labels).tolist() == [-2.0]
    phi = QuantileAttack(statistic="phi").statistic_of(logits, labels).item()
    expected = np.mean([3 - np.log(np.exp(1) + np.exp(2)), 0 - np.log(np.exp(5) + np.exp(1))])
    assert phi == pytest.approx(expected, rel=1e-12)


def test_public_split_is_seeded_disjoint_and_bad_options_name_their_key():
    nonmembers = np.arange(10, 110)
    public = split_public(nonmembers, fraction=0.3, seed=5)
    assert len(public) == 30 and np.isin(public, nonmembers).all()
    assert np.array_equal(public, split_public(nonmembers, fraction=0.3, seed=5))
    assert not np.array_equal(public, split_public(nonmembers, fraction=0.3, seed=6))
    assert len(split_public(np.arange(2), fraction=0.9, seed=0)) == 1  # leaves one to evaluate
    for key, value in (("model", "forest"), ("statistic", "loss"), ("public_fraction", 1.0), ("ensemble", 0)):
        with pytest.raises(ValueError, match=f"attack.quantile.{key}"):
            QuantileAttack(**{key: value})
    with pytest.raises(RuntimeError, match="fit_public"):
        QuantileAttack().score(torch.zeros(3, 1, 2), torch.zeros(3, dtype=torch.long))


def test_held_out_residuals_recalibrate_the_gaussian_p_values():
    """Residuals of non-members that spread wider than the regression predicted (N(0.3, 1.5²) instead of N(0, 1)):
    1 - Phi(z) flags far more than 1% of them at p <= 0.01; recalibrated on held-out residuals of the same
    distribution, the share flagged is the intended 1% (the p-values are uniform)."""
    from mia_torch.audit.public import calibrated_p_values

    rng = np.random.default_rng(5)
    held_out, nonmembers = rng.normal(0.3, 1.5, 500), rng.normal(0.3, 1.5, 20_000)
    assert np.mean(norm.sf(nonmembers) <= 0.01) > 0.07  # true rate P(Z > (2.326 - 0.3) / 1.5) = 0.088
    p = calibrated_p_values(nonmembers, held_out)
    assert 0.006 < np.mean(p <= 0.01) < 0.016 and 0.08 < np.mean(p <= 0.1) < 0.12
    with pytest.raises(ValueError, match="at least 2 held-out"):
        calibrated_p_values(nonmembers, held_out[:1])
