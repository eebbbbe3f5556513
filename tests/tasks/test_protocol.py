"""The evaluation protocol: one recipe for every arm, step budgets, selection on validation."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.core.errors import SSLBenchError
from benchmark.data.converters import CONVERTERS
from pretrain.encoders import create_encoder
from tasks.adapters import ADAPTERS
from tasks.adapters.protocol import (
    BestTracker,
    lr_grid,
    plan_steps,
    select_on_validation,
)
from tasks.spec import load_spec
from tasks.taskdata import EncoderSource, TaskData

REPO = Path(__file__).resolve().parents[2]
CFG = {"epochs": 30, "min_steps": 100, "eval_every": 0, "patience": 5, "stop_after": 0.5}


def test_step_budget_does_not_vanish_at_small_fractions() -> None:
    small = plan_steps(1, CFG, "t")  # 5 % of BUSI: one batch per epoch
    large = plan_steps(11, CFG, "t")  # 100 %
    assert small.total == 100 and large.total == 330  # max(min_steps, epochs x per epoch)
    assert small.eval_every == 5 and small.stop_after == 50
    assert all(small.evaluate_now(s) for s in (5, 10, 100))
    assert not small.evaluate_now(7)


@pytest.mark.parametrize(
    ("key", "value"), [("min_steps", -1), ("patience", 0), ("stop_after", 1.5), ("eval_every", -2)]
)
def test_bad_protocol_options_name_the_key(key: str, value: float) -> None:
    with pytest.raises(SSLBenchError, match=key):
        plan_steps(3, {**CFG, key: value}, "finetune")


def test_no_early_stop_before_the_floor_and_ties_keep_the_earlier_step() -> None:
    plan = plan_steps(1, {**CFG, "epochs": 1, "min_steps": 20, "eval_every": 1, "patience": 2}, "t")
    tracker, model = BestTracker(plan), nn.Linear(2, 2)
    stops = [tracker.observe(s, 0.5, model) for s in range(1, 21)]
    assert not any(stops[:9]) and stops[9]  # flat from step 1: first stop at the floor (10)
    assert tracker.best_step == 1  # the tie keeps the earliest evaluation
    nan = BestTracker(plan)
    nan.observe(1, math.nan, model)
    assert nan.best_step == 0 and nan.best_state is None  # flagged as "best step 0"


def test_learning_rate_is_chosen_on_validation_in_declared_order() -> None:
    scores = {1e-4: 0.6, 3e-4: 0.8, 1e-3: 0.8}
    chosen, trials = select_on_validation([1e-4, 3e-4, 1e-3], lambda lr: (scores[lr], lr))
    assert chosen.lr == 3e-4 and [t.lr for t in trials] == [1e-4, 3e-4, 1e-3]
    nan_first, _ = select_on_validation([1e-4, 1e-3], lambda lr: (math.nan, lr))
    assert nan_first.lr == 1e-4
    assert lr_grid(1e-3, "a", "lr") == [1e-3]
    with pytest.raises(SSLBenchError, match="lr_encoder"):
        lr_grid([1e-3, 0], "finetune", "lr_encoder")


def test_no_adapter_special_cases_how_the_encoder_was_initialised() -> None:
    """The recipe may not depend on the arm: no adapter reads the scratch marker or has an
    option named after an arm."""
    for path in sorted((REPO / "tasks" / "adapters").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert "scratch_id" not in names and "scratch_id" not in strings, path.name
    for name in ADAPTERS.names():
        opts = ADAPTERS.get(name).default_config
        assert not [k for k in opts if "scratch" in k or "supervised" in k], name


@pytest.mark.slow
def test_busi_scratch_segmentation_at_10_percent_trains_past_its_first_steps(
    shared_data: Path, tmp_path: Path
) -> None:
    """Regression: every scratch segmentation cell of the BUSI reference at fraction 0.1
    restored the weights of epoch 0 (early stopping on 8 validation images with a Dice
    that an all-empty prediction wins). Under the protocol the cell trains at least half
    its budget and keeps weights from beyond its first epoch."""
    CONVERTERS.create("busi", size=64).convert(shared_data / "busi_256", tmp_path / "b.h5")
    spec = load_spec("busi-seg")
    import dataclasses

    spec = dataclasses.replace(spec, dataset=str(tmp_path / "b.h5"), image_size=32)
    task = TaskData.load(spec)
    cell = task.cell(0.1, 0)
    encoder = EncoderSource.scratch("resnet18", {"img_size": 32}).build(0, "cpu")
    torch.manual_seed(0)
    adapter = ADAPTERS.create(
        "segmentation", epochs=15, min_steps=60, encoder_lr=[1e-3], batch_size=16
    )
    result = adapter.run(encoder, cell, seed=0)
    extra = result.extra
    plan = extra["step_plan"]
    assert extra["selection_criterion"] == "dice_nonempty"
    assert extra["steps_trained"] >= plan["no_stop_before"] >= 30
    assert extra["best_step"] > plan["steps_per_epoch"]
    # the restored weights improved on the first evaluation (the validation loss breaks the
    # tie of a flat criterion), instead of being the least-trained ones
    history = extra["learning_curve"]
    best = next(h for h in history if int(h["step"]) == extra["best_step"])
    assert best["val_loss"] < history[0]["val_loss"]
    assert len(result.per_case["dice"]) == len(cell.test)


def test_encoder_source_builds_the_same_encoder_for_scratch_and_supervised() -> None:
    a = EncoderSource.scratch("resnet18", {"img_size": 32}).build(0, "cpu")
    b = EncoderSource.scratch("resnet18", {"img_size": 32}, "supervised").build(0, "cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert isinstance(create_encoder("resnet18", img_size=32), nn.Module)
