"""Task metrics: one registry shared by classification and segmentation.

Every entry of :data:`METRICS` is a :class:`Metric`: a callable
``metric(y_true, y_score_or_pred, **kw) -> float`` with the attributes

* ``higher_is_better``: direction used for model selection and reports;
* ``task``: ``"classification"`` or ``"segmentation"``;
* ``bounds``: the range of its values (``(0, 1)`` unless registered otherwise);
  the leaderboard clips intervals to it;
* ``needs``: what the second argument must be: ``"scores"`` (per-class scores
  or probabilities ``(N, C)``, or ``(N,)`` positive-class scores for binary
  AUC), ``"labels"`` (predicted classes ``(N,)``; ``(N, C)`` scores are
  accepted and turned into ``argmax`` predictions) or ``"masks"``.

A metric that is undefined on its input (AUC with a single class present)
returns ``nan`` rather than raising; callers decide what to do with it (the
linear probe falls back to balanced accuracy for model selection).

Adding a metric is one decorated function; a new family of metrics is one new
module of this package (registered on import)::

    from tasks.metrics.base import register_metric

    @register_metric("dice", higher_is_better=True, task="segmentation", needs="masks")
    def dice(y_true, y_pred, **kw) -> float: ...

Classification metrics use scikit-learn. ``auc`` is the ROC AUC of the
positive-class score for two classes and the one-vs-rest macro average for
more (the mean of the per-class binary AUCs, as
``roc_auc_score(multi_class="ovr", average="macro")``; classes absent from
``y_true`` are left out of the mean instead of making the metric fail).
"""

from __future__ import annotations

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
        bounds: The range of the metric's values, ``(low, high)``; ``inf`` for none.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    task: str = "classification"
    needs: str = "labels"
    description: str = ""
    bounds: tuple[float, float] = (0.0, 1.0)

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
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Callable[[MetricFn], Metric]:
    """Decorator registering a function as a :class:`Metric` in :data:`METRICS`."""

    def decorator(fn: MetricFn) -> Metric:
        doc = (fn.__doc__ or "").strip().splitlines()
        metric = Metric(name, fn, higher_is_better, task, needs, doc[0] if doc else "", bounds)
        METRICS.register(name, aliases=aliases)(metric)
        return metric

    return decorator


def get_metric(name: str) -> Metric:
    """The metric registered as ``name``."""
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
