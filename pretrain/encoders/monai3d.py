"""3D encoders from MONAI behind the shared encoder contract.

* ``resnet10_3d`` / ``resnet18_3d``: MONAI's 3D ResNet (Hara et al. 2018, "Can
  spatiotemporal 3D CNNs retrace the history of 2D CNNs?"; the MedicalNet
  backbones of Chen et al. 2019), stem stride 2 and max pooling, so the levels
  have strides 2, 4, 8, 16 and 32 like timm's 2D ResNets.
* ``swin_3d``: the Swin Transformer encoder of SwinUNETR (Hatamizadeh et al.
  2022) with MONAI's patch merging: five levels of strides 2 to 32 and
  channels ``embed_dim * (1, 2, 4, 8, 16)``.

All are single-channel by default and randomly initialised (no downloads).
Input sizes must be multiples of 32 per axis. ``init`` may name a local
state-dict file (an sslbench checkpoint's, or a MONAI / MedicalNet ResNet's:
``module.`` prefixes, the ``fc`` classifier and MedicalNet's ``conv_seg`` head are
dropped); ``timm:`` tags are
refused (they are 2D), and the input channels must match (timm's
``adapt_input_conv`` is 2D only).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.swin_unetr import SwinTransformer

from pretrain.encoders.base import ENCODERS, Encoder, FeatureInfo


class ResNet3DEncoder(Encoder):
    """A MONAI 3D ResNet; multi-scale levels after the stem and each stage.

    Args:
        in_chans: Input channels.
        img_size: Input size (recorded).
        widen_factor: Channel multiplier of every stage.
        init: ``random`` or a local state-dict file (:mod:`pretrain.encoders.external`).
    """

    spatial_dims: ClassVar[int] = 3
    layers: ClassVar[list[int]] = [2, 2, 2, 2]
    widths: ClassVar[list[int]] = [64, 128, 256, 512]

    def __init__(
        self,
        in_chans: int = 1,
        img_size: int | tuple[int, ...] = 32,
        widen_factor: float = 1.0,
        init: str = "random",
    ) -> None:
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.model = ResNet(
            block="basic",
            layers=list(self.layers),
            block_inplanes=list(self.widths),
            spatial_dims=3,
            n_input_channels=in_chans,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=widen_factor,
            feed_forward=False,
        )
        self.encoder_args["widen_factor"] = widen_factor
        chans = [int(w * widen_factor) for w in self.widths]
        # the stem has block_inplanes[0] (widened) channels, like MONAI builds it
        self.feature_info = [FeatureInfo(int(self.model.bn1.num_features), 2)] + [
            FeatureInfo(c, 2 ** (i + 2)) for i, c in enumerate(chans)
        ]
        self.num_features = chans[-1]
        self.size_multiple = 32
        self.apply_init(init)

    def init_layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # no input-conv adaptation (3D); a classifier, or MedicalNet's segmentation head
        return (), ("fc", "conv_seg")

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        stem = m.act(m.bn1(m.conv1(x)))
        out = [stem]
        h = m.maxpool(stem) if not m.no_max_pool else stem
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            h = layer(h)
            out.append(h)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_multiscale(x)[-1].mean(dim=(2, 3, 4))


@ENCODERS.register("resnet18_3d")
class ResNet18_3D(ResNet3DEncoder):
    """3D ResNet-18 (basic blocks 2-2-2-2), 33 M parameters."""

    name: ClassVar[str] = "resnet18_3d"


@ENCODERS.register("resnet10_3d")
class ResNet10_3D(ResNet3DEncoder):
    """3D ResNet-10 (basic blocks 1-1-1-1), 14 M parameters: the cpu-small 3D backbone."""

    name: ClassVar[str] = "resnet10_3d"
    layers: ClassVar[list[int]] = [1, 1, 1, 1]


@ENCODERS.register("swin_3d", aliases=("swinunetr_encoder",))
class Swin3DEncoder(Encoder):
    """SwinUNETR's 3D Swin Transformer encoder (window 7, patch 2, depths 2-2-2-2).

    ``init`` may be ``random`` or a local state-dict file of this encoder (or of a
    MONAI ``SwinTransformer`` with the same settings).
    """

    name: ClassVar[str] = "swin_3d"
    spatial_dims: ClassVar[int] = 3

    def __init__(
        self,
        in_chans: int = 1,
        img_size: int | tuple[int, ...] = 32,
        embed_dim: int = 24,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        drop_path_rate: float = 0.0,
        init: str = "random",
    ) -> None:
        super().__init__(in_chans=in_chans, img_size=img_size)
        self.model = SwinTransformer(
            in_chans=in_chans,
            embed_dim=embed_dim,
            window_size=(window_size,) * 3,
            patch_size=(2, 2, 2),
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            drop_path_rate=drop_path_rate,
            spatial_dims=3,
        )
        self.encoder_args.update(
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=window_size,
            drop_path_rate=drop_path_rate,
        )
        n = len(depths)
        self.feature_info = [FeatureInfo(embed_dim * 2**i, 2 ** (i + 1)) for i in range(n + 1)]
        self.num_features = embed_dim * 2**n
        self.size_multiple = 2 ** (n + 1)
        self.apply_init(init)

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x, normalize=True))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_multiscale(x)[-1].mean(dim=(2, 3, 4))
