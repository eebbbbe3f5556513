"""ResNets with the small-image stem: a 3x3 stride-1 input convolution, no max pooling.

The ImageNet stem of timm's ResNets (7x7 convolution at stride 2, then 3x3 max pooling
at stride 2) divides a 32 px image by 4 before the first stage and leaves a 1x1 map
after the last. The CIFAR ResNets of He et al. 2016 (Sec. 4.2) and MedMNIST v2's
ResNet-18 for 28 px images (Yang et al. 2023; github.com/MedMNIST/experiments,
``MedMNIST2D/models.py``) start with a 3x3 stride-1 convolution and no pooling
instead, so the four stages run at strides 1, 2, 4 and 8. ``resnet18_cifar`` is timm's
ResNet-18 with that stem; everything after the stem is timm's (same blocks, same
state-dict keys from ``bn1`` on).

Cost: at a given input size about 16x the FLOPs of ``resnet18`` (every map is 4x
larger per side) but 9-10x its training time on 2 CPU cores (100-epoch BreastMNIST cells
of ``breastmnist-medmnist``: 16.3-17.1 min against 1.7-1.8 min), the figure the planner
uses. Inputs must be multiples of 8 px (MedMNIST's 28 px images are upsampled to 32 px by
the task spec; 28 px would give a 3.5 px last stage).
``init`` is ``random`` only: ImageNet weights were trained with the other stem.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from benchmark.core.errors import SSLBenchError
from pretrain.encoders.base import ENCODERS, FeatureInfo
from pretrain.encoders.timm2d import TimmCNNEncoder


@ENCODERS.register("resnet18_cifar")
class ResNet18SmallStem(TimmCNNEncoder):
    """timm's ResNet-18 with a 3x3 stride-1 stem and no max pooling (28-32 px inputs).

    Args:
        in_chans: Input channels.
        img_size: Input size (recorded; any multiple of 8 px).
        drop_path_rate: Stochastic depth rate.
        init: ``random`` only.
    """

    name: ClassVar[str] = "resnet18_cifar"
    timm_name: ClassVar[str] = "resnet18"
    cost: ClassVar[float] = 9.5
    accepts_timm_init: ClassVar[bool] = False

    def __init__(
        self,
        in_chans: int = 1,
        img_size: int | tuple[int, ...] = 32,
        drop_path_rate: float = 0.0,
        init: str = "random",
    ) -> None:
        if init != "random":
            raise SSLBenchError(
                f"encoder 'resnet18_cifar': init {init!r} is not supported (pretrained "
                "ResNet-18 weights were trained with the ImageNet stem); use init: random"
            )
        super().__init__(in_chans=in_chans, img_size=img_size, drop_path_rate=drop_path_rate)
        model: Any = self.model
        width = int(model.conv1.out_channels)
        model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        # the stem no longer halves the input twice: every level's stride is a quarter
        # (the stem's own level, at stride 2 before, is at stride 1 like the first stage)
        self.feature_info = [
            FeatureInfo(f.channels, max(1, f.stride // 4)) for f in self.feature_info
        ]
        self.size_multiple = max(f.stride for f in self.feature_info)
