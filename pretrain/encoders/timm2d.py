"""2D encoders from timm, randomly initialised, single-channel by default.

CNNs expose timm's ``feature_info`` levels through ``forward_intermediates``.
A plain ViT has one stride (its patch size); it is turned into a four-level
pyramid (strides 4, 8, 16, 32 for patch 16) by taking tokens of four evenly
spaced blocks and resampling them, as in ViTDet's simple feature pyramid
(Li et al. 2022) and UNETR's multi-depth skip connections (Hatamizadeh et al.
2022), so every segmentation adapter also works with ViTs. The backbone is built
with ``pretrained=False``; external weights come only through ``init``
(``timm:<tag>`` or a local file, :mod:`pretrain.encoders.external`), loaded the way
timm loads pretrained weights (ViT position and patch embeddings resampled, the
input convolution adapted to ``in_chans``).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import timm
import torch
import torch.nn.functional as F

from benchmark.core.errors import SSLBenchError
from pretrain.encoders.base import ENCODERS, Encoder, FeatureInfo
from pretrain.encoders.external import InitSpec


class _TimmInit:
    """``init`` support shared by the timm encoders: tags of the same architecture, and
    the input convolution and classifier named by timm's ``pretrained_cfg``."""

    name: ClassVar[str]
    timm_name: ClassVar[str]
    accepts_timm_init: ClassVar[bool] = True
    model: Any

    @classmethod
    def check_init(cls, init: InitSpec) -> None:
        """A ``timm:`` tag must name this encoder's timm architecture (any pretrained tag)."""
        if init.kind == "timm":
            from timm.models import split_model_name_tag

            arch, _ = split_model_name_tag(init.value)
            if arch != cls.timm_name:
                raise SSLBenchError(
                    f"encoder {cls.name!r}: init 'timm:{init.value}' is a {arch!r} model, but "
                    f"{cls.name!r} is timm's {cls.timm_name!r}; use e.g. "
                    f"timm:{cls.timm_name}.<tag> (timm.list_pretrained('{cls.timm_name}*'))"
                )

    def init_layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        cfg = getattr(self.model, "pretrained_cfg", None) or {}

        def names(value: Any) -> tuple[str, ...]:
            if not value:
                return ()
            return (value,) if isinstance(value, str) else tuple(value)

        return names(cfg.get("first_conv")), names(cfg.get("classifier"))


class TimmCNNEncoder(_TimmInit, Encoder):
    """A timm CNN (ResNet, ConvNeXt, EfficientNet, ...) behind the shared contract.

    Args:
        in_chans: Input channels.
        img_size: Input size (recorded; CNNs take any multiple of their stride).
        drop_path_rate: Stochastic depth rate.
        init: ``random``, ``timm:<tag>`` or a weights file (:mod:`pretrain.encoders.external`).
    """

    timm_name: ClassVar[str] = ""
    model: Any

    def __init__(
        self,
        in_chans: int = 1,
        img_size: int | tuple[int, ...] = 64,
        drop_path_rate: float = 0.0,
        init: str = "random",
    ) -> None:
        super().__init__(in_chans=in_chans, img_size=img_size)
        kwargs: dict[str, Any] = {}
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        self.model = timm.create_model(
            self.timm_name, pretrained=False, in_chans=in_chans, num_classes=0, **kwargs
        )
        self.encoder_args["drop_path_rate"] = drop_path_rate
        self.num_features = int(self.model.num_features)
        self.feature_info = [
            FeatureInfo(int(d["num_chs"]), int(d["reduction"])) for d in self.model.feature_info
        ]
        self.size_multiple = max(f.stride for f in self.feature_info)
        self.apply_init(init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.forward_intermediates(x, intermediates_only=True))


class TimmViTEncoder(_TimmInit, Encoder):
    """A timm Vision Transformer with a parameter-free multi-scale pyramid.

    Args:
        in_chans: Input channels.
        img_size: Input size of the position embeddings (other sizes are interpolated).
        patch_size: Patch size (default: the class's).
        drop_path_rate: Stochastic depth rate.
        init: ``random``, ``timm:<tag>`` or a weights file; position and patch
            embeddings of other sizes are resampled by timm's checkpoint filter.
    """

    timm_name: ClassVar[str] = ""
    model: Any
    is_vit: ClassVar[bool] = True
    default_patch_size: ClassVar[int] = 16

    def __init__(
        self,
        in_chans: int = 1,
        img_size: int | tuple[int, ...] = 64,
        patch_size: int | None = None,
        drop_path_rate: float = 0.0,
        init: str = "random",
    ) -> None:
        super().__init__(in_chans=in_chans, img_size=img_size)
        patch = patch_size or self.default_patch_size
        self.model = timm.create_model(
            self.timm_name,
            pretrained=False,
            in_chans=in_chans,
            num_classes=0,
            img_size=img_size,
            patch_size=patch,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
        )
        self.encoder_args.update(patch_size=patch, drop_path_rate=drop_path_rate)
        self.patch_size = patch
        self.size_multiple = patch
        self.num_features = int(self.model.num_features)
        depth = len(self.model.blocks)
        self.pyramid_blocks = [round(depth * k / 4) - 1 for k in (1, 2, 3, 4)]
        self.pyramid_strides = [patch // 4, patch // 2, patch, patch * 2]
        self.feature_info = [
            FeatureInfo(self.num_features, max(1, s)) for s in self.pyramid_strides
        ]
        self.apply_init(init)

    def init_filter(
        self, state: dict[str, torch.Tensor], model: torch.nn.Module
    ) -> dict[str, torch.Tensor]:
        """timm's ViT checkpoint filter: resample position and patch embeddings."""
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        return dict(checkpoint_filter_fn(state, cast(VisionTransformer, model)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.model.forward_intermediates(
            x, indices=self.pyramid_blocks, intermediates_only=True
        )
        out = []
        h, w = x.shape[-2:]
        for fmap, stride in zip(maps, self.pyramid_strides, strict=True):
            size = (max(1, h // max(1, stride)), max(1, w // max(1, stride)))
            if size[0] > fmap.shape[-2]:
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            elif size[0] < fmap.shape[-2]:
                fmap = F.adaptive_avg_pool2d(fmap, size)
            out.append(fmap)
        return out


def _register_cnn(name: str, timm_name: str, cost: float = 1.0) -> None:
    cls = type(
        f"Timm_{name}",
        (TimmCNNEncoder,),
        {"name": name, "timm_name": timm_name, "cost": cost, "__doc__": f"timm ``{timm_name}``."},
    )
    ENCODERS.register(name)(cls)


def _register_vit(name: str, timm_name: str, patch: int, cost: float = 1.0) -> None:
    cls = type(
        f"Timm_{name}",
        (TimmViTEncoder,),
        {
            "name": name,
            "timm_name": timm_name,
            "default_patch_size": patch,
            "cost": cost,
            "__doc__": f"timm ``{timm_name}`` (patch {patch}).",
        },
    )
    ENCODERS.register(name)(cls)


# (name, timm name, cost per image relative to resnet18)
for _name, _timm, _cost in [
    ("resnet18", "resnet18", 1.0),
    ("resnet50", "resnet50", 3.0),
    ("convnext_atto", "convnext_atto", 1.0),
    ("efficientnet_b0", "efficientnet_b0", 1.5),
]:
    _register_cnn(_name, _timm, _cost)

_register_vit("vit_tiny", "vit_tiny_patch16_224", 16)
_register_vit("vit_tiny_p8", "vit_tiny_patch16_224", 8, cost=2.0)
_register_vit("vit_small", "vit_small_patch16_224", 16, cost=2.5)
