"""Dice/HD95 and the empty-mask policy of tasks.metrics.segmentation, on hand-made masks."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.metrics.segmentation import AGGREGATE_METRICS, metric_class_names, segmentation_metrics


def _square(n: int = 1, size: int = 32, top: int = 8, left: int = 8, side: int = 8) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.long)
    m[:, top : top + side, left : left + side] = 1
    return m


def test_perfect_prediction() -> None:
    gt = _square(2)
    metrics, details = segmentation_metrics(gt.clone(), gt, 2, ["background", "lesion"])
    assert metrics["dice"] == metrics["dice_lesion"] == 1.0
    assert metrics["hd95"] == metrics["hd95_lesion"] == 0.0
    assert metrics["dice_nonempty"] == 1.0
    assert math.isnan(metrics["fp_rate_empty"])  # no empty image: undefined, not 0
    assert details["hd95_excluded"] == {"lesion": 0}


def test_empty_ground_truth_policy() -> None:
    gt = torch.zeros(2, 32, 32, dtype=torch.long)
    pred = gt.clone()
    pred[1, 0:3, 0:3] = 1  # a false positive on the second empty image
    metrics, details = segmentation_metrics(pred, gt, 2)
    # empty & empty -> 1, empty & false positive -> 0
    assert metrics["dice"] == pytest.approx(0.5)
    assert metrics["fp_rate_empty"] == pytest.approx(0.5)
    assert math.isnan(metrics["dice_nonempty"])
    assert math.isnan(metrics["hd95"])  # undefined on empty GT: excluded
    assert details["hd95_excluded"] == {"class1": 2}
    assert details["counts"]["class1"]["false_positive_on_empty"] == 1


def test_known_shift_and_missed_lesion() -> None:
    gt = torch.cat([_square(), _square(), _square()])
    pred = torch.cat([_square(left=11), torch.zeros(1, 32, 32, dtype=torch.long), _square()])
    metrics, details = segmentation_metrics(pred, gt, 2)
    # a 3 px shift of an 8 px square: every boundary distance is <= 3 px and more than 5 % are 3
    diagonal = math.hypot(32, 32)
    assert metrics["hd95"] == pytest.approx((3.0 + diagonal + 0.0) / 3)
    # Dice of the shift: overlap 5x8 of 8x8 -> 2*40/128
    assert metrics["dice"] == pytest.approx((0.625 + 0.0 + 1.0) / 3)
    assert details["counts"]["class1"]["missed_nonempty"] == 1


def test_multiclass_keys_and_means() -> None:
    gt = _square(2)
    gt[:, 20:28, 20:28] = 2
    pred = gt.clone()
    pred[pred == 2] = 0  # class 2 entirely missed
    names = ["background", "benign lesion", "Malignant"]
    metrics, _ = segmentation_metrics(pred, gt, 3, names)
    assert metric_class_names(3, names) == ["benign_lesion", "malignant"]
    expected = set(AGGREGATE_METRICS) | {
        f"{m}_{c}" for m in AGGREGATE_METRICS for c in ("benign_lesion", "malignant")
    }
    assert set(metrics) == expected
    assert metrics["dice_benign_lesion"] == 1.0 and metrics["dice_malignant"] == 0.0
    assert metrics["dice"] == pytest.approx(0.5)
    assert metrics["hd95_malignant"] == pytest.approx(math.hypot(32, 32))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(_square(1), _square(2), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        segmentation_metrics(_square(1) * 2, _square(1), 2)


def test_registered_in_metrics_registry() -> None:
    from tasks.metrics import compute_metrics, get_metric

    gt = torch.cat([_square(), _square(), torch.zeros(1, 32, 32, dtype=torch.long)])
    pred = torch.cat([_square(left=11), _square(), torch.zeros(1, 32, 32, dtype=torch.long)])
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    values = compute_metrics(AGGREGATE_METRICS, gt.numpy(), logits.numpy(), num_classes=2)
    expected, _ = segmentation_metrics(pred, gt, 2)
    assert values == {k: expected[k] for k in AGGREGATE_METRICS}
    assert values["hd95"] == pytest.approx(1.5)
    assert not get_metric("hd95").higher_is_better and get_metric("dice").higher_is_better
    assert get_metric("dice").task == "segmentation" and get_metric("dice").needs == "masks"
