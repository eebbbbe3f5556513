"""Online kNN monitor and health verdict of a pretraining run.

Like solo-learn's and lightly's kNN benchmark callbacks: at a few points of a
run (step 0 and every ``every`` steps, 5 points by default) the encoder's
pooled backbone features of the labelled dataset's **train** split (the bank)
and **validation** split (the queries) give a weighted cosine kNN accuracy
(lightly's ``knn_predict``: k = 20, temperature 0.1) on features standardised
with the bank's per-dimension mean and standard deviation. It is *reported only*:
nothing selects checkpoints or hyper-parameters on it, and the test split is
never read.

Every point is measured on a copy of the encoder whose batch-norm statistics
were recalibrated on the train split
(:func:`pretrain.encoders.calibration.calibrate_batch_norm`), so that the rise
from step 0 to the end measures what the weights learned, not the statistics
that any training run updates as a side effect (a run at lr 0 gains exactly 0).
The training encoder itself is not touched (weights, statistics, random number
generators): a run with the monitor ends with bit-identical weights to one
without.

Why standardise: pooled features of a CNN after its last ReLU are non-negative and
share one dominant direction, so raw cosine similarity mostly compares that
direction. On BUSI (64 px, ResNet-18, the nine methods of the recipe benchmark)
raw-cosine balanced kNN accuracy ranked encoders against their linear-probe
gains poorly (it fell for MoCo v2, SimSiam and BYOL, whose probes gained 0.03 to
0.15 AUC); standardised, it rose for exactly the encoders whose probes rose most
(SimCLR +0.12, VICReg +0.08) and fell for the ones whose probes did not move (MAE,
SparK). Standardisation uses the bank only (the queries never set statistics).

Datasets without class labels but with masks (MSD hippocampus) get the dense
linear-probe monitor instead (:mod:`pretrain.dense_monitor`: foreground Dice of
a logistic probe on frozen multi-scale features), with the same points, the same
calibration and the same margin; a dataset with neither skips the monitor with a
note, and the verdict then rests on the loss against chance where the method has one.

:func:`health` turns a run's history into the verdict every output carries:
kNN init -> end, loss first -> last (chance), collapse indicator, and
``learned`` / ``did not learn`` / ``not checked``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from benchmark.core.errors import DataError
from benchmark.data.dataset import H5Dataset
from pretrain.encoders.base import Encoder
from pretrain.encoders.calibration import calibrate_batch_norm

#: Neighbours and temperature of the weighted kNN vote (solo-learn's / lightly's defaults
#: for small datasets: k = 20 as in InstDisc's monitor, T = 0.1).
KNN_K = 20
KNN_T = 0.1
#: Monitor points per run besides step 0 when ``knn_every`` is 0 (auto).
DEFAULT_POINTS = 5
#: Minimum rise of kNN accuracy (absolute) from the calibrated step 0 to the end for
#: an encoder to count as having learned.
DEFAULT_MARGIN = 0.02
#: A loss within this fraction of its chance level counts as "at chance".
CHANCE_TOLERANCE = 0.03
#: An embedding std below this fraction of the first logged one flags a collapse.
COLLAPSE_FRACTION = 0.2

#: The kNN figure the verdict compares (both are recorded at every point).
VERDICT_METRIC = "knn_balanced_acc"
#: The monitor's second figure: validation AUC of a logistic regression on the bank.
LINEAR_METRIC = "linear_auc"
#: Inverse regularisation of that logistic regression (standardised features; the
#: recipe benchmark's cross-validated choice on BUSI lies between 0.01 and 0.1).
LINEAR_C = 0.1
#: The figure of the dense linear-probe monitor of mask-only datasets
#: (:mod:`pretrain.dense_monitor`): mean foreground Dice on the validation split.
DENSE_METRIC = "dense_dice"


def monitor_steps(steps: int, every: int) -> list[int]:
    """Steps at which the monitor runs: 0, multiples of ``every`` and the last step.

    ``every = 0`` spreads :data:`DEFAULT_POINTS` points over the run; a negative
    value turns the monitor off (no steps).
    """
    if every < 0 or steps <= 0:
        return []
    if every == 0:
        every = max(1, math.ceil(steps / DEFAULT_POINTS))
    return sorted({0, *range(every, steps, every), steps})


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, C, *spatial)`` images resized to ``size`` on every spatial axis."""
    spatial = tuple(images.shape[2:])
    target = (int(size),) * len(spatial)
    if spatial == target:
        return images
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    return F.interpolate(images, size=target, mode=mode, align_corners=False)


def _standardise(bank: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise both with the bank's per-dimension statistics.

    Dimensions that are constant over the bank (dead units) carry no neighbour
    information and are dropped rather than divided by a near-zero deviation.
    """
    mean, std = bank.mean(0), bank.std(0)
    keep = std > 1e-6 * std.max().clamp_min(1e-12)
    bank = (bank[:, keep] - mean[keep]) / std[keep]
    query = (query[:, keep] - mean[keep]) / std[keep]
    return bank.float(), query.float()


class FeatureMonitor:
    """What the kNN and the dense-probe monitor share: the dataset, the device, the
    note of a monitor that skips, eval mode around the encoder and the calibrated copy.

    A subclass sets ``train_images`` (the calibration images) when it is enabled.

    Args:
        path: The labelled or masked sslbench dataset of the run.
        device: Where features are computed.
        batch_size: Images per forward pass.
    """

    train_images: torch.Tensor

    def __init__(self, path: str | Path, device: torch.device, batch_size: int) -> None:
        self.path = Path(path)
        self.device = device
        self.batch_size = batch_size
        #: Why the monitor does not run (None when it does).
        self.note: str | None = None

    @property
    def enabled(self) -> bool:
        return self.note is None

    @staticmethod
    @contextmanager
    def eval_mode(encoder: Encoder) -> Iterator[Encoder]:
        """The encoder in eval mode, its previous mode restored afterwards."""
        was_training = encoder.training
        encoder.eval()
        try:
            yield encoder
        finally:
            encoder.train(was_training)

    def measured(self, encoder: Encoder, calibrate: bool) -> tuple[Encoder, dict[str, Any]]:
        """The encoder a point measures and the start of its record: with ``calibrate``,
        a copy whose batch-norm statistics were calibrated on the train split (the
        training encoder is never touched)."""
        record: dict[str, Any] = {}
        if calibrate:
            encoder = copy.deepcopy(encoder)
            record["calibration"] = calibrate_batch_norm(
                encoder, self.train_images, split="train", device=self.device
            )
        return encoder, record


class KNNMonitor(FeatureMonitor):
    """kNN accuracy of an encoder's pooled features: train-split bank, validation queries.

    Args:
        path: Labelled sslbench dataset (the real dataset of the run).
        image_size: Size the images are resized to (the run's view size).
        device: Where features are computed.
        k: Neighbours.
        temperature: Softness of the kNN vote weights.
        batch_size: Images per forward pass.
    """

    def __init__(
        self,
        path: str | Path,
        image_size: int,
        device: torch.device,
        *,
        k: int = KNN_K,
        temperature: float = KNN_T,
        batch_size: int = 128,
    ) -> None:
        super().__init__(path, device, batch_size)
        self.k, self.temperature = k, temperature
        self.num_classes = 0
        train = H5Dataset(self.path, split="train", keys=("label",))
        #: Whether the file has single-label classes (without them, a file with masks gets
        #: the dense-probe monitor instead, :mod:`pretrain.dense_monitor`).
        self.has_classes = train.labels is not None and np.asarray(train.labels).ndim == 1
        if not self.has_classes:
            self.note = f"{self.path.name} has no single-label classes: kNN monitor skipped"
            return
        try:
            val = H5Dataset(self.path, split="val", keys=("label",))
        except DataError:  # a file without a validation split
            self.note = f"{self.path.name} has no validation split: kNN monitor skipped"
            return
        self.num_classes = int(max(train.labels.max(), val.labels.max())) + 1  # type: ignore[union-attr]
        self.train_images = resize_images(train.load().to_float(train.raw_images()), image_size)
        self.val_images = resize_images(val.load().to_float(val.raw_images()), image_size)
        self.train_labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
        self.val_labels = torch.as_tensor(np.asarray(val.labels), dtype=torch.long)

    @torch.no_grad()
    def features(self, encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
        """Pooled features in eval mode (the encoder's mode is restored)."""
        with self.eval_mode(encoder):
            feats = [
                encoder.forward_features(
                    images[i : i + self.batch_size].to(self.device, non_blocking=True)
                ).float()
                for i in range(0, images.shape[0], self.batch_size)
            ]
        return torch.cat(feats)

    def evaluate(self, encoder: Encoder, *, calibrate: bool = False) -> dict[str, Any]:
        """kNN accuracy and balanced accuracy on the validation split.

        Args:
            encoder: The encoder (not modified).
            calibrate: Measure a copy whose batch-norm statistics were calibrated on
                the train split (the step-0 point).
        """
        t0 = time.perf_counter()
        encoder, record = self.measured(encoder, calibrate)
        bank = self.features(encoder, self.train_images)
        query = self.features(encoder, self.val_images)
        z_bank, z_query = _standardise(bank.double(), query.double())
        bank, query = F.normalize(z_bank, dim=1), F.normalize(z_query, dim=1)
        labels = self.train_labels.to(bank.device)
        k = min(self.k, bank.shape[0])  # small datasets: every train image is a neighbour
        pred = knn_predict(query, bank.T, labels, self.num_classes, k, self.temperature)
        top1 = pred[:, 0].cpu()
        correct = top1 == self.val_labels
        recalls = [
            float(correct[self.val_labels == c].float().mean())
            for c in range(self.num_classes)
            if bool((self.val_labels == c).any())
        ]
        record.update(
            knn_acc=float(correct.float().mean()),
            knn_balanced_acc=float(np.mean(recalls)),
            linear_auc=self.linear_auc(z_bank, z_query),
            knn_time_s=round(time.perf_counter() - t0, 3),
        )
        return record

    def linear_auc(self, bank: torch.Tensor, query: torch.Tensor) -> float | None:
        """Macro one-vs-rest AUC on the validation split of a logistic regression
        (``C`` :data:`LINEAR_C`) fitted on the bank's standardised features.

        None when the validation split lacks a class the bank has (AUC undefined).
        """
        y_train, y_val = self.train_labels.numpy(), self.val_labels.numpy()
        if len(np.unique(y_val)) != len(np.unique(y_train)) or len(np.unique(y_train)) < 2:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=LINEAR_C, max_iter=1000).fit(bank.cpu().numpy(), y_train)
        proba = model.predict_proba(query.cpu().numpy())
        if proba.shape[1] == 2:
            return float(roc_auc_score(y_val, proba[:, 1]))
        return float(roc_auc_score(y_val, proba, multi_class="ovr", average="macro"))

    def describe(self) -> dict[str, Any]:
        """What the monitor measures (recorded in ``pretrain.json``)."""
        out: dict[str, Any] = {
            "dataset": str(self.path),
            "bank": "train",
            "queries": "val",
            "k": min(self.k, len(self.train_labels)),
            "temperature": self.temperature,
            "features": "pooled, standardised with the bank's per-dimension mean / std, cosine",
            "metric": "knn_acc and knn_balanced_acc (the verdict uses the latter)",
            "calibration": "every point: a copy with batch norm calibrated on the train split",
        }
        if self.note:
            out["note"] = self.note
        else:
            out.update(train_images=len(self.train_labels), val_images=len(self.val_labels))
        return out


def _metric(point: dict[str, Any]) -> float:
    """The verdict's kNN figure of a monitor point (balanced accuracy; plain if absent)."""
    return float(point.get(VERDICT_METRIC, point["knn_acc"]))


def _span(monitor: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """``metric``'s first and last monitor values and their difference (None where absent)."""
    points = [r[metric] for r in monitor if r.get(metric) is not None]
    return {
        "metric": metric,
        "init": points[0] if points else None,
        "end": points[-1] if points else None,
        "gain": (points[-1] - points[0]) if len(points) > 1 else None,
    }


def health(
    history: list[dict[str, Any]],
    monitor: list[dict[str, Any]],
    *,
    chance: float | None,
    num_features: int,
    margin: float = DEFAULT_MARGIN,
    note: str | None = None,
) -> dict[str, Any]:
    """The health verdict of a run from its logged history and monitor points.

    Rules, in order: a kNN gain (end minus calibrated step 0, in balanced accuracy:
    the mean per-class recall, because plain accuracy of a k = 20 vote on an
    imbalanced dataset such as BUSI mostly counts the majority class) below ``margin``
    is ``did not learn`` unless the monitor's linear-probe AUC rose by ``margin``
    (masked-image-modelling features are known to be poor neighbours: on BUSI, SparK's
    kNN fell 0.498 -> 0.425 while its linear probe gained 0.09 AUC); without a kNN
    monitor, a dense-probe Dice gain (mask-only datasets) below ``margin`` is
    ``did not learn``; without either monitor, a last loss within
    :data:`CHANCE_TOLERANCE` of chance is ``did not learn``; an embedding std that
    fell below :data:`COLLAPSE_FRACTION` of its first value flags a collapse (also
    ``did not learn``). A run with neither a monitor nor a chance level and no
    collapse is ``not checked``.

    Args:
        history: Logged training records (``loss``, ``embedding_std``).
        monitor: Monitor records (``step`` and ``knn_acc`` or ``dense_dice``), step 0 first.
        chance: The method's chance loss, or None.
        num_features: Width of the pooled features (the collapse reference 1/sqrt(D)).
        margin: Minimum gain of the monitor's figure (kNN, linear AUC or dense Dice).
        note: Why the monitor did not run, if it did not.
    """
    losses = [float(r["loss"]) for r in history if "loss" in r]
    stds = [float(r["embedding_std"]) for r in history if "embedding_std" in r]
    knn = [r for r in monitor if "knn_acc" in r]
    reasons: list[str] = []
    verdict = "not checked"
    out: dict[str, Any] = {
        "loss": {
            "first": losses[0] if losses else None,
            "last": losses[-1] if losses else None,
            "chance": chance,
        },
        "collapse": {
            "embedding_std_first": stds[0] if stds else None,
            "embedding_std_last": stds[-1] if stds else None,
            "reference": 1 / math.sqrt(num_features) if num_features else None,
            "collapsed": bool(stds and stds[-1] < COLLAPSE_FRACTION * stds[0]),
        },
        "knn": {
            "metric": VERDICT_METRIC,
            "init": _metric(knn[0]) if knn else None,
            "end": _metric(knn[-1]) if knn else None,
            "gain": (_metric(knn[-1]) - _metric(knn[0])) if len(knn) > 1 else None,
            "accuracy_init": knn[0]["knn_acc"] if knn else None,
            "accuracy_end": knn[-1]["knn_acc"] if knn else None,
            "margin": margin,
            "note": note,
        },
    }
    out["linear"] = _span(monitor, LINEAR_METRIC)
    out["dense"] = _span(monitor, DENSE_METRIC)
    gain, linear_gain = out["knn"]["gain"], out["linear"]["gain"]
    dense_gain = out["dense"]["gain"]
    if gain is not None:
        learned = gain >= margin or (linear_gain is not None and linear_gain >= margin)
        verdict = "learned" if learned else "did not learn"
        if not learned:
            reasons.append(f"kNN balanced accuracy rose by {gain:+.3f} (< {margin}) from step 0")
            if linear_gain is not None:
                reasons.append(f"linear-probe AUC rose by {linear_gain:+.3f} (< {margin})")
    elif dense_gain is not None:
        verdict = "learned" if dense_gain >= margin else "did not learn"
        if dense_gain < margin:
            reasons.append(f"dense-probe Dice rose by {dense_gain:+.3f} (< {margin}) from step 0")
    elif chance is not None and losses:
        at_chance = losses[-1] >= chance * (1 - CHANCE_TOLERANCE)
        verdict = "did not learn" if at_chance else "learned"
        if at_chance:
            reasons.append(f"loss {losses[-1]:.3f} is at chance ({chance:.3f})")
    if out["collapse"]["collapsed"]:
        verdict = "did not learn"
        reasons.append(f"embedding std fell from {stds[0]:.4f} to {stds[-1]:.4f} (collapse)")
    out["verdict"] = verdict
    out["reasons"] = reasons
    return out
