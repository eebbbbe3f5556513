"""A U-Net-style decoder over the multi-scale features of any shared encoder.

The decoder follows the expanding path of U-Net (Ronneberger et al. 2015,
*U-Net: Convolutional Networks for Biomedical Image Segmentation*): starting at
the coarsest feature map it repeatedly upsamples, concatenates the skip
connection of the next finer level and applies a convolution block. Blocks are
MONAI's residual ``UnetResBlock`` (two 3x3 convolutions with normalisation and
LeakyReLU and a projected residual, as in DynUNet/nnU-Net) and the head is
MONAI's ``UnetOutBlock`` (a 1x1 convolution to the class logits).

The layout is derived from :attr:`pretrain.encoders.Encoder.feature_info`
alone, so one class serves every registered encoder:

* any number of levels, any channels, any strides (the ViT pyramids included);
* upsampling is interpolation to the *skip's* spatial size (not a fixed x2), so
  odd sizes and non-power-of-two stride ratios work;
* when the finest level has stride ``s > 1`` (2 for ResNet/EfficientNet, 4 for
  ConvNeXt and patch-16 ViTs) ``round(log2 s)`` extra stages without a skip
  (x2 upsampling + block) recover the input resolution, followed by an exact
  resize to the input size if needed (non-power-of-two strides);
* ``spatial_dims`` selects 2D or 3D convolutions and bilinear/trilinear
  upsampling, so 3D encoders can use the same decoder.

There is deliberately no skip from the raw image (unlike UNETR's first
encoder block): every bit of information reaches the decoder through the
encoder, which is what the benchmark measures.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetResBlock
from torch import nn

from pretrain.encoders import Encoder, FeatureInfo

DEFAULT_DECODER_CHANNELS = (128, 64, 32, 16)


def _interp_mode(spatial_dims: int) -> str:
    if spatial_dims == 1:
        return "linear"
    if spatial_dims == 2:
        return "bilinear"
    if spatial_dims == 3:
        return "trilinear"
    raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")


class UNetDecoder(nn.Module):
    """U-Net decoder on a feature pyramid, ending in per-pixel class logits.

    Args:
        feature_info: The encoder's levels, highest resolution first
            (channels and stride of each).
        num_classes: Number of output classes (incl. background).
        spatial_dims: 2 for images, 3 for volumes.
        channels: Output width of each decoder stage, coarsest stage first. If
            there are more stages than widths the last width is repeated.
        norm: MONAI norm name of the blocks (``"batch"``, ``"instance"``, ...).
        dropout: Dropout rate inside the blocks (None for none).

    Attributes:
        stage_channels: Width of every stage actually built.
        num_skip_stages: Stages that merge a skip connection.
        num_extra_stages: Stages without skip up to stride 1.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        norm: str | tuple = "batch",
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        levels = list(feature_info)
        if not levels:
            raise ValueError("the decoder needs at least one feature level")
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"decoder channels must be positive integers, got {channels!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        strides = [f.stride for f in levels]
        if any(b < a for a, b in itertools.pairwise(strides)):
            raise ValueError(f"feature levels must be ordered finest first, got strides {strides}")
        self.spatial_dims = spatial_dims
        self.mode = _interp_mode(spatial_dims)
        self.num_skip_stages = len(levels) - 1
        self.num_extra_stages = max(0, round(math.log2(max(1, levels[0].stride))))
        n_stages = self.num_skip_stages + self.num_extra_stages
        widths = [int(c) for c in channels]
        self.stage_channels = [widths[min(i, len(widths) - 1)] for i in range(n_stages)]

        def block(cin: int, cout: int) -> nn.Module:
            return UnetResBlock(
                spatial_dims, cin, cout, kernel_size=3, stride=1, norm_name=norm, dropout=dropout
            )

        self.blocks = nn.ModuleList()
        cin = levels[-1].channels
        for i in range(n_stages):
            skip = levels[-2 - i].channels if i < self.num_skip_stages else 0
            self.blocks.append(block(cin + skip, self.stage_channels[i]))
            cin = self.stage_channels[i]
        self.head = UnetOutBlock(spatial_dims, cin, num_classes)

    def _up(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)

    def forward(self, features: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        """Logits ``(B, num_classes, *out_size)`` from the encoder's feature maps.

        Args:
            features: Feature maps, highest resolution first.
            out_size: Spatial size of the input image.
        """
        if len(features) != self.num_skip_stages + 1:
            raise ValueError(
                f"decoder built for {self.num_skip_stages + 1} feature levels, got {len(features)}"
            )
        x = features[-1]
        for i, blk in enumerate(self.blocks):
            if i < self.num_skip_stages:
                skip = features[-2 - i]
                x = torch.cat([self._up(x, skip.shape[2:]), skip], dim=1)
            else:
                size = [min(2 * s, o) for s, o in zip(x.shape[2:], out_size, strict=True)]
                x = self._up(x, size)
            x = blk(x)
        return self.head(self._up(x, out_size))


class SegmentationModel(nn.Module):
    """An encoder and a :class:`UNetDecoder` mapping images to class logits.

    Args:
        encoder: A shared encoder with ``supports_multiscale``.
        num_classes: Number of mask classes incl. background.
        channels / norm / dropout: Passed to :class:`UNetDecoder`.
        freeze_encoder: Run the encoder without autograd (frozen-encoder
            protocol); the caller also keeps it in eval mode.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        norm: str | tuple = "batch",
        dropout: float | None = None,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        self.decoder = UNetDecoder(
            encoder.feature_info,
            num_classes,
            spatial_dims=encoder.spatial_dims,
            channels=channels,
            norm=norm,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                features = self.encoder.forward_multiscale(x)
        else:
            features = self.encoder.forward_multiscale(x)
        return self.decoder(features, x.shape[2:])
