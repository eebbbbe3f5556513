"""A short real sweep on BUSI (../shared/data): fine-tuning beats chance on the test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from benchmark.data.converters import CONVERTERS
from pretrain.checkpoint import save_encoder
from pretrain.encoders import create_encoder
from tasks.spec import load_spec
from tasks.sweep import SweepConfig, run_sweep


@pytest.mark.slow
def test_busi_finetune_from_scratch_beats_chance(shared_data: Path, tmp_path: Path) -> None:
    # the shipped busi-cls spec and its 64 px file, evaluated at 32 px to stay fast on 2 cores
    CONVERTERS.create("busi", size=64).convert(shared_data / "busi_256", tmp_path / "busi64.h5")
    spec = load_spec("busi-cls").to_dict()
    spec.pop("source")
    spec.update(name="busi-cls-32", image_size=32)
    (tmp_path / "busi32.yaml").write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)  # a random "checkpoint": fine-tuned at the from-scratch rate below
    save_encoder(tmp_path / "random", create_encoder("resnet18", img_size=32), {})
    result = run_sweep(
        SweepConfig(
            encoder=str(tmp_path / "random"),
            task=str(tmp_path / "busi32.yaml"),
            adapters=["finetune", "knn"],
            fractions=[0.5, 1.0],
            seeds=[0],
            output=str(tmp_path / "out"),
            baselines=[],
            data_root=str(tmp_path),
            overrides={
                "finetune.epochs": 5,
                "finetune.lr_encoder": [1e-3],
                "finetune.min_steps": 1,
                "patience": 3,
            },
            progress=False,
        )
    )
    by_cell = {(r["adapter"]["name"], r["fraction"]): r for r in result.records}
    full = by_cell[("finetune", 1.0)]
    assert full["n_test"] == 156 and full["n_train"] > by_cell[("finetune", 0.5)]["n_train"]
    m = full["metrics"]
    print(f"BUSI 32 px, fine-tuned from random init: {m}, knn {by_cell[('knn', 1.0)]['metrics']}")
    assert m["auc"] > 0.6 or m["balanced_accuracy"] > 1 / 3 + 0.05, m
    assert sum(map(sum, full["extra"]["confusion_matrix"])) == 156
