"""Weighted cosine k-nearest-neighbour classifier on frozen features (DINO protocol).

Recipe (Caron et al. 2021, *Emerging properties in self-supervised vision
transformers*, and Wu et al. 2018): pooled features are L2-normalised; for
each query the ``k`` most cosine-similar training samples vote for their class
with weight ``exp(sim / T)``; the summed class votes, divided by their total,
are the class probabilities (used for AUC; the prediction is their argmax).
``k`` (default 20) is capped by the number of training samples; ``T`` = 0.07.
There is nothing to train, so there is no model selection: validation metrics
are reported for reference only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult, classification_cases
from tasks.features import check_classification, check_image_size, get_features, read_labels
from tasks.metrics import classification_report


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class probabilities ``(M, num_classes)`` of a weighted cosine kNN vote.

    Args:
        train_x: ``(N, D)`` training features (any scale; normalised here).
        train_y: ``(N,)`` integer classes.
        query_x: ``(M, D)`` query features.
        num_classes: Number of classes.
        k: Neighbours (capped at ``N``).
        temperature: Softness of the ``exp(sim / T)`` weights.
        batch_size: Queries per similarity block (bounds memory to ``batch * N``).
    """
    tr = l2_normalize(train_x)
    q = l2_normalize(query_x)
    y = np.asarray(train_y, dtype=np.int64)
    k = max(1, min(int(k), tr.shape[0]))
    out = np.zeros((q.shape[0], num_classes), dtype=np.float64)
    for start in range(0, q.shape[0], batch_size):
        sim = q[start : start + batch_size] @ tr.T  # (b, N)
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        # subtracting the row max leaves the normalised votes unchanged and avoids overflow
        w = np.exp((top_sim - top_sim.max(axis=1, keepdims=True)) / temperature)
        votes = np.zeros((top.shape[0], num_classes))
        np.add.at(votes, (np.arange(top.shape[0])[:, None], y[top]), w)
        out[start : start + batch_size] = votes / votes.sum(axis=1, keepdims=True)
    return out


@ADAPTERS.register("knn")
class KNNAdapter(Adapter):
    """Weighted cosine kNN on frozen, L2-normalised features.

    Options:
        k: Number of neighbours (capped by the training-set size).
        temperature: ``T`` of the ``exp(sim / T)`` vote weights.
        batch_size: Images per forward pass when extracting features.
    """

    target: ClassVar[str] = "labels"
    trains_encoder: ClassVar[bool] = False
    default_config: ClassVar[dict[str, Any]] = {"k": 20, "temperature": 0.07, "batch_size": 128}

    def check(self, encoder: Encoder, data: CellData) -> None:
        check_classification(self.name, data)
        check_image_size(encoder, data.image_size)
        if int(self.config["k"]) < 1 or float(self.config["temperature"]) <= 0:
            from benchmark.core.errors import SSLBenchError

            raise SSLBenchError(f"knn: k must be >= 1 and temperature > 0, got {self.config}")

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
        tr_x, tr_y = fs.take(data.train), labels[data.train]
        k, t = int(self.config["k"]), float(self.config["temperature"])
        val_metrics: dict[str, float] = {}
        if len(data.val):
            val_probs = knn_predict(tr_x, tr_y, fs.take(data.val), data.num_classes, k, t)
            val_metrics, _ = classification_report(
                data.metrics, labels[data.val], val_probs, data.num_classes
            )
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        probs = knn_predict(tr_x, tr_y, fs.take(data.test), data.num_classes, k, t)
        metrics, cm = classification_report(
            data.metrics, labels[data.test], probs, data.num_classes
        )
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "confusion_matrix": cm,
                "k_used": min(k, len(data.train)),
                "feature_cache": fs.status,
                "feature_time_s": round(fs.time_s, 4),
                "feature_dim": int(fs.features.shape[1]),
            },
            per_case=classification_cases(data.test, labels[data.test], probs),
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - start,
        )
