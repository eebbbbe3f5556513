"""Per-case statistics: vectorised metrics against scikit-learn, the two-level bootstrap, checks."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.core.errors import SSLBenchError
from benchmark.harness import casemetrics
from benchmark.harness import casestats as cs
from benchmark.harness.casestats import (
    CaseOutputs,
    StatsInputError,
    cell_interval,
    cell_interval_from_records,
    paired_from_records,
    paired_interval,
)

skm = pytest.importorskip("sklearn.metrics")

N = 60


def _cls_data(seed: int, n: int = N, n_cls: int = 3, round_to: int | None = 2) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_cls, n)
    logits = rng.normal(size=(n, n_cls)) + 1.5 * np.eye(n_cls)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if round_to is not None:  # ties in the scores
        probs[:, :-1] = np.round(probs[:, :-1], round_to)
        probs[:, -1] = 1.0 - probs[:, :-1].sum(axis=1)
    return labels, probs


def _rank_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Reference: Mann-Whitney U from average ranks per row (``rankdata(axis=1)``)."""
    ranks = sps.rankdata(scores, axis=1)
    pos = labels == 1
    n1 = pos.sum(axis=1)
    n0 = labels.shape[1] - n1
    u = (ranks * pos).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)


# -- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_cls", [2, 3, 4])
def test_auc_identity_matches_sklearn(n_cls: int) -> None:
    labels, probs = _cls_data(1, n_cls=n_cls)
    got = cs.auc(labels, probs)
    assert got.shape == (1,)
    if n_cls == 2:
        ref = skm.roc_auc_score(labels, probs[:, 1])
    else:
        ref = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert abs(got[0] - ref) < 1e-12


@pytest.mark.parametrize("pairwise", [True, False])
def test_auc_resamples_match_sklearn_and_ranks(pairwise: bool, monkeypatch: Any) -> None:
    if not pairwise:  # the sort-and-cumulate path used for large test sets
        monkeypatch.setattr(casemetrics, "_PAIRWISE_LIMIT", 0)
    labels, probs = _cls_data(2)
    idx = np.random.default_rng(3).integers(0, N, size=(40, N))
    idx[0] = np.arange(N)
    got = cs.auc(labels, probs, idx)
    for b in range(idx.shape[0]):
        y, p = labels[idx[b]], probs[idx[b]]
        present = np.unique(y)
        per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in present]
        assert abs(got[b] - np.mean(per_class)) < 1e-12
    # binary against the rank formula on the (B, n) resampled matrices
    yb = (labels == 0).astype(int)
    got_b = cs.auc(yb, probs[:, 0], idx)
    ref_b = _rank_auc(yb[idx], probs[:, 0][idx])
    np.testing.assert_allclose(got_b, ref_b, rtol=0, atol=1e-12)


def test_auc_nan_when_a_resample_has_one_class() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.1, 0.4, 0.35, 0.8])
    idx = np.array([[0, 1, 0, 1], [0, 1, 2, 3], [2, 3, 3, 2]])
    got = cs.auc(labels, probs, idx)
    assert np.isnan(got[0]) and np.isnan(got[2])
    assert got[1] == pytest.approx(0.75)
    three = np.array([0, 1, 2, 2])
    p3 = np.full((4, 3), 1 / 3)
    assert np.isnan(cs.auc(three, p3, np.array([[2, 3, 3, 2]])))[0]


def test_accuracy_and_balanced_accuracy_match_sklearn() -> None:
    labels, probs = _cls_data(4)
    idx = np.random.default_rng(5).integers(0, N, size=(30, N))
    idx[1] = np.flatnonzero(labels != 2)[np.arange(N) % np.sum(labels != 2)]  # class 2 absent
    acc = cs.accuracy(labels, probs, idx)
    bacc = cs.balanced_accuracy(labels, probs, idx)
    for b in range(idx.shape[0]):
        y, pred = labels[idx[b]], probs[idx[b]].argmax(axis=1)
        assert abs(acc[b] - skm.accuracy_score(y, pred)) < 1e-12
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            ref = skm.balanced_accuracy_score(y, pred)
        assert abs(bacc[b] - ref) < 1e-12
    assert abs(cs.accuracy(labels, probs)[0] - skm.accuracy_score(labels, probs.argmax(1))) < 1e-12
    ref_all = skm.balanced_accuracy_score(labels, probs.argmax(1))
    assert abs(cs.balanced_accuracy(labels, probs)[0] - ref_all) < 1e-12


def test_dice_and_hd95_are_nan_means() -> None:
    rng = np.random.default_rng(6)
    vals = list(rng.random(N))
    vals[3] = None
    vals[7] = float("nan")
    arr = np.array([np.nan if v is None else v for v in vals])
    assert abs(cs.dice(vals)[0] - np.nanmean(arr)) < 1e-12
    idx = rng.integers(0, N, size=(25, N))
    np.testing.assert_allclose(cs.dice(vals, idx), np.nanmean(arr[idx], axis=1), atol=1e-12)
    np.testing.assert_allclose(cs.hd95(vals, idx), np.nanmean(arr[idx], axis=1), atol=1e-12)
    assert np.isnan(cs.dice(vals, np.array([[3, 7, 3]])))[0]


def test_resample_counts() -> None:
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(cs.resample_counts(idx, 4), [[2, 0, 1, 0], [0, 1, 2, 0]])
    with pytest.raises(StatsInputError, match="outside"):
        cs.resample_counts(np.array([[0, 5]]), 4)


# -- records ----------------------------------------------------------------------------------


def _records(
    labels: np.ndarray,
    probs: np.ndarray,
    seeds: list[int],
    ids: list[str] | None = None,
    train_hash: str = "h",
) -> list[dict[str, Any]]:
    ids = ids or [f"case{i:03d}" for i in range(labels.size)]
    return [
        {
            "seed": s,
            "primary_metric": "auc",
            "subset": {"train_sha256": f"{train_hash}{s}"},
            "per_case": {"ids": ids, "labels": labels.tolist(), "probs": probs[k].tolist()},
        }
        for k, s in enumerate(seeds)
    ]


def _seed_probs(seed: int, n_seeds: int = 5, n: int = N, shift: float = 0.0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    case = rng.normal(size=n)
    logits = (2 * labels - 1)[None] * (
        1.0 + shift + 0.3 * rng.normal(size=(n_seeds, 1)) + case[None]
    ) + 0.5 * rng.normal(size=(n_seeds, n))
    p1 = 1 / (1 + np.exp(-logits))
    return labels, np.stack([1 - p1, p1], axis=2)


def test_from_records_aligns_ids_and_sorts_seeds() -> None:
    labels, probs = _seed_probs(7, n_seeds=3)
    recs = _records(labels, probs, [2, 0, 1])
    perm = np.random.default_rng(0).permutation(N)
    shuffled = dict(recs[1])
    ids = recs[1]["per_case"]["ids"]
    shuffled["per_case"] = {
        "ids": [ids[i] for i in perm],
        "labels": labels[perm].tolist(),
        "probs": probs[1][perm].tolist(),
    }
    out = CaseOutputs.from_records([recs[0], shuffled, recs[2]])
    assert out.seeds == (0, 1, 2) and out.metric == "auc"
    assert out.subset_hashes == ("h0", "h1", "h2")
    direct = CaseOutputs.classification(labels, probs[[1, 2, 0]], "auc")
    np.testing.assert_allclose(out.per_seed(), direct.per_seed(), atol=1e-15)


def test_from_records_segmentation_and_errors() -> None:
    recs = [
        {"seed": s, "per_case": {"ids": ["a", "b", "c"], "dice": [0.5, None, 0.7 + s / 10]}}
        for s in range(3)
    ]
    out = CaseOutputs.from_records(recs, "dice")
    np.testing.assert_allclose(out.per_seed(), [0.6, 0.65, 0.7])
    with pytest.raises(StatsInputError, match="per_case.hd95"):
        CaseOutputs.from_records(recs, "hd95")
    with pytest.raises(StatsInputError, match="'per_case'"):
        CaseOutputs.from_records([{"seed": 0}], "dice")
    with pytest.raises(StatsInputError, match="seed"):
        CaseOutputs.from_records([recs[0], recs[0]], "dice")
    other = {"seed": 9, "per_case": {"ids": ["a", "b", "x"], "dice": [0.1, 0.2, 0.3]}}
    with pytest.raises(StatsInputError, match="seed 9.*'x'|seed 9.*x"):
        CaseOutputs.from_records([recs[0], other], "dice")
    with pytest.raises(StatsInputError, match="did you mean 'dice'"):
        CaseOutputs.from_records(recs, "dise")
    assert issubclass(StatsInputError, SSLBenchError)


# -- cell intervals ---------------------------------------------------------------------------


def test_cell_interval_reproducible_and_brackets_the_estimate() -> None:
    labels, probs = _seed_probs(8)
    recs = _records(labels, probs, [0, 1, 2, 3, 4])
    res = cell_interval_from_records(recs)
    assert res == cell_interval_from_records(recs)  # seeded: reproducible
    per_seed = [skm.roc_auc_score(labels, p[:, 1]) for p in probs]
    assert res["estimate"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert res["low"] < res["estimate"] < res["high"]
    assert res["n_seeds"] == 5 and res["n_cases"] == N and not res["deterministic"]
    assert res["method"].startswith("two-level bootstrap") and "2000 resamples" in res["method"]
    assert "percentile 95 %" in res["method"]
    other = cell_interval_from_records(recs, random_state=1)
    assert other["low"] != res["low"]


def test_deterministic_cell_uses_the_case_level_only() -> None:
    labels, probs = _seed_probs(9, n_seeds=1)
    same = np.repeat(probs, 4, axis=0)
    res = cell_interval(CaseOutputs.classification(labels, same))
    assert res["deterministic"] and res["seed_se"] == 0.0
    assert res["method"].startswith("bootstrap of the test cases (deterministic")
    d = cs.draws(4, N, 2000, 0)
    ref = np.quantile(
        casemetrics._auc_w(labels, probs, d.counts)[0], [0.025, 0.975], method="hazen"
    )
    assert (res["low"], res["high"]) == pytest.approx(tuple(ref), abs=1e-12)
    one = cell_interval(CaseOutputs.classification(labels, probs))
    assert one["low"] is None and "one seed" in one["reason"]


def test_seed_level_is_student_t_when_the_cases_carry_no_variance() -> None:
    """Arms that differ by a per-seed constant on every case: the case resamples (shared by
    both arms) cancel, and the interval is the t interval over the 5 per-seed differences."""
    rng = np.random.default_rng(10)
    base = rng.random((5, N)) * 0.5 + 0.3
    shift = np.array([0.02, -0.01, 0.04, 0.03, 0.00])
    a = CaseOutputs.segmentation(base + shift[:, None], "dice")
    b = CaseOutputs.segmentation(base, "dice")
    res = paired_interval(a, b)
    se = shift.std(ddof=1) / math.sqrt(5)
    q = sps.t.ppf(0.975, 4)
    assert res["mean_diff"] == pytest.approx(shift.mean())
    assert res["low"] == pytest.approx(shift.mean() - q * se, rel=2e-3)
    assert res["high"] == pytest.approx(shift.mean() + q * se, rel=2e-3)
    assert res["seed_se"] == pytest.approx(se)


def test_bad_parameters_raise_naming_the_key() -> None:
    labels, probs = _seed_probs(11)
    out = CaseOutputs.classification(labels, probs)
    with pytest.raises(StatsInputError, match="n_resamples"):
        cell_interval(out, n_resamples=199)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(StatsInputError, match="confidence"):
            cell_interval(out, confidence=bad)
    with pytest.raises(StatsInputError, match="seed_level"):
        cell_interval(out, seed_level="bca")
    one = CaseOutputs.classification(labels, probs[:1])
    with pytest.raises(StatsInputError, match="seeds"):
        paired_interval(one, one)
    with pytest.raises(SSLBenchError):
        paired_interval(out, out, n_resamples=10)


# -- paired comparisons -----------------------------------------------------------------------


def test_paired_interval_identical_arms() -> None:
    labels, probs = _seed_probs(12)
    a = CaseOutputs.classification(labels, probs)
    res = paired_interval(a, a)
    assert res["mean_diff"] == 0.0 and (res["low"], res["high"]) == (0.0, 0.0)
    assert res["p_value"] == 1.0 and res["deterministic"]
    assert res["wilcoxon_p"] is None and "deterministic" in res["wilcoxon_reason"]


def test_paired_interval_p_value_and_wilcoxon_rules() -> None:
    labels, probs_a = _seed_probs(13, shift=0.4)
    _, probs_b = _seed_probs(13)
    a = CaseOutputs.classification(labels, probs_a)
    b = CaseOutputs.classification(labels, probs_b)
    res = paired_interval(a, b)
    # the p-value: the two-level Welch t-test with the interval's own standard error and df
    d = cs.draws(5, N, 2000, 0)
    diff = a.per_seed() - b.per_seed()
    x = a.on_weights(d.counts) - b.on_weights(d.counts)
    case_mean = x.mean(axis=0)
    v_case = case_mean.var()
    inter = 5 / 4 * max(x.var(axis=1).mean() - v_case, 0.0)
    v_seed = max(diff.var(ddof=1) - inter, 0.0) / 5
    df = 4 * ((v_seed + v_case) / v_seed) ** 2
    t = diff.mean() / np.sqrt(v_case + v_seed)
    assert res["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)
    assert res["wilcoxon_p"] is None and "5 paired seeds < 6" in res["wilcoxon_reason"]
    # no resampling floor: a bootstrap tail count cannot go below 2 / (B + 1), which Holm
    # over 60 contrasts lifts above 0.05; the t-test resolves a large effect
    rng = np.random.default_rng(16)
    base = rng.random((5, N))
    noisy = base + 0.1 + 0.05 * rng.normal(size=(5, N)) + 0.01 * rng.normal(size=(5, 1))
    strong = paired_interval(
        CaseOutputs.segmentation(noisy, "dice"), CaseOutputs.segmentation(base, "dice")
    )
    assert strong["low"] > 0 and strong["p_value"] < 2 / 2001
    assert 60 * strong["p_value"] < 0.05  # resolved after Holm over 60 contrasts
    # every case shifted by the same amount: no variance at all, p is 0
    base = np.random.default_rng(13).random((5, N))
    seg = paired_interval(
        CaseOutputs.segmentation(base + 0.05, "dice"), CaseOutputs.segmentation(base, "dice")
    )
    assert seg["p_value"] == 0.0 and seg["low"] == pytest.approx(0.05)
    labels6, p6a = _seed_probs(14, n_seeds=6, shift=0.3)
    _, p6b = _seed_probs(14, n_seeds=6)
    res6 = paired_interval(
        CaseOutputs.classification(labels6, p6a), CaseOutputs.classification(labels6, p6b)
    )
    ref = sps.wilcoxon(np.asarray(res6["per_seed_diff"]))
    assert res6["wilcoxon_p"] == pytest.approx(ref.pvalue)
    assert res6["wilcoxon_statistic"] == pytest.approx(ref.statistic)


def test_paired_interval_one_deterministic_arm_has_no_seed_test() -> None:
    labels, probs = _seed_probs(15, n_seeds=6)
    a = CaseOutputs.classification(labels, probs)
    b = CaseOutputs.classification(labels, np.repeat(probs[:1], 6, axis=0))
    res = paired_interval(a, b)
    assert not res["deterministic"] and res["low"] is not None
    assert res["wilcoxon_p"] is None and "arm B identical across seeds" in res["wilcoxon_reason"]


def test_paired_interval_aligns_seed_and_case_order() -> None:
    labels, probs_a = _seed_probs(16, shift=0.2)
    _, probs_b = _seed_probs(17)
    ra = _records(labels, probs_a, [0, 1, 2, 3, 4])
    rb = _records(labels, probs_b, [0, 1, 2, 3, 4])
    perm = np.random.default_rng(1).permutation(N)
    rb_shuffled = []
    for rec in reversed(rb):
        pc = rec["per_case"]
        rb_shuffled.append(
            {
                **rec,
                "per_case": {
                    "ids": [pc["ids"][i] for i in perm],
                    "labels": [pc["labels"][i] for i in perm],
                    "probs": [pc["probs"][i] for i in perm],
                },
            }
        )
    res = paired_from_records(ra, rb)
    assert paired_from_records(ra, rb_shuffled) == res
    assert res["subset_check"] == "matched"


def test_paired_interval_refuses_mismatches() -> None:
    labels, probs = _seed_probs(18)
    ra = _records(labels, probs, [0, 1, 2, 3, 4])
    with pytest.raises(StatsInputError, match=r"only in arm A: \[4\]; only in arm B: \[5\]"):
        paired_from_records(ra, _records(labels, probs, [0, 1, 2, 3, 5]))
    ids = [f"case{i:03d}" for i in range(N)]
    ids[7] = "other"
    with pytest.raises(StatsInputError, match="case007.*other|other.*case007"):
        paired_from_records(ra, _records(labels, probs, [0, 1, 2, 3, 4], ids=ids))
    with pytest.raises(StatsInputError, match="seed 0: .*different subsets.*'h0'.*'g0'"):
        paired_from_records(ra, _records(labels, probs, [0, 1, 2, 3, 4], train_hash="g"))
    flipped = labels.copy()
    flipped[3] = 1 - flipped[3]
    with pytest.raises(StatsInputError, match="labels of test cases"):
        paired_from_records(ra, _records(flipped, probs, [0, 1, 2, 3, 4]))
    seg = CaseOutputs.segmentation(np.full((5, N), 0.5), "dice")
    with pytest.raises(StatsInputError, match="different metrics"):
        paired_interval(CaseOutputs.from_records(ra), seg)
    no_hash = CaseOutputs.classification(labels, probs, ids=[f"case{i:03d}" for i in range(N)])
    res = paired_interval(CaseOutputs.from_records(ra), no_hash)
    assert res["subset_check"] == "checked for 0/5 seeds"
