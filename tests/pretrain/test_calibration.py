"""Batch-norm calibration of random encoders on real BUSI images, and the calibrated
frozen-feature scratch baseline (issue 23)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmark.data.converters import CONVERTERS
from pretrain.encoders import create_encoder
from pretrain.encoders.calibration import batch_norm_layers, calibrate_batch_norm
from tasks.features import encoder_cache_id, load_images
from tasks.sweep import SweepConfig, _Runner, plan_cells, sweep_source, sweep_spec
from tasks.taskdata import CALIBRATION_BATCH, EncoderSource, TaskData
from tests.conftest import one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def busi64(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUSI (real) at 64 px, converted with its patient-grouped train/val/test split."""
    out = tmp_path_factory.mktemp("busi") / "busi64.h5"
    return CONVERTERS.create("busi", size=64).convert(shared_data / "busi_256", out)


@pytest.fixture(scope="module")
def task(busi64: Path) -> TaskData:
    return TaskData.load(sweep_spec(sweep_config(busi64, Path("unused"))))


def sweep_config(data: Path, out: Path) -> SweepConfig:
    return SweepConfig(
        encoder=None,
        task="busi-cls",
        adapters=["linear", "finetune"],
        fractions=[1.0],
        seeds=[0],
        output=str(out),
        baselines=["scratch"],
        dataset=str(data),
        architecture={"name": "resnet18", "args": {"in_chans": 1, "img_size": 64}},
        device="cpu",
    )


def bn_buffers(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in encoder.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


def params(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, _ in encoder.named_parameters()}
    return {k: v.clone() for k, v in encoder.state_dict().items() if k in names}


def random_resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_encoder("resnet18", in_chans=1, img_size=64)


def test_calibration_changes_only_the_running_statistics(task: TaskData) -> None:
    images = task.split_images("train", 1)
    enc = random_resnet()
    enc.train()
    layers: list[Any] = batch_norm_layers(enc)
    assert len(layers) == 20
    layers[0].momentum = 0.3  # a non-default momentum must come back too
    momenta = [m.momentum for m in layers]
    before_params, before_bn = params(enc), bn_buffers(enc)
    record = calibrate_batch_norm(enc, images, split="train", batch_size=64)
    assert record["calibrated"] and record["layers"] == 20 and record["split"] == "train"
    assert record["images"] == images.shape[0] == int((task.split == "train").sum())
    after_params, after_bn = params(enc), bn_buffers(enc)
    assert before_params.keys() == after_params.keys() and len(after_params) > 0
    assert all(torch.equal(before_params[k], after_params[k]) for k in before_params)
    means = [k for k in after_bn if k.endswith("running_mean")]
    variances = [k for k in after_bn if k.endswith("running_var")]
    assert all(not torch.equal(before_bn[k], after_bn[k]) for k in means + variances)
    assert torch.all(before_bn["model.bn1.running_mean"] == 0)
    assert torch.all(before_bn["model.bn1.running_var"] == 1)
    assert enc.training and all(m.training for m in enc.modules())  # train mode restored
    assert [m.momentum for m in layers] == momenta
    enc.eval()
    calibrate_batch_norm(enc, images[:10], batch_size=4)
    assert not enc.training and not any(m.training for m in enc.modules())  # eval restored


def test_calibrated_statistics_are_the_mean_over_the_split(task: TaskData) -> None:
    """Cumulative averages: the first layer's running mean is the mean over the batches of
    the per-batch channel means of its input (equal batches: the plain mean)."""
    images = task.split_images("train", 1)[:128]
    enc: Any = random_resnet()
    calibrate_batch_norm(enc, images, batch_size=64)
    with torch.no_grad():
        x = enc.model.conv1(images)
    expected = torch.stack([x[:64].mean(dim=(0, 2, 3)), x[64:].mean(dim=(0, 2, 3))]).mean(0)
    torch.testing.assert_close(enc.model.bn1.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_a_vit_has_nothing_to_calibrate() -> None:
    torch.manual_seed(0)
    vit = create_encoder("vit_tiny", in_chans=1, img_size=64)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    record = calibrate_batch_norm(vit, torch.rand(4, 1, 64, 64))
    assert record["calibrated"] is False and record["layers"] == 0
    assert "nothing to calibrate" in record["note"]
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


def test_a_3d_encoder_is_calibrated_too() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet10_3d", in_chans=1, img_size=32)
    before_params, before_bn = params(enc), bn_buffers(enc)
    record = calibrate_batch_norm(enc, torch.rand(4, 1, 32, 32, 32), batch_size=2)
    assert record["calibrated"] and record["layers"] == len(batch_norm_layers(enc)) > 0
    assert all(torch.equal(v, params(enc)[k]) for k, v in before_params.items())
    after_bn = bn_buffers(enc)
    assert any(
        not torch.equal(before_bn[k], after_bn[k]) for k in before_bn if k.endswith("running_var")
    )


def test_scratch_linear_baseline_is_calibrated_on_the_train_split_only(
    busi64: Path, task: TaskData, tmp_path: Path
) -> None:
    cfg = sweep_config(busi64, tmp_path / "out")
    spec = sweep_spec(cfg)
    cells = plan_cells(spec, sweep_source(cfg), cfg)
    linear = next(c for c in cells if c.adapter == "linear")
    finetune = next(c for c in cells if c.adapter == "finetune")
    assert linear.source.calibrate == "train" and linear.source.id.endswith("-bncal-train")
    assert finetune.source.calibrate is None  # fine-tuning trains the raw random init
    runner = _Runner(cfg, spec, task, "cpu")
    baseline = runner.encoder(linear.source, 0)

    train = task.split_images("train", 1)
    reference = EncoderSource.scratch("resnet18", {"in_chans": 1, "img_size": 64}).build(0)
    calibrate_batch_norm(reference, train, batch_size=CALIBRATION_BATCH)
    mine, ref = bn_buffers(baseline), bn_buffers(reference)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    assert all(torch.equal(v, params(reference)[k]) for k, v in params(baseline).items())

    # calibrating on train + val (a leak of the validation images) gives other statistics
    both = np.sort(np.concatenate([task.pool("train"), task.pool("val")]))
    leaky = EncoderSource.scratch("resnet18", {"in_chans": 1, "img_size": 64}).build(0)
    with_val = load_images(task.cell(1.0, 0), 1)[torch.from_numpy(both)]
    calibrate_batch_norm(leaky, with_val, batch_size=CALIBRATION_BATCH)
    leaked = bn_buffers(leaky)
    assert not torch.equal(leaked["model.bn1.running_mean"], mine["model.bn1.running_mean"])
    assert not torch.equal(leaked["model.bn1.running_var"], mine["model.bn1.running_var"])

    raw = runner.encoder(finetune.source, 0)  # the raw init: default statistics
    assert torch.all(bn_buffers(raw)["model.bn1.running_var"] == 1)
    # a new feature-cache key and record hash: features of the raw init are never reused
    assert encoder_cache_id(baseline) != encoder_cache_id(raw)
    assert "bn-calibrated:train" in linear.source.hash_for(0)

    record = runner.run(linear)
    cal = record["encoder"]["metadata"]["bn_calibration"]
    assert (
        cal["calibrated"] and cal["split"] == "train" and cal["images"] == len(task.pool("train"))
    )
    assert "calibrated on the train split" in record["encoder"]["metadata"]["init"]
    assert record["metrics"]["auc"] > 0.5


def test_baseline_jobs_key_the_calibrated_scratch_arm(tmp_path: Path) -> None:
    """A results folder of an earlier run re-evaluates the frozen probes' scratch arm: their
    baselines job has a new key; jobs without a frozen-feature adapter keep theirs."""
    from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment
    from benchmark.harness.jobs import plan_jobs

    jobs = {
        j.id: j for j in plan_jobs(load_experiment(EXPERIMENT_DIR / "phantom-tiny.yaml"), tmp_path)
    }
    cls = jobs["evaluate/phantom-cls/baselines-resnet18"]  # linear
    seg = jobs["evaluate/phantom-seg/baselines-resnet18"]  # segmentation trains the encoder
    assert cls.config["scratch_frozen_init"] == {
        "init": "random",
        "bn_calibration": "train",
        "batch": CALIBRATION_BATCH,
    }
    assert "scratch_frozen_init" not in seg.config
