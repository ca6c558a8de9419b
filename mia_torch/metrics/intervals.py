"""Exact (Clopper–Pearson) binomial confidence intervals."""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta

__all__ = ["clopper_pearson"]


def clopper_pearson(successes: Any, trials: Any, *, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval for a binomial proportion ``successes / trials``.

    Works element-wise on scalars or arrays (broadcast); returns ``(low, high)`` float64
    arrays (0-d for scalar input). The interval is exact: it covers the true proportion
    with probability at least ``confidence`` (Clopper & Pearson, 1934), using the beta
    quantiles ``B(α/2; k, n-k+1)`` and ``B(1-α/2; k+1, n-k)``, with ``low = 0`` at ``k = 0`` and
    ``high = 1`` at ``k = n``. ``trials`` must be positive and ``0 <= successes <= trials``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("clopper_pearson needs trials > 0 and 0 <= successes <= trials")
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
