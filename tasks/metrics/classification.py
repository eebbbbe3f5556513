"""Classification metrics (scikit-learn) and the selection score of the probes."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from tasks.metrics.base import (
    as_predictions,
    compute_metrics,
    confusion_matrix,
    get_metric,
    register_metric,
)


@register_metric("auc", higher_is_better=True, needs="scores", aliases=("roc_auc",))
def auc(y_true: Any, y_score: Any, num_classes: int | None = None, **_: Any) -> float:
    """ROC AUC: binary on the positive-class score, else one-vs-rest macro (nan if undefined)."""
    yt = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(y_score, dtype=np.float64)
    if scores.ndim == 1:  # binary positive-class scores
        scores = np.stack([1.0 - scores, scores], axis=1)
    if scores.ndim != 2:
        raise ValueError(f"auc needs (N, C) or (N,) scores, got shape {scores.shape}")
    k = num_classes or scores.shape[1]
    if k == 2:
        if np.unique(yt).size < 2:
            return float("nan")
        return float(skm.roc_auc_score(yt, scores[:, 1]))
    per_class = [
        float(skm.roc_auc_score(yt == c, scores[:, c]))
        for c in range(k)
        if 0 < (yt == c).sum() < yt.size
    ]
    return float(np.mean(per_class)) if per_class else float("nan")


@register_metric("accuracy", higher_is_better=True, aliases=("acc",))
def accuracy(y_true: Any, y_pred: Any, **_: Any) -> float:
    """Fraction of correctly classified samples."""
    return float(skm.accuracy_score(np.asarray(y_true), as_predictions(y_pred)))


@register_metric("balanced_accuracy", higher_is_better=True, aliases=("bacc",))
def balanced_accuracy(y_true: Any, y_pred: Any, **_: Any) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        return float(skm.balanced_accuracy_score(np.asarray(y_true), as_predictions(y_pred)))


@register_metric("macro_f1", higher_is_better=True, aliases=("f1_macro",))
def macro_f1(y_true: Any, y_pred: Any, **_: Any) -> float:
    """Unweighted mean of per-class F1 over the classes in ``y_true`` or the predictions."""
    yt = np.asarray(y_true, dtype=np.int64)
    return float(skm.f1_score(yt, as_predictions(y_pred), average="macro", zero_division=0))


# -- classification helpers for adapters ---------------------------------------------
#: Metrics reported when the task gives none.
DEFAULT_CLASSIFICATION_METRICS = ("auc", "balanced_accuracy", "macro_f1", "accuracy")
#: Selection metric used when the primary metric is undefined (e.g. AUC on a
#: validation subset holding one class).
FALLBACK_SELECTION_METRIC = "balanced_accuracy"


def selection_score(
    name: str, y_true: Any, y_score: Any, num_classes: int | None = None
) -> tuple[float, str]:
    """A higher-is-better model-selection score and the metric it came from.

    ``name`` is tried first (negated if lower is better); if it is ``nan``,
    :data:`FALLBACK_SELECTION_METRIC` is used instead.
    """
    for candidate in (name, FALLBACK_SELECTION_METRIC):
        metric = get_metric(candidate)
        value = metric(y_true, y_score, num_classes=num_classes)
        if not np.isnan(value):
            return (value if metric.higher_is_better else -value), candidate
    return float("nan"), name


def classification_report(
    names: Sequence[str], y_true: Any, probs: Any, num_classes: int
) -> tuple[dict[str, float], list[list[int]]]:
    """Metrics ``names`` (default set if empty) and the confusion matrix of ``probs``."""
    metrics = compute_metrics(
        list(names) or DEFAULT_CLASSIFICATION_METRICS, y_true, probs, num_classes=num_classes
    )
    return metrics, confusion_matrix(y_true, probs, num_classes)
