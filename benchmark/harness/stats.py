"""Statistics of the leaderboard: confidence intervals, paired tests, label efficiency.

* :func:`bootstrap_ci`: percentile bootstrap CI of the mean over seeds
  (:func:`scipy.stats.bootstrap`, fixed ``random_state`` so leaderboards are
  reproducible).
* :func:`paired_comparison`: a strategy against a reference on the same seeds
  and subsets: Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`), a paired
  bootstrap CI of the mean difference, and effect sizes (mean difference,
  Cohen's d_z, matched-pairs rank-biserial correlation).
* :func:`aulc`: the normalised area under the metric vs log10(label fraction)
  curve (the mean metric over the log-fraction range).
* :func:`fraction_to_match`: the smallest label fraction at which a learning
  curve reaches a target (log-linear interpolation between measured fractions).
* :func:`holm` and :func:`bh`: p-values adjusted for multiplicity (Holm's
  family-wise step-down; Benjamini-Hochberg false discovery rate), ``None``-safe.

Intervals that also carry the test set's uncertainty (a two-level bootstrap
over seeds and test cases, from per-case outputs) are in
:mod:`benchmark.harness.casestats`.

With fewer than two seeds no interval or test can be computed; those fields
are ``None`` (never invented).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from benchmark.core.errors import SSLBenchError

CONFIDENCE = 0.95
N_RESAMPLES = 2000
RANDOM_STATE = 0


class StatsInputError(SSLBenchError, ValueError):
    """A statistic was asked for with inputs it cannot honour (the message names the key)."""


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, std, n and the bootstrap CI of the mean of the finite ``values``."""
    arr = _finite(values)
    lo, hi = bootstrap_ci(arr, confidence)
    return {
        "mean": float(arr.mean()) if arr.size else None,
        "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
        "n": int(arr.size),
        "ci_low": lo,
        "ci_high": hi,
    }


def bootstrap_ci(
    values: Sequence[float | None] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of the mean (``None`` for n < 2)."""
    arr = _finite(list(np.asarray(values, dtype=np.float64).ravel()))
    if arr.size < 2:
        return None, None
    if np.ptp(arr) == 0.0:
        return float(arr[0]), float(arr[0])
    res = stats.bootstrap(
        (arr,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(random_state),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def rank_biserial(diff: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped)."""
    d = diff[diff != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    total = ranks.sum()
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / total)


def paired_comparison(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Compare paired samples ``a`` (strategy) and ``b`` (reference), ``a - b``.

    Returns:
        ``n``, ``mean_diff``, ``diff_ci_low``/``diff_ci_high`` (paired bootstrap),
        ``wilcoxon_statistic``, ``p_value`` (two-sided Wilcoxon signed-rank, exact
        for small n; 1.0 when every difference is zero), ``cohens_dz`` and
        ``rank_biserial``. Test fields are ``None`` for fewer than two pairs.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    diff = x[keep] - y[keep]
    out: dict[str, Any] = {
        "n": int(diff.size),
        "mean_diff": float(diff.mean()) if diff.size else None,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "wilcoxon_statistic": None,
        "p_value": None,
        "cohens_dz": None,
        "rank_biserial": None,
    }
    if diff.size < 2:
        return out
    out["diff_ci_low"], out["diff_ci_high"] = bootstrap_ci(diff, confidence)
    out["rank_biserial"] = rank_biserial(diff)
    sd = float(diff.std(ddof=1))
    out["cohens_dz"] = float(diff.mean() / sd) if sd > 0 else None
    if not np.any(diff != 0):
        out["wilcoxon_statistic"], out["p_value"] = 0.0, 1.0
        return out
    res = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    out["wilcoxon_statistic"] = float(res.statistic)
    out["p_value"] = float(res.pvalue)
    return out


def aulc(fractions: Sequence[float], values: Sequence[float | None]) -> float | None:
    """Normalised area under ``values`` vs ``log10(fractions)`` (trapezoid rule).

    The result is the mean metric over the log-fraction range, on the metric's
    scale; ``None`` if a value is missing. One fraction gives its value.
    """
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    if f.size == 0 or not np.all(np.isfinite(v)):
        return None
    if f.size == 1:
        return float(v[0])
    x = np.log10(f)
    return float(np.trapezoid(v, x) / (x[-1] - x[0]))


def fraction_to_match(
    fractions: Sequence[float],
    values: Sequence[float | None],
    target: float,
    higher_is_better: bool = True,
) -> float | None:
    """Smallest label fraction at which the curve reaches ``target``.

    Between two measured fractions the curve is interpolated linearly in
    log10(fraction). ``None`` if it never reaches the target.
    """
    sign = 1.0 if higher_is_better else -1.0
    prev: tuple[float, float] | None = None
    for f, v in zip(fractions, values, strict=True):
        if v is None or not math.isfinite(v):
            prev = None
            continue
        gap = sign * (v - target)
        if gap >= 0:
            if prev is None or prev[1] >= 0:
                return float(f)
            f0, g0 = prev
            t = -g0 / (gap - g0)
            return float(10 ** (math.log10(f0) + t * (math.log10(f) - math.log10(f0))))
        prev = (float(f), gap)
    return None


def _finite_pvalues(pvalues: Sequence[float | None]) -> tuple[np.ndarray, list[int]]:
    """The finite p-values (checked to lie in [0, 1]) and their positions."""
    keep = [k for k, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    arr = np.asarray([pvalues[k] for k in keep], dtype=np.float64)
    bad = arr[(arr < 0) | (arr > 1)]
    if bad.size:
        raise StatsInputError(f"pvalues must lie in [0, 1], got {bad.tolist()}")
    return arr, keep


def rounded(x: Any, nd: int = 6) -> Any:
    """``x`` rounded to ``nd`` decimals if it is a float, otherwise ``x`` unchanged.

    The one rounding of every figure a leaderboard writes (means, intervals, p-values),
    so that regenerated JSON is byte-identical.
    """
    return round(x, nd) if isinstance(x, float) else x


def _put_back(
    pvalues: Sequence[float | None], adj: np.ndarray, keep: list[int]
) -> list[float | None]:
    out: list[float | None] = list(pvalues)
    for k, v in zip(keep, adj, strict=True):
        out[k] = float(v)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate).

    ``None`` (and ``nan``) entries stay as they are; the other ``m`` form one
    family. The ``i``-th smallest becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.

    Args:
        pvalues: Raw p-values in [0, 1], ``None`` where no test was run.

    Returns:
        The adjusted p-values, in the input order.
    """
    p, keep = _finite_pvalues(pvalues)
    if p.size == 0:
        return list(pvalues)
    order = np.argsort(p, kind="stable")
    steps = np.minimum(1.0, (p.size - np.arange(p.size)) * p[order])
    adj = np.empty(p.size)
    adj[order] = np.maximum.accumulate(steps)
    return _put_back(pvalues, adj, keep)


def bh(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (controls the false discovery rate).

    Computed by :func:`scipy.stats.false_discovery_control` (``method="bh"``);
    ``None`` (and ``nan``) entries stay as they are, the others form one family.

    Args:
        pvalues: Raw p-values in [0, 1], ``None`` where no test was run.

    Returns:
        The adjusted p-values, in the input order.
    """
    p, keep = _finite_pvalues(pvalues)
    if p.size == 0:
        return list(pvalues)
    return _put_back(pvalues, stats.false_discovery_control(p, method="bh"), keep)
