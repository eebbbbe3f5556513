"""Task metrics: one registry (:data:`METRICS`) shared by classification and segmentation.

:mod:`tasks.metrics.base` holds the contract; each other module of this package
registers a family of metrics on import (``classification``, ``segmentation``).
"""

from benchmark.core.plugins import import_submodules
from tasks.metrics.base import (
    METRICS,
    Metric,
    as_predictions,
    compute_metrics,
    confusion_matrix,
    get_metric,
    register_metric,
)

import_submodules(__name__)

from tasks.metrics.classification import (  # noqa: E402
    DEFAULT_CLASSIFICATION_METRICS,
    FALLBACK_SELECTION_METRIC,
    classification_report,
    selection_score,
)

__all__ = [
    "DEFAULT_CLASSIFICATION_METRICS",
    "FALLBACK_SELECTION_METRIC",
    "METRICS",
    "Metric",
    "as_predictions",
    "classification_report",
    "compute_metrics",
    "confusion_matrix",
    "get_metric",
    "register_metric",
    "selection_score",
]
