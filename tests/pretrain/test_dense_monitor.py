"""Dense linear-probe monitor: the health check of datasets with masks but no classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli.pretrain import health_line
from benchmark.data.converters import CONVERTERS
from benchmark.data.dataset import H5Dataset
from benchmark.harness.health import compact, format_health
from pretrain.dense_monitor import DENSE_LEVEL, DenseProbeMonitor, mean_dice
from pretrain.encoders import create_encoder
from pretrain.monitor import DENSE_METRIC, health
from pretrain.train import PretrainConfig, pretrain
from tests.conftest import one_thread
from tests.pretrain.test_train import tiny_file


@pytest.fixture(scope="module")
def hippocampus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MSD hippocampus (real 3D MRI, masks, no class labels), converted."""
    out = tmp_path_factory.mktemp("hippo") / "hippocampus.h5"
    return CONVERTERS.create("msd").convert(shared_data / "msd_hippocampus", out)


def test_mean_dice() -> None:
    pred = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
    truth = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    # 2/3, both empty -> 1, disjoint -> 0
    assert mean_dice(pred, truth) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_health_uses_the_dense_gain_without_a_knn_monitor() -> None:
    hist = [{"step": 1, "loss": 23.5}, {"step": 2, "loss": 21.2}]
    up = [{"step": 0, DENSE_METRIC: 0.38}, {"step": 2, DENSE_METRIC: 0.43}]
    flat = [{"step": 0, DENSE_METRIC: 0.38}, {"step": 2, DENSE_METRIC: 0.39}]
    h = health(hist, up, chance=None, num_features=512)
    assert h["verdict"] == "learned" and h["dense"]["gain"] == pytest.approx(0.05)
    assert (h["dense"]["init"], h["dense"]["end"]) == (0.38, 0.43)
    h = health(hist, flat, chance=None, num_features=512)
    assert h["verdict"] == "did not learn"
    assert "dense-probe Dice rose by +0.010" in h["reasons"][0]
    # the loss against chance no longer decides once the dense monitor ran
    assert health(hist, flat, chance=30.0, num_features=512)["verdict"] == "did not learn"
    assert health(hist, [], chance=None, num_features=512)["verdict"] == "not checked"
    c = compact(health(hist, up, chance=None, num_features=512))
    assert c is not None and (c["dense_init"], c["dense_end"]) == (0.38, 0.43)
    assert "dense-probe Dice 0.380 -> 0.430" in format_health(c)
    # outputs of kNN-monitored runs keep their keys (committed leaderboards byte-identical)
    knn = [{"step": 0, "knn_acc": 0.5}, {"step": 2, "knn_acc": 0.6}]
    assert "dense_init" not in (compact(health(hist, knn, chance=None, num_features=512)) or {})


def test_monitor_is_deterministic_and_leaves_the_encoder_alone(hippocampus: Path) -> None:
    monitor = DenseProbeMonitor(hippocampus, 32, torch.device("cpu"))
    assert monitor.enabled, monitor.note
    d = monitor.describe()
    train, val = H5Dataset(hippocampus, split="train"), H5Dataset(hippocampus, split="val")
    assert (d["train_images"], d["val_images"]) == (len(train), len(val))
    assert d["level"] == DENSE_LEVEL and d["queries"] == "val"
    # the draw is balanced: half foreground voxels, half background
    assert monitor.draw_labels.mean() == pytest.approx(0.5)
    torch.manual_seed(0)
    encoder = create_encoder("resnet10_3d")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with one_thread():
        a = monitor.evaluate(encoder, calibrate=True)
        b = monitor.evaluate(encoder, calibrate=True)
    assert a[DENSE_METRIC] == b[DENSE_METRIC]
    # random multi-scale features already carry intensity: a probe well above zero, below 1
    assert 0.1 < a[DENSE_METRIC] < 0.9
    assert a["calibration"]["calibrated"] and a["calibration"]["split"] == "train"
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unlabelled_file_without_masks_has_no_monitor(tmp_path: Path) -> None:
    monitor = DenseProbeMonitor(tiny_file(tmp_path / "tiny.h5"), 32, torch.device("cpu"))
    assert not monitor.enabled and "neither single-label classes nor masks" in str(monitor.note)


@pytest.mark.slow
def test_pretraining_on_a_mask_only_dataset_is_checked(hippocampus: Path, tmp_path: Path) -> None:
    """VICReg has no chance loss: without the dense monitor its verdict was ``not checked``.

    At lr 0 only batch norm moves, and every point recalibrates it: the gain is exactly 0.
    """
    cfg = PretrainConfig(
        method="vicreg",
        encoder="resnet10_3d",
        real=str(hippocampus),
        steps=2,
        batch_size=4,
        image_size=32,
        seed=0,
        checkpoint_every=0,
        log_every=1,
        device="cpu",
        knn_every=2,
        method_config={"lr": 0.0},
    )
    with one_thread():
        s = pretrain(cfg, tmp_path / "run", progress=False).summary
    points = s["monitor"]["points"]
    assert [p["step"] for p in points] == [0, 2]
    assert s["monitor"]["kind"] == "dense linear probe"
    h = s["health"]
    assert h["loss"]["chance"] is None
    assert (h["dense"]["init"], h["dense"]["end"]) == (
        points[0][DENSE_METRIC],
        points[-1][DENSE_METRIC],
    )
    assert h["dense"]["gain"] == 0.0
    assert h["verdict"] == "did not learn" and "dense-probe Dice" in h["reasons"][0]
    assert "dense-probe Dice" in health_line(s)
