"""Task metrics: one registry shared by classification and segmentation.

Every entry of :data:`METRICS` is a :class:`Metric`: a callable
``metric(y_true, y_score_or_pred, **kw) -> float`` with the attributes

* ``higher_is_better``: direction used for model selection and reports;
* ``task``: ``"classification"`` or ``"segmentation"``;
* ``needs``: what the second argument must be: ``"scores"`` (per-class scores
  or probabilities ``(N, C)``, or ``(N,)`` positive-class scores for binary
  AUC), ``"labels"`` (predicted classes ``(N,)``; ``(N, C)`` scores are
  accepted and turned into ``argmax`` predictions) or ``"masks"``.

A metric that is undefined on its input (AUC with a single class present)
returns ``nan`` rather than raising; callers decide what to do with it (the
linear probe falls back to balanced accuracy for model selection).

Adding a metric is one decorated function, also from another module::

    from tasks.metrics import register_metric

    @register_metric("dice", higher_is_better=True, task="segmentation", needs="masks")
    def dice(y_true, y_pred, **kw) -> float: ...

Classification metrics use scikit-learn. ``auc`` is the ROC AUC of the
positive-class score for two classes and the one-vs-rest macro average for
more (the mean of the per-class binary AUCs, as
``roc_auc_score(multi_class="ovr", average="macro")``; classes absent from
``y_true`` are left out of the mean instead of making the metric fail).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from benchmark.core.registry import Registry

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    """A registered metric: a callable with a direction and an input kind.

    Attributes:
        name: Registered name.
        fn: ``fn(y_true, y_score_or_pred, **kw) -> float``.
        higher_is_better: True if larger values are better.
        task: ``"classification"`` or ``"segmentation"``.
        needs: ``"scores"``, ``"labels"`` or ``"masks"`` (see the module docstring).
        description: One line for listings.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    task: str = "classification"
    needs: str = "labels"
    description: str = ""

    def __call__(self, y_true: Any, y_score_or_pred: Any, **kw: Any) -> float:
        return float(self.fn(y_true, y_score_or_pred, **kw))

    def better(self, a: float, b: float) -> bool:
        """True if value ``a`` is strictly better than ``b`` (``nan`` is never better)."""
        if np.isnan(a):
            return False
        if np.isnan(b):
            return True
        return a > b if self.higher_is_better else a < b


METRICS: Registry[Metric] = Registry(
    "metrics", "task metrics: metric(y_true, y_score_or_pred, **kw) -> float"
)


def register_metric(
    name: str,
    *,
    higher_is_better: bool = True,
    task: str = "classification",
    needs: str = "labels",
    aliases: tuple[str, ...] = (),
) -> Callable[[MetricFn], Metric]:
    """Decorator registering a function as a :class:`Metric` in :data:`METRICS`."""

    def decorator(fn: MetricFn) -> Metric:
        doc = (fn.__doc__ or "").strip().splitlines()
        metric = Metric(name, fn, higher_is_better, task, needs, doc[0] if doc else "")
        METRICS.register(name, aliases=aliases)(metric)
        return metric

    return decorator


def get_metric(name: str) -> Metric:
    """The metric registered as ``name``, importing adapter modules that add metrics."""
    if name not in METRICS:
        import tasks.adapters  # noqa: F401  (segmentation metrics register on import)
    metric = METRICS.get(name)
    assert isinstance(metric, Metric)
    return metric


# -- helpers ----------------------------------------------------------------------
def as_predictions(y_score_or_pred: Any) -> np.ndarray:
    """Predicted classes from ``(N, C)`` scores (argmax) or ``(N,)`` predictions."""
    arr = np.asarray(y_score_or_pred)
    if arr.ndim == 2:
        return arr.argmax(axis=1)
    if arr.ndim == 1:
        return arr.astype(np.int64)
    raise ValueError(f"expected (N,) predictions or (N, C) scores, got shape {arr.shape}")


def _n_classes(y_true: np.ndarray, y: np.ndarray, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    if y.ndim == 2:
        return int(y.shape[1])
    return int(max(y_true.max(initial=0), y.max(initial=0)) + 1)


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray,
    y_score_or_pred: Any,
    num_classes: int | None = None,
) -> list[list[int]]:
    """Confusion matrix as nested lists: ``cm[i][j]`` = samples of class i predicted j."""
    yt = np.asarray(y_true, dtype=np.int64)
    pred = as_predictions(y_score_or_pred)
    k = _n_classes(yt, np.asarray(y_score_or_pred), num_classes)
    cm = skm.confusion_matrix(yt, pred, labels=np.arange(k))
    return [[int(v) for v in row] for row in cm]


def compute_metrics(
    names: Iterable[str], y_true: Any, y_score_or_pred: Any, **kw: Any
) -> dict[str, float]:
    """``{name: metric(y_true, y_score_or_pred, **kw)}`` for every name."""
    return {name: get_metric(name)(y_true, y_score_or_pred, **kw) for name in names}


# -- classification metrics -------------------------------------------------------
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
