"""Tests of the batched view augmentations (tiny tensors, CPU)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmark.core.errors import SSLBenchError
from pretrain.augment import (
    AugmentError,
    ViewRecipe,
    affine_grid,
    augment_batch,
    gaussian_blur,
    make_views,
    normalize,
)

#: A recipe that does nothing but resample the whole image to ``size``.
IDENTITY: dict[str, Any] = dict(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    hflip_p=0.0,
    vflip_p=0.0,
    rotate_p=0.0,
    intensity_p=0.0,
    gamma_p=0.0,
    blur_p=0.0,
    noise_p=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 1, 32, 32, generator=gen(123))


def test_shape_dtype_range(images: torch.Tensor) -> None:
    out = augment_batch(images, ViewRecipe(size=16), gen())
    assert out.shape == (6, 1, 16, 16)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # every op on: still in range
    strong = ViewRecipe(
        size=24,
        intensity_p=1,
        gamma_p=1,
        blur_p=1,
        noise_p=1,
        rotate_p=1,
        intensity_scale=(0.2, 3.0),
        intensity_shift=(-0.5, 0.5),
        noise_std=(0.2, 0.5),
    )
    out = augment_batch(images, strong, gen())
    assert out.shape == (6, 1, 24, 24)
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_uint8_input_is_scaled() -> None:
    x = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = augment_batch(x, ViewRecipe(size=8, **IDENTITY), gen())
    assert torch.allclose(out, torch.ones_like(out))


def test_deterministic_for_same_generator_state(images: torch.Tensor) -> None:
    recipe = ViewRecipe(size=16, blur_p=0.5, noise_p=0.5)
    a = augment_batch(images, recipe, gen(7))
    b = augment_batch(images, recipe, gen(7))
    c = augment_batch(images, recipe, gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_make_views_follows_recipes_in_order(images: torch.Tensor) -> None:
    r1, r2 = ViewRecipe(size=16), ViewRecipe(size=8, blur_p=1.0)
    views = make_views(images, [r1, r2], gen(3))
    g = gen(3)
    assert [v.shape[-1] for v in views] == [16, 8]
    assert torch.equal(views[0], augment_batch(images, r1, g))
    assert torch.equal(views[1], augment_batch(images, r2, g))
    assert not torch.equal(views[0], make_views(images, [r1, r1], gen(3))[1])


def test_identity_recipe_reproduces_resized_input(images: torch.Tensor) -> None:
    same = augment_batch(images, ViewRecipe(size=32, **IDENTITY), gen())
    assert torch.allclose(same, images, atol=1e-5)
    small = augment_batch(images, ViewRecipe(size=16, **IDENTITY), gen())
    ref = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(small, ref, atol=1e-5)


@pytest.mark.parametrize(
    ("flips", "dims"),
    [
        ({"hflip_p": 1.0}, [-1]),
        ({"vflip_p": 1.0}, [-2]),
        ({"hflip_p": 1.0, "vflip_p": 1.0}, [-2, -1]),
    ],
)
def test_flips_flip(images: torch.Tensor, flips: dict[str, Any], dims: list[int]) -> None:
    recipe = ViewRecipe(size=32, **{**IDENTITY, **flips})
    out = augment_batch(images, recipe, gen())
    assert torch.allclose(out, torch.flip(images, dims), atol=1e-5)


def test_crop_zooms_in() -> None:
    # a smooth ramp: a crop covers a narrower range of values than the full image
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(4, 1, 32, 32).contiguous()
    recipe = ViewRecipe(size=16, **{**IDENTITY, "scale": (0.25, 0.25)})
    out = augment_batch(ramp, recipe, gen())
    span = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))
    assert torch.all(span < 0.6) and torch.all(span > 0.3)


def test_rotation_keeps_a_centred_disc_and_turns_a_bar() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 100).float().expand(4, 1, 32, 32)
    bar = ((yy - 15.5).abs() < 3).float().expand(4, 1, 32, 32)
    recipe = ViewRecipe(size=32, **{**IDENTITY, "rotate_p": 1.0, "rotate_deg": 60.0})
    assert (augment_batch(disc, recipe, gen(1)) - disc).abs().mean() < 0.02
    assert (augment_batch(bar, recipe, gen(1)) - bar).abs().mean() > 0.05


def test_intensity_and_gamma() -> None:
    x = torch.full((3, 1, 8, 8), 0.5)
    lin = ViewRecipe(
        size=8,
        **{
            **IDENTITY,
            "intensity_p": 1.0,
            "intensity_scale": (1.5, 1.5),
            "intensity_shift": (0.1, 0.1),
        },
    )
    assert torch.allclose(augment_batch(x, lin, gen()), torch.full_like(x, 0.85), atol=1e-6)
    gam = ViewRecipe(size=8, **{**IDENTITY, "gamma_p": 1.0, "gamma": (2.0, 2.0)})
    assert torch.allclose(augment_batch(x, gam, gen()), torch.full_like(x, 0.25), atol=1e-6)
    zero = torch.zeros(1, 1, 8, 8)
    assert torch.equal(augment_batch(zero, gam, gen()), zero)


def test_blur_reduces_variance_and_noise_increases_it(images: torch.Tensor) -> None:
    blur = ViewRecipe(size=32, **{**IDENTITY, "blur_p": 1.0, "blur_sigma": (1.0, 2.0)})
    out = augment_batch(images, blur, gen())
    assert torch.all(out.var(dim=(1, 2, 3)) < 0.5 * images.var(dim=(1, 2, 3)))
    assert torch.allclose(out.mean(), images.mean(), atol=0.02)  # no dark rim
    flat = torch.full((4, 1, 32, 32), 0.5)
    noise = ViewRecipe(size=32, **{**IDENTITY, "noise_p": 1.0, "noise_std": (0.1, 0.1)})
    noisy = augment_batch(flat, noise, gen())
    std = noisy.std(dim=(1, 2, 3))
    assert torch.all((std > 0.08) & (std < 0.12))


def test_probabilities_select_samples() -> None:
    x = torch.full((200, 1, 4, 4), 0.5)
    recipe = ViewRecipe(size=4, **{**IDENTITY, "gamma_p": 0.3, "gamma": (2.0, 2.0)})
    out = augment_batch(x, recipe, gen())
    changed = (out[:, 0, 0, 0] < 0.3).float().mean().item()
    assert 0.2 < changed < 0.4


def test_gaussian_blur_per_sample_sigma() -> None:
    impulse = torch.zeros(2, 1, 15, 15)
    impulse[:, :, 7, 7] = 1.0
    out = gaussian_blur(impulse, torch.tensor([0.5, 2.0]), radius=6)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)
    assert out[0, 0, 7, 7] > out[1, 0, 7, 7]


def test_affine_grid_matches_torch() -> None:
    for size in ([3, 1, 5, 7], [2, 1, 4, 5, 6]):
        nd = len(size) - 2
        theta = torch.randn(size[0], nd, nd + 1, generator=gen())
        ref = F.affine_grid(theta, size, align_corners=False)
        assert torch.allclose(affine_grid(theta, size), ref, atol=1e-5)


def test_3d_volumes() -> None:
    vol = torch.rand(3, 1, 12, 16, 16, generator=gen(5))
    out = augment_batch(vol, ViewRecipe(size=8, blur_p=1.0, noise_p=1.0, rotate_p=1.0), gen())
    assert out.shape == (3, 1, 8, 8, 8)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(
        out, augment_batch(vol, ViewRecipe(size=8, blur_p=1.0, noise_p=1.0, rotate_p=1.0), gen())
    )
    # upsampling D 12 -> 16: border padding matches interpolate's clamping at the edges
    flip = ViewRecipe(size=16, padding_mode="border", **{**IDENTITY, "hflip_p": 1.0})
    same = augment_batch(vol, flip, gen())
    ref = F.interpolate(
        torch.flip(vol, [-1]), size=(16, 16, 16), mode="trilinear", align_corners=False
    )
    assert torch.allclose(same, ref, atol=1e-5)


def test_normalize() -> None:
    assert torch.allclose(normalize(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0, 1]))


@pytest.mark.parametrize(
    "bad",
    [
        {"size": 0},
        {"hflip_p": 1.5},
        {"scale": (0.5, 0.2)},
        {"scale": (0.2, 1.5)},
        {"gamma": (0.0, 1.0)},
        {"noise_std": (-0.1, 0.1)},
        {"rotate_deg": -1.0},
        {"padding_mode": "wrap"},
    ],
)
def test_invalid_recipes(bad: dict[str, Any]) -> None:
    with pytest.raises(AugmentError, match="ViewRecipe"):
        ViewRecipe(**bad)
    assert issubclass(AugmentError, SSLBenchError)


def test_bad_input_shape() -> None:
    with pytest.raises(AugmentError, match="expected"):
        augment_batch(torch.rand(1, 8, 8), ViewRecipe(size=8))
