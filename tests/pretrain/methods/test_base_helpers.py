"""The shared helpers of pretrain.methods.base: config checks and view recipes."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from pretrain.augment import ViewRecipe
from pretrain.methods.base import (
    PAPER_SIZE,
    MethodConfigError,
    SSLMethod,
    colour_jitter_recipe,
    crop_flip_recipe,
)


class _Dummy(SSLMethod):
    name: ClassVar[str] = "dummy"


@pytest.mark.parametrize(
    ("value", "ge", "message"),
    [
        (0, 1, "method 'dummy': n must be a positive integer, got 0"),
        (2.0, 1, "method 'dummy': n must be a positive integer, got 2.0"),
        (True, 1, "method 'dummy': n must be a positive integer, got True"),
        (1, 2, "method 'dummy': n must be an integer >= 2, got 1"),
    ],
)
def test_require_int(value: Any, ge: int, message: str) -> None:
    with pytest.raises(MethodConfigError) as info:
        _Dummy.require_int({"n": value}, "n", ge=ge)
    assert str(info.value) == message
    _Dummy.require_int({"n": ge, "m": ge + 3}, "n", "m", ge=ge)


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0.0, {"gt": 0}, "t must be > 0, got 0.0"),
        (float("nan"), {"gt": 0}, "t must be > 0, got nan"),
        (-1, {"ge": 0}, "t must be >= 0, got -1"),
        (2, {"le": 1}, "t must be <= 1, got 2"),
        (1.0, {"ge": 0, "lt": 1}, "t must be in [0, 1), got 1.0"),
        (0, {"gt": 0, "lt": 1}, "t must be in (0, 1), got 0"),
        (0.5, {"ge": "s", "le": 1}, "t must be in [s, 1], got 0.5"),
        ("x", {"gt": 0}, "t must be a number, got 'x'"),
        (False, {}, "t must be a number, got False"),
    ],
)
def test_require_number(value: Any, bounds: dict[str, Any], message: str) -> None:
    with pytest.raises(MethodConfigError) as info:
        _Dummy.require_number({"t": value, "s": 0.9}, "t", **bounds)
    assert str(info.value) == f"method 'dummy': {message}"


def test_require_number_accepts_bounds() -> None:
    config = {"a": 0.0, "b": 1.0, "s": 0.5, "t": 0.5}
    _Dummy.require_number(config, "a", "b", ge=0, le=1)
    _Dummy.require_number(config, "t", ge="s", le=1)
    with pytest.raises(TypeError):
        _Dummy.require_number(config, "a", gt=0, ge=0)


def test_colour_jitter_recipe_numbers() -> None:
    recipe = colour_jitter_recipe(112, scale=(0.08, 1.0), jitter=0.8, blur_p=0.5)
    assert recipe.intensity_scale == (0.2, 1.8) and recipe.gamma == (1 / 1.8, 1.8)
    assert recipe.blur_sigma == (0.1 * 112 / PAPER_SIZE, 2.0 * 112 / PAPER_SIZE)
    assert (recipe.intensity_p, recipe.gamma_p, recipe.blur_p) == (0.8, 0.8, 0.5)
    assert recipe.intensity_shift == (0.0, 0.0)
    assert (recipe.rotate_p, recipe.vflip_p, recipe.noise_p, recipe.hflip_p) == (0, 0, 0, 0.5)
    moco = colour_jitter_recipe(64, scale=(0.2, 1.0), jitter=0.4, blur_p=1.0)
    assert moco.intensity_scale == (0.6, 1.4) and moco.gamma == (1 / 1.4, 1.4)


def test_crop_flip_recipe() -> None:
    recipe = crop_flip_recipe(32, scale=(0.67, 1.0))
    assert recipe == ViewRecipe(
        size=32,
        scale=(0.67, 1.0),
        rotate_p=0.0,
        intensity_p=0.0,
        gamma_p=0.0,
        blur_p=0.0,
        noise_p=0.0,
    )
