"""Augmentation strength (AdaInf's weak views), on every registered method's recipes."""

from __future__ import annotations

import pytest
import torch

from benchmark.core.errors import SSLBenchError
from pretrain.augment import ViewRecipe, augment_batch
from pretrain.methods import METHODS
from pretrain.strength import WEAK_MIN_CROP, check_strength, strength_label, with_strength
from tests.pretrain.methods.test_method_contract import build, size_of


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_recipe_takes_every_strength(name: str) -> None:
    """The strengths build valid recipes (ViewRecipe validates itself) for every method;
    ``weak`` turns blur and noise off, halves the jitter probabilities and keeps at least
    20 % of the area in the crop; standard (or 1) is the declared recipe."""
    recipes = build(name).view_recipes(size_of(name))
    for recipe in recipes:
        assert with_strength(recipe, "standard") is recipe and with_strength(recipe, 1.0) is recipe
        weak = with_strength(recipe, "weak")
        assert weak.blur_p == 0.0 and weak.noise_p == 0.0
        assert weak.intensity_p == pytest.approx(recipe.intensity_p / 2)
        assert weak.gamma_p == pytest.approx(recipe.gamma_p / 2)
        assert weak.scale == (max(recipe.scale[0], WEAK_MIN_CROP), recipe.scale[1])
        assert (weak.hflip_p, weak.size) == (recipe.hflip_p, recipe.size)
        for s in (0.0, 0.5, 2.0):
            scaled = with_strength(recipe, s)
            assert 0 < scaled.scale[0] <= scaled.scale[1] <= 1.0
            assert all(0.0 <= p <= 1.0 for p in (scaled.intensity_p, scaled.blur_p))


def test_strength_zero_is_the_identity_view() -> None:
    """At 0 every deviation vanishes: a view without flips is the image itself."""
    recipe = ViewRecipe(size=16, scale=(0.08, 1.0), hflip_p=0.0, intensity_p=1.0, blur_p=1.0,
                        noise_p=1.0, rotate_p=1.0, gamma_p=1.0)  # fmt: skip
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    same = augment_batch(images, with_strength(recipe, 0.0), gen)
    torch.testing.assert_close(same, images, atol=1e-4, rtol=0)
    moved = augment_batch(images, recipe, torch.Generator().manual_seed(1))
    assert (moved - images).abs().mean() > 0.01


def test_scaling_rules() -> None:
    recipe = ViewRecipe(scale=(0.2, 1.0), intensity_scale=(0.6, 1.4), gamma=(0.5, 2.0),
                        rotate_deg=20.0, intensity_p=0.8, blur_sigma=(0.2, 2.0))  # fmt: skip
    half = with_strength(recipe, 0.5)
    assert half.scale == pytest.approx((0.6, 1.0))
    assert half.intensity_scale == pytest.approx((0.8, 1.2))
    assert half.gamma == pytest.approx((0.5**0.5, 2.0**0.5))
    assert half.rotate_deg == 10.0 and half.intensity_p == pytest.approx(0.4)
    assert half.blur_sigma == pytest.approx((0.1, 1.0))
    assert with_strength(recipe, 2.0).intensity_p == 1.0  # probabilities stop at 1


@pytest.mark.parametrize("bad", ["strong", -0.5, float("nan"), True, None])
def test_bad_strengths_are_named(bad: object) -> None:
    with pytest.raises(SSLBenchError, match="pretrain.strengths: expected one of"):
        check_strength(bad, "pretrain.strengths")  # type: ignore[arg-type]


def test_labels() -> None:
    assert [strength_label(s) for s in ("standard", 1.0, "weak", 0.5)] == ["", "", "weak", "s0.5"]
