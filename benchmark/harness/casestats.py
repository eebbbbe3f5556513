"""Two-level statistics of per-case test outputs: seeds, then test cases.

A cell's number (strategy x adapter x fraction) is the mean over evaluation seeds
of a metric on one test set. Both are samples: the seeds (labelled subset,
initialisation) and the test cases. The estimand here is the expected metric over
the population of seeds *and* of test cases, so an interval must carry both
sources of uncertainty; the seed-only percentile bootstrap of
:mod:`benchmark.harness.stats` (over 3 seeds, i.e. [min, max]) carries neither well.

Inputs are per-case outputs (:class:`CaseOutputs`, :mod:`benchmark.harness.caseoutputs`): for classification the labels
and each seed's class probabilities on the shared test cases, for segmentation
each seed's per-case Dice/HD95 (``nan`` where undefined). Records with a
``per_case`` entry convert with :meth:`CaseOutputs.from_records`.

Metrics on resamples (:mod:`benchmark.harness.casemetrics`)
    A resample of the cases is a vector of case counts, so every metric is
    computed on ``B`` resamples at once from a ``(n, B)`` count matrix:
    AUC as the weighted Mann-Whitney U (ties count one half, i.e. average ranks;
    multiclass: one-vs-rest averaged over the classes present, as scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")``), accuracy, balanced
    accuracy, and the nan-mean of per-case Dice/HD95. Exact (integer counts): the
    identity resample equals scikit-learn to 1e-12. Public forms taking case
    indices ``(B, n)``: :func:`auc`, :func:`accuracy`, :func:`balanced_accuracy`,
    :func:`dice`, :func:`hd95`.

The interval (:func:`cell_interval`, :func:`paired_interval`)
    1. Test cases: ``B`` resamples with replacement (:func:`draws`), one per
       replicate, shared by every seed (the test set is shared) and, in a paired
       comparison, by both arms. The metric of every seed on every resample gives
       ``x[s, b]``; the seed mean ``xbar[b]`` carries the test-set uncertainty.
    2. Seeds: the variance of the per-seed values (all cases) over the ``S`` seeds,
       net of the seed x case interaction (which step 1 already carries; it is
       estimated from the same resamples as ``S/(S-1) (mean_s var_b x[s] -
       var_b xbar)``), gives the seed standard error ``se``. Replicate ``b`` is
       ``c + k (xbar[b] - c + se z[b])`` with ``z`` stratified standard normal
       draws, ``c`` the mean of ``xbar`` and ``k = t_q(df) / z_q`` the Welch-
       Satterthwaite widening, ``df = (S - 1) (1 + v_case / se**2)**2``.
    3. The percentile interval of the replicates (Hazen plotting positions).
    The point estimate is the mean over seeds of the metric on all cases. A
    paired comparison applies the same to the per-seed, per-resample
    differences ``a - b``. Its p-value is the two-level Welch t-test with the
    interval's own standard error ``sqrt(v_case + se**2)`` and ``df``
    (:func:`welch_t_p_value`), so it agrees with the interval (p < 0.05 where the
    95 % interval excludes 0, up to the case level's departure from normality) and,
    unlike a bootstrap tail count, has no resampling floor: the tail count's
    smallest value, ``2 / (B + 1)`` (0.001 with 2000 resamples), times 60 contrasts
    under Holm is above 0.05, so a leaderboard of that size could resolve nothing
    whatever the effect. The Wilcoxon signed-rank test over seeds is added only with >= 6
    seeds (with 5, its smallest two-sided p-value is 0.0625). Cells identical
    across seeds (``deterministic``, e.g. a linear probe on 100 % of the labels)
    get the test-case level only and never a seed-level test.

Why not the plain two-level percentile bootstrap (``seed_level="resample"``)
    Resampling 5 seeds gives a seed level whose variance is 4/5 of the unbiased
    one and whose tails are normal rather than Student-t with 4 df; and resampling
    both seeds and cases counts the seed x case interaction twice (McCullagh
    2000). Simulated leaderboards (``tests/benchmark/harness/test_casestats_coverage.py``:
    two arms, 5 seeds, 150 test cases, seed effects shared in part by the arms, a
    shared case difficulty, arm x case and seed x case effects; the truth is the
    expected metric difference over the model) measured, for 1000 leaderboards
    each and 2000 resamples, the coverage of the 95 % paired interval
    (``welch`` / ``resample``), the seed share of the variance growing with tau:

    ===========================  =============  =============
    model, seed sd tau           truth 0        truth > 0
    ===========================  =============  =============
    mean Dice, tau = 0           0.956 / 0.974  0.947 / 0.967
    mean Dice, tau = 0.05        0.933 / 0.952  0.953 / 0.966
    mean Dice, tau = 0.10        0.936 / 0.918  0.938 / 0.922
    mean Dice, tau = 0.15        0.938 / 0.902  0.945 / 0.910
    mean Dice, tau = 0.30        0.940 / 0.859  0.940 / 0.863
    binary AUC, tau = 0          0.948 / 0.964  0.958 / 0.971
    binary AUC, tau = 0.3        0.948 / 0.929  0.939 / 0.926
    binary AUC, tau = 0.6        0.953 / 0.877  0.950 / 0.887
    ===========================  =============  =============

    The plain bootstrap under-covers as soon as the seeds carry a fair share of
    the variance (down to 0.86), and over-covers when they carry none (the doubled
    interaction). The Welch-t seed level stays within 0.93-0.96 (binomial
    standard error 0.007). It is slightly liberal (by up to ~1 point) when the
    seeds carry 50-90 % of the variance, a known property of Welch's estimated
    degrees of freedom (0.942-0.950 in the idealised normal case); a Student-t
    seed level convolved with the case level (a generalised pivotal quantity)
    was tried too and is conservative instead (0.953-0.972 on the same models).
    The cell interval of one arm's mean Dice (tau = 0.1) covered 0.938.

Cost: a BUSI-sized leaderboard (110 cells and 150 paired comparisons, 5 seeds x
156 cases, 3-class AUC or Dice, 2000 resamples) takes ~8 s on 2 cores with one
BLAS thread (``perf/bench_stats.py``). Multiplicity corrections (:func:`holm`,
:func:`bh`) are in :mod:`benchmark.harness.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from benchmark.harness.casemetrics import (
    METRICS,
    MetricSpec,
    accuracy,
    auc,
    balanced_accuracy,
    dice,
    hd95,
    resample_counts,
)
from benchmark.harness.caseoutputs import CaseOutputs, id_diff
from benchmark.harness.stats import StatsInputError

CONFIDENCE = 0.95
N_RESAMPLES = 2000
MIN_RESAMPLES = 200
RANDOM_STATE = 0
MIN_WILCOXON_SEEDS = 6
SEED_LEVELS = ("welch", "resample")
#: How a paired comparison's p-value is computed (:func:`welch_t_p_value`)
TEST_METHOD = (
    "two-level Welch t-test: mean difference over the interval's standard error "
    "(test cases and evaluation seeds), Welch-Satterthwaite degrees of freedom"
)


# -- the two-level bootstrap ------------------------------------------------------------------


def _check_params(confidence: float, n_resamples: int, seed_level: str) -> None:
    if not 0.0 < confidence < 1.0:
        raise StatsInputError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < MIN_RESAMPLES:
        raise StatsInputError(f"n_resamples must be >= {MIN_RESAMPLES}, got {n_resamples}")
    if seed_level not in SEED_LEVELS:
        raise StatsInputError(f"seed_level must be one of {SEED_LEVELS}, got {seed_level!r}")


@dataclass(frozen=True)
class Draws:
    """The random draws of one bootstrap (see :func:`draws`).

    Attributes:
        weights: ``(n, 1 + B)`` case weights: column 0 is every case once (the point
            estimate), column ``1 + b`` the counts of the resample of the test cases of
            replicate ``b``, shared by every seed (and by both arms of a paired comparison).
        seeds: ``(B, S)`` resampled seed positions (``seed_level="resample"``).
        z: ``(B,)`` standard normal draws of the seed level (``seed_level="welch"``),
            stratified: the quantiles at ``(k + 1/2) / B`` in a random order.
    """

    weights: np.ndarray
    seeds: np.ndarray
    z: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """``(n, B)`` case counts of the resamples."""
        return self.weights[:, 1:]


_DRAWS_CACHE: dict[tuple[int, int, int, int], Draws] = {}
_DRAWS_CACHE_BYTES = 64 * 2**20


def draws(n_seeds: int, n_cases: int, n_resamples: int, random_state: int) -> Draws:
    """The draws of a bootstrap, reproducible from ``random_state``.

    The cases are drawn first, so the case resamples depend on ``n_cases``,
    ``n_resamples`` and ``random_state`` only: every cell of a task shares them
    (and the last few draws are cached, read-only). The normal draws of the
    seed level are stratified, so its tails carry no Monte Carlo error.

    Args:
        n_seeds: Seeds per arm.
        n_cases: Test cases.
        n_resamples: Replicates ``B``.
        random_state: Seed of :func:`numpy.random.default_rng`.
    """
    key = (n_seeds, n_cases, n_resamples, random_state)
    if key in _DRAWS_CACHE:
        return _DRAWS_CACHE[key]
    rng = np.random.default_rng(random_state)
    cases = rng.integers(0, n_cases, size=(n_resamples, n_cases))
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    z = stats.norm.ppf((rng.permutation(n_resamples) + 0.5) / n_resamples)
    weights = np.ones((n_cases, 1 + n_resamples))
    weights[:, 1:] = resample_counts(cases, n_cases).T
    out = Draws(weights, seeds, z)
    for arr in (out.weights, out.seeds, out.z):
        arr.flags.writeable = False
    if out.weights.nbytes <= _DRAWS_CACHE_BYTES:
        while len(_DRAWS_CACHE) >= 4:
            _DRAWS_CACHE.pop(next(iter(_DRAWS_CACHE)))
        _DRAWS_CACHE[key] = out
    return out


def _replicates(
    x: np.ndarray, point: np.ndarray, d: Draws, seed_level: str | None, confidence: float
) -> tuple[np.ndarray, float]:
    """Bootstrap replicates of the seed mean of a metric (or of a paired difference).

    Args:
        x: ``(S, B)`` the metric of each seed on each case resample.
        point: ``(S,)`` the metric of each seed on all cases.
        d: The draws (``d.counts`` gave the columns of ``x``).
        seed_level: ``"welch"``, ``"resample"``, or ``None`` for the case level only.
        confidence: The confidence level (sets the Welch-t widening).

    Returns:
        ``(B,)`` replicates (``nan`` where the metric is undefined on the case
        resample) and the seed-level standard error (0 for the case level only,
        ``nan`` for ``"resample"``).
    """
    case_mean = x.mean(axis=0)
    if seed_level is None or x.shape[0] < 2:
        return case_mean, 0.0
    if seed_level == "resample":
        return np.take_along_axis(x, d.seeds.T, axis=0).mean(axis=0), float("nan")
    v_case, v_seed = _variances(x, point)
    se = math.sqrt(v_seed)
    if v_seed == 0.0:
        return case_mean, 0.0
    df = _welch_df(x.shape[0], v_case, v_seed)
    q = 0.5 + confidence / 2
    widen = float(stats.t.ppf(q, df) / stats.norm.ppf(q))
    center = float(case_mean[np.isfinite(case_mean)].mean())
    return center + widen * (case_mean - center + se * d.z), se


def _variances(x: np.ndarray, point: np.ndarray) -> tuple[float, float]:
    """The two levels' variances of the seed mean: ``(v_case, v_seed)``.

    ``v_case`` is the variance of the seed mean over the case resamples (``x``:
    ``(S, B)``); ``v_seed`` the variance of the per-seed values on all cases
    (``point``) over ``S``, net of the seed x case interaction: ``E[var_b x_s] -
    var_b(mean_s x_s)`` is ``(1 - 1/S)`` of its per-seed share, which the seed
    variance of ``point`` also holds.
    """
    n_seeds = x.shape[0]
    case_mean = x.mean(axis=0)
    ok = np.isfinite(case_mean)
    v_case = float(case_mean[ok].var())
    if n_seeds < 2:
        return v_case, 0.0
    inter = n_seeds / (n_seeds - 1) * max(float(x[:, ok].var(axis=1).mean()) - v_case, 0.0)
    return v_case, max(float(point.var(ddof=1)) - inter, 0.0) / n_seeds


def _welch_df(n_seeds: int, v_case: float, v_seed: float) -> float:
    """Welch-Satterthwaite degrees of freedom of the two-level standard error (the case
    level's are taken as infinite; no seed level: infinite, i.e. normal)."""
    if v_seed == 0.0:
        return math.inf
    return (n_seeds - 1) * ((v_seed + v_case) / v_seed) ** 2


def welch_t_p_value(estimate: float, x: np.ndarray, point: np.ndarray, with_seeds: bool) -> float:
    """Two-sided p-value of ``estimate`` against 0 from the two-level standard error.

    ``t = estimate / sqrt(v_case + v_seed)`` against Student's t with the Welch-
    Satterthwaite degrees of freedom (:func:`_variances`, :func:`_welch_df`): the
    interval's own standard error and degrees of freedom, so ``p < 1 - confidence``
    where the interval excludes 0 (up to the case level's departure from normality).
    Unlike a bootstrap tail count it has no resampling floor (``2 / (B + 1)``: with
    2000 resamples and Holm over 60 contrasts no contrast could reach 0.05).

    Args:
        estimate: The point estimate (a paired mean difference).
        x: ``(S, B)`` per-seed values on the case resamples.
        point: ``(S,)`` per-seed values on all cases.
        with_seeds: ``False`` for the case level only (deterministic cells).
    """
    v_case, v_seed = _variances(x, point)
    if not with_seeds:
        v_seed = 0.0
    sd = math.sqrt(v_case + v_seed)
    if sd == 0.0:
        return 1.0 if estimate == 0.0 else 0.0
    df = _welch_df(x.shape[0], v_case, v_seed)
    return float(min(1.0, 2 * stats.t.sf(abs(estimate) / sd, df)))


def _evaluate(outputs: CaseOutputs, d: Draws) -> tuple[np.ndarray, np.ndarray]:
    """The metric of every seed on all cases ``(S,)`` and on each case resample ``(S, B)``."""
    both = outputs.on_weights(d.weights)
    return both[:, 0], both[:, 1:]


def _interval(r: np.ndarray, confidence: float) -> tuple[float | None, float | None, int]:
    ok = r[np.isfinite(r)]
    if ok.size < max(MIN_RESAMPLES, r.size // 2):
        return None, None, int(ok.size)
    alpha = 1.0 - confidence
    # Hazen's plotting position (k + 1/2) / B: exact on the stratified seed-level draws
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2], method="hazen")
    return float(lo), float(hi), int(ok.size)


def method_name(
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed_level: str | None = "welch",
) -> str:
    """The method of an interval, for table captions.

    Args:
        n_resamples: Bootstrap replicates.
        confidence: Confidence level.
        seed_level: ``"welch"``, ``"resample"``, or ``None`` (deterministic: test cases only).
    """
    tail = f"{n_resamples} resamples, percentile {100 * confidence:g} %"
    if seed_level is None:
        return f"bootstrap of the test cases (deterministic: identical across seeds), {tail}"
    if seed_level == "resample":
        return f"two-level bootstrap (seeds, then test cases), {tail}"
    return f"two-level bootstrap (seeds: Welch-t level; test cases: resampled), {tail}"


def cell_interval(
    outputs: CaseOutputs,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
    seed_level: str = "welch",
) -> dict[str, Any]:
    """The point estimate and two-level bootstrap interval of one cell.

    Args:
        outputs: The cell's per-case outputs (every seed).
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap replicates (>= :data:`MIN_RESAMPLES`).
        random_state: Seed of the draws (:func:`draws`).
        seed_level: ``"welch"`` (default, see the module docstring) or ``"resample"``
            (the plain percentile two-level bootstrap, which under-covers with 5 seeds).

    Returns:
        ``metric``, ``higher_is_better``, ``estimate`` (the mean over seeds of the
        metric on all cases), ``low``/``high`` (``None`` with a ``reason`` when not
        computable), ``confidence``, ``n_seeds``, ``n_cases``, ``n_resamples``,
        ``n_valid`` (replicates where the metric is defined), ``deterministic``
        (identical across seeds: interval from the cases only), ``per_seed``,
        ``seed_se``, ``method`` (a caption string) and ``reason`` (why ``low``/``high``
        are ``None``, e.g. one seed).

    Raises:
        StatsInputError: ``confidence``, ``n_resamples`` or ``seed_level`` is invalid.
    """
    _check_params(confidence, n_resamples, seed_level)
    if outputs.n_seeds > 1:
        d = draws(outputs.n_seeds, outputs.n_cases, n_resamples, random_state)
        point, x = _evaluate(outputs, d)
    else:
        point, x = outputs.per_seed(), None
    deterministic = outputs.n_seeds > 1 and bool(np.all(point == point[0]))
    level = None if deterministic else seed_level
    out: dict[str, Any] = {
        "metric": outputs.metric,
        "higher_is_better": outputs.spec.higher_is_better,
        "estimate": float(point.mean()) if np.all(np.isfinite(point)) else None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "n_seeds": outputs.n_seeds,
        "n_cases": outputs.n_cases,
        "n_resamples": n_resamples,
        "n_valid": 0,
        "deterministic": deterministic,
        "per_seed": [float(v) for v in point],
        "seed_se": None,
        "method": method_name(n_resamples, confidence, level),
        "reason": None,
    }
    if out["estimate"] is None:
        out["reason"] = f"{outputs.metric} is undefined on the full test set of some seed"
        return out
    if outputs.n_seeds < 2:
        out["reason"] = "one seed: the seed-to-seed variation cannot be estimated"
        return out
    assert x is not None
    r, se = _replicates(x, point, d, level, confidence)
    out["low"], out["high"], out["n_valid"] = _interval(r, confidence)
    out["seed_se"] = None if math.isnan(se) else se
    if out["low"] is None:
        out["reason"] = f"{outputs.metric} is undefined on most case resamples"
    return out


def _align(a: CaseOutputs, b: CaseOutputs) -> tuple[CaseOutputs, str]:
    """``b`` reordered to ``a``'s seeds and cases, after checking that they match."""
    if a.metric != b.metric:
        raise StatsInputError(f"the arms use different metrics: {a.metric!r} vs {b.metric!r}")
    if set(a.seeds) != set(b.seeds):
        only_a = sorted(map(str, set(a.seeds) - set(b.seeds)))
        only_b = sorted(map(str, set(b.seeds) - set(a.seeds)))
        raise StatsInputError(
            "the arms do not share their seeds: "
            f"only in arm A: [{', '.join(only_a)}]; only in arm B: [{', '.join(only_b)}]"
        )
    if len(a.seeds) < 2:
        raise StatsInputError(
            f"a paired comparison needs >= 2 seeds, got {len(a.seeds)} (seeds {list(a.seeds)})"
        )
    if set(a.ids) != set(b.ids):
        raise StatsInputError(
            f"the arms were tested on different test case ids (every seed): {id_diff(a.ids, b.ids)}"
        )
    b = b.select(a.seeds, a.ids)
    if a.labels is not None and b.labels is not None and not np.array_equal(a.labels, b.labels):
        bad = [a.ids[k] for k in np.flatnonzero(a.labels != b.labels)[:5]]
        raise StatsInputError(f"the arms disagree on the labels of test cases {bad}")
    checked = 0
    for seed, ha, hb in zip(
        a.seeds,
        a.subset_hashes or [None] * a.n_seeds,
        b.subset_hashes or [None] * b.n_seeds,
        strict=True,
    ):
        if ha is not None and hb is not None:
            if ha != hb:
                raise StatsInputError(
                    f"seed {seed}: the arms trained on different subsets "
                    f"(subset_hash {ha!r} vs {hb!r})"
                )
            checked += 1
    note = "matched" if checked == a.n_seeds else f"checked for {checked}/{a.n_seeds} seeds"
    return b, note


def paired_interval(
    a: CaseOutputs,
    b: CaseOutputs,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    random_state: int = RANDOM_STATE,
    seed_level: str = "welch",
) -> dict[str, Any]:
    """Arm ``a`` against arm ``b`` on the same seeds and test cases: ``a - b``.

    The two-level bootstrap of the mean difference with the same draws for both
    arms (the same case resample, and at the seed level the paired per-seed
    differences), the two-level Welch t-test p-value, and the Wilcoxon signed-rank test over
    seeds when there are >= :data:`MIN_WILCOXON_SEEDS` of them.

    Args:
        a: Arm A (e.g. a pretraining strategy).
        b: Arm B (e.g. the reference), the same seeds and test case ids.
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap replicates (>= :data:`MIN_RESAMPLES`).
        random_state: Seed of the draws.
        seed_level: As in :func:`cell_interval`.

    Returns:
        ``metric``, ``higher_is_better``, ``seeds``, ``n_seeds``, ``n_cases``,
        ``mean_diff``, ``low``/``high``, ``confidence``, ``p_value`` (two-sided:
        :func:`welch_t_p_value`; with ``seed_level="resample"`` the bootstrap tail
        count, see :func:`_p_value`), ``wilcoxon_statistic``/``wilcoxon_p`` (``None`` with
        ``wilcoxon_reason`` when not run), ``per_seed_diff``, ``deterministic``
        (the difference is identical across seeds: cases only), ``subset_check``,
        ``n_resamples``, ``n_valid``, ``seed_se``, ``method`` and ``reason``.

    Raises:
        StatsInputError: Fewer than 2 seeds; the arms differ in metric, seeds,
            test case ids, labels or (per seed) ``subset_hashes``; or a parameter
            is invalid.
    """
    _check_params(confidence, n_resamples, seed_level)
    b, subset_check = _align(a, b)
    d = draws(a.n_seeds, a.n_cases, n_resamples, random_state)
    (pa, xa), (pb, xb) = _evaluate(a, d), _evaluate(b, d)
    diff = pa - pb
    det_a = bool(np.all(pa == pa[0]))
    det_b = bool(np.all(pb == pb[0]))
    deterministic = bool(np.all(diff == diff[0]))
    level = None if deterministic else seed_level
    out: dict[str, Any] = {
        "metric": a.metric,
        "higher_is_better": a.spec.higher_is_better,
        "seeds": list(a.seeds),
        "n_seeds": a.n_seeds,
        "n_cases": a.n_cases,
        "mean_diff": float(diff.mean()) if np.all(np.isfinite(diff)) else None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "p_value": None,
        "wilcoxon_statistic": None,
        "wilcoxon_p": None,
        "wilcoxon_reason": None,
        "per_seed_diff": [float(v) for v in diff],
        "deterministic": deterministic,
        "subset_check": subset_check,
        "n_resamples": n_resamples,
        "n_valid": 0,
        "seed_se": None,
        "method": method_name(n_resamples, confidence, level),
        "reason": None,
    }
    if out["mean_diff"] is None:
        out["reason"] = f"{a.metric} is undefined on the full test set of some seed"
        return out
    r, se = _replicates(xa - xb, diff, d, level, confidence)
    out["low"], out["high"], out["n_valid"] = _interval(r, confidence)
    out["seed_se"] = None if math.isnan(se) else se
    if out["low"] is None:
        out["reason"] = f"{a.metric} is undefined on most case resamples"
    else:
        out["p_value"] = _p_value(out["mean_diff"], r, xa - xb, diff, level)
    out.update(_wilcoxon(diff, det_a, det_b, deterministic))
    return out


def _p_value(
    estimate: float, r: np.ndarray, x: np.ndarray, point: np.ndarray, level: str | None
) -> float:
    """The paired test's p-value: :func:`welch_t_p_value` for the Welch-t seed level and
    the case level only; for the plain two-level bootstrap (``"resample"``, a comparison
    method) the bootstrap tail count ``2 min(P(d <= 0), P(d >= 0))`` with the +1
    correction, whose floor is ``2 / (B + 1)``."""
    if level != "resample":
        return welch_t_p_value(estimate, x, point, with_seeds=level is not None)
    ok = r[np.isfinite(r)]
    below = (1 + np.count_nonzero(ok <= 0)) / (ok.size + 1)
    above = (1 + np.count_nonzero(ok >= 0)) / (ok.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def _wilcoxon(diff: np.ndarray, det_a: bool, det_b: bool, deterministic: bool) -> dict[str, Any]:
    """The Wilcoxon signed-rank test over seeds, or why it was not run."""
    n = diff.size
    if det_a or det_b or deterministic:
        which = "both arms" if det_a and det_b else "arm A" if det_a else "arm B" if det_b else ""
        why = (
            f"{which} identical across seeds"
            if which
            else "the difference is identical across seeds"
        )
        return {"wilcoxon_reason": f"deterministic ({why}): no seed-level test"}
    if n < MIN_WILCOXON_SEEDS:
        return {
            "wilcoxon_reason": (
                f"{n} paired seeds < {MIN_WILCOXON_SEEDS}: the smallest two-sided exact "
                f"p-value would be 2/2^{n} = {2 / 2**n:.3g}"
            )
        }
    if not np.any(diff != 0):
        return {"wilcoxon_statistic": 0.0, "wilcoxon_p": 1.0}
    res = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    return {"wilcoxon_statistic": float(res.statistic), "wilcoxon_p": float(res.pvalue)}


# -- from records -----------------------------------------------------------------------------


def cell_interval_from_records(
    records: Sequence[Mapping[str, Any]], metric: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`cell_interval` of one cell's records (one per seed); ``kwargs`` pass through."""
    return cell_interval(CaseOutputs.from_records(records, metric), **kwargs)


def paired_from_records(
    records_a: Sequence[Mapping[str, Any]],
    records_b: Sequence[Mapping[str, Any]],
    metric: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`paired_interval` of two cells' records; ``kwargs`` pass through."""
    name = (
        metric
        if metric is not None
        else (records_a[0].get("primary_metric") if records_a else None)
    )
    return paired_interval(
        CaseOutputs.from_records(records_a, name),
        CaseOutputs.from_records(records_b, name),
        **kwargs,
    )


__all__ = [
    "METRICS",
    "CaseOutputs",
    "MetricSpec",
    "StatsInputError",
    "accuracy",
    "auc",
    "balanced_accuracy",
    "cell_interval",
    "cell_interval_from_records",
    "dice",
    "draws",
    "hd95",
    "method_name",
    "paired_from_records",
    "paired_interval",
    "resample_counts",
]
