"""Classification metrics against hand-computed values and the registry contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.metrics import (
    METRICS,
    Metric,
    classification_report,
    compute_metrics,
    confusion_matrix,
    get_metric,
    register_metric,
    selection_score,
)

# Six samples, three classes (imbalanced on purpose so that accuracy and
# balanced accuracy differ):
#
#   y_true = 0 0 0 0 1 2
#   y_pred = 0 0 0 1 1 0
#
# accuracy           = 4 correct / 6                        = 0.666667
# recall per class   = 3/4, 1/1, 0/1
# balanced accuracy  = (0.75 + 1 + 0) / 3                    = 0.583333
# precision          = 3/4 (pred 0 at 0,1,2,5), 1/2 (pred 1 at 3,4), 0 (class 2 never predicted)
# F1 per class       = 0.75, 2*0.5*1/1.5 = 0.666667, 0
# macro F1           = (0.75 + 0.666667 + 0) / 3            = 0.472222
# confusion matrix   = [[3, 1, 0], [0, 1, 0], [1, 0, 0]]
Y_TRUE = np.array([0, 0, 0, 0, 1, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 0])


def one_hot(pred: np.ndarray, k: int = 3) -> np.ndarray:
    return np.eye(k)[pred]


def test_hand_computed_label_metrics() -> None:
    assert get_metric("accuracy")(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert get_metric("balanced_accuracy")(Y_TRUE, Y_PRED) == pytest.approx(1.75 / 3)
    assert get_metric("macro_f1")(Y_TRUE, Y_PRED) == pytest.approx((0.75 + 2 / 3 + 0) / 3)
    assert confusion_matrix(Y_TRUE, Y_PRED, 3) == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_scores_are_argmaxed_for_label_metrics() -> None:
    scores = one_hot(Y_PRED) * 0.6 + 0.1  # argmax = Y_PRED
    assert compute_metrics(["accuracy", "balanced_accuracy", "macro_f1"], Y_TRUE, scores) == (
        compute_metrics(["accuracy", "balanced_accuracy", "macro_f1"], Y_TRUE, Y_PRED)
    )


def test_binary_auc_by_hand() -> None:
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (pos, neg) pairs
    # are ordered correctly -> AUC = 0.75
    y = np.array([0, 0, 1, 1])
    pos = np.array([0.1, 0.4, 0.35, 0.8])
    auc = get_metric("auc")
    assert auc(y, pos) == pytest.approx(0.75)
    assert auc(y, np.stack([1 - pos, pos], axis=1)) == pytest.approx(0.75)
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.9])))  # one class: undefined


def test_multiclass_auc_is_sklearn_ovr_macro() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    y[:3] = [0, 1, 2]
    p = rng.dirichlet(np.ones(3), size=40)
    expected = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert get_metric("auc")(y, p) == pytest.approx(expected)
    # a class absent from y_true is left out instead of failing
    y2 = np.where(y == 2, 0, y)
    per = [roc_auc_score(y2 == c, p[:, c]) for c in (0, 1)]
    assert get_metric("auc")(y2, p, num_classes=3) == pytest.approx(np.mean(per))


def test_registry_entries_have_direction_and_kind() -> None:
    for name in ("auc", "accuracy", "balanced_accuracy", "macro_f1"):
        m = METRICS.get(name)
        assert isinstance(m, Metric) and m.higher_is_better and m.task == "classification"
    assert METRICS.get("auc").needs == "scores"
    assert METRICS.resolve("acc") == "accuracy"


def test_register_metric_from_another_module() -> None:
    @register_metric("test_mean_abs_error", higher_is_better=False, task="segmentation")
    def mae(y_true: np.ndarray, y_pred: np.ndarray, **_: object) -> float:
        """Mean absolute error (test only)."""
        return float(np.abs(np.asarray(y_true) - np.asarray(y_pred)).mean())

    m = get_metric("test_mean_abs_error")
    assert m(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 1.0
    assert m.description == "Mean absolute error (test only)."
    assert m.better(0.5, 1.0) and not m.better(1.0, 0.5) and not m.better(float("nan"), 1.0)
    score, used = selection_score("test_mean_abs_error", np.zeros(2), np.ones(2))
    assert (score, used) == (-1.0, "test_mean_abs_error")  # negated: higher is better


def test_selection_falls_back_to_balanced_accuracy() -> None:
    y = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    score, used = selection_score("auc", y, probs, 2)
    assert used == "balanced_accuracy" and score == pytest.approx(2 / 3)


def test_classification_report_defaults_and_confusion() -> None:
    metrics, cm = classification_report([], Y_TRUE, one_hot(Y_PRED), 3)
    assert set(metrics) == {"auc", "balanced_accuracy", "macro_f1", "accuracy"}
    assert np.asarray(cm).sum() == Y_TRUE.size
