"""The one-run bounds against hand values, an independent scalar implementation of the papers' formulas,
simulated mechanisms of known privacy, and monotonicity."""
import math
from statistics import NormalDist

import numpy as np
import pytest

from mia_torch.dp_audit.bounds import (
    gaussian_mu,
    gaussian_rejects,
    gdp_delta,
    gdp_epsilon,
    one_run_epsilon,
    one_run_p_value,
    required_correct,
)
from mia_torch.dp_audit.guesses import audit_scores, correct_guesses, guess_grid

PHI = NormalDist()


def _cdf(x: float) -> float:
    """The standard normal CDF through erfc, accurate in the lower tail (1 + erf(x) is not)."""
    return 0.5 * math.erfc(-x / math.sqrt(2))


# ---------------------------------------------------------------- an independent scalar implementation


def _pmf(k: int, n: int, q: float) -> float:
    if k < 0 or k > n:
        return 0.0
    if q >= 1.0:
        return float(k == n)
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(q)
                    + (n - k) * math.log1p(-q))


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke et al.'s p-value, term by term: P[Bin(r, q) >= v] + 2 m delta max_i P[v-i <= Bin < v] / i."""
    q = 1.0 / (1.0 + math.exp(-eps))
    tail = math.fsum(_pmf(k, r, q) for k in range(v, r + 1))
    window, alpha = 0.0, 0.0
    for i in range(1, v + 1):
        window += _pmf(v - i, r, q)
        alpha = max(alpha, window / i)
    return min(tail + 2 * m * delta * alpha, 1.0)


def _largest(rejects, steps: int = 70) -> float:
    if not rejects(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while rejects(hi):
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
    return lo


def _epsilon(m, r, v, delta, beta):
    return _largest(lambda eps: _p_value(m, r, v, eps, delta) < beta)


def _fdp_rejects(m, r, v, mu, tau):
    """Mahloujifar et al.'s recursion with abstentions (k = 2) for the Gaussian trade-off G_mu, step by step."""
    recall, hits = tau * v / m, tau * (r - v) / m
    for i in range(v - 1, -1, -1):
        inverse = 0.0 if recall <= 0 else 1.0 if recall >= 1 else _cdf(PHI.inv_cdf(recall) - mu)
        new_hits = max(hits, inverse)
        recall = min(recall + i / (r - i) * (new_hits - hits), 1.0)
        hits = new_hits
    return recall + hits > r / m


def _gdp_delta(mu, eps):
    return _cdf(-eps / mu + mu / 2) - math.exp(eps) * _cdf(-eps / mu - mu / 2)


#: (canaries m, guesses r, correct v, delta): small and large m per guess, precision from 0.6 to 1.
GRID = np.array([(m, r, v, delta) for m, r in ((60, 20), (200, 120), (150, 150))
                 for v in sorted({(3 * r) // 5, (3 * r) // 4, (9 * r) // 10, r}) for delta in (0.0, 1e-5, 1e-3)])


def test_one_run_bound_matches_an_independent_implementation():
    m, r, v, delta = (GRID[:, i] for i in range(4))
    bounds = one_run_epsilon(m, r, v, delta=delta, confidence=0.95)  # the whole grid at once
    expected = [_epsilon(int(a), int(b), int(c), d, 0.05) for a, b, c, d in GRID]
    assert np.abs(bounds - expected).max() <= 1e-9
    assert np.count_nonzero(bounds) > len(GRID) // 2  # the comparison covers real bounds, not only zeros
    for eps in (0.0, 0.7, 2.5):
        p = one_run_p_value(m, r, v, eps, delta)
        assert p == pytest.approx([_p_value(int(a), int(b), int(c), eps, d) for a, b, c, d in GRID], rel=1e-9,
                                  abs=1e-15)


def test_gaussian_bound_matches_an_independent_implementation():
    cells = GRID[GRID[:, 3] > 0]
    m, r, v, delta = (cells[:, i] for i in range(4))
    mu = gaussian_mu(m, r, v, confidence=0.95)
    expected_mu = np.array([_largest(lambda x: _fdp_rejects(int(a), int(b), int(c), x, 0.05)) for a, b, c, _ in cells])
    assert np.abs(mu - expected_mu).max() <= 1e-9
    assert np.count_nonzero(mu) > len(cells) // 2
    eps = gdp_epsilon(mu, delta)
    expected = [_largest(lambda e: _gdp_delta(x, e) > d) if x > 0 else 0.0 for x, d in zip(expected_mu, delta)]
    assert np.abs(eps - expected).max() <= 1e-9


# ---------------------------------------------------------------- values you can check by hand


@pytest.mark.parametrize("r,approx", [(10, 1.05), (100, 3.49), (1000, 5.81)])
def test_all_correct_guesses_give_the_closed_form(r, approx):
    p = 0.05 ** (1 / r)  # P[all r right] = p^r = 0.05 exactly at the bound
    bound = float(one_run_epsilon(r, r, r, delta=0.0, confidence=0.95))
    assert bound == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    assert round(bound, 2) == approx


def test_gaussian_dp_curve_closed_forms():
    # at eps = 0, mu-GDP's delta is the total variation distance of N(0,1) and N(mu,1): 2 Phi(mu/2) - 1
    assert float(gdp_delta(1.3, 0.0)) == pytest.approx(2 * _cdf(0.65) - 1, rel=1e-12)
    mu = np.array([0.2, 1.0, 3.0])
    eps = gdp_epsilon(mu, 1e-5)
    assert np.allclose(gdp_delta(mu, eps), 1e-5, rtol=1e-8)
    assert np.all(np.diff(eps) > 0)
    assert float(gdp_epsilon(0.0, 1e-5)) == 0.0


def test_required_correct_is_the_threshold_of_the_bound():
    m, r, eps = 500, np.array([50, 200, 500]), 1.0
    v = required_correct(m, r, eps, delta=1e-5, confidence=0.95)
    assert np.all(one_run_epsilon(m, r, v, delta=1e-5) > eps)
    assert np.all(one_run_epsilon(m, r, v - 1, delta=1e-5) <= eps)
    assert float(required_correct(100, 5, 3.0, confidence=0.95)) == 6  # 5 of 5 right show only eps >= 0.2


# ---------------------------------------------------------------- monotone where it must be


def test_bounds_grow_with_the_number_correct_and_shrink_with_delta():
    m, r = 300, 100
    v = np.arange(r + 1)
    for delta in (0.0, 1e-4):
        assert np.all(np.diff(one_run_epsilon(m, r, v, delta=delta)) >= 0)
    assert np.all(np.diff(gaussian_mu(m, r, v)) >= -1e-12)
    by_delta = one_run_epsilon(m, r, 95, delta=np.array([0.0, 1e-6, 1e-5, 1e-4, 1e-3]))
    assert np.all(np.diff(by_delta) <= 0) and by_delta[0] > by_delta[-1]
    rejected = gaussian_rejects(m, r, 90, np.linspace(0, 4, 81))
    assert rejected[0] and not rejected[-1] and np.all(np.diff(rejected.astype(int)) <= 0)  # an interval [0, mu*)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="v .correct. <= r"):
        one_run_epsilon(10, 5, 6)
    with pytest.raises(ValueError, match="delta"):
        one_run_epsilon(10, 5, 5, delta=1.0)
    with pytest.raises(ValueError, match="confidence"):
        gaussian_mu(10, 5, 5, confidence=1.0)
    with pytest.raises(ValueError, match="delta"):
        gdp_epsilon(1.0, 0.0)


# ---------------------------------------------------------------- mechanisms of known privacy


def _randomized_response(epsilon: float, m: int, seeds: int, *, delta: float = 0.0, start: int = 0):
    """Secret bits and an (epsilon, delta)-DP answer per canary: the bit itself with probability delta, else the
    bit kept with probability e^eps / (1 + e^eps) and flipped otherwise."""
    rng = np.random.default_rng([start, m])
    bits = rng.random((seeds, m)) < 0.5
    keep = (rng.random((seeds, m)) < 1 / (1 + math.exp(-epsilon))) | (rng.random((seeds, m)) < delta)
    return bits, bits == keep


@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_randomized_response_bound_exceeds_epsilon_in_at_most_five_percent_of_seeds(delta):
    epsilon, m, seeds = 1.0, 300, 2000
    bits, answers = _randomized_response(epsilon, m, seeds, delta=delta)
    correct = (answers == bits).sum(axis=1)  # guess every canary by its answer
    values, counts = np.unique(correct, return_counts=True)
    bounds = one_run_epsilon(m, m, values, delta=delta, confidence=0.95)
    assert counts[bounds > epsilon].sum() <= 0.05 * seeds


def test_randomized_response_bound_approaches_epsilon_as_m_grows():
    epsilon, means = 1.0, []
    for m in (100, 1000, 10000):
        bits, answers = _randomized_response(epsilon, m, 20)
        means.append(float(one_run_epsilon(m, m, (answers == bits).sum(axis=1), confidence=0.95).mean()))
    assert means[0] < means[1] < means[2] <= epsilon, means
    assert means[2] > 0.9 * epsilon, means


def test_gaussian_mechanism_mu_bound_exceeds_mu_in_at_most_five_percent_of_seeds():
    mu, m, seeds = 1.0, 200, 300
    rng = np.random.default_rng(7)
    bits = rng.random((seeds, m)) < 0.5
    scores = rng.normal(size=(seeds, m)) + mu * bits  # one N(0,1) or N(mu,1) per canary: mu-GDP in each bit
    correct = np.array([correct_guesses(s, b, np.array([m // 2]), np.array([m // 2]))[0] for s, b in zip(scores, bits)])
    values, counts = np.unique(correct, return_counts=True)
    bounds = gaussian_mu(m, m, values, confidence=0.95)
    assert counts[bounds > mu].sum() <= 0.05 * seeds
    assert counts[bounds > 0].sum() > 0.5 * seeds  # and it does see the signal


# ---------------------------------------------------------------- guesses and the search over (k+, k-)


def test_guesses_count_in_among_the_highest_and_out_among_the_lowest():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    bits = np.array([True, False, True, False, False, True])
    # top 2 guessed IN: one right; bottom 3 guessed OUT (scores 2, 1, 0): two right
    assert correct_guesses(scores, bits, np.array([2, 0, 3]), np.array([3, 1, 3])).tolist() == [3, 0, 4]
    k_plus, k_minus = guess_grid(100, [0.1, 0.5])
    assert sorted(zip(k_plus.tolist(), k_minus.tolist())) == [
        (0, 10), (0, 50), (10, 0), (10, 10), (10, 50), (50, 0), (50, 10), (50, 50)]


def test_search_pays_for_the_grid_and_perfect_guesses_reach_the_ceiling():
    m = 400
    bits = np.random.default_rng(3).permutation(m) < m // 2  # exactly half IN, so that all m guesses can be right
    fractions = [0.05, 0.1, 0.25, 0.5]
    one_run, gaussian, grid = audit_scores(bits.astype(float), bits, delta=1e-5, confidence=0.95, fractions=fractions)
    assert grid == len(guess_grid(m, fractions)[0])
    assert one_run.correct == one_run.guesses == m  # every guess right: the largest guess set wins
    assert one_run.epsilon == pytest.approx(one_run.ceiling)
    level = 1 - 0.05 / grid
    assert one_run.epsilon == pytest.approx(float(one_run_epsilon(m, m, m, delta=1e-5, confidence=level)))
    assert one_run.epsilon < float(one_run_epsilon(m, m, m, delta=1e-5, confidence=0.95))  # the search's price
    noise = np.random.default_rng(4).normal(size=m)
    blind, blind_gaussian, _ = audit_scores(noise, bits, delta=1e-5, confidence=0.95, fractions=fractions)
    assert blind.epsilon == 0.0 and blind_gaussian.epsilon == 0.0 and blind_gaussian.mu == 0.0
