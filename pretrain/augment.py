"""Batched, device-side view augmentations for greyscale medical images.

Every SSL method declares its views as :class:`ViewRecipe` objects and the
training loop builds them with :func:`make_views` on the batch *after* it has
been moved to the device: all operations are tensor ops over the whole batch
(no per-sample PIL, no Python loop over samples), so augmentation costs a few
per cent of a forward/backward step on a CPU and next to nothing on a GPU.

Recipes. Each method takes its paper's recipe (SimCLR, MoCo v2, BYOL, DINO,
Barlow Twins, VICReg, MAE, ...) adapted to single-channel images:

* random resized crop, flips and (small) rotation are kept as in the paper;
* colour jitter's hue and saturation and random grey conversion are dropped:
  they are undefined or no-ops on one channel;
* brightness and contrast become a per-sample intensity shift and scale, and a
  gamma change stands in for the non-linear windowing that differs between
  scanners and protocols (CT/MR/ultrasound), which is the greyscale analogue
  of the "colour" invariance those methods rely on;
* Gaussian blur is kept; additive Gaussian noise models acquisition noise.

Fused spatial ops. Crop, flips and rotation are composed into one affine matrix
per sample and applied with one sampling grid (:func:`affine_grid`, equal to
``F.affine_grid`` but faster on CPU) and a single ``F.grid_sample``
call that samples the output directly at ``recipe.size`` (a 256 px input gives
a 64 px view without a separate resize). Resampling is bilinear without
anti-aliasing, like a resize of a crop with ``antialias=False``.

3D volumes ``(B, C, D, H, W)`` go through the same function: the crop is a box
with ``scale`` as its volume fraction, flips act on W (``hflip_p``) and H
(``vflip_p``), rotation is about the depth axis (in the H-W plane) and blur is
separable over the three axes.

Determinism. All random numbers are drawn from ``generator`` (one
``torch.rand`` call for every scalar parameter, one ``torch.randn`` for the
noise of the samples that get noise), so the same generator state gives
bit-identical views on the same device. Draw with a generator on the batch's
device (a CPU generator for a GPU batch works but copies the noise over).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.core.errors import SSLBenchError

PADDING_MODES = ("zeros", "border", "reflection")

# Columns of the per-sample uniform random numbers drawn by augment_batch.
_SCALE, _RATIO, _CX, _CY, _CZ, _HFLIP, _VFLIP, _ROT_P, _ROT = range(9)
_INT_P, _INT_SCALE, _INT_SHIFT, _GAMMA_P, _GAMMA, _BLUR_P, _BLUR, _NOISE_P, _NOISE = range(9, 18)
_NUM_PARAMS = 18


class AugmentError(SSLBenchError, ValueError):
    """A view recipe has an invalid value."""


@dataclass(frozen=True)
class ViewRecipe:
    """Parameters of one augmented view, adapted to greyscale from each method's paper.

    Ranges are ``(low, high)``; each ``*_p`` is the per-sample probability that
    the operation is applied. Spatial ops (crop, flips, rotation) are fused into
    one affine resampling per batch.

    Attributes:
        size: Output spatial size (int for square/cubic views).
        scale: Area fraction range of the random resized crop.
        ratio: Aspect-ratio range of the crop.
        hflip_p / vflip_p: Flip probabilities (left-right / up-down).
        rotate_deg / rotate_p: Maximum absolute rotation (degrees) and probability.
        intensity_scale / intensity_shift / intensity_p: Linear intensity change.
        gamma / gamma_p: Gamma (contrast) change range and probability.
        blur_sigma / blur_p: Gaussian blur sigma range (pixels at output size) and probability.
        noise_std / noise_p: Additive Gaussian noise std range and probability.
        extra: Free-form method-specific numbers (ignored by :func:`augment_batch`).
        padding_mode: ``grid_sample`` padding for points outside the image
            (``zeros``, ``border`` or ``reflection``).
    """

    size: int = 64
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rotate_deg: float = 10.0
    rotate_p: float = 0.5
    intensity_scale: tuple[float, float] = (0.75, 1.25)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    intensity_p: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.5)
    gamma_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.05)
    noise_p: float = 0.3
    extra: dict[str, float] = field(default_factory=dict)
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 1:
            raise AugmentError(f"ViewRecipe: size must be a positive int, got {self.size!r}")
        for name in (
            "hflip_p",
            "vflip_p",
            "rotate_p",
            "intensity_p",
            "gamma_p",
            "blur_p",
            "noise_p",
        ):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise AugmentError(f"ViewRecipe: {name} must be in [0, 1], got {p}")
        for name, positive in (
            ("scale", True),
            ("ratio", True),
            ("intensity_scale", False),
            ("intensity_shift", False),
            ("gamma", True),
            ("blur_sigma", True),
            ("noise_std", False),
        ):
            lo, hi = getattr(self, name)
            if not lo <= hi or (positive and lo <= 0) or (name == "noise_std" and lo < 0):
                raise AugmentError(
                    f"ViewRecipe: {name} must be a range (low <= high) of "
                    f"{'positive ' if positive else ''}numbers, got {(lo, hi)}"
                )
        if self.scale[1] > 1.0:
            raise AugmentError(f"ViewRecipe: scale must lie in (0, 1], got {self.scale}")
        if self.rotate_deg < 0:
            raise AugmentError(f"ViewRecipe: rotate_deg must be >= 0, got {self.rotate_deg}")
        if self.padding_mode not in PADDING_MODES:
            raise AugmentError(
                f"ViewRecipe: padding_mode must be one of {PADDING_MODES}, "
                f"got {self.padding_mode!r}"
            )


def _uniform(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    return u * (hi - lo) + lo


def _log_uniform(u: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(u * (hi - lo) + lo)


def _affine_theta(u: Tensor, recipe: ViewRecipe, spatial: tuple[int, ...]) -> Tensor:
    """Per-sample (B, nd, nd+1) matrices mapping output to input normalised coords.

    Coordinates are ordered (x=W, y=H[, z=D]) as ``F.affine_grid`` expects. With
    crop fractions ``f`` (of each axis), flip signs ``s``, a rotation ``R`` in
    pixel space and input sizes ``S``: ``A[i, j] = R[i, j] * S[j] / S[i] * f[j] * s[j]``.
    """
    nd = len(spatial)
    sizes = spatial[::-1]  # x, y[, z]
    area = _uniform(u[:, _SCALE], recipe.scale)
    ratio = _log_uniform(u[:, _RATIO], recipe.ratio)
    side = area.sqrt() if nd == 2 else area.pow(1.0 / 3.0)
    sq = ratio.sqrt()
    fracs = [side * sq, side / sq] + ([side] if nd == 3 else [])
    frac = torch.stack(fracs, dim=1).clamp_(max=1.0)  # (B, nd); clamped crops stay inside
    centre = (2.0 * u[:, _CX : _CX + nd] - 1.0) * (1.0 - frac)
    sign = torch.ones_like(frac)
    sign[:, 0] = 1.0 - 2.0 * (u[:, _HFLIP] < recipe.hflip_p).to(u.dtype)
    sign[:, 1] = 1.0 - 2.0 * (u[:, _VFLIP] < recipe.vflip_p).to(u.dtype)
    diag = frac * sign  # (B, nd)
    theta = u.new_zeros(u.shape[0], nd, nd + 1)
    theta[:, :, nd] = centre
    if recipe.rotate_p > 0 and recipe.rotate_deg > 0:
        on = (u[:, _ROT_P] < recipe.rotate_p).to(u.dtype)
        angle = (2.0 * u[:, _ROT] - 1.0) * math.radians(recipe.rotate_deg) * on
        cos, sin = angle.cos(), angle.sin()
        w, h = float(sizes[0]), float(sizes[1])
        theta[:, 0, 0] = cos * diag[:, 0]
        theta[:, 0, 1] = -sin * (h / w) * diag[:, 1]
        theta[:, 1, 0] = sin * (w / h) * diag[:, 0]
        theta[:, 1, 1] = cos * diag[:, 1]
        if nd == 3:
            theta[:, 2, 2] = diag[:, 2]
    else:
        theta[:, :, :nd] = torch.diag_embed(diag)
    return theta


def affine_grid(theta: Tensor, size: list[int]) -> Tensor:
    """``F.affine_grid(theta, size, align_corners=False)`` by broadcasting.

    Same result, but an order of magnitude faster on CPU for large batches
    (``F.affine_grid`` runs a batched matmul with an inner dimension of 3 or 4).
    """
    b, nd = theta.shape[0], theta.shape[1]
    spatial = size[2:]
    th = theta.transpose(1, 2)  # (B, nd+1, nd): row j = coefficients of coordinate j
    bview = (b,) + (1,) * nd + (nd,)
    grid = th[:, nd].reshape(bview)
    for j in range(nd):
        axis = nd - 1 - j  # x varies along W (last spatial axis), y along H, z along D
        n = spatial[axis]
        coord = (
            torch.arange(n, dtype=theta.dtype, device=theta.device)
            .mul_(2.0 / n)
            .add_(1.0 / n - 1.0)
        )
        shape = [1] * (nd + 2)
        shape[1 + axis] = n
        grid = grid + coord.view(shape) * th[:, j].reshape(bview)
    return grid


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """(n, 2*radius+1) normalised 1D Gaussian kernels, one per sigma."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur each sample of ``x`` (n, C, *spatial) with its own isotropic Gaussian.

    Separable: one grouped convolution per spatial axis over the whole batch
    reshaped to ``(1, n*C, *spatial)``, with replicate padding (no dark rim).

    Args:
        x: Images or volumes, 2 or 3 spatial dims.
        sigma: (n,) standard deviations in pixels.
        radius: Kernel half-width (kernel size ``2*radius+1``), e.g. ``ceil(3*max sigma)``.
    """
    n, c, *spatial = x.shape
    nd = len(spatial)
    k = _gaussian_kernels(sigma.to(x.dtype), radius).repeat_interleave(c, dim=0)  # (n*c, K)
    conv = F.conv2d if nd == 2 else F.conv3d
    y = x.reshape(1, n * c, *spatial)
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = 2 * radius + 1
        pad = [0] * (2 * nd)
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = radius  # F.pad: last dim first
        y = conv(F.pad(y, pad, mode="replicate"), k.view(n * c, 1, *shape), groups=n * c)
    return y.view(n, c, *spatial)


def _selected(u: Tensor, p: float) -> Tensor | None:
    """Indices of samples whose uniform draw is below ``p`` (None if none)."""
    if p <= 0:
        return None
    idx = torch.nonzero(u < p).squeeze(1)
    return idx if idx.numel() else None


def augment_batch(
    images: Tensor,
    recipe: ViewRecipe,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> Tensor:
    """One augmented view of every image in a batch.

    Args:
        images: (B, C, H, W) or (B, C, D, H, W), float in [0, 1] (uint8 is
            converted by dividing by 255).
        recipe: The view's parameters.
        generator: Source of randomness; the same state gives identical views.
            Its device is used to draw the parameters (default: global RNG of
            the images' device).
        shard: ``(rank, world_size)`` when ``images`` are rows
            ``[rank*B, (rank+1)*B)`` of a global batch of ``world_size*B``: the
            random parameters are drawn for the global batch and this shard's
            rows applied, so the shards of all ranks together equal the views of
            the global batch built in one process.

    Returns:
        (B, C, size, size) or (B, C, size, size, size), same float dtype, in [0, 1].
    """
    if images.ndim not in (4, 5):
        raise AugmentError(
            f"augment_batch: expected (B, C, H, W) or (B, C, D, H, W), "
            f"got shape {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    elif not images.is_floating_point():
        raise AugmentError(f"augment_batch: images must be float or uint8, got {images.dtype}")
    b, c, *spatial = images.shape
    nd = len(spatial)
    device, dtype = images.device, images.dtype
    gdev = generator.device if generator is not None else device
    rank, world = shard or (0, 1)
    if not 0 <= rank < world:
        raise AugmentError(f"augment_batch: shard {shard} is not (rank, world_size)")
    # all scalar parameters in float32 (also for half-precision images), one draw
    u_all = torch.rand(b * world, _NUM_PARAMS, generator=generator, device=gdev).to(device)
    u = u_all[rank * b : (rank + 1) * b]
    out_shape = [b, c] + [int(recipe.size)] * nd

    # Spatial: crop + flips + rotation in one resampling straight to the output size.
    theta = _affine_theta(u, recipe, tuple(spatial)).to(dtype)
    grid = affine_grid(theta, out_shape)
    x = F.grid_sample(
        images, grid, mode="bilinear", padding_mode=recipe.padding_mode, align_corners=False
    )
    bshape = (b,) + (1,) * (nd + 1)  # per-sample scalars broadcast over (C, *spatial)
    sshape = (-1, *bshape[1:])  # the same for a subset of samples

    # Intensity: linear scale/shift (identity for samples not selected).
    if recipe.intensity_p > 0:
        on = u[:, _INT_P] < recipe.intensity_p
        scale = torch.where(on, _uniform(u[:, _INT_SCALE], recipe.intensity_scale), 1.0)
        shift = torch.where(on, _uniform(u[:, _INT_SHIFT], recipe.intensity_shift), 0.0)
        x.mul_(scale.view(bshape)).add_(shift.view(bshape))
        x.clamp_(0.0, 1.0)

    # Gamma (log-uniform, so that g and 1/g are equally likely) on [0, 1] values:
    # x**g as exp(g*log(x)) (0 stays 0), much faster than pow with a per-sample exponent.
    idx = _selected(u[:, _GAMMA_P], recipe.gamma_p)
    if idx is not None:
        g = _log_uniform(u[idx, _GAMMA], recipe.gamma).view(sshape)
        x.index_copy_(0, idx, x.index_select(0, idx).log_().mul_(g).exp_())

    # Gaussian blur with a per-sample sigma (separable, grouped conv per axis).
    idx = _selected(u[:, _BLUR_P], recipe.blur_p)
    if idx is not None:
        radius = min(math.ceil(3.0 * recipe.blur_sigma[1]), int(recipe.size) - 1)
        if radius > 0:
            sigma = _uniform(u[idx, _BLUR], recipe.blur_sigma)
            x.index_copy_(0, idx, gaussian_blur(x.index_select(0, idx), sigma, radius))

    # Additive Gaussian noise (drawn for the selected samples of the global batch).
    idx = _selected(u_all[:, _NOISE_P], recipe.noise_p)
    if idx is not None:
        noise = torch.randn(
            [idx.numel(), *out_shape[1:]], generator=generator, device=gdev, dtype=dtype
        ).to(device)
        if world > 1:  # keep this shard's samples
            mine = (idx >= rank * b) & (idx < (rank + 1) * b)
            idx, noise = idx[mine] - rank * b, noise[mine]
        std = _uniform(u[idx, _NOISE], recipe.noise_std).view(sshape)
        # (index_add_ is a slow scatter on CPU; gather, add and copy back instead)
        x.index_copy_(0, idx, x.index_select(0, idx).add_(noise.mul_(std)))
    return x.clamp_(0.0, 1.0)


def make_views(
    images: Tensor,
    recipes: list[ViewRecipe],
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> list[Tensor]:
    """One view per recipe, in order (``views[i]`` follows ``recipes[i]``).

    ``shard`` is passed to :func:`augment_batch` (a rank's rows of a global batch).
    """
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return [augment_batch(images, recipe, generator, shard) for recipe in recipes]


def normalize(x: Tensor, mean: float = 0.5, std: float = 0.5) -> Tensor:
    """``(x - mean) / std`` (a new tensor); maps [0, 1] to [-1, 1] by default."""
    return (x - mean) / std
