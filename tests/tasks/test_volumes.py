"""3D tasks end to end through the same adapters: MedMNIST-3D classification and 3D segmentation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.checkpoint import save_encoder
from pretrain.encoders import create_encoder

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "benchmark.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def organmnist3d_npz(path: Path, seed: int = 0) -> Path:
    """A small file with the official MedMNIST-3D key layout: (N, 28, 28, 28) uint8, (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 33), ("val", 11), ("test", 22)):
        labels = np.arange(n) % 11
        images = rng.integers(0, 60, (n, 28, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):  # a class-dependent bright cube: learnable signal
            z = 2 + 2 * int(k)
            images[i, z : z + 4, 10:18, 10:18] = 220
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez_compressed(path, **arrays)
    return path


def test_medmnist3d_classification_and_3d_segmentation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    npz = organmnist3d_npz(tmp_path / "organmnist3d.npz")
    conv = run("data", "convert", "medmnist", str(npz), "-o", str(data / "organmnist3d.h5"), "-q")
    assert conv.returncode == 0, conv.stderr
    ckpt = save_encoder(
        tmp_path / "enc3d", create_encoder("resnet10_3d", img_size=32), {"method": "none"}
    )
    cls = run(
        "evaluate", "--encoder", str(ckpt), "--task", "organmnist3d-cls",
        "--adapter", "linear,knn", "--fractions", "0.5,1", "--seeds", "0",
        "--baselines", "none", "--data-root", str(data), "-o", str(tmp_path / "out"),
        "--no-progress",
    )  # fmt: skip
    assert cls.returncode == 0, cls.stdout + cls.stderr
    records = sorted((tmp_path / "out" / "records" / "organmnist3d-cls").rglob("*.json"))
    assert len(records) == 4
    rec = json.loads(records[-1].read_text())
    assert rec["n_test"] == 22 and rec["encoder"]["metadata"]["encoder"]["spatial_dims"] == 3
    assert 0.0 <= rec["metrics"]["auc"] <= 1.0

    phantom = run("data", "phantom", "--dims", "3", "-n", "24", "--size", "32",
                  "-o", str(data / "phantom3d.h5"))  # fmt: skip
    assert phantom.returncode == 0, phantom.stderr
    seg = run(
        "evaluate", "--encoder", str(ckpt), "--task", "phantom3d-seg", "--fractions", "1",
        "--seeds", "0", "--baselines", "none", "--data-root", str(data),
        "-o", str(tmp_path / "out"), "--set", "epochs=1", "--set", "batch_size=4", "--no-progress",
        "--set", "min_steps=1", "--set", "encoder_lr=[0.0001]",
    )  # fmt: skip
    assert seg.returncode == 0, seg.stdout + seg.stderr
    rec = json.loads(
        next((tmp_path / "out" / "records" / "phantom3d-seg").rglob("*.json")).read_text()
    )
    assert 0.0 <= rec["metrics"]["dice"] <= 1.0 and "hd95" in rec["metrics"]


def test_short_real_3d_run_on_hippocampus(tmp_path: Path, shared_data: Path) -> None:
    data = tmp_path / "data"
    conv = run(
        "data", "convert", "msd", str(shared_data / "msd_hippocampus"),
        "-o", str(data / "hippocampus.h5"), "-q",
    )  # fmt: skip
    assert conv.returncode == 0, conv.stderr
    pre = run(
        "pretrain", "--method", "simclr", "--encoder", "resnet10_3d",
        "--data", str(data / "hippocampus.h5"), "--steps", "3", "--batch-size", "4",
        "--size", "32", "-o", str(tmp_path / "pre"), "--no-progress",
    )  # fmt: skip
    assert pre.returncode == 0, pre.stdout + pre.stderr
    summary = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    assert summary["images_seen"] == 12 and np.isfinite(summary["final_loss"])
    assert summary["final_embedding_std"] > 0.01  # not collapsed
    ev = run(
        "evaluate", "--encoder", str(tmp_path / "pre" / "encoder"), "--task", "hippocampus-seg",
        "--fractions", "0.1", "--seeds", "0", "--baselines", "none", "--data-root", str(data),
        "-o", str(tmp_path / "out"), "--set", "epochs=1", "--set", "batch_size=4",
        "--set", "min_steps=1", "--set", "encoder_lr=[0.0001]", "--no-progress",
    )  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    rec = json.loads(next((tmp_path / "out" / "records").rglob("*.json")).read_text())
    assert rec["n_test"] == 52 and rec["task"]["target"] == "masks"
    per_class = ("dice_anterior", "dice_posterior", "hd95_anterior", "hd95_posterior")
    assert set(per_class) <= set(rec["metrics"]), rec["metrics"].keys()
    assert all(0.0 <= rec["metrics"][k] <= 1.0 for k in per_class[:2])
