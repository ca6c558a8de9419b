"""Tests for mia_torch.signals.stats: exactness, stability at large logits, float64 references.

Saturated (confident-model) logits and the attacks' resolution there: tests/test_numerics.py.
"""
import dataclasses
import math

import numpy as np
import pytest
import torch

from mia_torch.signals import stats
from mia_torch.signals.features import compute_features, statistic_feature
from mia_torch.signals.stats import (
    STATISTICS,
    Statistic,
    confidence,
    cross_entropy,
    entropy,
    log1m_softmax,
    log_softmax,
    logit_mean_probability,
    logit_scaled_confidence,
    modified_entropy,
    probability_logits,
)

RAW = {
    "loss": cross_entropy,
    "confidence": confidence,
    "entropy": lambda logits, labels: entropy(logits),
    "modified_entropy": modified_entropy,
    "phi": logit_scaled_confidence,
}


# ----------------------------------------------------------------- float64 references (numpy)
def _np_logsumexp(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def _np_log_softmax(z):
    return z - _np_logsumexp(z)[..., None]


def _ref_all(z, y):
    """Naive float64 implementations straight from the definitions (moderate logits only)."""
    z = np.asarray(z, dtype=np.float64)
    logp = _np_log_softmax(z)
    p = np.exp(logp)
    py = np.take_along_axis(p, y[..., None], -1)[..., 0]
    onehot = np.eye(z.shape[-1], dtype=bool)[y]
    loss = -np.log(py)
    ent = -(p * np.log(p)).sum(-1)
    mentr = -(1 - py) * np.log(py) - np.where(onehot, 0.0, p * np.log(1 - p)).sum(-1)
    phi = np.log(py) - np.log(np.where(onehot, 0.0, p).sum(-1))
    return {"loss": loss, "confidence": py, "entropy": ent, "modified_entropy": mentr, "phi": phi}


def test_phi_two_classes_is_exact_logit_difference_at_1e4():
    g = torch.Generator().manual_seed(0)
    z = (torch.rand(2000, 2, generator=g) * 2 - 1) * 1e4
    z[:4] = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4], [-1e4, -1e4]])
    y = torch.randint(0, 2, (2000,), generator=g)
    y[:4] = torch.tensor([0, 0, 1, 1])
    phi = logit_scaled_confidence(z, y)
    z64 = z.double()  # float32 logits are exact in float64
    expected = z64.gather(1, y[:, None])[:, 0] - z64.gather(1, (1 - y)[:, None])[:, 0]
    assert phi.dtype == torch.float64
    assert torch.isfinite(phi).all()
    assert torch.equal(phi, expected)  # closed form, bit for bit
    assert phi[:4].tolist() == [2e4, -2e4, 0.0, 0.0]


def test_phi_many_classes_large_logits_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    z = (torch.rand(500, 10, generator=g) * 2 - 1) * 1e4
    z[0] = 1e4
    z[1] = -1e4
    z[2, 3] = 1e4  # one dominant class
    y = torch.randint(0, 10, (500,), generator=g)
    phi = logit_scaled_confidence(z, y)
    zd = z.double().numpy()
    yn = y.numpy()
    zy = np.take_along_axis(zd, yn[:, None], 1)[:, 0]
    others = zd.copy()
    others[np.arange(500), yn] = -np.inf
    ref = zy - _np_logsumexp(others)
    assert torch.isfinite(phi).all()
    np.testing.assert_allclose(phi.numpy(), ref, rtol=1e-12, atol=1e-9)
    # equal logits: p_y = 1/C, so phi = log(1/(C-1))
    assert phi[0].item() == pytest.approx(-math.log(9), abs=1e-3)
    # the log-of-softmax route would give -inf / inf here; we must not
    naive = torch.log(torch.softmax(z, -1)).gather(1, y[:, None])[:, 0]
    assert (~torch.isfinite(naive)).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_stats_match_float64_reference(dtype):
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(3, 40, 2, 7, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 7, (40,), generator=g)
    y = labels[None, :, None].expand(3, 40, 2)
    ref = _ref_all(z.double().numpy(), y.numpy())
    # every input dtype is exact in float64, where everything is computed
    for name, fn in RAW.items():
        out = fn(z, labels[None, :, None])
        assert out.dtype == torch.float64 and out.shape == (3, 40, 2), name
        np.testing.assert_allclose(out.numpy(), ref[name], rtol=1e-11, atol=1e-13, err_msg=name)


def test_stats_finite_and_closed_form_at_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    y = torch.tensor([0, 1, 2])
    for fn in RAW.values():
        assert torch.isfinite(fn(z, y)).all()
    for stat in STATISTICS.values():
        assert torch.isfinite(stat.score(z[:, None], y[:, None])).all()
    loss = cross_entropy(z, y)
    assert loss[0].item() == 0.0
    assert loss[1].item() == pytest.approx(2e4)
    assert loss[2].item() == pytest.approx(math.log(3), rel=1e-6)
    conf = confidence(z, y)
    assert conf[0].item() == 1.0 and conf[1].item() == 0.0
    assert conf[2].item() == pytest.approx(1 / 3, rel=1e-6)
    ent = entropy(z)
    assert ent[0].item() == 0.0 and ent[2].item() == pytest.approx(math.log(3), rel=1e-6)
    mentr = modified_entropy(z, y)
    # correct and certain: 0; wrong and certain: -(1)log(e^-2e4) - 1 * log(1 - p_0)
    # with log(1 - p_0) = logsumexp(-1e4, 0) - 1e4 = -1e4, so Mentr = 2e4 + 1e4.
    assert mentr[0].item() == 0.0
    assert mentr[1].item() == pytest.approx(3e4, rel=1e-6)
    phi = logit_scaled_confidence(z, y)
    assert phi[0].item() == pytest.approx(1e4) and phi[1].item() == pytest.approx(-2e4)
    assert phi[2].item() == pytest.approx(-math.log(2), rel=1e-6)


def test_modified_entropy_accurate_near_certainty():
    # p_wrong ~ 1 - e^-30: log(1 - p) must come out as about -30, not log(0).
    z = torch.tensor([[0.0, 30.0]], dtype=torch.float32)
    y = torch.tensor([0])
    lse = math.log1p(math.exp(-30)) + 30
    log_py = -lse
    log_1m_p1 = 0.0 - lse  # log p_0
    p1 = math.exp(30 - lse)
    expected = -(1 - math.exp(log_py)) * log_py - p1 * log_1m_p1
    assert modified_entropy(z, y).item() == pytest.approx(expected, rel=1e-6)


def test_entropy_bounds():
    g = torch.Generator().manual_seed(3)
    for c in (2, 5, 100):
        z = torch.randn(300, c, generator=g) * 20
        h = entropy(z)
        assert (h >= 0).all() and (h <= math.log(c) + 1e-5).all()
        assert entropy(torch.zeros(4, c)).allclose(torch.full((4,), math.log(c), dtype=torch.float64))


def test_labels_broadcast_and_chunking_consistent(monkeypatch):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 30, 3, 5, generator=g)
    labels = torch.randint(0, 5, (30,), generator=g)
    full = cross_entropy(z, labels[None, :, None])
    explicit = torch.nn.functional.cross_entropy(
        z.reshape(-1, 5), labels[None, :, None].expand(4, 30, 3).reshape(-1), reduction="none"
    ).reshape(4, 30, 3)
    assert torch.allclose(full, explicit.double(), atol=1e-6)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7)  # force many tiny chunks
    for fn in [*RAW.values(), lambda z, y: log_softmax(z), lambda z, y: log1m_softmax(z)]:
        a = fn(z, labels[None, :, None])
        monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1 << 22)
        b = fn(z, labels[None, :, None])
        monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7)
        # vectorised and scalar tails of exp/log may differ in the last bit
        assert torch.allclose(a, b, rtol=2e-15, atol=0.0)


def test_invalid_inputs_raise():
    z = torch.randn(5, 3)
    with pytest.raises(ValueError):
        cross_entropy(z, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        confidence(z, torch.full((5,), 3))
    with pytest.raises(ValueError):
        logit_scaled_confidence(torch.randn(5, 1), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError):
        cross_entropy(z, torch.zeros(5))


def test_registry_holds_function_sign_and_query_mean():
    assert set(STATISTICS) == {"loss", "confidence", "entropy", "modified_entropy", "phi"}
    assert all(isinstance(s, Statistic) and s.name == name and s.description for name, s in STATISTICS.items())
    signs = {name: s.member_sign for name, s in STATISTICS.items()}
    assert signs == {"loss": -1.0, "confidence": 1.0, "entropy": -1.0, "modified_entropy": -1.0, "phi": 1.0}
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, 3, 4, generator=g) * 4  # N = 6 examples, Q = 3 queries
    y = torch.randint(0, 4, (6,), generator=g)
    # arithmetic query mean of the raw statistic, signed
    for name in ("loss", "entropy", "modified_entropy", "phi"):
        raw = RAW[name](z, y[:, None]).mean(-1)
        assert torch.allclose(STATISTICS[name].score(z, y[:, None]), signs[name] * raw, rtol=1e-12, atol=1e-12), name
    # confidence: the log-odds of the query-mean probability (same order as the mean confidence)
    p = confidence(z, y[:, None]).mean(-1)
    assert torch.allclose(STATISTICS["confidence"].score(z, y[:, None]), torch.log(p / (1 - p)), rtol=1e-10)


def test_a_statistic_of_phi_follows_from_phi_bit_for_bit_and_its_feature_never_reads_the_logits(monkeypatch):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(50, 3, 10, generator=g, dtype=torch.float64) * 30  # confident and unconfident rows
    y = torch.randint(0, 10, (50,), generator=g)
    phi = logit_scaled_confidence(z, y[:, None])
    of_phi = {name: s for name, s in STATISTICS.items() if s.from_phi is not None}
    assert set(of_phi) == {"loss", "confidence", "phi"}
    for name, stat in of_phi.items():
        assert torch.equal(stat.from_phi(phi), stat.function(z, y[:, None])), name
        direct = stat.score(z, y[:, None])
        assert torch.equal(stat.score_from_phi(phi), direct), name

        def logits_read(*_):
            raise AssertionError(f"the {name} feature computed the statistic from the logits")

        monkeypatch.setitem(STATISTICS, name, dataclasses.replace(stat, function=logits_read))
        assert torch.equal(compute_features(z, y, [statistic_feature(name)])[f"score:{name}"], direct), name
    with pytest.raises(ValueError, match="entropy"):
        STATISTICS["entropy"].score_from_phi(phi)


def test_log_softmax_forms_keep_tiny_values():
    z = torch.tensor([[50.0, 0.0, -10.0], [0.0, 0.0, 0.0]])
    rest = math.exp(-50) + math.exp(-60)  # sum_{j != top} exp(z_j - z_top)
    lp, l1m, lo = log_softmax(z), log1m_softmax(z), probability_logits(z)
    assert lp[0, 0].item() == pytest.approx(-rest, rel=1e-12)  # not rounded to 0
    assert l1m[0, 0].item() == pytest.approx(math.log(rest) - math.log1p(rest), rel=1e-12)
    assert l1m[0, 1].item() == pytest.approx(-math.exp(-50), rel=1e-9)
    assert torch.allclose(lp[1], torch.full((3,), -math.log(3), dtype=torch.float64))
    assert torch.allclose(lo, lp - l1m)
    assert lo[0, 0].item() == pytest.approx(50 - math.log1p(math.exp(-10)), rel=1e-12)


def test_logit_mean_probability_exact_near_one_and_zero():
    x = torch.tensor([[40.0, 50.0], [-40.0, -50.0], [0.0, 0.0]], dtype=torch.float64)
    out = logit_mean_probability(x, dim=-1)
    # mean of 1 - p = (e^-40 + e^-50) / 2 up to relative e^-40
    q = (math.exp(-40) + math.exp(-50)) / 2
    assert out[0].item() == pytest.approx(-math.log(q), rel=1e-12)
    assert out[1].item() == pytest.approx(math.log(q), rel=1e-12)
    assert out[2].item() == pytest.approx(0.0, abs=1e-15)
