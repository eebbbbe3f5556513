"""SparK-style masked image modelling for CNN encoders (dense approximation).

Tian et al., "Designing BERT for Convolutional Networks: Sparse and
Hierarchical Masked Modeling", ICLR 2023 (https://arxiv.org/abs/2301.03580).

Random patches on the grid of the encoder's coarsest stride (32 px for the timm
CNNs) are masked; the encoder produces its feature pyramid
(``forward_multiscale``); at every scale the mask is re-applied and masked
positions are filled with a learned per-scale mask token ("densifying"); a light
U-Net decoder (transposed-conv upsampling + conv blocks, additive skips) brings
the pyramid back to full resolution, and the loss is the MSE on per-patch
normalised pixels of the masked patches only.

**Dense approximation.** SparK encodes the visible patches with *sparse*
convolutions (and sparse batch norm), so masked positions never exist inside the
encoder. Without a sparse-convolution library we run the ordinary dense CNN on
the image with masked patches set to zero, re-apply the mask to every feature
map, and normalise each map with statistics of its visible positions only. The
differences: (1) near mask borders the dense convolutions mix the zeros of
masked patches into visible features (SparK's submanifold convolutions do not),
(2) the encoder's own batch norms see the zeroed regions, so their statistics
shift towards masked inputs (the distribution shift SparK was designed to
avoid), and (3) no compute is saved on masked regions.

Small views. With the default ``mask_stride = 0`` the mask grid is the coarsest
stride, halved until the view has at least 2x2 patches (a 32 px view and a
stride-32 CNN are masked on a 16 px grid); feature maps coarser than the mask
grid count a position as visible if any of its patches is visible (the input is
zeroed under the mask, so nothing leaks).

Volumes: with a 3D encoder (``resnet10_3d``, ``swin_3d``, ...) the same method
masks cubes on the coarsest-stride grid and decodes with 3D convolutions: the
masked-volume method of the 3D benchmark.

Encoders: any encoder exposing ``feature_info`` with power-of-two strides
(resnet18, convnext_atto, efficientnet_b0, ...). It also runs on the ViTs'
simple feature pyramid, but zeroed patches are then still fed as tokens: MAE is
the natural masked method for ViTs.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    MethodConfigError,
    SSLMethod,
    StepOutput,
    crop_flip_recipe,
)


def _masked_norm(
    x: torch.Tensor,
    visible: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Batch norm of ``x`` with statistics over visible positions only (SparK's sparse BN)."""
    m = visible.to(x.dtype)
    dims = (0, *range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    count = m.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * m).sum(dim=dims, keepdim=True) / count
    var = (((x - mean) * m) ** 2).sum(dim=dims, keepdim=True) / count
    return (x - mean) / (var + eps).sqrt() * weight.view(shape) + bias.view(shape)


def _resize_mask(visible: torch.Tensor, factor: float) -> torch.Tensor:
    """Nearest upsampling (factor >= 1) or any-visible pooling (factor < 1) of a bool mask."""
    if factor >= 1:
        f = int(factor)
        for dim in range(2, visible.dim()):
            visible = visible.repeat_interleave(f, dim)
        return visible
    pool = F.max_pool3d if visible.dim() == 5 else F.max_pool2d
    return pool(visible.float(), round(1 / factor)) > 0


def _layers(nd: int) -> tuple[Any, Any, Any]:
    """(Conv, ConvTranspose, BatchNorm) classes for ``nd`` spatial dimensions."""
    if nd == 3:
        return nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d
    return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d


class _UpBlock(nn.Sequential):
    """SparK's decoder block: 2x transposed-conv upsampling, then two 3x3 convs."""

    def __init__(self, cin: int, cout: int, nd: int = 2) -> None:
        conv, up, norm = _layers(nd)
        super().__init__(
            up(cin, cin, kernel_size=4, stride=2, padding=1),
            conv(cin, cin, 3, padding=1, bias=False),
            norm(cin),
            nn.ReLU6(inplace=True),
            conv(cin, cout, 3, padding=1, bias=False),
            norm(cout),
        )


@METHODS.register("spark")
class SparK(SSLMethod):
    """SparK (Tian et al. 2023), dense approximation, for multi-scale encoders.

    Config (besides :data:`~pretrain.methods.base.COMMON_DEFAULTS`):
        mask_ratio: Fraction of mask-grid patches masked (paper: 0.6).
        mask_stride: Mask grid in pixels, a power of two up to the coarsest
            stride; 0 (default) = the coarsest stride (as the paper), halved
            until the view has at least 2x2 patches.
        decoder_width: Decoder channels at the coarsest stride, halved at each
            2x upsampling (paper: 768 for ResNet-50; 128 at CPU scale).
        norm_pix_loss: Normalise each target patch to zero mean, unit variance.

    Optimiser defaults: AdamW (the paper uses LAMB), base lr 2e-4, weight decay 0.04.
    """

    name: ClassVar[str] = "spark"
    family: ClassVar[str] = "masked"
    paper: ClassVar[str] = (
        "Tian et al., Designing BERT for Convolutional Networks: Sparse and Hierarchical "
        "Masked Modeling (SparK), ICLR 2023, arXiv:2301.03580"
    )
    requires_multiscale: ClassVar[bool] = True
    default_config: ClassVar[dict[str, Any]] = {
        "lr": 2e-4,
        "weight_decay": 0.04,
        "mask_ratio": 0.6,
        "mask_stride": 0,
        "decoder_width": 128,
        "norm_pix_loss": True,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        self.max_stride = max(f.stride for f in encoder.feature_info)
        if self.config["mask_stride"] > self.max_stride:
            raise MethodConfigError(
                f"method 'spark': mask_stride {self.config['mask_stride']} exceeds the "
                f"coarsest stride {self.max_stride} of {encoder.name!r}"
            )
        self.levels = {f.stride: i for i, f in enumerate(encoder.feature_info)}
        nd = self.nd = encoder.spatial_dims
        conv = _layers(nd)[0]
        n_up = self.max_stride.bit_length() - 1  # 2x upsamplings down to stride 1
        widths = [max(16, self.config["decoder_width"] >> k) for k in range(n_up + 1)]
        self.mask_tokens = nn.ParameterDict()
        self.norm_weights = nn.ParameterDict()
        self.norm_biases = nn.ParameterDict()
        self.to_decoder = nn.ModuleDict()  # densify projections, one per encoder level
        for k in range(n_up + 1):
            stride = self.max_stride >> k
            if stride in self.levels:
                key, c = str(stride), encoder.feature_info[self.levels[stride]].channels
                self.mask_tokens[key] = nn.Parameter(torch.zeros(1, c, *(1,) * nd))
                nn.init.trunc_normal_(self.mask_tokens[key], std=0.02, a=-0.02, b=0.02)
                self.norm_weights[key] = nn.Parameter(torch.ones(c))
                self.norm_biases[key] = nn.Parameter(torch.zeros(c))
                self.to_decoder[key] = conv(c, widths[k], 3 if k else 1, padding=1 if k else 0)
        self.up_blocks = nn.ModuleList(_UpBlock(widths[k], widths[k + 1], nd) for k in range(n_up))
        self.head = conv(widths[-1], encoder.in_chans, 1)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_number(config, "mask_ratio", gt=0, lt=1)
        s = config["mask_stride"]
        if not (isinstance(s, int) and s >= 0 and not s & (s - 1)):
            raise cls.config_error("mask_stride must be 0 or a power of two")
        cls.require_int(config, "decoder_width", ge=16)

    @classmethod
    def check_encoder(cls, encoder: Encoder) -> None:
        super().check_encoder(encoder)
        if not (encoder.supports_multiscale and encoder.feature_info):
            raise MethodConfigError(
                f"method 'spark' needs a multi-scale encoder (feature_info); {encoder.name!r} "
                "is not one"
            )
        strides = [f.stride for f in encoder.feature_info]
        if any(s & (s - 1) for s in strides) or len(set(strides)) != len(strides):
            raise MethodConfigError(
                f"method 'spark' needs distinct power-of-two strides, got {strides}"
            )

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """One view: random resized crop (scale 0.67-1, SparK's) and horizontal flip only."""
        try:
            self.encoder.check_input_size((size,) * self.encoder.spatial_dims)
        except ValueError as err:
            raise MethodConfigError(f"method 'spark': {err}") from err
        return [crop_flip_recipe(size, scale=(0.67, 1.0))]

    def mask_stride(self, *spatial: int) -> int:
        """Pixel size of the mask patches for a view of size ``spatial`` (H, W or D, H, W)."""
        stride = self.config["mask_stride"] or self.max_stride
        while not self.config["mask_stride"] and stride > 1 and min(spatial) < 2 * stride:
            stride //= 2
        return int(stride)

    def random_mask(self, batch: int, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Boolean map (B, 1, *grid) on the mask grid, True where the patch is *visible*."""
        n = math.prod(grid)
        if n < 2:
            raise ValueError(f"spark: the mask grid {grid} has fewer than 2 patches")
        n_keep = min(n - 1, max(1, round(n * (1 - self.config["mask_ratio"]))))
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        visible = torch.zeros(batch, n, dtype=torch.bool, device=device)
        visible.scatter_(1, order[:, :n_keep], True)
        return visible.view(batch, 1, *grid)

    @staticmethod
    def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
        """(B, C, *S) -> (B, prod(S/p), C * p^nd), patches in row-major order."""
        b, c, *spatial = x.shape
        nd = len(spatial)
        grid = [s // p for s in spatial]
        x = x.reshape(b, c, *[v for g in grid for v in (g, p)])
        # (B, C, g0, p, g1, p, ...) -> (B, g0, g1, ..., C, p, p, ...)
        order = [0, *range(2, 2 + 2 * nd, 2), 1, *range(3, 3 + 2 * nd, 2)]
        return x.permute(*order).reshape(b, math.prod(grid), c * p**nd)

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        images = views[0]
        batch, _, *spatial = images.shape
        p = self.mask_stride(*spatial)
        if any(s % p for s in spatial):
            raise ValueError(f"spark: view size {tuple(spatial)} is not a multiple of {p}")
        visible = self.random_mask(batch, tuple(s // p for s in spatial), images.device)
        feats = self.encoder.forward_multiscale(images * _resize_mask(visible, p))

        x: torch.Tensor | None = None
        embeddings: torch.Tensor | None = None
        for k in range(len(self.up_blocks) + 1):  # coarsest level first
            stride = self.max_stride >> k
            key = str(stride)
            if key in self.to_decoder:
                f = feats[self.levels[stride]]
                m = _resize_mask(visible, p / stride)
                # Collapse indicator: the coarsest map average-pooled (as the CNN and 3D
                # encoders' forward_features pool it) over the visible positions only,
                # the pooled features of SparK's sparse encoder.
                if embeddings is None:
                    dims = tuple(range(2, f.dim()))
                    embeddings = ((f * m).sum(dims) / m.sum(dims)).detach()
                f = _masked_norm(f, m, self.norm_weights[key], self.norm_biases[key])
                f = self.to_decoder[key](torch.where(m, f, self.mask_tokens[key]))
                x = f if x is None else x + f
            if k < len(self.up_blocks):
                assert x is not None
                x = self.up_blocks[k](x)
        assert x is not None and embeddings is not None

        pred = self.patchify(self.head(x), p)
        target = self.patchify(images, p)
        if self.config["norm_pix_loss"]:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        masked = (~visible).flatten(1).to(pred.dtype)  # (B, h*w), 1 on masked patches
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        loss = (per_patch * masked).sum() / masked.sum()
        logs = {"mask_ratio": float(masked.mean()), "mask_stride": float(p)}
        return StepOutput(loss=loss, embeddings=embeddings, logs=logs)
