"""DDPM generator: training, leakage guard, resume, sampling and its errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from benchmark.core.errors import DataError, OutputExistsError, SSLBenchError
from benchmark.data.h5format import read_meta
from pretrain.generators import GENERATORS, GeneratorDivergedError, GeneratorError
from pretrain.generators.base import write_synthetic
from pretrain.generators.ddpm import DDPMGenerator
from pretrain.generators.ddpm_train import DDPMConfig, DDPMTrainer, load_train_split, train_ddpm


def test_registry_lists_every_generator() -> None:
    assert {"ddpm", "phantom", "import"} <= set(GENERATORS.names())
    assert GENERATORS.get("diffusion") is DDPMGenerator


def test_training_outputs_and_provenance(tiny_gen: Path, tiny_real: Path) -> None:
    meta = json.loads((tiny_gen / "generator.json").read_text())
    assert meta["steps"] == 3 and meta["training_data"]["n_train"] == 16
    assert meta["training_data"]["content_hash"] == read_meta(tiny_real)["content_hash"]
    assert meta["training_data"]["split_counts"] == {"train": 16, "val": 4, "test": 4}
    assert meta["model_config"]["spatial_dims"] == 2 and meta["image_shape"] == [1, 16, 16]
    assert {"git_commit", "versions"} <= set(meta["provenance"])
    assert (tiny_gen / "state.pt").exists() and (tiny_gen / "metrics.jsonl").exists()
    ckpt = torch.load(tiny_gen / "generator.pt", weights_only=True)
    assert ckpt["generator"] == "ddpm" and "state_dict" in ckpt


def test_sample_shapes_provenance_and_determinism(
    tiny_gen: Path, tiny_real: Path, tmp_path: Path
) -> None:
    gen = DDPMGenerator.load(tiny_gen, steps=3)
    out = write_synthetic(gen, 5, tmp_path / "s.h5", seed=3, batch_size=3, progress=False)
    meta = read_meta(out)
    assert meta["image_shape"] == [1, 16, 16] and meta["image_dtype"] == "uint8"
    assert not meta["has_labels"] and not meta["has_masks"]
    g = meta["extra"]["generator"]
    assert (
        g["checkpoint_sha256"]
        == json.loads((tiny_gen / "generator.json").read_text())["generator_sha256"]
    )
    assert g["training_data_content_hash"] == read_meta(tiny_real)["content_hash"]
    assert (g["scheduler"], g["steps"], g["name"]) == ("ddim", 3, "ddpm")
    assert meta["extra"]["seed"] == 3
    with h5py.File(out) as f:
        stored = f["images"][()]
        assert {s.decode() for s in f["split"][()]} == {"train"}
        assert f["patient_ids"][0].decode() == "synth-000000"
    again = gen.sample(5, seed=3, batch_size=3)
    np.testing.assert_array_equal(stored, again)  # same seed -> identical images
    other = gen.sample(3, seed=4, batch_size=3)
    assert not np.array_equal(stored[:3], other)
    # the second batch does not depend on the first one
    np.testing.assert_array_equal(gen.sample_batch(3, 2, 3, 1), stored[3:])


def test_ddpm_scheduler_and_step_checks(tiny_gen: Path) -> None:
    gen = DDPMGenerator.load(tiny_gen, scheduler="ddpm")
    assert gen.steps == 1000
    with pytest.raises(GeneratorError, match="ddpm scheduler runs all 1000"):
        DDPMGenerator.load(tiny_gen, scheduler="ddpm", steps=50)


def test_sampling_errors(tiny_gen: Path, tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="trained on images of shape"):
        DDPMGenerator.load(tiny_gen, size=32)
    with pytest.raises(DataError, match="no such generator checkpoint"):
        DDPMGenerator.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing generator.pt"):
        DDPMGenerator.load(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "generator.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="unreadable generator checkpoint"):
        DDPMGenerator.load(bad)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    ckpt = torch.load(tiny_gen / "generator.pt", weights_only=True)
    ckpt["model_config"]["channels"] = [16, 32]
    torch.save(ckpt, wrong / "generator.pt")
    with pytest.raises(DataError, match="weights do not fit"):
        DDPMGenerator.load(wrong)
    out = tmp_path / "exists.h5"
    out.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        write_synthetic(DDPMGenerator.load(tiny_gen, steps=2), 2, out, progress=False)
    assert out.read_bytes() == b"keep"


def test_leakage_guard(
    tiny_real: Path, tmp_path: Path, tiny: dict[str, Any], make_tiny: Callable[..., Path]
) -> None:
    images, indices, info = load_train_split(tiny_real)
    with h5py.File(tiny_real) as f:
        split = np.array([s.decode() for s in f["split"][()]])
    assert images.shape == (16, 1, 16, 16) and (split[indices] == "train").all()
    assert info["n_train"] == 16 and info["split_counts"] == {"train": 16, "val": 4, "test": 4}
    assert sorted(indices.tolist()) == np.flatnonzero(split == "train").tolist()
    no_train = make_tiny(tmp_path / "no_train.h5", ["val"] * 4 + ["test"] * 4)
    out = tmp_path / "gen"
    with pytest.raises(DataError, match="no samples in the train split"):
        train_ddpm(no_train, out, DDPMConfig(steps=1, **tiny), progress=False)
    assert not out.exists()


def test_resume_gives_identical_weights(
    tiny_real: Path, tmp_path: Path, tiny: dict[str, Any]
) -> None:
    straight = train_ddpm(tiny_real, tmp_path / "a", DDPMConfig(steps=4, **tiny), progress=False)
    train_ddpm(tiny_real, tmp_path / "b", DDPMConfig(steps=2, **tiny), progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_ddpm(tiny_real, tmp_path / "b", DDPMConfig(steps=4, **tiny), progress=False)
    with pytest.raises(SSLBenchError, match="different settings"):
        train_ddpm(
            tiny_real,
            tmp_path / "b",
            DDPMConfig(steps=4, **{**tiny, "lr": 0.1}),
            resume=True,
            progress=False,
        )
    resumed = train_ddpm(
        tiny_real, tmp_path / "b", DDPMConfig(steps=4, **tiny), resume=True, progress=False
    )
    a = torch.load(straight / "state.pt", weights_only=True)
    b = torch.load(resumed / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    sa = torch.load(straight / "generator.pt", weights_only=True)["state_dict"]
    sb = torch.load(resumed / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nan_loss_keeps_last_checkpoint(
    tiny_real: Path, tmp_path: Path, tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DDPMTrainer.loss

    def nan_after_two(self: DDPMTrainer, *args: torch.Tensor) -> torch.Tensor:
        loss = original(self, *args)
        return loss * float("nan") if self.step >= 2 else loss

    monkeypatch.setattr(DDPMTrainer, "loss", nan_after_two)
    out = tmp_path / "gen"
    config = DDPMConfig(
        steps=4,
        **{**tiny, "checkpoint_every": 2, "sample_every": 2, "sample_steps": 2, "sample_n": 4},
    )
    with pytest.raises(GeneratorDivergedError, match="at step 2.*last good checkpoint"):
        train_ddpm(tiny_real, out, config, progress=False)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 2 and not (out / "generator.pt").exists()
    assert (out / "samples" / "step_000002.png").exists()


def test_3d_volumes_train_and_sample(tmp_path: Path, tiny: dict[str, Any]) -> None:
    from pretrain.generators.phantom import PhantomGenerator

    data = write_synthetic(
        PhantomGenerator(size=16, dims=3, depth=8), 4, tmp_path / "v.h5", progress=False
    )
    gen_dir = train_ddpm(
        data, tmp_path / "g3", DDPMConfig(steps=1, **{**tiny, "batch_size": 2}), progress=False
    )
    gen = DDPMGenerator.load(gen_dir, steps=2)
    assert gen.checkpoint["model_config"]["spatial_dims"] == 3
    assert gen.sample(2, seed=0).shape == (2, 1, 8, 16, 16)


def test_samples_resized_to_an_output_shape(tiny_gen: Path, tmp_path: Path) -> None:
    gen = DDPMGenerator.load(tiny_gen, steps=2, output_shape=(1, 24, 20))
    assert gen.model_shape == (1, 16, 16) and gen.image_shape == (1, 24, 20)
    out = write_synthetic(gen, 3, tmp_path / "big.h5", seed=1, progress=False)
    meta = read_meta(out)
    assert meta["image_shape"] == [1, 24, 20]
    assert meta["extra"]["generator"]["model_image_shape"] == [1, 16, 16]
    assert meta["extra"]["generator"]["resized"] is True
    # the same samples as at the trained size, resized
    small = DDPMGenerator.load(tiny_gen, steps=2).sample(3, seed=1)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(small).float() / 255, size=(24, 20), mode="bilinear", antialias=True
    )
    with h5py.File(out) as f:
        big = torch.from_numpy(f["images"][()]).float() / 255
    assert (big - up).abs().max() < 2 / 255
    with pytest.raises(GeneratorError, match="channels and dimensions must match"):
        DDPMGenerator.load(tiny_gen, steps=2, output_shape=(3, 16, 16))
