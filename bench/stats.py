"""Figures the benchmarks share."""

from __future__ import annotations


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (0-1) with linear interpolation between the nearest ranks; NaN for no data."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def auc(pos, neg) -> float:
    """The chance that a positive scores above a negative (ties count half): the ROC curve's area."""
    import numpy as np

    p, n = np.asarray(pos, np.float64)[:, None], np.asarray(neg, np.float64)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())
