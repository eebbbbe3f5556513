"""Linear probe: logistic regression on standardised frozen features.

Recipe (the usual linear evaluation of SSL papers, e.g. Kolesnikov et al. 2019
and the scikit-learn probe of CLIP, Radford et al. 2021, adapted to small
medical training sets):

1. Pooled frozen features (:mod:`tasks.features`, cached per encoder) are
   standardised with the mean and standard deviation of the *training subset*.
2. For each ``C`` of a log grid (default 8 values from 1e-4 to 1e2), an L2
   multinomial :class:`~sklearn.linear_model.LogisticRegression` (lbfgs) is
   fitted on the training subset (warm-started along the grid) and scored on
   the subsampled validation split with the task's primary metric. If that is
   undefined (AUC with one class in a tiny validation subset) balanced
   accuracy decides. Ties go to the smaller ``C`` (stronger regularisation).
3. The selected ``C`` is refitted from scratch on the training subset (the
   validation split is never trained on) and evaluated on the full test split.

``class_weight: balanced`` weights samples by inverse class frequency of the
training subset (useful for imbalanced data, e.g. BUSI). Fits run with one
BLAS thread: the problems are small (hundreds of samples x hundreds of
features) and multi-threaded BLAS made them up to 10x slower on a shared CPU.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from benchmark.core.errors import SSLBenchError
from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult, classification_cases
from tasks.features import check_classification, check_image_size, get_features, read_labels
from tasks.metrics import classification_report, selection_score

DEFAULT_C_GRID = [float(c) for c in np.logspace(-4, 2, 8)]


def full_probs(model: LogisticRegression, x: np.ndarray, num_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per class 0..num_classes-1 (absent classes 0)."""
    p = model.predict_proba(x)
    out = np.zeros((x.shape[0], num_classes))
    out[:, model.classes_.astype(np.int64)] = p
    return out


@ADAPTERS.register("linear")
class LinearAdapter(Adapter):
    """Logistic regression on standardised frozen features, ``C`` selected on validation.

    Options:
        C_grid: Inverse regularisation strengths tried, in increasing order.
        class_weight: ``None`` or ``"balanced"``.
        max_iter: lbfgs iterations per fit.
        standardize: Standardise features with training-subset statistics.
        batch_size: Images per forward pass when extracting features.
    """

    target: ClassVar[str] = "labels"
    trains_encoder: ClassVar[bool] = False
    default_config: ClassVar[dict[str, Any]] = {
        "C_grid": DEFAULT_C_GRID,
        "class_weight": None,
        "max_iter": 1000,
        "standardize": True,
        "batch_size": 128,
    }

    def check(self, encoder: Encoder, data: CellData) -> None:
        check_classification(self.name, data)
        check_image_size(encoder, data.image_size)
        grid = self.config["C_grid"]
        if not grid or any(float(c) <= 0 for c in grid):
            raise SSLBenchError(
                f"linear: C_grid must be a non-empty list of positive numbers, got {grid}"
            )
        if self.config["class_weight"] not in (None, "balanced"):
            raise SSLBenchError(
                f"linear: class_weight must be null or 'balanced', got {self.config['class_weight']!r}"
            )

    def _model(self, c: float, seed: int, warm: bool = False) -> LogisticRegression:
        return LogisticRegression(
            C=float(c),
            max_iter=int(self.config["max_iter"]),
            class_weight=self.config["class_weight"],
            random_state=seed,
            warm_start=warm,
        )

    def run(
        self,
        encoder: Encoder,
        data: CellData,
        seed: int,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
    ) -> CellResult:
        self.check(encoder, data)
        start = time.perf_counter()
        fs = get_features(
            encoder,
            data,
            cache_dir=cache_dir,
            device=device,
            batch_size=int(self.config["batch_size"]),
        )
        labels = read_labels(data)
        tr_y, va_y, te_y = labels[data.train], labels[data.val], labels[data.test]
        if np.unique(tr_y).size < 2:
            raise SSLBenchError(
                f"linear: the training subset of {data.path} holds a single class; "
                "use a larger label fraction"
            )
        tr_x, va_x, te_x = fs.take(data.train), fs.take(data.val), fs.take(data.test)
        if self.config["standardize"]:
            scaler = StandardScaler().fit(tr_x)
            tr_x, va_x, te_x = (
                scaler.transform(tr_x),
                scaler.transform(va_x),
                scaler.transform(te_x),
            )
        primary = data.primary_metric or "auc"
        grid = sorted(float(c) for c in self.config["C_grid"])
        scores: list[float] = []
        used: list[str] = []
        not_converged = 0
        path_model = self._model(grid[0], seed, warm=True)
        # one BLAS thread: these problems are small, and threads only contend on a busy CPU
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, "blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            for c in grid:
                path_model.set_params(C=c).fit(tr_x, tr_y)
                if len(va_y):
                    score, name = selection_score(
                        primary,
                        va_y,
                        full_probs(path_model, va_x, data.num_classes),
                        data.num_classes,
                    )
                else:
                    score, name = float("nan"), primary
                scores.append(score)
                used.append(name)
            valid = [i for i, s in enumerate(scores) if not np.isnan(s)]
            best = max(valid, key=lambda i: (scores[i], -i)) if valid else len(grid) // 2
            model = self._model(grid[best], seed).fit(tr_x, tr_y)
            not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        val_metrics: dict[str, float] = {}
        if len(va_y):
            val_metrics, _ = classification_report(
                data.metrics, va_y, full_probs(model, va_x, data.num_classes), data.num_classes
            )
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        probs = full_probs(model, te_x, data.num_classes)
        metrics, cm = classification_report(data.metrics, te_y, probs, data.num_classes)
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "confusion_matrix": cm,
                "C": grid[best],
                "C_grid": grid,
                "val_selection_scores": [None if np.isnan(s) else round(s, 6) for s in scores],
                "selection_metric": used[best] if valid else "none (no validation data)",
                "convergence_warnings": int(not_converged),
                "feature_cache": fs.status,
                "feature_time_s": round(fs.time_s, 4),
                "feature_dim": int(fs.features.shape[1]),
            },
            per_case=classification_cases(data.test, te_y, probs),
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - start,
        )
