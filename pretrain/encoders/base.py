"""The shared encoder contract and the encoder registry.

Every backbone, 2D (timm) or 3D (MONAI), is wrapped in an :class:`Encoder` that
exposes the same two views of an image:

* :meth:`Encoder.forward_features` -> pooled vector ``(B, num_features)`` for
  classification probes and SSL projection heads;
* :meth:`Encoder.forward_multiscale` -> list of feature maps, highest
  resolution first, described by :attr:`Encoder.feature_info` (channels and
  stride per level), for segmentation decoders.

This mirrors timm's ``features_only`` / ``forward_intermediates`` and MONAI's
``BaseEncoder`` so that every task adapter works with every backbone.
An encoder is rebuilt from ``ENCODERS.create(name, **encoder_args)``; the
checkpoint stores exactly ``name`` and ``encoder_args``.

Every encoder takes ``init`` (:mod:`pretrain.encoders.external`): ``random`` (the
default), ``timm:<tag>`` or a local weights file; a non-random ``init`` is kept in
``encoder_args`` and what it loaded (with the weights' SHA-256) in :attr:`Encoder.init_info`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.core.errors import SSLBenchError
from benchmark.core.registry import Registry
from pretrain.encoders.external import InitSpec, load_init_weights, parse_init

ENCODERS: Registry[type[Encoder]] = Registry(
    "encoders", "backbones that produce pooled and multi-scale features"
)


@dataclass(frozen=True)
class FeatureInfo:
    """One level of the multi-scale feature pyramid."""

    channels: int
    stride: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Encoder(nn.Module):
    """Base class of shared encoders.

    Subclasses build their backbone in ``__init__`` and set
    :attr:`num_features`, :attr:`feature_info` and :attr:`encoder_args` (the
    keyword arguments that rebuild the same architecture).

    Attributes:
        spatial_dims: 2 for images, 3 for volumes.
        in_chans: Number of input channels (1 for greyscale by default).
        num_features: Size of the pooled feature vector.
        feature_info: Channels and stride of each multi-scale level.
        supports_multiscale: False for encoders that cannot feed a U-Net decoder.
        is_vit: True for patch-token transformers (masked-image methods need it).
        patch_size: Patch size of a ViT, else None.
        min_size / size_multiple: Input sizes the encoder accepts.
        cost: Relative training cost per image (dry-run estimates).
        init_info: Provenance of external initial weights (``init`` spec, file name,
            SHA-256, adapted and dropped keys), or None for a random initialisation.
    """

    name: ClassVar[str] = ""
    spatial_dims: ClassVar[int] = 2
    supports_multiscale: ClassVar[bool] = True
    is_vit: ClassVar[bool] = False
    #: Training cost per image relative to a ResNet-18 at the same input size
    #: (``sslbench run --dry-run`` estimates; measured roughly on a 2-core CPU).
    cost: ClassVar[float] = 1.0

    def __init__(self, in_chans: int = 1, img_size: int | tuple[int, ...] = 64) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.img_size = img_size
        self.num_features = 0
        self.feature_info: list[FeatureInfo] = []
        self.encoder_args: dict[str, Any] = {"in_chans": in_chans, "img_size": img_size}
        self.patch_size: int | None = None
        self.size_multiple = 32
        #: Metadata of the checkpoint this encoder was loaded from, if any.
        self.checkpoint_meta: dict[str, Any] | None = None
        #: What a non-random ``init`` loaded (see :meth:`apply_init`).
        self.init_info: dict[str, Any] | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)``."""
        raise NotImplementedError

    def forward_multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps, highest resolution first, matching :attr:`feature_info`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def check_input_size(self, size: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if this encoder cannot take spatial ``size``."""
        if len(size) != self.spatial_dims:
            raise ValueError(
                f"encoder {self.name!r} takes {self.spatial_dims}D inputs, got size {size}"
            )
        bad = [s for s in size if s % self.size_multiple or s < self.size_multiple]
        if bad:
            raise ValueError(
                f"encoder {self.name!r} needs every spatial size to be a positive multiple of "
                f"{self.size_multiple}, got {tuple(size)}"
            )

    # -- external initial weights (``init``) ---------------------------------------
    #: Whether ``init`` may be a ``timm:<tag>`` (2D timm encoders only).
    accepts_timm_init: ClassVar[bool] = False

    @classmethod
    def check_init(cls, init: InitSpec) -> None:
        """Raise ``SSLBenchError`` if ``init`` cannot initialise this encoder class.

        Checked when an experiment is loaded, before any work, and again on construction.
        """
        if init.kind == "timm" and not cls.accepts_timm_init:
            raise SSLBenchError(
                f"encoder {cls.name!r}: init 'timm:{init.value}' needs a 2D timm encoder; "
                "give the path of a local state-dict file instead (init=/path/weights.pth)"
            )

    def init_layout(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Dotted names, in ``self.model``, of the input convolution(s) and of the
        classifier layer(s) (whose keys external weights may carry and are dropped)."""
        return (), ()

    def init_filter(
        self, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        """Convert external weights to the model's layout before loading (default: as is)."""
        return state

    def apply_init(self, init: str | InitSpec | None) -> None:
        """Load external initial weights into ``self.model`` (nothing for ``random``).

        Subclasses call this at the end of ``__init__``. A non-random ``init`` is
        recorded in :attr:`encoder_args` (so a checkpoint rebuilds the same
        architecture) and its provenance in :attr:`init_info` (see
        :func:`pretrain.encoders.external.load_init_weights` for the loading rules).
        """
        spec = parse_init(init)
        type(self).check_init(spec)
        if spec.is_random:
            return
        first_conv, classifier = self.init_layout()
        model = getattr(self, "model", self)
        self.init_info = load_init_weights(
            model,
            spec,
            first_conv=first_conv,
            classifier=classifier,
            filter_fn=self.init_filter,
            arch=self.name,
        )
        self.encoder_args["init"] = spec.spec

    def describe(self) -> dict[str, Any]:
        """Name, constructor args and feature contract, for checkpoint metadata.

        Holds ``init`` (:attr:`init_info`) when the encoder started from external weights.
        """
        extra = {"init": dict(self.init_info)} if self.init_info else {}
        return {
            "name": self.name,
            "args": dict(self.encoder_args),
            "spatial_dims": self.spatial_dims,
            "num_features": self.num_features,
            "feature_info": [f.to_dict() for f in self.feature_info],
            "supports_multiscale": self.supports_multiscale,
            "is_vit": self.is_vit,
            "num_params": sum(p.numel() for p in self.parameters()),
            **extra,
        }


def create_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build a registered encoder by name.

    Random initialisation unless ``kwargs`` hold a non-random ``init``
    (:mod:`pretrain.encoders.external`); only ``init="timm:<tag>"`` downloads.
    """
    encoder = ENCODERS.create(name, **kwargs)
    assert isinstance(encoder, Encoder)
    return encoder
