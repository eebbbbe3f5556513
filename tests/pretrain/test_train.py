"""The pretraining loop: resume equivalence, determinism, NaN guard, errors, real BUSI run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.core.errors import SSLBenchError, UnknownNameError
from benchmark.data import DatasetMeta, H5Writer
from pretrain.checkpoint import load_encoder, read_checkpoint_meta
from pretrain.train import PretrainConfig, Trainer, TrainingDivergedError, pretrain


def tiny_file(path: Path, n: int = 24, size: int = 32, value: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    with H5Writer(
        path,
        n=n,
        image_shape=(1, size, size),
        label_shape=None,
        meta=DatasetMeta(name=path.stem, modality="test"),
    ) as w:
        for i in range(n):
            img = rng.integers(0, 256, (1, size, size), dtype=np.uint8)
            if value is not None:
                img[:] = value
            w.write(i, img, patient_id=f"p{i}", split=("train", "train", "val", "test")[i % 4])
    return path


def config(tmp_path: Path, **kw) -> PretrainConfig:
    base = dict(
        method="simclr",
        encoder="resnet18",
        source="real",
        real=str(tiny_file(tmp_path / "real.h5"))
        if not (tmp_path / "real.h5").exists()
        else str(tmp_path / "real.h5"),
        steps=4,
        batch_size=4,
        image_size=32,
        seed=0,
        checkpoint_every=2,
        log_every=1,
        device="cpu",
    )
    base.update(kw)
    return PretrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "encoder" / "encoder.pt", weights_only=True)


def test_run_writes_checkpoint_and_records(tmp_path: Path) -> None:
    res = pretrain(config(tmp_path), tmp_path / "run", progress=False)
    meta = read_checkpoint_meta(res.checkpoint)
    for key in (
        "method",
        "encoder",
        "source",
        "synthetic_ratio",
        "steps",
        "batch_size",
        "seed",
        "config",
        "provenance",
        "weights_sha256",
        "data_usage",
        "images_seen",
    ):
        assert key in meta, key
    assert meta["images_seen"] == 16 and meta["steps"] == 4
    assert meta["source"]["real"]["content_hash"]
    assert meta["provenance"]["git_commit"]
    history = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) and h["embedding_std"] > 0 for h in history)
    enc = load_encoder(res.checkpoint)
    assert enc.forward_features(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(SSLBenchError, match="--resume"):
        pretrain(config(tmp_path), tmp_path / "run", progress=False)


def test_determinism_and_resume_equivalence(tmp_path: Path) -> None:
    a = pretrain(config(tmp_path), tmp_path / "a", progress=False)
    b = pretrain(config(tmp_path), tmp_path / "b", progress=False)
    wa, wb = weights(a.out_dir), weights(b.out_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed must give the same weights"

    # interrupt after 2 steps (state saved at step 2), then resume in a new trainer
    t = Trainer(config(tmp_path), tmp_path / "c")
    (tmp_path / "c").mkdir()
    for record in t.run(progress=False):
        if record["step"] == 3:  # state saved at 2; step 3 is lost with the "kill"
            break
    del t
    c = pretrain(config(tmp_path), tmp_path / "c", resume=True, progress=False)
    wc = weights(c.out_dir)
    assert all(torch.equal(wa[k], wc[k]) for k in wa), "resumed run must match"
    other = pretrain(config(tmp_path, seed=1), tmp_path / "d", progress=False)
    assert not all(torch.equal(wa[k], weights(other.out_dir)[k]) for k in wa)


def test_sigkill_and_resume_via_cli(tmp_path: Path) -> None:
    """A real process killed with SIGKILL resumes to the same weights."""
    real = tiny_file(tmp_path / "real.h5")
    args = [
        sys.executable,
        "-m",
        "benchmark.cli",
        "pretrain",
        "--data",
        str(real),
        "--method",
        "simclr",
        "--encoder",
        "resnet18",
        "--steps",
        "60",
        "--batch-size",
        "4",
        "--size",
        "32",
        "--checkpoint-every",
        "5",
        "--no-progress",
        "--device",
        "cpu",
    ]
    ref = subprocess.run([*args, "-o", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([*args, "-o", str(tmp_path / "killed")])
    state = tmp_path / "killed" / "state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed/encoder/encoder.json").exists()
    res = subprocess.run(
        [*args, "-o", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    wr, wk = weights(tmp_path / "ref"), weights(tmp_path / "killed")
    assert all(torch.equal(wr[k], wk[k]) for k in wr)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, steps=30, checkpoint_every=1, method_config={"optimizer": "sgd", "lr": 1e12}
    )
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        pretrain(cfg, tmp_path / "nan", progress=False)
    state = torch.load(tmp_path / "nan/state.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'simclr'"):
        pretrain(config(tmp_path, method="simclrr"), tmp_path / "x", progress=False)
    with pytest.raises(UnknownNameError, match="resnet18"):
        pretrain(config(tmp_path, encoder="resnet19"), tmp_path / "x", progress=False)
    with pytest.raises(SSLBenchError, match="multiple of 32"):
        pretrain(config(tmp_path, image_size=48), tmp_path / "x", progress=False)
    with pytest.raises(SSLBenchError, match="batch"):
        pretrain(config(tmp_path, batch_size=64), tmp_path / "x", progress=False)
    syn = tiny_file(tmp_path / "syn.h5", size=64)
    with pytest.raises(SSLBenchError, match="syn.h5"):
        pretrain(
            config(tmp_path, source="mixed", synthetic=str(syn)), tmp_path / "x", progress=False
        )


def test_mixed_source_records_usage(tmp_path: Path) -> None:
    syn = tiny_file(tmp_path / "syn.h5", n=40, value=7)
    res = pretrain(
        config(tmp_path, source="mixed", synthetic=str(syn), synthetic_ratio=0.5),
        tmp_path / "m",
        progress=False,
    )
    usage = res.summary["data_usage"]
    assert json.dumps(usage)  # serialisable
    text = json.dumps(usage)
    assert "synthetic" in text and "real" in text
    assert res.summary["images_seen"] == 16


def test_inflated_arm_keeps_the_budget_and_records_its_share(tmp_path: Path) -> None:
    """Mode ``add`` (the synthetic pool added, real images weighted): the same steps,
    batch, learning rate and chance loss as the replacing arm; the share comes from the
    pools (12 real train images weighted 0.5 against 20 synthetic train images: 20/26)
    and is recorded."""
    syn = tiny_file(tmp_path / "syn.h5", n=40, value=7)
    kw = dict(source="mixed", synthetic=str(syn), checkpoint_every=0, knn_every=-1, batch_size=10)
    added = pretrain(config(tmp_path, mixing_mode="add", synthetic_ratio=None, real_weight=0.5,
                            strength="weak", **kw), tmp_path / "a", progress=False).summary  # fmt: skip
    replaced = pretrain(config(tmp_path, **kw), tmp_path / "r", progress=False).summary
    assert added["images_seen"] == replaced["images_seen"] == 4 * 10
    assert added["effective_lr"] == replaced["effective_lr"]
    assert added["loss_chance"] == replaced["loss_chance"] == pytest.approx(math.log(2 * 10 - 1))
    assert added["source"]["per_batch"] == {"real": 2, "synthetic": 8}  # round(10 x 20/26)
    assert added["synthetic_share"] == 0.8 and replaced["synthetic_share"] == 0.5
    assert added["source"]["mode"] == "add" and added["config"]["mixing_mode"] == "add"
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["mixing_mode"] == "add" and saved["pool_size"] is None
    assert saved["strength"] == "weak" and replaced["config"]["strength"] == "standard"
    with pytest.raises(SSLBenchError, match="strength: expected one of"):
        pretrain(config(tmp_path, strength="strong"), tmp_path / "bad", progress=False)


@pytest.mark.slow
def test_short_real_busi_pretraining_does_not_collapse(tmp_path: Path, shared_data: Path) -> None:
    from benchmark.data.converters import CONVERTERS

    # the split of the original check (before near-duplicate grouping); the recipe that makes
    # short runs learn on any split is issue 19's
    data = CONVERTERS.create("busi", size=64, duplicates="keep").convert(
        shared_data / "busi_256", tmp_path / "b.h5"
    )
    cfg = PretrainConfig(
        method="simclr",
        encoder="resnet18",
        source="real",
        real=str(data),
        steps=30,
        batch_size=32,
        image_size=64,
        seed=0,
        checkpoint_every=0,
        log_every=5,
        device="cpu",
    )
    res = pretrain(cfg, tmp_path / "busi", progress=False)
    dim = 512  # ResNet-18 pooled features (embedding_std is computed on them)
    assert res.summary["final_embedding_std"] > 0.5 / np.sqrt(dim)
    # the small recipe's loss leaves chance within a few steps, so the first logged loss is
    # already low; what must hold is that the run is clearly below chance (ln(2B - 1))
    chance = res.summary["loss_chance"]
    assert chance == pytest.approx(np.log(63))
    assert res.summary["final_loss"] < 0.9 * chance, "loss should leave chance on real images"
    assert res.summary["data_usage"]
