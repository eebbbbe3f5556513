"""Coverage of the two-level paired interval on simulated leaderboards with a known truth.

Each simulated leaderboard holds two arms evaluated with 5 seeds on the same 150 test
cases, drawn from a generative model with seed-to-seed variation (a seed effect
shared in part by both arms, as their labelled subset is), case-level variation (a
case difficulty shared by both arms, plus an arm-specific case effect) and a seed x
case interaction. "The truth" is the expected metric difference over the model, i.e.
over the population of test cases and of seeds, computed in closed form (AUC) or by
Gauss-Hermite quadrature (mean Dice). The estimator is unbiased for it.

1000 simulated leaderboards per test (binomial standard error of a 95 % coverage:
0.7 points). To keep the module well under a minute on 2 cores, the AUC tests use
1000 bootstrap resamples instead of the default 2000 (the stratified seed level and
the Hazen percentiles make the interval's Monte Carlo error small at 1000); the Dice
tests use the default 2000. The figures measured are in the docstring of
:mod:`benchmark.harness.casestats`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import expit

from benchmark.harness.casestats import CaseOutputs, cell_interval, paired_interval

S, N_CASES, N_BOARDS = 5, 150, 1000
RHO = 0.5  # correlation of the two arms' seed effects (same subset per seed)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Small matrix products run faster on one BLAS thread (and do not fight other jobs)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _seed_effects(rng: np.random.Generator, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed effects of the two arms, correlated ``RHO`` (sd ``tau``)."""
    shared = rng.normal(size=(N_BOARDS, S, 1))
    own = rng.normal(size=(2, N_BOARDS, S, 1))
    effects = tau * (RHO * shared[None] + math.sqrt(1 - RHO**2) * own)
    return effects[0], effects[1]


# -- per-case Dice: dice = expit(mu_arm + seed + case + arm x case + seed x case) -----------------

DICE = {"tau": 0.1, "case": 1.0, "arm_case": 0.3, "inter": 0.3}


def _expected_dice(mu: float, var: float) -> float:
    x, w = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(w * expit(mu + math.sqrt(var) * x)) / np.sum(w))


def _dice_boards(seed: int, mu_a: float, mu_b: float, tau: float) -> tuple[list, float]:
    rng = np.random.default_rng(seed)
    seed_a, seed_b = _seed_effects(rng, tau)
    case = rng.normal(0, DICE["case"], (N_BOARDS, 1, N_CASES))
    arms = []
    for mu, eff in ((mu_a, seed_a), (mu_b, seed_b)):
        arm_case = rng.normal(0, DICE["arm_case"], (N_BOARDS, 1, N_CASES))
        inter = rng.normal(0, DICE["inter"], (N_BOARDS, S, N_CASES))
        arms.append(expit(mu + eff + case + arm_case + inter))
    var = tau**2 + DICE["case"] ** 2 + DICE["arm_case"] ** 2 + DICE["inter"] ** 2
    truth = _expected_dice(mu_a, var) - _expected_dice(mu_b, var)
    boards = [
        (CaseOutputs.segmentation(arms[0][k]), CaseOutputs.segmentation(arms[1][k]))
        for k in range(N_BOARDS)
    ]
    return boards, truth


# -- binary AUC: score logit = (2y - 1)(theta_arm + seed)/2 + (2y - 1) case + arm x case + noise --

AUC = {"tau": 0.3, "case": 0.7, "arm_case": 0.4, "inter": 0.3, "prevalence": 0.35}


def _auc_boards(seed: int, theta_a: float, theta_b: float) -> tuple[list, float]:
    """Positive minus negative logit ~ N(theta + seed, 2 sigma^2), so the population AUC of a
    seed is Phi((theta + seed) / sqrt(2 sigma^2)), and its mean over seeds is
    Phi(theta / sqrt(2 sigma^2 + tau^2))."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((N_BOARDS, N_CASES)) < AUC["prevalence"]).astype(np.int64)
    assert np.all((labels.sum(axis=1) > 0) & (labels.sum(axis=1) < N_CASES))
    sign = (2 * labels - 1)[:, None, :]
    seed_a, seed_b = _seed_effects(rng, AUC["tau"])
    case = rng.normal(0, AUC["case"], (N_BOARDS, 1, N_CASES))
    arms = []
    for theta, eff in ((theta_a, seed_a), (theta_b, seed_b)):
        arm_case = rng.normal(0, AUC["arm_case"], (N_BOARDS, 1, N_CASES))
        inter = rng.normal(0, AUC["inter"], (N_BOARDS, S, N_CASES))
        arms.append(expit(sign * ((theta + eff) / 2 + case) + arm_case + inter))
    sigma2 = AUC["case"] ** 2 + AUC["arm_case"] ** 2 + AUC["inter"] ** 2
    scale = math.sqrt(2 * sigma2 + AUC["tau"] ** 2)
    truth = float(sps.norm.cdf(theta_a / scale) - sps.norm.cdf(theta_b / scale))
    boards = [
        (
            CaseOutputs.classification(labels[k], arms[0][k]),
            CaseOutputs.classification(labels[k], arms[1][k]),
        )
        for k in range(N_BOARDS)
    ]
    return boards, truth


def _coverage(
    boards: list, truth: float, n_resamples: int = 2000, seed_level: str = "welch"
) -> tuple[float, float, float]:
    """Coverage of ``truth``, rate of p < 0.05, and mean estimate minus truth."""
    hits = rejections = 0
    errors = []
    with _one_blas_thread():
        for a, b in boards:
            res = paired_interval(a, b, n_resamples=n_resamples, seed_level=seed_level)
            hits += res["low"] <= truth <= res["high"]
            rejections += res["p_value"] < 0.05
            errors.append(res["mean_diff"] - truth)
    return hits / len(boards), rejections / len(boards), float(np.mean(errors))


@pytest.mark.parametrize("mu_a", [1.0, 1.2])
def test_paired_dice_interval_covers_the_truth(mu_a: float) -> None:
    boards, truth = _dice_boards(1, mu_a, 1.0, DICE["tau"])
    assert (truth == 0.0) == (mu_a == 1.0)
    coverage, rejections, bias = _coverage(boards, truth)
    assert 0.93 <= coverage <= 0.97, f"coverage {coverage:.3f} of truth {truth:.4f}"
    assert abs(bias) < 0.002
    if truth == 0.0:
        assert rejections == pytest.approx(1 - coverage, abs=0.01)  # p-value matches the CI


@pytest.mark.parametrize("theta_a", [1.5, 1.8])
def test_paired_auc_interval_covers_the_truth(theta_a: float) -> None:
    boards, truth = _auc_boards(2, theta_a, 1.5)
    coverage, _, bias = _coverage(boards, truth, n_resamples=1000)
    assert 0.93 <= coverage <= 0.97, f"coverage {coverage:.3f} of truth {truth:.4f}"
    assert abs(bias) < 0.003


def test_plain_percentile_two_level_bootstrap_undercovers_with_5_seeds() -> None:
    """Why the seed level is Welch-t: when seeds dominate, resampling 5 seeds gives intervals
    that are too narrow (the bootstrap variance of a mean of 5 is 4/5 of the unbiased one, and
    its tails are normal, not t with 4 df). 500 leaderboards keep this one quick."""
    boards, truth = _dice_boards(3, 1.2, 1.0, tau=0.3)
    plain, _, _ = _coverage(boards[:500], truth, seed_level="resample")
    welch, _, _ = _coverage(boards[:500], truth)
    assert plain < 0.91 and 0.93 <= welch <= 0.97, (plain, welch)


def test_cell_interval_covers_the_expected_dice() -> None:
    boards, _ = _dice_boards(4, 1.0, 1.0, DICE["tau"])
    var = DICE["tau"] ** 2 + DICE["case"] ** 2 + DICE["arm_case"] ** 2 + DICE["inter"] ** 2
    truth = _expected_dice(1.0, var)
    with _one_blas_thread():
        intervals = [cell_interval(a) for a, _ in boards]
    coverage = np.mean([r["low"] <= truth <= r["high"] for r in intervals])
    assert 0.93 <= coverage <= 0.97, coverage
