"""Latent diffusion generator: both stages, resume, sampling, 2D/3D and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from benchmark.core.errors import DataError, OutputExistsError, SSLBenchError
from benchmark.data.h5format import read_meta
from pretrain.generators import GENERATORS, GeneratorDivergedError, GeneratorError
from pretrain.generators.base import GENERATOR_TRAINERS, write_synthetic
from pretrain.generators.ldm import LDMGenerator
from pretrain.generators.ldm_config import PROFILES
from pretrain.generators.ldm_train import LDMConfig, LDMTrainer, train_ldm
from tests.conftest import one_thread

#: Two-level autoencoder (16 px -> 8 px latents) and a two-level latent U-Net.
TINY_LDM: dict[str, Any] = {
    "ae_steps": 2,
    "steps": 3,
    "batch_size": 4,
    "ae_channels": (8, 8),
    "latent_channels": 2,
    "channels": (8, 16),
    "num_head_channels": 4,
    "sample_every": 0,
    "checkpoint_every": 0,
    "warmup_steps": 1,
    "lr": 1e-3,
    "ae_lr": 1e-3,
    "device": "cpu",
}


def config(**changes: Any) -> LDMConfig:
    return LDMConfig.from_options({**TINY_LDM, **changes})


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory: pytest.TempPathFactory, tiny_real: Path) -> Path:
    """An LDM trained for 2 + 3 steps on the 16 x 16 ``tiny_real`` (the checkpoint folder)."""
    out = tmp_path_factory.mktemp("ldm") / "gen"
    with one_thread():
        return train_ldm(tiny_real, out, config(), progress=False)


def test_registered_with_its_trainer() -> None:
    assert GENERATORS.get("ldm") is LDMGenerator is GENERATORS.get("latent-diffusion")
    assert LDMGenerator.trainable and LDMGenerator.has_sample_steps
    assert GENERATOR_TRAINERS.get("ldm").config_class is LDMConfig


def test_training_outputs_and_provenance(tiny_ldm: Path, tiny_real: Path) -> None:
    meta = json.loads((tiny_ldm / "generator.json").read_text())
    assert meta["generator"] == "ldm" and (meta["ae_steps"], meta["steps"]) == (2, 3)
    assert meta["training_data"]["content_hash"] == read_meta(tiny_real)["content_hash"]
    assert meta["training_data"]["split_counts"] == {"train": 16, "val": 4, "test": 4}
    assert meta["image_shape"] == [1, 16, 16] and meta["latent_shape"] == [2, 8, 8]
    assert meta["autoencoder_config"]["spatial_dims"] == meta["model_config"]["spatial_dims"] == 2
    assert meta["model_config"]["in_channels"] == 2 and meta["config"]["profile"] == "cpu"
    assert np.isfinite(meta["scale_factor"]) and meta["scale_factor"] > 0
    assert meta["train_time_s"] > 0 and meta["images_per_s"] > 0
    assert np.isfinite(meta["final_loss"]) and np.isfinite(meta["final_ae_l1"])
    assert {"git_commit", "versions"} <= set(meta["provenance"])
    rows = [json.loads(x) for x in (tiny_ldm / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "ae_loss" in r] == [1, 2]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    ckpt = torch.load(tiny_ldm / "generator.pt", weights_only=True)
    assert ckpt["generator"] == "ldm" and ckpt["scheduler_config"]["clip_sample"] is False
    assert {"state_dict", "autoencoder_state_dict"} <= set(ckpt)


def test_sample_shapes_provenance_and_determinism(
    tiny_ldm: Path, tiny_real: Path, tmp_path: Path
) -> None:
    gen = LDMGenerator.load(tiny_ldm, steps=3)
    out = write_synthetic(gen, 5, tmp_path / "s.h5", seed=3, batch_size=3, progress=False)
    meta = read_meta(out)
    assert meta["image_shape"] == [1, 16, 16] and meta["image_dtype"] == "uint8"
    assert meta["name"] == "synth-ldm-tiny" and "Rombach" in meta["citation"]
    g = meta["extra"]["generator"]
    assert (g["name"], g["scheduler"], g["steps"], g["train_steps"]) == ("ldm", "ddim", 3, 3)
    assert g["latent_shape"] == [2, 8, 8] and g["scale_factor"] == gen.scale_factor
    assert g["training_data_content_hash"] == read_meta(tiny_real)["content_hash"]
    with h5py.File(out) as f:
        stored = f["images"][()]
    assert stored.dtype == np.uint8 and stored.shape == (5, 1, 16, 16)
    assert stored.std() > 0  # not a constant image
    np.testing.assert_array_equal(stored, gen.sample(5, seed=3, batch_size=3))
    assert not np.array_equal(stored[:3], gen.sample(3, seed=4, batch_size=3))
    np.testing.assert_array_equal(gen.sample_batch(3, 2, 3, 1), stored[3:])


def test_experiment_path_and_finished_run_not_retrained(tiny_real: Path, tmp_path: Path) -> None:
    """What ``run_generator_train`` / ``run_generator_sample`` call, with list options."""
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_LDM.items()}
    del options["device"]
    trainer = GENERATOR_TRAINERS.get("ldm")
    with one_thread():
        out = trainer.fit(tiny_real, tmp_path / "g", options, "cpu")
    weights = out / "generator.pt"
    before = (weights.stat().st_mtime_ns, (out / "generator.json").read_text())
    with one_thread():
        assert trainer.fit(tiny_real, tmp_path / "g", options, "cpu") == out
    assert (weights.stat().st_mtime_ns, (out / "generator.json").read_text()) == before
    cls = GENERATORS.get("ldm")
    assert cls.trainable
    gen = cls.load(out, steps=2, device="cpu", output_shape=(1, 32, 16))  # type: ignore[attr-defined]
    assert gen.image_shape == (1, 32, 16) and gen.model_shape == (1, 16, 16)
    images = gen.sample(2, seed=0)
    assert images.shape == (2, 1, 32, 16) and images.dtype == np.uint8


def _weights(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "state.pt", weights_only=True)


def test_resume_in_either_stage_gives_identical_weights(
    tiny_real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train_ldm(tiny_real, tmp_path / "a", config(steps=4), progress=False)
    # stopped in stage 2 (after 2 of 4 steps), then continued with more steps
    train_ldm(tiny_real, tmp_path / "b", config(steps=2), progress=False)
    with pytest.raises(OutputExistsError, match="--resume"):
        train_ldm(tiny_real, tmp_path / "b", config(steps=4), progress=False)
    with pytest.raises(SSLBenchError, match="different settings \\(ae_lr\\)"):
        train_ldm(tiny_real, tmp_path / "b", config(steps=4, ae_lr=0.1), resume=True)
    in_stage2 = train_ldm(tiny_real, tmp_path / "b", config(steps=4), resume=True, progress=False)
    # stopped in stage 1 (crash after the first autoencoder step, checkpointed every step)
    original = LDMTrainer.train_autoencoder_step

    def crash_at_one(self: LDMTrainer) -> dict[str, float]:
        if self.ae_step == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(LDMTrainer, "train_autoencoder_step", crash_at_one)
    with pytest.raises(KeyboardInterrupt):
        train_ldm(tiny_real, tmp_path / "c", config(steps=4, checkpoint_every=1), progress=False)
    assert _weights(tmp_path / "c")["ae_step"] == 1 and not (tmp_path / "c/generator.pt").exists()
    monkeypatch.setattr(LDMTrainer, "train_autoencoder_step", original)
    in_stage1 = train_ldm(tiny_real, tmp_path / "c", config(steps=4), resume=True, progress=False)

    a = _weights(straight)
    for resumed in (in_stage2, in_stage1):
        b = _weights(resumed)
        assert (b["ae_step"], b["step"], b["scale_factor"]) == (2, 4, a["scale_factor"])
        for key in ("autoencoder", "model", "ema"):
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), (key, name)
        losses = [{k: v for k, v in r.items() if "per_s" not in k} for r in b["history"]]
        assert losses == [{k: v for k, v in r.items() if "per_s" not in k} for r in a["history"]]


def test_nan_loss_keeps_last_checkpoint(
    tiny_real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LDMTrainer.loss

    def nan_after_one(self: LDMTrainer, *args: torch.Tensor) -> torch.Tensor:
        loss = original(self, *args)
        return loss * float("nan") if self.step >= 1 else loss

    monkeypatch.setattr(LDMTrainer, "loss", nan_after_one)
    out = tmp_path / "gen"
    with pytest.raises(GeneratorDivergedError, match="at step 1.*last good checkpoint"):
        train_ldm(tiny_real, out, config(checkpoint_every=1), progress=False)
    state = _weights(out)
    assert (state["ae_step"], state["step"]) == (2, 1) and not (out / "generator.pt").exists()


def test_3d_phantom_volumes_train_sample_and_upsample(tmp_path: Path) -> None:
    from benchmark.data.phantom import generate_phantom

    data = generate_phantom(tmp_path / "v.h5", n=8, size=16, dims=3, depth=8)
    with one_thread():
        out = train_ldm(data, tmp_path / "g3", config(batch_size=2, steps=1), progress=False)
        gen = LDMGenerator.load(out, steps=2)
        assert gen.checkpoint["autoencoder_config"]["spatial_dims"] == 3
        assert gen.latent_shape == (2, 4, 8, 8)
        images = gen.sample(2, seed=0)
        big = LDMGenerator.load(out, steps=2, output_shape=(1, 16, 32, 32)).sample(1, seed=0)
    assert images.shape == (2, 1, 8, 16, 16) and images.dtype == np.uint8
    assert big.shape == (1, 1, 16, 32, 32)


def test_bad_options_fail_before_any_work(tiny_real: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(GeneratorError, match="^colour: unknown ldm train option"):
        GENERATOR_TRAINERS.get("ldm").fit(tiny_real, out, {"colour": 1}, "cpu")
    with pytest.raises(GeneratorError, match="^profile: unknown profile 'tpu'"):
        LDMConfig.from_options({"profile": "tpu"})
    with pytest.raises(GeneratorError, match="^batch_size must be an integer >= 1"):
        config(batch_size=0)
    with pytest.raises(GeneratorError, match="^ae_channels must be a list"):
        config(ae_channels=[8, "x"])
    # 18 px is not a multiple of a 3-level autoencoder's factor 4
    with pytest.raises(GeneratorError, match="^size: spatial size \\(18, 18\\) .* factor 4"):
        train_ldm(tiny_real, out, config(size=18, ae_channels=(8, 8, 8)), progress=False)
    # 20 px -> 5 px latents, which a two-level latent U-Net cannot halve
    with pytest.raises(GeneratorError, match="^size: latent grid \\(5, 5\\)"):
        train_ldm(tiny_real, out, config(size=20, ae_channels=(8, 8, 8)), progress=False)
    assert not out.exists()


@pytest.mark.parametrize("shape", [(1, 24, 24), (1, 8, 8), (3, 16, 16), (1, 8, 16, 16)])
def test_output_shape_must_be_a_whole_multiple(tiny_ldm: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(GeneratorError, match="^output_shape"):
        LDMGenerator.load(tiny_ldm, steps=2, output_shape=shape)


def test_checkpoint_errors(tiny_ldm: Path, tiny_gen: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint of generator 'ddpm', not 'ldm'"):
        LDMGenerator.load(tiny_gen)
    with pytest.raises(GeneratorError, match="trained on images of shape"):
        LDMGenerator.load(tiny_ldm, size=32)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    ckpt = torch.load(tiny_ldm / "generator.pt", weights_only=True)
    ckpt["autoencoder_config"]["channels"] = [16, 16]
    torch.save(ckpt, wrong / "generator.pt")
    with pytest.raises(DataError, match="autoencoder weights do not fit"):
        LDMGenerator.load(wrong)
    del ckpt["scale_factor"]
    torch.save(ckpt, wrong / "generator.pt")
    with pytest.raises(DataError, match="not a latent diffusion checkpoint"):
        LDMGenerator.load(wrong)


def test_profiles_and_experiment_defaults() -> None:
    from benchmark.harness.experiment import PROFILES as EXPERIMENT_PROFILES

    assert LDMConfig.from_options({}) == LDMConfig(profile="cpu")
    gpu = LDMConfig.from_options({"profile": "gpu", "steps": 7})
    assert gpu.steps == 7 and gpu.batch_size == PROFILES["gpu"]["batch_size"]
    assert gpu.ae_channels == PROFILES["gpu"]["ae_channels"]
    # an experiment profile's generator.train defaults (written for the DDPM) are LDM options
    for profile in EXPERIMENT_PROFILES.values():
        LDMConfig.from_options(profile["generator"]["train"])


@pytest.mark.slow
def test_real_hippocampus_volumes(shared_data: Path, tmp_path: Path) -> None:
    from benchmark.data.converters import CONVERTERS

    data = CONVERTERS.create("msd", shape=(16, 16, 16)).convert(
        shared_data / "msd_hippocampus", tmp_path / "hippocampus16.h5"
    )
    with one_thread():
        out = train_ldm(data, tmp_path / "g", config(batch_size=2, steps=2), progress=False)
        images = LDMGenerator.load(out, steps=2).sample(2, seed=0)
    meta = json.loads((out / "generator.json").read_text())
    assert meta["training_data"]["n_train"] > 100 and meta["latent_shape"] == [2, 8, 8, 8]
    assert images.shape == (2, 1, 16, 16, 16) and images.dtype == np.uint8


@pytest.mark.slow
def test_experiment_with_an_ldm_generator_runs_end_to_end(tmp_path: Path) -> None:
    """``generator: {kind: ldm, train: {...}}`` under the cpu-small profile, as a subprocess."""
    train = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_LDM.items()}
    del train["device"]
    exp = {
        "name": "ldm-tiny",
        "profile": "cpu-small",
        "datasets": {"ph": {"phantom": {"n": 24, "size": 16}}},
        "generator": {
            "kind": "ldm",
            "dataset": "ph",
            "train": train,
            "samples": 4,
            "sample_steps": 2,
        },
    }
    path = tmp_path / "ldm-tiny.yaml"
    path.write_text(json.dumps(exp))  # JSON is YAML
    args = [sys.executable, "-m", "benchmark.cli", "run", str(path), "-o", str(tmp_path / "r")]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    for ran in ("3 ran", "0 ran, 3 already done"):
        proc = subprocess.run(
            [*args, "--no-progress", "--wandb", "disabled"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 and ran in proc.stdout, proc.stdout + proc.stderr
    (folder,) = (tmp_path / "r" / "generator").iterdir()
    assert json.loads((folder / "generator.json").read_text())["generator"] == "ldm"
    (synth,) = (tmp_path / "r" / "synthetic").glob("*.h5")
    meta = read_meta(synth)
    assert meta["extra"]["generator"]["name"] == "ldm" and meta["image_shape"] == [1, 16, 16]
    assert (synth.parent / f"{synth.stem}-report" / "report.json").exists()


def test_synth_cli_trains_and_samples_an_ldm(tiny_real: Path, tmp_path: Path) -> None:
    """``sslbench synth train --kind ldm`` (shared flags + ``--set``) and ``synth sample``,
    which loads the kind its ``generator.json`` names; ldm options on a ddpm are refused."""
    cli = [sys.executable, "-m", "benchmark.cli", "synth"]
    out = tmp_path / "gen"
    proc = subprocess.run(
        [*cli, "train", "--kind", "ldm", "--data", str(tiny_real), "-o", str(out),
         "--steps", "2", "--batch-size", "4", "--sample-every", "0", "--no-progress",
         "--set", "ae_steps=2", "--set", "ae_channels=[8, 8]", "--set", "channels=[8, 16]",
         "--set", "num_head_channels=4", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "generator.json").read_text())
    assert meta["generator"] == "ldm" and meta["config"]["ae_steps"] == 2
    proc = subprocess.run(
        [*cli, "sample", str(out), "-n", "3", "-o", str(tmp_path / "s.h5"), "--steps", "2",
         "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_meta(tmp_path / "s.h5")["n"] == 3
    proc = subprocess.run(
        [*cli, "train", "--data", str(tiny_real), "-o", str(tmp_path / "d"), "--set", "x=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--set is for the ldm" in proc.stderr
    assert not (tmp_path / "d").exists()
