"""Tiny data files and one tiny trained DDPM shared by the generator tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmark.data.h5format import DatasetMeta, H5Writer
from tests.conftest import one_thread

#: A U-Net small enough to train in well under a second per step on 2 cores.
TINY: dict[str, Any] = {
    "channels": (8, 16),
    "batch_size": 4,
    "sample_every": 0,
    "checkpoint_every": 0,
    "warmup_steps": 1,
    "device": "cpu",
    "lr": 1e-3,
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def write_tiny(path: Path, split: list[str], size: int = 16, seed: int = 0) -> Path:
    """Blobs on a gradient, uint8 (1, size, size), no labels, the given splits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    with H5Writer(
        path,
        n=len(split),
        image_shape=(1, size, size),
        label_shape=None,
        meta=DatasetMeta(name="tiny", modality="test"),
    ) as w:
        for i, s in enumerate(split):
            cy, cx, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.3)
            img = 0.3 * yy + 0.6 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
            img = img + rng.normal(0, 0.03, img.shape)
            w.write(
                i,
                np.clip(img * 255, 0, 255).astype(np.uint8)[None],
                patient_id=f"p{i:03d}",
                split=s,
            )
    return path


@pytest.fixture(scope="session")
def tiny_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of 16x16: 16 train, 4 val, 4 test."""
    path = tmp_path_factory.mktemp("data") / "real.h5"
    return write_tiny(path, ["train"] * 16 + ["val"] * 4 + ["test"] * 4)


@pytest.fixture(scope="session")
def tiny_gen(tmp_path_factory: pytest.TempPathFactory, tiny_real: Path) -> Path:
    """A DDPM trained for 3 steps on ``tiny_real`` (the checkpoint folder)."""
    from pretrain.generators.ddpm_train import DDPMConfig, train_ddpm

    out = tmp_path_factory.mktemp("gen") / "gen"
    with one_thread():
        return train_ddpm(tiny_real, out, DDPMConfig(steps=3, **TINY), progress=False)


@pytest.fixture(scope="session")
def tiny() -> dict[str, Any]:
    """Keyword arguments of DDPMConfig for a tiny, fast CPU run."""
    return dict(TINY)


@pytest.fixture(scope="session")
def make_tiny() -> object:
    """The :func:`write_tiny` helper."""
    return write_tiny
