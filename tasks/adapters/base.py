"""The task-adapter contract shared by classification and segmentation adapters.

An adapter takes the shared encoder (from a checkpoint, or randomly initialised
for the ``scratch`` baseline), one evaluation cell's data (a label-fraction
subset of the train split, a subsampled validation split and the full test
split of one HDF5 dataset) and a seed, trains what it needs and returns test
metrics. Sweeps over fractions and seeds live in :mod:`tasks.sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benchmark.core.registry import Registry
from pretrain.encoders import Encoder

ADAPTERS: Registry[type[Adapter]] = Registry(
    "adapters", "downstream task adapters (classification and segmentation protocols)"
)


@dataclass
class CellData:
    """The data of one evaluation cell.

    Attributes:
        path: The sslbench HDF5 dataset.
        train: File indices of the labelled training subset (a label fraction).
        val: File indices of the (subsampled) validation split.
        test: File indices of the full test split (never subsampled).
        target: ``"labels"`` (classification) or ``"masks"`` (segmentation).
        num_classes: Number of label classes, or of mask classes incl. background.
        class_names: Names of the classes.
        image_size: Spatial size fed to the encoder (images are resized to it).
        content_hash: Content hash of the dataset file (for caches and records).
        metrics: Names of the task's metrics (:data:`tasks.metrics.METRICS`) to
            report; empty means the adapter's own default set.
        primary_metric: Metric used for model selection on ``val`` (empty: the
            adapter's default).
        preprocessing: The task spec's preprocessing (``resize`` mode,
            ``antialias``); empty means bilinear with anti-aliasing.
    """

    path: Path
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    target: str
    num_classes: int
    class_names: list[str]
    image_size: int
    content_hash: str = ""
    metrics: list[str] = field(default_factory=list)
    primary_metric: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """What an adapter returns for one cell.

    Attributes:
        metrics: Test metrics (floats; names as in the task spec).
        val_metrics: Validation metrics of the selected model.
        extra: Anything else worth recording (confusion matrix, per-class scores,
            chosen hyper-parameters, epochs trained, learning curve, cache hits).
        per_case: Test outputs per test case, keyed by test sample ids, so that
            statistics can resample test cases: classification ``{"ids", "labels",
            "probs"}``, segmentation ``{"ids", "dice", "hd95"}`` (see
            :func:`classification_cases` and :func:`segmentation_cases`).
        train_time_s: Wall time of training (incl. feature extraction and every
            trial of a learning-rate grid).
        eval_time_s: Wall time of test evaluation.
    """

    metrics: dict[str, float]
    val_metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    per_case: dict[str, Any] = field(default_factory=dict)
    train_time_s: float = 0.0
    eval_time_s: float = 0.0


#: Decimals kept for per-case probabilities and scores (records stay a few MB).
CASE_DECIMALS = 5


def _ids(test: np.ndarray) -> list[str]:
    """Test sample ids: the samples' indices in the dataset file (whose content hash the
    record holds), identical for every record of one task and dataset."""
    return [str(int(i)) for i in np.asarray(test).ravel()]


def classification_cases(test: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Per-case classification outputs: ids, true labels and class probabilities."""
    return {
        "ids": _ids(test),
        "labels": [int(v) for v in np.asarray(labels).ravel()],
        "probs": np.round(np.asarray(probs, dtype=np.float64), CASE_DECIMALS).tolist(),
    }


def segmentation_cases(test: np.ndarray, dice: np.ndarray, hd95: np.ndarray) -> dict[str, Any]:
    """Per-case segmentation outputs: ids, and per case the foreground-class mean of
    Dice and of HD95 (``None`` where undefined, e.g. HD95 on an empty reference)."""

    ids = _ids(test)

    def mean_rows(a: np.ndarray) -> list[float | None]:
        out: list[float | None] = []
        for row in np.asarray(a, dtype=np.float64).reshape(len(ids), -1):
            ok = row[np.isfinite(row)]
            out.append(round(float(ok.mean()), CASE_DECIMALS) if ok.size else None)
        return out

    return {"ids": ids, "dice": mean_rows(dice), "hd95": mean_rows(hd95)}


class Adapter:
    """Base class of task adapters.

    Class attributes:
        target: ``"labels"`` or ``"masks"``.
        default_config: The documented recipe (optimizer, schedule, epochs, ...).
        trains_encoder: True if the encoder's weights change (fine-tuning).
    """

    name: ClassVar[str] = ""
    target: ClassVar[str] = "labels"
    default_config: ClassVar[dict[str, Any]] = {}
    trains_encoder: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.default_config))
        if unknown:
            from benchmark.core.registry import unknown_name_error

            raise unknown_name_error(
                f"option of adapter {self.name!r}", unknown[0], list(self.default_config)
            )
        self.config = {**self.default_config, **config}

    def check(self, encoder: Encoder, data: CellData) -> None:
        """Raise :class:`benchmark.core.errors.SSLBenchError` if this cell cannot run."""

    def training_passes(self, n_train: int) -> float:
        """Image passes (forward + backward) one cell makes on ``n_train`` labelled images.

        The work behind ``--dry-run`` estimates, summed over every trial of a
        learning-rate grid; early stopping can only shorten it. Adapters on frozen
        features train no encoder and return 0 (their cost is the feature extraction).
        """
        return 0.0

    def run(
        self,
        encoder: Encoder,
        data: CellData,
        seed: int,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
    ) -> CellResult:
        """Train on ``data.train`` (selecting on ``data.val``) and evaluate on ``data.test``."""
        raise NotImplementedError
