"""Dense linear-probe monitor: the pretraining health check of mask-only datasets.

The kNN monitor (:mod:`pretrain.monitor`) needs class labels; a segmentation
dataset without them (MSD hippocampus) would leave a method without a chance
loss (VICReg) ``not checked``. This monitor asks instead whether the frozen
features separate foreground from background voxels, the property the
segmentation task needs:

1. features of multi-scale level :data:`DENSE_LEVEL` (``forward_multiscale``,
   the encoder contract shared by 2D and 3D) of every train and validation image,
   resized to the run's view size, upsampled back to the image grid (trilinear /
   bilinear), in eval mode on a copy whose batch norm was calibrated on the train
   split, as the kNN monitor's points are;
2. a logistic regression (``C`` :data:`~pretrain.monitor.LINEAR_C`, the kNN
   monitor's) on :data:`DENSE_VOXELS` train voxels, half foreground and half
   background (fixed draw, seed 0), standardised with the draw's statistics;
3. the mean Dice of its foreground (``mask > 0``) prediction over the validation
   images (an image with neither predicted nor true foreground counts as 1).

The test split is never read and nothing is selected on the figure. The verdict
uses its rise from the calibrated step 0 to the end, with the kNN margin.

Why level 1 (stride 4, after the first residual stage): on the hippocampus
reference encoders (resnet10_3d, 32^3) it separates a random init (0.368) from the
five pretrained encoders (0.415-0.446, the committed runs); in the prototype that
chose it (another voxel draw), level 0 (the stem) separated nothing (0.345-0.364,
every encoder alike) and the deepest level is one voxel at 32^3 (0.066-0.068). The
level was read off those encoders, so the monitor is a health check (did the
weights change in a way the task can use?), not a figure to rank encoders by: the
leaderboard ranks on the task's test split.

Memory: features are upsampled and copied one image at a time; the draw's indices
cover every train voxel (int64), which bounds the datasets it suits to thousands of
volumes at 32^3-64^3.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from benchmark.core.errors import DataError
from benchmark.data.dataset import H5Dataset
from pretrain.encoders.base import Encoder
from pretrain.monitor import DENSE_METRIC, LINEAR_C, FeatureMonitor, resize_images

#: Multi-scale level whose features are probed (0 = highest resolution).
DENSE_LEVEL = 1
#: Train voxels of the probe's fit, half foreground, half background.
DENSE_VOXELS = 20_000


def _masks(ds: H5Dataset, size: int) -> torch.Tensor:
    """Foreground (``mask > 0``) of every image, nearest-resized to ``size``: bool ``(N, *S)``."""
    masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])[:, None].float()
    return resize_masks(masks, size)[:, 0] > 0


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, *spatial)`` masks nearest-resized to ``size`` on every spatial axis."""
    target = (int(size),) * (masks.dim() - 2)
    if tuple(masks.shape[2:]) == target:
        return masks
    return F.interpolate(masks, size=target, mode="nearest")


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-image Dice of boolean ``(N, V)`` arrays (1 where both are empty)."""
    inter = (pred & truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
    return float(dice.mean())


class DenseProbeMonitor(FeatureMonitor):
    """Foreground Dice of a dense logistic probe on frozen multi-scale features.

    Same interface as :class:`pretrain.monitor.KNNMonitor` (``enabled``, ``note``,
    ``evaluate``, ``describe``), from the same base (:class:`~pretrain.monitor.FeatureMonitor`).

    Args:
        path: sslbench dataset with masks and a validation split.
        image_size: Size the images (and masks) are resized to (the run's view size).
        device: Where features are computed.
        level: Multi-scale level probed.
        voxels: Train voxels of the fit.
        batch_size: Images per forward pass.
    """

    def __init__(
        self,
        path: str | Path,
        image_size: int,
        device: torch.device,
        *,
        level: int = DENSE_LEVEL,
        voxels: int = DENSE_VOXELS,
        batch_size: int = 16,
    ) -> None:
        super().__init__(path, device, batch_size)
        self.level, self.voxels = level, voxels
        train = H5Dataset(self.path, split="train", keys=("mask",))
        if not train.has_masks:
            self.note = f"{self.path.name} has neither single-label classes nor masks: no monitor"
            return
        try:
            val = H5Dataset(self.path, split="val", keys=("mask",))
        except DataError:
            self.note = f"{self.path.name} has no validation split: dense probe monitor skipped"
            return
        train.load(), val.load()
        self.train_images = resize_images(train.to_float(train.raw_images()), image_size)
        self.val_images = resize_images(val.to_float(val.raw_images()), image_size)
        self.train_masks = _masks(train, image_size)
        self.val_masks = _masks(val, image_size)
        fg = self.train_masks.reshape(-1).numpy()
        if fg.all() or not fg.any():
            self.note = f"{self.path.name}: train masks have no foreground/background contrast"
            return
        rng = np.random.default_rng(0)
        pos, neg = np.flatnonzero(fg), np.flatnonzero(~fg)
        half = voxels // 2
        self.draw = np.concatenate(
            [
                rng.choice(pos, half, replace=pos.size < half),
                rng.choice(neg, half, replace=neg.size < half),
            ]
        )
        self.draw_labels = fg[self.draw]

    @torch.no_grad()
    def _per_image(self, encoder: Encoder, images: torch.Tensor) -> Iterator[np.ndarray]:
        """Per image: level features upsampled to the image grid, ``(voxels, C)`` float64.

        The encoder runs on batches; the upsampling and the float64 copy are made one
        image at a time, so memory grows with one image's voxels, not a batch's.
        """
        mode = "trilinear" if images.dim() == 5 else "bilinear"
        with self.eval_mode(encoder):
            for i in range(0, images.shape[0], self.batch_size):
                levels = encoder.forward_multiscale(images[i : i + self.batch_size].to(self.device))
                level = levels[self.level].float()
                for j in range(level.shape[0]):
                    f = F.interpolate(
                        level[j : j + 1], size=images.shape[2:], mode=mode, align_corners=False
                    )
                    yield f.movedim(1, -1).reshape(-1, f.shape[1]).double().cpu().numpy()

    def evaluate(self, encoder: Encoder, *, calibrate: bool = False) -> dict[str, Any]:
        """The probe's mean validation Dice (``dense_dice``); the encoder is not modified."""
        t0 = time.perf_counter()
        encoder, record = self.measured(encoder, calibrate)
        # the drawn train voxels, gathered image by image (never the whole feature volume)
        per_image = int(np.prod(self.train_images.shape[2:]))
        rows, picked = [], []
        for i, feats in enumerate(self._per_image(encoder, self.train_images)):
            lo = i * per_image
            inside = np.flatnonzero((self.draw >= lo) & (self.draw < lo + per_image))
            rows.append(feats[self.draw[inside] - lo])
            picked.append(inside)
        x = np.concatenate(rows)[np.argsort(np.concatenate(picked))]
        mean, std = x.mean(0), x.std(0) + 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=LINEAR_C, max_iter=500)
            model.fit((x - mean) / std, self.draw_labels)
        pred = np.concatenate(
            [
                model.predict_proba((feats - mean) / std)[:, 1] > 0.5
                for feats in self._per_image(encoder, self.val_images)
            ]
        )
        n = self.val_images.shape[0]
        record.update(
            **{DENSE_METRIC: mean_dice(pred.reshape(n, -1), self.val_masks.reshape(n, -1).numpy())},
            dense_time_s=round(time.perf_counter() - t0, 3),
        )
        return record

    def describe(self) -> dict[str, Any]:
        """What the monitor measures (recorded in ``pretrain.json``)."""
        out: dict[str, Any] = {
            "kind": "dense linear probe",
            "dataset": str(self.path),
            "fit": "train",
            "queries": "val",
            "level": self.level,
            "voxels": self.voxels,
            "C": LINEAR_C,
            "metric": f"{DENSE_METRIC}: mean foreground Dice over the validation images",
            "calibration": "every point: a copy with batch norm calibrated on the train split",
        }
        if self.note:
            out["note"] = self.note
        else:
            out.update(train_images=len(self.train_masks), val_images=len(self.val_masks))
        return out
