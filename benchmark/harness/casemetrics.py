"""Metrics of per-case test outputs on many test-case resamples at once.

A resample of the cases is a vector of case counts, so every metric is computed
on ``B`` resamples at once from a ``(n, B)`` count matrix: AUC as the weighted
Mann-Whitney U (ties count one half, i.e. average ranks; multiclass: one-vs-rest
averaged over the classes present, as scikit-learn's ``roc_auc_score(
multi_class="ovr", average="macro")``), accuracy, balanced accuracy, and the
nan-mean of per-case Dice/HD95. Exact (integer counts): the identity resample
equals scikit-learn to 1e-12. Used by :mod:`benchmark.harness.casestats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.core.errors import did_you_mean
from benchmark.harness.stats import StatsInputError


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each case occurs in each resample.

    Args:
        idx: ``(B, m)`` integer case indices in ``[0, n)``, one row per resample.
        n: The number of cases.

    Returns:
        ``(B, n)`` float64 counts; row ``b`` sums to ``m``.
    """
    arr = np.asarray(idx)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise StatsInputError(f"idx must be a (B, m) integer array, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise StatsInputError(f"idx holds case indices outside [0, {n})")
    b = arr.shape[0]
    flat = (arr + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _weights(idx: np.ndarray | None, n: int) -> np.ndarray:
    """Case weights in the kernels' layout, ``(n, B)`` (one column per resample)."""
    if idx is None:
        return np.ones((n, 1))
    return np.ascontiguousarray(resample_counts(idx, n).T)


#: Above this many (positive, negative) pairs per case, the AUC sorts and cumulates (O(B n))
#: instead of multiplying by the pair-comparison matrix (O(B n1 n0), but in BLAS).
_PAIRWISE_LIMIT = 256


def _ovr_auc(labels: np.ndarray, scores: np.ndarray, positive: int, wt: np.ndarray) -> np.ndarray:
    """AUC of class ``positive`` against the rest, per seed and weighted resample.

    The Mann-Whitney U with ties counted one half (average ranks), written with
    the case weights ``w`` of the resamples: ``U = sum_ij w_i w_j ([s_i > s_j] +
    [s_i = s_j] / 2)`` over positive cases ``i`` and negative ``j``, normalised by
    ``n1 n0`` (weighted counts). Exact (integer weights), and no resample is sorted.

    Args:
        labels: ``(n,)`` classes.
        scores: ``(S, n)`` scores of the positive class, one row per seed.
        positive: The positive class.
        wt: ``(n, B)`` case weights, one column per resample.

    Returns:
        ``(S, B)`` AUCs; ``nan`` where a resample lacks the positive or the negative class.
    """
    pos = labels == positive
    n_seeds, n = scores.shape
    n_pos = int(pos.sum())
    wp, wn = wt[pos], wt[~pos]
    n1, n0 = wp.sum(axis=0), wn.sum(axis=0)
    if n_pos * (n - n_pos) <= _PAIRWISE_LIMIT * n:
        # float32 is exact here: weights, comparisons (0, 1/2, 1) and their sums are
        # multiples of 1/2 below 2**22 while the resample size m has m**2 / 4 < 2**22
        dtype = np.float32 if float(wt.sum(axis=0).max()) < 4096 else np.float64
        sp, sn = scores[:, pos], scores[:, ~pos]
        cmp = (sn[:, :, None] < sp[:, None, :]) + 0.5 * (sn[:, :, None] == sp[:, None, :])
        # (S * n0, n1) @ (n1, B): per seed and negative case, the weighted positives above it
        above = cmp.astype(dtype).reshape(-1, n_pos) @ wp.astype(dtype)
        u = np.einsum("sjb,jb->sb", above.reshape(n_seeds, n - n_pos, -1), wn.astype(dtype))
        u = u.astype(np.float64)
    else:
        u = np.empty((n_seeds, wt.shape[1]))
        posf = pos.astype(np.float64)[:, None]
        for k, sc in enumerate(scores):
            order = np.argsort(sc, kind="stable")
            srt = sc[order]
            wo = wt[order]
            a = wo * posf[order]
            b = wo - a
            if srt.size > 1 and np.any(srt[1:] == srt[:-1]):  # ties: pool a distinct score
                starts = np.flatnonzero(np.r_[True, srt[1:] != srt[:-1]])
                a = np.add.reduceat(a, starts, axis=0)
                b = np.add.reduceat(b, starts, axis=0)
            below = np.empty_like(b)  # negatives strictly below + half the tied ones
            run = np.zeros(b.shape[1])
            for g in range(b.shape[0]):  # a row loop: faster than np.cumsum(axis=0)
                np.add(run, 0.5 * b[g], out=below[g])
                run += b[g]
            u[k] = np.einsum("gb,gb->b", a, below)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n1 * n0)[None]
    out[:, (n1 == 0) | (n0 == 0)] = np.nan
    return np.asarray(out, dtype=np.float64)


def _auc_w(labels: np.ndarray, probs: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``(S, B)`` AUCs of ``probs`` ``(S, n, C)``: binary, or one-vs-rest macro."""
    if probs.shape[2] == 2:
        return _ovr_auc(labels, probs[:, :, 1], 1, wt)
    total = np.zeros((probs.shape[0], wt.shape[1]))
    count = np.zeros_like(total)
    for c in range(probs.shape[2]):
        a = _ovr_auc(labels, probs[:, :, c], c, wt)
        ok = np.isfinite(a)
        total += np.where(ok, a, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _correct(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return (probs.argmax(axis=2) == labels[None]).astype(np.float64)


def _accuracy_w(labels: np.ndarray, probs: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``(S, B)`` accuracies of the argmax of ``probs`` ``(S, n, C)``."""
    return np.asarray(_correct(labels, probs) @ wt / wt.sum(axis=0)[None])


def _balanced_accuracy_w(labels: np.ndarray, probs: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``(S, B)`` mean recall over the classes present in each resample."""
    n_seeds, n, n_cls = probs.shape
    onehot = (labels[None] == np.arange(n_cls)[:, None]).astype(np.float64)  # (C, n)
    den = onehot @ wt  # (C, B)
    hits = _correct(labels, probs)[:, None, :] * onehot[None]  # (S, C, n)
    num = (hits.reshape(-1, n) @ wt).reshape(n_seeds, n_cls, -1)
    present = den > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present[None], num / np.where(present, den, 1.0)[None], 0.0)
        return np.asarray(recall.sum(axis=1) / present.sum(axis=0)[None])


def _nanmean_w(values: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """``(S, B)`` means of the finite per-case ``values`` ``(S, n)``."""
    ok = np.isfinite(values)
    num = np.where(ok, values, 0.0) @ wt
    den = ok.astype(np.float64) @ wt
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(den > 0, num / den, np.nan))


def check_classification(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:  # binary P(class 1)
        p = np.stack([1.0 - p, p], axis=1)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] < 2:
        raise StatsInputError(
            f"labels must be (n,) and probs (n, C>=2) or (n,), got {y.shape} and {p.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise StatsInputError("labels must be integer class indices")
        y = y.astype(np.int64)
    return y, p


def auc(labels: Any, probs: Any, idx: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC on each resample of the cases.

    Binary (``C == 2`` or 1-D ``probs``): the AUC of ``probs[:, 1]``. Multiclass:
    the one-vs-rest AUC averaged over the classes present in the resample (as
    ``sklearn.metrics.roc_auc_score(multi_class="ovr", average="macro")`` when
    every class is present). Ties count one half (average ranks).

    Args:
        labels: ``(n,)`` integer class of each case.
        probs: ``(n, C)`` class probabilities (or ``(n,)`` P(class 1)).
        idx: ``(B, m)`` case indices, one resample a row; ``None``: the cases as given.

    Returns:
        ``(B,)`` AUCs (``(1,)`` for ``idx=None``); ``nan`` where a resample holds one class.
    """
    y, p = check_classification(labels, probs)
    return _auc_w(y, p[None], _weights(idx, y.size))[0]


def accuracy(labels: Any, probs: Any, idx: np.ndarray | None = None) -> np.ndarray:
    """Accuracy of the argmax prediction on each resample (arguments as :func:`auc`)."""
    y, p = check_classification(labels, probs)
    return _accuracy_w(y, p[None], _weights(idx, y.size))[0]


def balanced_accuracy(labels: Any, probs: Any, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean per-class recall over the classes present in each resample (arguments as :func:`auc`)."""
    y, p = check_classification(labels, probs)
    return _balanced_accuracy_w(y, p[None], _weights(idx, y.size))[0]


def _check_values(values: Any) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    if v.ndim != 1:
        raise StatsInputError(f"per-case values must be (n,), got {v.shape}")
    return v


def dice(values: Any, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean per-case Dice over the defined (finite, not ``None``) cases of each resample.

    Args:
        values: ``(n,)`` per-case Dice, ``None``/``nan`` where undefined.
        idx: ``(B, m)`` case indices, one resample a row; ``None``: the cases as given.

    Returns:
        ``(B,)`` means; ``nan`` where a resample holds no defined case.
    """
    v = _check_values(values)
    return _nanmean_w(v[None], _weights(idx, v.size))[0]


def hd95(values: Any, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean per-case HD95 (lower is better) on each resample (arguments as :func:`dice`)."""
    v = _check_values(values)
    return _nanmean_w(v[None], _weights(idx, v.size))[0]


@dataclass(frozen=True)
class MetricSpec:
    """How a per-case metric is computed on weighted resamples.

    Attributes:
        name: The metric's name in records (``primary_metric``).
        kind: ``"classification"`` (labels and probabilities) or ``"segmentation"``
            (one value per case).
        higher_is_better: The metric's direction.
        weighted: ``f(labels (n,), probs (S, n, C), wt)`` or ``f(values (S, n), wt)``
            -> ``(S, B)``, the metric of every seed for the case weights ``wt`` ``(n, B)``.
    """

    name: str
    kind: str
    higher_is_better: bool
    weighted: Callable[..., np.ndarray]


METRICS: dict[str, MetricSpec] = {
    "auc": MetricSpec("auc", "classification", True, _auc_w),
    "accuracy": MetricSpec("accuracy", "classification", True, _accuracy_w),
    "balanced_accuracy": MetricSpec(
        "balanced_accuracy", "classification", True, _balanced_accuracy_w
    ),
    "dice": MetricSpec("dice", "segmentation", True, _nanmean_w),
    "hd95": MetricSpec("hd95", "segmentation", False, _nanmean_w),
}


def metric_spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise StatsInputError(
            f"metric {name!r} has no per-case form; known: {', '.join(METRICS)}"
            + did_you_mean(name, METRICS)
        )
    return METRICS[name]
