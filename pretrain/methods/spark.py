"""SparK: sparse and hierarchical masked modelling for CNN encoders.

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical
Masked Modeling", ICLR 2023 (https://arxiv.org/abs/2301.03580): "we treat
unmasked pixels as sparse voxels of 3D point clouds and use sparse convolution to
encode", then "employ a UNet-style architecture to decode multi-scale sparse
feature maps, where all empty positions are filled with mask embedding".

Algorithm (the official code, github.com/keyu-tian/SparK ``pretrain/``): patches
on the grid of the encoder's coarsest stride (32 px for ResNets and ConvNeXt)
are masked at random (ratio 0.6) and their pixels set to 0. The encoder then runs
*sparsely*, emulated as in the official code: inside :func:`sparse_encoder` the
output of every convolution, pooling and channels-first layer norm is multiplied
by the visible mask resized (nearest) to its resolution, and every batch norm
normalises the visible positions only (gathered into ``(N_visible, C)``,
normalised with the layer's own weight, bias and running statistics, which it
updates, and scattered back into zeros). Masked positions are thus 0 in every
map: they never reach a visible feature and never enter a statistic. The context
swaps the ``forward`` of the encoder's own modules and restores them on exit, so
the encoder stays the ordinary dense CNN (same modules, same state-dict keys)
for checkpoints, evaluation and feature extraction. The four coarsest feature
maps (a ResNet's stage outputs, strides 4-32) are densified: sparse batch norm
(layer norm for layer-normalised encoders, as the official ConvNeXt setting),
the mask token at masked positions, a 1x1 (coarsest) or 3x3 projection; a light
U-Net decoder (2x transposed conv then two 3x3 convs per scale, widths halved)
sums them in and predicts the pixels. Loss: MSE on per-patch normalised pixels
of the masked patches only.

Encoders: CNNs made of convolutions, max/avg pooling, batch norm (timm's
BatchNormAct too), timm's LayerNorm2d and element-wise activations with
f(0) = 0: resnet18, resnet50, convnext_atto, and the 3D resnet10_3d and
resnet18_3d (Conv3d, BatchNorm3d, MaxPool3d). Refused, naming the modules:
ViTs (use ``mae``) and swin_3d (attention mixes masked and visible tokens),
efficientnet_b0 (squeeze-excitation pools over masked positions too), and
instance or group norm (per-sample statistics over all positions; no shipped
encoder has them, so visible-only instance statistics are not implemented).

Input size: the mask grid needs at least 4 patches per axis, i.e. views of at
least ``4 * mask_stride`` px: **128 px** for stride-32 encoders with the default
mask grid (the official code trains at 224 px, a 7x7 grid); ``view_recipes`` and
``training_step`` refuse smaller views. An explicit, finer ``mask_stride`` masks
on its own grid (e.g. 32^3 volumes with ``mask_stride: 8``); a feature map
coarser than that grid counts a position as visible if any of its patches is.

Deviations from the official code, and why:
* AdamW with constant weight decay 0.04, not LAMB with weight decay 0.04 -> 0.2:
  the shared loop has neither. Betas (0.9, 0.95), gradient clipping at 5 and
  2.5 % warm-up (40 of 1600 epochs) are the official ResNet values.
* The forwards of the dense modules are swapped during the step instead of
  converting the encoder to ``Sparse*`` subclasses, so that the shared encoder
  and its checkpoint keys do not change; the arithmetic is the official one.
* Decoder width 128 at the coarsest scale (official 768), never below 16: CPU scale.
* The densify projection is always a convolution (official: an identity where
  the encoder's and the decoder's widths are equal).
* Targets are the ``in_chans`` (grey) channels as the data pipeline normalises
  them (official: RGB after ImageNet normalisation).
* Extensions: 3D CNNs (the same emulation with 3D layers) and a ``mask_stride``
  finer than the coarsest stride (small views); the official code is 2D only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d
from timm.layers.activations import GELU
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    SMALL_OPTIMISATION,
    MethodConfigError,
    SSLMethod,
    StepOutput,
    crop_flip_recipe,
)

#: Modules whose output the sparse forward multiplies by the visible mask.
_MASK = (nn.Conv2d, nn.Conv3d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d, LayerNorm2d)
#: Element-wise modules with f(0) = 0: masked positions stay 0 through them.
_ZERO = (nn.Identity, nn.ReLU, nn.ReLU6, nn.GELU, GELU, nn.SiLU, nn.LeakyReLU, nn.Dropout, DropPath)
#: Global pooling of classification heads: must not run inside the sparse forward.
_HEAD = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.Flatten)


def _resize_mask(visible: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bool mask (B, 1, *grid) at spatial ``size``: nearest (repeat_interleave) or any-visible pooling."""
    grid = visible.shape[2:]
    if any(s % g and g % s for g, s in zip(grid, size, strict=True)):
        raise ValueError(f"spark: feature size {tuple(size)} does not divide the mask grid {grid}")
    down = [max(1, g // s) for g, s in zip(grid, size, strict=True)]
    if max(down) > 1:
        pool = F.max_pool3d if visible.dim() == 5 else F.max_pool2d
        visible = pool(visible.float(), down) > 0
    for dim, (g, s) in enumerate(zip(visible.shape[2:], size, strict=True), start=2):
        visible = visible.repeat_interleave(s // g, dim) if s > g else visible
    return visible


def _sparse_batch_norm(norm: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``norm`` (a batch norm) on the visible positions of ``x`` only; masked positions are 0."""
    keep = visible[:, 0]  # (B, *S)
    rows = x.movedim(1, -1)[keep]  # (N_visible, C)
    out = type(norm).forward(norm, rows.reshape(*rows.shape, *(1,) * (x.dim() - 2)))
    dense = out.new_zeros(*keep.shape, out.shape[1])
    dense[keep] = out.reshape(rows.shape[0], -1)
    return dense.movedim(-1, 1)


def _sparse_plan(encoder: nn.Module) -> tuple[list[tuple[nn.Module, str]], list[str]]:
    """(module, "mask" | "bn" | "head") for the sparse forward, and the modules it cannot handle."""
    plan: list[tuple[nn.Module, str]] = []
    bad: list[str] = []
    handled: list[str] = []
    for name, m in encoder.named_modules():
        if any(name.startswith(h + ".") for h in handled):
            continue  # inside a handled module (BatchNormAct's act and drop)
        if isinstance(m, (_BatchNorm, *_MASK)):
            plan.append((m, "bn" if isinstance(m, _BatchNorm) else "mask"))
            handled.append(name)
        elif isinstance(m, _HEAD):
            plan.append((m, "head"))
        elif next(m.children(), None) is None and not isinstance(m, _ZERO):
            bad.append(f"{name} ({type(m).__name__})")
    return plan, bad


def _sparse_forward(
    module: nn.Module, kind: str, visible: torch.Tensor, masks: dict[tuple[int, ...], torch.Tensor]
) -> Any:
    """The forward of ``module`` inside the sparse encoder (``masks``: cache per resolution)."""
    dense = module.forward

    def at(size: torch.Size) -> torch.Tensor:
        if tuple(size) not in masks:
            masks[tuple(size)] = _resize_mask(visible, size)
        return masks[tuple(size)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if kind == "head":
            raise RuntimeError(f"spark: {type(module).__name__} ran inside the sparse encoder")
        if kind == "bn":
            return _sparse_batch_norm(module, x, at(x.shape[2:]))
        out = dense(x)
        return out * at(out.shape[2:])

    return forward


@contextmanager
def sparse_encoder(encoder: nn.Module, visible: torch.Tensor) -> Iterator[None]:
    """Inside the block ``encoder`` runs as SparK's sparse CNN for ``visible`` (B, 1, *grid) bool."""
    plan, bad = _sparse_plan(encoder)
    if bad:
        raise MethodConfigError(f"method 'spark' cannot make these modules sparse: {bad}")
    masks: dict[tuple[int, ...], torch.Tensor] = {}
    swapped = [(m, m.__dict__.get("forward")) for m, _ in plan]
    try:
        for module, kind in plan:
            module.__dict__["forward"] = _sparse_forward(module, kind, visible, masks)
        yield
    finally:
        for module, previous in swapped:
            module.__dict__.pop("forward", None)
            if previous is not None:
                module.__dict__["forward"] = previous


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
    """SparK (Tian et al. 2023) with emulated sparse convolution, for CNN encoders.

    Config (besides :data:`~pretrain.methods.base.COMMON_DEFAULTS`):
        mask_ratio: Fraction of mask-grid patches masked (paper: 0.6).
        mask_stride: Mask grid in pixels; 0 (default) = the encoder's coarsest
            stride (the paper), else a finer power of two. Views need at least
            4 patches per axis (128 px at stride 32).
        decoder_width: Decoder channels at the coarsest stride, halved at each
            2x upsampling (paper: 768 for ResNet-50; 128 at CPU scale).
        norm_pix_loss: Normalise each target patch to zero mean, unit variance.

    Optimiser defaults: AdamW (the paper uses LAMB), base lr 2e-4, weight decay
    0.04, betas (0.9, 0.95), gradient clipping 5, 2.5 % warm-up. The small recipe
    keeps the betas, weight decay and clipping and takes AdamW at base lr 1e-2 with
    square-root scaling (see ``small_recipe``).

    Deviation for frozen-feature use: the encoder is saved with batch-norm statistics
    recomputed on whole, un-augmented pool images (``dense_statistics_at_export``);
    training statistics cover visible positions of masked images only, and the
    official code re-estimates them by fine-tuning.
    """

    name: ClassVar[str] = "spark"
    family: ClassVar[str] = "masked"
    #: 13 images/s at 128 px (README method table), 52 per 64 px area against SimCLR's 42
    cost: ClassVar[float] = 0.81
    paper: ClassVar[str] = (
        "Tian et al., Designing BERT for Convolutional Networks: Sparse and Hierarchical "
        "Masked Modeling (SparK), ICLR 2023, arXiv:2301.03580"
    )
    requires_multiscale: ClassVar[bool] = True
    # Training statistics are over visible positions of masked images; a frozen encoder
    # sees whole images. On BUSI validation (128 px, 300 steps x 32) the linear probe's
    # AUC@100 % is 0.714 with the sparse statistics and 0.746 with dense ones
    # (random init, calibrated: 0.690). The official code fine-tunes, which re-estimates
    # them; a frozen-feature benchmark has to do it at export.
    dense_statistics_at_export: ClassVar[bool] = True
    default_config: ClassVar[dict[str, Any]] = {
        "lr": 2e-4,
        "weight_decay": 0.04,
        "adam_beta2": 0.95,
        "clip_grad": 5.0,
        "warmup_fraction": 0.025,
        "mask_ratio": 0.6,
        "mask_stride": 0,
        "decoder_width": 128,
        "norm_pix_loss": True,
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        # base lr 1e-2 (3.5e-3 at batch 32): on BUSI validation (128 px, 300 steps x 32,
        # dense statistics at export) linear-probe AUC@100 % 0.779 against 0.746 at the
        # shared 3e-3 (calibrated random init 0.690)
        "lr": 1e-2,
        "weight_decay": 0.04,
        "adam_beta2": 0.95,
        "clip_grad": 5.0,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        info = encoder.feature_info
        self.max_stride = max(f.stride for f in info)
        self.patch = int(self.config["mask_stride"] or self.max_stride)
        if self.patch > self.max_stride:
            raise self.config_error(
                f"mask_stride {self.patch} exceeds the coarsest stride {self.max_stride} of "
                f"{encoder.name!r}"
            )
        coarsest = sorted(range(len(info)), key=lambda i: -info[i].stride)[:4]
        self.levels = {info[i].stride: i for i in coarsest}
        nd = encoder.spatial_dims
        conv, _, batch_norm = _layers(nd)
        layer_norm = nd == 2 and not any(isinstance(m, _BatchNorm) for m in encoder.modules())
        n_up = self.max_stride.bit_length() - 1  # 2x upsamplings down to stride 1
        widths = [max(16, self.config["decoder_width"] >> k) for k in range(n_up + 1)]
        self.mask_tokens = nn.ParameterDict()
        self.densify_norms = nn.ModuleDict()
        self.densify_projs = nn.ModuleDict()
        for k in range(n_up + 1):
            stride = self.max_stride >> k
            if stride in self.levels:
                key, c = str(stride), info[self.levels[stride]].channels
                self.mask_tokens[key] = nn.Parameter(torch.zeros(1, c, *(1,) * nd))
                nn.init.trunc_normal_(self.mask_tokens[key], std=0.02, a=-0.02, b=0.02)
                self.densify_norms[key] = LayerNorm2d(c) if layer_norm else batch_norm(c)
                self.densify_projs[key] = conv(c, widths[k], 3 if k else 1, padding=1 if k else 0)
        self.up_blocks = nn.ModuleList(_UpBlock(widths[k], widths[k + 1], nd) for k in range(n_up))
        self.head = conv(widths[-1], encoder.in_chans, 1)
        for m in [*self.up_blocks.modules(), self.head]:  # the official decoder's initialisation
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
            elif isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None:
                nn.init.zeros_(m.bias)

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
            raise cls.config_error(
                f"needs a multi-scale encoder (feature_info); {encoder.name!r} has none"
            )
        strides = [f.stride for f in encoder.feature_info]
        if any(s & (s - 1) for s in strides) or len(set(strides)) != len(strides):
            raise cls.config_error(f"needs distinct power-of-two strides, got {strides}")
        bad = _sparse_plan(encoder)[1]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise cls.config_error(
                "emulates sparse convolution on CNNs (convolutions, pooling, batch norm, "
                f"LayerNorm2d, activations with f(0) = 0); {encoder.name!r} has modules it cannot "
                f"make sparse: {', '.join(bad[:3])}{more}{' (ViTs: use mae)' * encoder.is_vit}"
            )

    def check_size(self, spatial: Sequence[int]) -> None:
        """Raise :class:`MethodConfigError` unless views of ``spatial`` size have >= 4 patches per axis."""
        try:
            self.encoder.check_input_size(tuple(spatial))
        except ValueError as err:
            raise self.config_error(str(err)) from err
        p, size = self.patch, "x".join(map(str, spatial))
        if min(spatial) < 4 * p or any(s % p for s in spatial):
            grid = "x".join(str(s // p) for s in spatial)
            which = "mask_stride" if self.config["mask_stride"] else "the coarsest stride"
            raise self.config_error(
                f"view size {size} px gives a {grid} mask grid at stride {p} ({which}); SparK needs "
                f"at least 4 patches per axis: views of at least {4 * p} px, multiples of {p}"
            )

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """One view: random resized crop (scale 0.67-1, SparK's) and horizontal flip only."""
        self.check_size((size,) * self.encoder.spatial_dims)
        return [crop_flip_recipe(size, scale=(0.67, 1.0))]

    def random_mask(self, batch: int, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Boolean map (B, 1, *grid) on the mask grid, True where the patch is *visible*."""
        n = math.prod(grid)
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

    def densify(self, key: str, f: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Normalise the visible positions, fill the masked ones with the mask token, project."""
        norm = self.densify_norms[key]
        f = norm(f) if isinstance(norm, LayerNorm2d) else _sparse_batch_norm(norm, f, visible)
        return self.densify_projs[key](torch.where(visible, f, self.mask_tokens[key]))

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        images = views[0]
        batch, _, *spatial = images.shape
        self.check_size(spatial)
        p = self.patch
        visible = self.random_mask(batch, tuple(s // p for s in spatial), images.device)
        with sparse_encoder(self.encoder, visible):
            feats = self.encoder.forward_multiscale(images * _resize_mask(visible, spatial))

        x: torch.Tensor | None = None
        embeddings: torch.Tensor | None = None
        for k in range(len(self.up_blocks) + 1):  # coarsest level first
            stride = self.max_stride >> k
            if stride in self.levels:
                f = feats[self.levels[stride]]
                m = _resize_mask(visible, f.shape[2:])
                # Collapse indicator: the coarsest map of the sparse encoder (0 where
                # masked) averaged over its visible positions.
                if embeddings is None:
                    dims = tuple(range(2, f.dim()))
                    embeddings = ((f * m).sum(dims) / m.sum(dims)).detach()
                f = self.densify(str(stride), f, m)
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
        masked = (~visible).flatten(1).to(pred.dtype)  # (B, n patches), 1 on masked patches
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        loss = (per_patch * masked).sum() / masked.sum()
        logs = {"mask_ratio": float(masked.mean()), "mask_stride": float(p)}
        return StepOutput(loss=loss, embeddings=embeddings, logs=logs)
