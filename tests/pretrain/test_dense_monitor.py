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


class MaskEncoder(torch.nn.Module):
    """An oracle: its level-1 features are the image's bright voxels, which the test's
    images make equal to the mask. A probe that reads them at the right voxels gets Dice 1."""

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        bright = (x > 0.5).float()
        return [x, torch.cat([bright, 1 - bright], dim=1)]


def test_the_voxel_gather_aligns_features_with_labels(tmp_path: Path) -> None:
    """Train and validation images of 8 x 8 whose foreground is exactly their bright
    pixels; a batch size that does not divide the split (3 of 7) and a draw that lists
    foreground then background voxels: any misalignment between the gathered features and
    the draw's labels, or between predictions and validation masks, lowers the Dice."""
    from benchmark.data.h5format import DatasetMeta, H5Writer

    rng = np.random.default_rng(0)
    path = tmp_path / "masks.h5"
    splits = ["train"] * 7 + ["val"] * 4 + ["test"]
    with H5Writer(
        path,
        n=len(splits),
        image_shape=(1, 8, 8),
        label_shape=None,
        has_masks=True,
        meta=DatasetMeta(name="masks", modality="test"),
    ) as w:
        for i, split in enumerate(splits):
            mask = (rng.random((8, 8)) < 0.3).astype(np.uint8)
            image = (mask * 200 + rng.integers(0, 50, (8, 8))).astype(np.uint8)[None]
            w.write(i, image, mask=mask, patient_id=f"p{i}", split=split)
    monitor = DenseProbeMonitor(path, 8, torch.device("cpu"), voxels=200, batch_size=3)
    assert monitor.enabled, monitor.note
    assert monitor.draw_labels[:100].all() and not monitor.draw_labels[100:].any()
    assert monitor.evaluate(MaskEncoder())[DENSE_METRIC] == 1.0  # type: ignore[arg-type]


def test_a_labelled_file_without_a_validation_split_gets_no_monitor(tmp_path: Path) -> None:
    """The dense probe replaces the kNN monitor only where there are no classes: a labelled
    file without a validation split (masks or not) runs without a monitor, and says why."""
    from benchmark.data.h5format import DatasetMeta, H5Writer

    path = tmp_path / "noval.h5"
    rng = np.random.default_rng(0)
    with H5Writer(
        path,
        n=12,
        image_shape=(1, 32, 32),
        has_masks=True,
        meta=DatasetMeta(name="noval", modality="test"),
    ) as w:
        for i in range(12):
            mask = (rng.random((32, 32)) < 0.3).astype(np.uint8)
            image = rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)
            w.write(i, image, mask=mask, label=i % 2, patient_id=f"p{i}", split="train")
    cfg = PretrainConfig(
        real=str(path), steps=1, batch_size=4, image_size=32, checkpoint_every=0, device="cpu"
    )
    with one_thread():
        s = pretrain(cfg, tmp_path / "run", progress=False).summary
    assert s["monitor"]["note"] == "noval.h5 has no validation split: kNN monitor skipped"
    assert s["monitor"]["points"] == [] and s["health"]["dense"]["init"] is None
