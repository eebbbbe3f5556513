"""Augmentation strength: one axis that weakens (or strengthens) any method's views.

AdaInf (Wang et al., ICLR 2024, "Do generated data always help contrastive
learning?") finds that adding generated images to contrastive pretraining calls
for *weaker* augmentation: the extra data already regularises, and strong views on
top of it hurt. Their preset for inflated training: random-resized-crop minimum
area 0.2 (instead of 0.08), colour jitter with probability 0.4 at strengths
0.4 / 0.4 / 0.2 / 0.1 (instead of 0.8 at 0.8 / 0.8 / 0.2 / 0.1) and no blur
(instead of p 0.5). sslbench makes that an axis an experiment can sweep like
sources and methods (``strength``), applied to the view recipes every method
declares (:meth:`pretrain.methods.base.SSLMethod.view_recipes`):

* ``standard``: the method's recipe as declared (the default).
* ``weak``: AdaInf's preset, adapted to greyscale and to any method: the
  intensity and geometric deviations from the identity image are halved, with
  their probabilities (the jitter 0.8 -> 0.4 of the paper is a halving; the
  number rule below at 0.5), blur and noise are off, and the crop keeps at least
  20 % of the area (AdaInf's 0.2; a recipe whose crop already keeps more keeps
  its own range).
* a number ``s >= 0``: every deviation scaled by ``s`` (``1`` is ``standard``,
  ``0`` the identity view): the crop's minimum area ``1 - s (1 - lo)`` and
  aspect ratio ``x ** s``, the intensity scale ``1 + s (x - 1)``, the intensity shift and the rotation
  ``s x``, gamma ``x ** s`` (log scale), the blur sigma and noise std ``s x``,
  and every probability ``min(1, s p)``. Flips are kept: they are symmetries
  of the data, not a strength.

The strength is recorded in the run's config (so in the encoder checkpoint) and
labels the leaderboard row (``simclr-weak``, ``simclr-s0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from benchmark.core.errors import SSLBenchError
from pretrain.augment import ViewRecipe

#: Named strengths (a number is also accepted).
STRENGTHS = ("standard", "weak")
#: AdaInf's minimum crop area of the weak preset.
WEAK_MIN_CROP = 0.2


def check_strength(strength: str | float, where: str = "strength") -> str | float:
    """A valid strength (a name of :data:`STRENGTHS` or a number >= 0), as given.

    Raises:
        SSLBenchError: Anything else (named with ``where``).
    """
    if isinstance(strength, str) and strength in STRENGTHS:
        return strength
    if isinstance(strength, int | float) and not isinstance(strength, bool):
        if math.isfinite(strength) and strength >= 0:
            return float(strength)
    raise SSLBenchError(
        f"{where}: expected one of {list(STRENGTHS)} or a number >= 0, got {strength!r}"
    )


def strength_label(strength: str | float) -> str:
    """``""`` for standard, ``weak``, or ``s<number>`` (for labels and rows)."""
    if strength == "standard" or strength == 1.0:
        return ""
    return str(strength) if isinstance(strength, str) else f"s{strength:g}"


def _pair(values: tuple[float, float], fn: Callable[[float], float]) -> tuple[float, float]:
    return fn(values[0]), fn(values[1])


def _scaled(recipe: ViewRecipe, s: float) -> ViewRecipe:
    lo, hi = recipe.scale
    return replace(
        recipe,
        scale=(min(hi, max(1.0 - s * (1.0 - lo), 1e-3)), hi),
        ratio=_pair(recipe.ratio, lambda x: float(x**s)),
        rotate_deg=s * recipe.rotate_deg,
        rotate_p=min(1.0, s * recipe.rotate_p),
        intensity_scale=_pair(recipe.intensity_scale, lambda x: max(1e-3, 1.0 + s * (x - 1.0))),
        intensity_shift=_pair(recipe.intensity_shift, lambda x: s * x),
        intensity_p=min(1.0, s * recipe.intensity_p),
        gamma=_pair(recipe.gamma, lambda x: float(x**s)),
        gamma_p=min(1.0, s * recipe.gamma_p),
        blur_sigma=_pair(recipe.blur_sigma, lambda x: max(1e-3, s * x)),
        blur_p=min(1.0, s * recipe.blur_p),
        noise_std=_pair(recipe.noise_std, lambda x: s * x),
        noise_p=min(1.0, s * recipe.noise_p),
    )


def with_strength(recipe: ViewRecipe, strength: str | float) -> ViewRecipe:
    """``recipe`` at ``strength`` (see the module docstring); ``standard`` returns it as is."""
    strength = check_strength(strength)
    if strength == "standard" or strength == 1.0:
        return recipe
    if strength == "weak":
        weak = replace(_scaled(recipe, 0.5), blur_p=0.0, noise_p=0.0)
        lo, hi = recipe.scale
        return replace(weak, scale=(min(hi, max(lo, WEAK_MIN_CROP)), hi))
    return _scaled(recipe, float(strength))
