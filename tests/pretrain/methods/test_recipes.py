"""Pretraining recipes: paper vs small-batch defaults, auto choice, learning-rate scaling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pretrain.encoders import create_encoder
from pretrain.methods import METHODS, create_method
from pretrain.methods.base import (
    COMMON_DEFAULTS,
    PAPER_RECIPE_MIN_BATCH,
    MethodConfigError,
    resolve_recipe,
    scaled_lr,
)
from pretrain.train import PretrainConfig, build_optimizer, pretrain
from tests.pretrain.test_train import tiny_file

NAMES = METHODS.names()


@pytest.mark.parametrize("name", NAMES)
def test_small_recipe_only_overrides_known_keys(name: str) -> None:
    cls = METHODS.get(name)
    known = set(COMMON_DEFAULTS) | set(cls.default_config)
    assert set(cls.small_recipe) <= known, set(cls.small_recipe) - known
    assert "recipe" not in cls.small_recipe


@pytest.mark.parametrize("name", NAMES)
def test_paper_and_small_recipes(name: str) -> None:
    cls = METHODS.get(name)
    paper = cls.validate_config({"recipe": "paper"})
    small = cls.validate_config({"recipe": "small"})
    assert paper["recipe"] == "paper" and small["recipe"] == "small"
    for key, value in cls.default_config.items():
        assert paper[key] == value, f"paper recipe must keep the default {key}"
    for key, value in cls.small_recipe.items():
        assert small[key] == value
    # a user option wins over either recipe
    assert cls.validate_config({"recipe": "small", "lr": 0.123})["lr"] == 0.123
    assert cls.validate_config({"recipe": "paper", "weight_decay": 0.5})["weight_decay"] == 0.5


@pytest.mark.parametrize("name", NAMES)
def test_every_method_has_a_small_batch_recipe(name: str) -> None:
    """The small recipe changes the optimisation of every method (not only the paper's)."""
    assert METHODS.get(name).small_recipe


def test_auto_recipe_follows_the_batch_size() -> None:
    assert resolve_recipe({}, 32)["recipe"] == "small"
    assert resolve_recipe({"recipe": "auto"}, PAPER_RECIPE_MIN_BATCH)["recipe"] == "paper"
    assert resolve_recipe({"recipe": "small"}, 4096)["recipe"] == "small"
    assert resolve_recipe({"recipe": "paper", "lr": 1.0}, 8) == {"recipe": "paper", "lr": 1.0}


def test_lr_scaling_rules() -> None:
    assert scaled_lr({"lr": 0.3, "lr_scaling": "linear"}, 32) == pytest.approx(0.3 / 8)
    assert scaled_lr({"lr": 3e-3, "lr_scaling": "sqrt"}, 32) == pytest.approx(3e-3 / math.sqrt(8))
    assert scaled_lr({"lr": 1e-3, "lr_scaling": "none"}, 32) == 1e-3


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("recipe", "large", "recipe"),
        ("lr_scaling", "cubic", "lr_scaling"),
        ("adam_beta2", 1.0, "adam_beta2"),
    ],
)
def test_bad_recipe_options(option: str, value: object, match: str) -> None:
    with pytest.raises(MethodConfigError, match=match):
        METHODS.get("simclr").validate_config({option: value})


def test_mae_keeps_the_paper_betas() -> None:
    encoder = create_encoder("vit_tiny", in_chans=1, img_size=32)
    method = create_method("mae", encoder)
    opt = build_optimizer(method, method.config, 32)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert opt.param_groups[0]["lr"] == pytest.approx(scaled_lr(method.config, 32))


def test_run_records_its_recipe(tmp_path: Path) -> None:
    data = tiny_file(tmp_path / "tiny.h5")
    cfg = PretrainConfig(
        real=str(data), steps=1, batch_size=4, image_size=32, checkpoint_every=0, device="cpu"
    )
    s = pretrain(cfg, tmp_path / "run", progress=False).summary
    cls = METHODS.get("simclr")
    assert s["recipe"] == "small" and s["method_config"]["recipe"] == "small"
    assert s["effective_lr"] == pytest.approx(scaled_lr(cls.validate_config({}), 4))
    assert s["method_config"]["optimizer"] == cls.small_recipe["optimizer"]
