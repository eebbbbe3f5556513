"""Segmentation metrics with an explicit policy for empty masks.

Dice and the 95th-percentile Hausdorff distance (HD95) are computed with
MONAI (``monai.metrics.compute_dice`` and ``compute_hausdorff_distance`` with
``percentile=95``; Cardoso et al. 2022, *MONAI: An open-source framework for
deep learning in healthcare*), per image and per foreground class, from
integer label maps. Background (class 0) is never scored.

Empty masks are common (BUSI "normal" images, phantom class "none") and both
metrics are ill-defined on them, so the policy is explicit. For each image and
foreground class ``c``, with *GT* the ground-truth region of ``c`` and *P* the
predicted one:

=========================  ==========================  =================================
case                       Dice                        HD95
=========================  ==========================  =================================
GT and P non-empty         MONAI                       MONAI (pixels)
GT non-empty, P empty      0                           image diagonal (worst case)
GT empty, P empty          1 (correct "no lesion")     undefined: excluded, counted
GT empty, P non-empty      0 (false positive)          undefined: excluded, counted
=========================  ==========================  =================================

Reported values (``<name>`` is the sanitised class name):

* ``dice`` / ``dice_<name>``: mean Dice over *all* images under the policy
  above, so correctly predicting "nothing" on an empty image is rewarded and
  a false positive is punished;
* ``dice_nonempty`` / ``dice_nonempty_<name>``: mean Dice over images whose
  GT contains the class (the usual "lesion Dice" of papers that drop normal
  images); ``nan`` if no image contains it;
* ``fp_rate_empty`` / ``fp_rate_empty_<name>``: fraction of images whose GT
  lacks the class but whose prediction contains it; ``nan`` if there are none;
* ``hd95`` / ``hd95_<name>``: mean HD95 over images whose GT contains the
  class (a missed lesion counts as the image diagonal); ``nan`` if none. The
  number of excluded (empty-GT) images is in ``hd95_excluded_<name>``.

Distances are in pixels of the evaluated (resized) images unless ``spacing``
is given. Aggregates without a suffix are means over foreground classes,
ignoring classes where the value is ``nan``.

The four aggregates are also registered in :data:`tasks.metrics.METRICS`
(``task="segmentation"``, ``needs="masks"``) as ``metric(y_true, y_pred,
num_classes=None, class_names=None, spacing=None) -> float`` with label maps
``(N, *spatial)`` (or logits ``(N, C, *spatial)`` for ``y_pred``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from tasks.metrics.base import register_metric

#: Metric names reported for every cell (per-class variants are added).
AGGREGATE_METRICS = ("dice", "dice_nonempty", "fp_rate_empty", "hd95")


def metric_class_names(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Key-safe names of the foreground classes 1..K-1 (``class<k>`` when unnamed)."""
    names = list(class_names or [])
    if len(names) != num_classes:
        names = [f"class{k}" for k in range(num_classes)]
    out = []
    for k in range(1, num_classes):
        key = re.sub(r"[^0-9a-z]+", "_", str(names[k]).lower()).strip("_") or f"class{k}"
        out.append(key if key not in out else f"{key}_{k}")
    return out


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def per_image_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    hd95: bool = True,
) -> dict[str, np.ndarray]:
    """Per-image, per-foreground-class Dice and HD95 under the empty-mask policy.

    Args:
        pred: Predicted labels ``(N, *spatial)`` (integers in ``[0, num_classes)``).
        target: Ground-truth labels of the same shape.
        num_classes: Number of classes incl. background.
        spacing: Pixel spacing for HD95 (isotropic float or one per axis);
            None for pixels.
        hd95: Compute HD95 (distance transforms; skip it for a quick Dice).

    Returns:
        ``dice``, ``hd95`` (float arrays ``(N, K-1)``, HD95 ``nan`` where the
        GT is empty), ``gt_present`` and ``pred_present`` (bool ``(N, K-1)``).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
    pred, target = pred.long().cpu(), target.long().cpu()
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}), got "
                f"[{int(t.min())}, {int(t.max())}]"
            )
    n, spatial = pred.shape[0], tuple(pred.shape[1:])
    classes = torch.arange(1, num_classes).view(1, -1, *([1] * len(spatial)))
    p1 = pred.unsqueeze(1) == classes  # (N, K-1, *spatial)
    t1 = target.unsqueeze(1) == classes
    gt_present = t1.flatten(2).any(-1).numpy()
    pred_present = p1.flatten(2).any(-1).numpy()
    dice = compute_dice(p1.float(), t1.float(), include_background=True, ignore_empty=False)
    dice_np = dice.double().numpy().reshape(n, num_classes - 1)

    sp = np.broadcast_to(
        np.asarray(1.0 if spacing is None else spacing, dtype=np.float64), (len(spatial),)
    )
    diagonal = float(np.sqrt(np.sum((np.asarray(spatial) * sp) ** 2)))
    hd = np.full((n, num_classes - 1), np.nan)
    hd[gt_present & ~pred_present] = diagonal
    both = np.argwhere(gt_present & pred_present) if hd95 else np.zeros((0, 2), dtype=np.int64)
    if both.size:
        b, c = torch.from_numpy(both[:, 0]), torch.from_numpy(both[:, 1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # both regions are non-empty here
            dist = compute_hausdorff_distance(
                p1[b, c].unsqueeze(1).float(),
                t1[b, c].unsqueeze(1).float(),
                include_background=True,
                percentile=95,
                spacing=[float(s) for s in sp],
            )
        hd[both[:, 0], both[:, 1]] = dist.double().numpy().reshape(-1)
    return {"dice": dice_np, "hd95": hd, "gt_present": gt_present, "pred_present": pred_present}


def segmentation_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    spacing: float | Sequence[float] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Aggregate Dice/HD95 metrics and their details (see the module docstring).

    Args:
        pred: Predicted labels ``(N, *spatial)``.
        target: Ground-truth labels ``(N, *spatial)``.
        num_classes: Number of classes incl. background.
        class_names: Names of all classes (background first), for the keys.
        spacing: Pixel spacing for HD95; None for pixels.

    Returns:
        ``(metrics, details)``: ``metrics`` maps ``dice``, ``dice_nonempty``,
        ``fp_rate_empty``, ``hd95`` and their ``_<class>`` variants to floats
        (``nan`` where undefined); ``details`` holds per-class counts (images,
        empty-GT images, HD95 exclusions, missed lesions) and the policy.
    """
    s = per_image_scores(pred, target, num_classes, spacing)
    names = metric_class_names(num_classes, class_names)
    dice, hd95, gt, pr = s["dice"], s["hd95"], s["gt_present"], s["pred_present"]
    metrics: dict[str, float] = {}
    per: dict[str, list[float]] = {k: [] for k in AGGREGATE_METRICS}
    counts: dict[str, dict[str, int]] = {}
    for c, name in enumerate(names):
        vals = {
            "dice": _nanmean(dice[:, c]),
            "dice_nonempty": _nanmean(dice[gt[:, c], c]),
            "fp_rate_empty": _nanmean(pr[~gt[:, c], c].astype(np.float64)),
            "hd95": _nanmean(hd95[:, c]),
        }
        for key, v in vals.items():
            metrics[f"{key}_{name}"] = v
            per[key].append(v)
        counts[name] = {
            "images": int(dice.shape[0]),
            "empty_gt": int((~gt[:, c]).sum()),
            "false_positive_on_empty": int((~gt[:, c] & pr[:, c]).sum()),
            "missed_nonempty": int((gt[:, c] & ~pr[:, c]).sum()),
            "hd95_excluded": int(np.isnan(hd95[:, c]).sum()),
        }
    for key in AGGREGATE_METRICS:
        metrics[key] = _nanmean(per[key])
    details = {
        "counts": counts,
        "hd95_excluded": {n: counts[n]["hd95_excluded"] for n in names},
        "hd95_units": "pixels" if spacing is None else "spacing units",
        "empty_policy": (
            "dice: empty GT & empty pred = 1, empty GT & non-empty pred = 0; "
            "hd95: excluded when GT is empty, image diagonal when GT is non-empty "
            "and the prediction is empty"
        ),
    }
    return metrics, details


# -- registry entries -------------------------------------------------------------
def _aggregate(key: str, y_true: Any, y_pred: Any, **kw: Any) -> float:
    target = torch.as_tensor(np.asarray(y_true)).long()
    pred = torch.as_tensor(np.asarray(y_pred))
    if pred.ndim == target.ndim + 1:  # logits or probabilities (N, C, *spatial)
        pred = pred.argmax(1)
    k = kw.get("num_classes") or max(2, int(max(target.max(), pred.max())) + 1)
    metrics, _ = segmentation_metrics(
        pred.long(), target, int(k), kw.get("class_names"), kw.get("spacing")
    )
    return metrics[key]


@register_metric("dice", higher_is_better=True, task="segmentation", needs="masks")
def dice(y_true: Any, y_pred: Any, **kw: Any) -> float:
    """Mean foreground Dice over all images (empty GT & empty prediction = 1)."""
    return _aggregate("dice", y_true, y_pred, **kw)


@register_metric("dice_nonempty", higher_is_better=True, task="segmentation", needs="masks")
def dice_nonempty(y_true: Any, y_pred: Any, **kw: Any) -> float:
    """Mean foreground Dice over images whose ground truth contains the class."""
    return _aggregate("dice_nonempty", y_true, y_pred, **kw)


@register_metric("fp_rate_empty", higher_is_better=False, task="segmentation", needs="masks")
def fp_rate_empty(y_true: Any, y_pred: Any, **kw: Any) -> float:
    """Fraction of empty-ground-truth images with a predicted foreground region."""
    return _aggregate("fp_rate_empty", y_true, y_pred, **kw)


@register_metric(
    "hd95", higher_is_better=False, task="segmentation", needs="masks", bounds=(0.0, math.inf)
)
def hd95(y_true: Any, y_pred: Any, **kw: Any) -> float:
    """Mean HD95 (pixels) over non-empty ground truths; a missed lesion = image diagonal."""
    return _aggregate("hd95", y_true, y_pred, **kw)
