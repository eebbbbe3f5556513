"""Leaderboard statistics checked against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.core.errors import SSLBenchError
from benchmark.harness.stats import (
    aulc,
    bh,
    bootstrap_ci,
    fraction_to_match,
    holm,
    paired_comparison,
    rank_biserial,
    rounded,
    summarize,
)

VALUES = [0.71, 0.74, 0.69, 0.78, 0.73]


def test_bootstrap_ci_matches_scipy() -> None:
    lo, hi = bootstrap_ci(VALUES)
    ref = sps.bootstrap(
        (np.asarray(VALUES),),
        np.mean,
        confidence_level=0.95,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high))
    assert lo < np.mean(VALUES) < hi
    assert bootstrap_ci(VALUES) == (lo, hi)  # fixed seed: reproducible


def test_bootstrap_ci_degenerate_cases() -> None:
    assert bootstrap_ci([0.5]) == (None, None)
    assert bootstrap_ci([]) == (None, None)
    assert bootstrap_ci([0.4, 0.4, 0.4]) == (0.4, 0.4)
    s = summarize([0.5, None, float("nan"), 0.7])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_paired_comparison_matches_scipy_wilcoxon() -> None:
    a = [0.80, 0.82, 0.79, 0.85, 0.81, 0.84, 0.83]
    b = [0.78, 0.80, 0.80, 0.81, 0.77, 0.80, 0.82]
    out = paired_comparison(a, b)
    ref = sps.wilcoxon(np.subtract(a, b))
    assert out["p_value"] == pytest.approx(ref.pvalue)
    assert out["wilcoxon_statistic"] == pytest.approx(ref.statistic)
    d = np.subtract(a, b)
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert out["n"] == 7
    assert out["diff_ci_low"] < d.mean() < out["diff_ci_high"]


def test_rank_biserial_hand_computed() -> None:
    # |d| ranks: 0.5 -> 1, 1 -> 2, 2 -> 3, 3 -> 4; positive 2+3+4 = 9, negative 1; (9-1)/10
    assert rank_biserial(np.array([1.0, 2.0, 3.0, -0.5])) == pytest.approx(0.8)
    assert rank_biserial(np.array([0.0, 0.0])) == 0.0


def test_paired_comparison_small_and_equal() -> None:
    one = paired_comparison([0.5], [0.4])
    assert one["n"] == 1 and one["p_value"] is None and one["mean_diff"] == pytest.approx(0.1)
    same = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_comparison([1.0, 2.0], [1.0])


def test_aulc_hand_computed() -> None:
    assert aulc([0.1, 1.0], [0.5, 0.7]) == pytest.approx(0.6)
    # trapezoids over log10 fraction -2..-1 and -1..0: (0.2+0.4)/2 + (0.4+0.8)/2 = 0.9, / 2
    assert aulc([0.01, 0.1, 1.0], [0.2, 0.4, 0.8]) == pytest.approx(0.45)
    assert aulc([1.0], [0.9]) == 0.9
    assert aulc([0.1, 1.0], [0.5, None]) is None


def test_fraction_to_match() -> None:
    # halfway in log10 between 0.1 and 1
    assert fraction_to_match([0.1, 1.0], [0.5, 0.7], 0.6) == pytest.approx(10**-0.5)
    assert fraction_to_match([0.1, 1.0], [0.65, 0.7], 0.6) == 0.1
    assert fraction_to_match([0.1, 1.0], [0.5, 0.55], 0.6) is None
    # lower is better (e.g. HD95): reaching 10 from above
    got = fraction_to_match([0.1, 1.0], [20.0, 5.0], 10.0, higher_is_better=False)
    assert got is not None and 0.1 < got < 1.0
    assert math.isclose(math.log10(got), -1 + 10 / 15)


def test_holm_hand_computed() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])
    # None (and nan) stay; the three others are one family of m = 3
    got = holm([None, 0.01, float("nan"), 0.04, 0.03])
    assert got[0] is None and math.isnan(got[2])
    assert got[1:2] + got[3:] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == [] and holm([None]) == [None]


def test_bh_hand_computed() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> p m / rank = 0.02, 0.02, 0.04, 0.04 -> running min from top
    assert bh([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert bh([0.01, 0.02, 0.03, 0.5]) == pytest.approx([0.04, 0.04, 0.04, 0.5])
    got = bh([0.04, None, 0.01])
    assert got[1] is None and got[0] == pytest.approx(0.04) and got[2] == pytest.approx(0.02)
    with pytest.raises(SSLBenchError, match="pvalues"):
        bh([0.5, 1.5])
    with pytest.raises(SSLBenchError, match="pvalues"):
        holm([-0.1])


def test_rounded_touches_floats_only() -> None:
    assert rounded(0.12345678) == 0.123457 and rounded(2.5e-7) == 0.0
    assert rounded(0.123456789, nd=3) == 0.123
    # ints, None, strings and lists pass through: a p-value never tested stays None
    assert rounded(7) == 7 and rounded(None) is None and rounded("n/a") == "n/a"
    assert rounded([0.12345678]) == [0.12345678]
