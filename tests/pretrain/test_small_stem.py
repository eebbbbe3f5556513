"""``resnet18_cifar``: timm's ResNet-18 with the small-image (CIFAR / MedMNIST 28 px) stem."""

from __future__ import annotations

import pytest
import torch

from benchmark.core.errors import SSLBenchError
from pretrain.encoders import create_encoder


def test_small_stem_keeps_the_input_resolution_through_the_first_stage() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet18_cifar", img_size=32).eval()
    plain = create_encoder("resnet18", img_size=32).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        sizes = [m.shape[-1] for m in enc.forward_multiscale(x)]
        plain_sizes = [m.shape[-1] for m in plain.forward_multiscale(x)]
        assert enc.forward_features(x).shape == (2, 512)
    assert sizes == [32, 32, 16, 8, 4]  # stem, stages at strides 1, 2, 4, 8
    assert plain_sizes == [16, 8, 4, 2, 1]  # the ImageNet stem at the same input
    assert enc.model.conv1.kernel_size == (3, 3) and enc.model.conv1.stride == (1, 1)
    assert isinstance(enc.model.maxpool, torch.nn.Identity)
    # everything after the stem is timm's ResNet-18: same keys, same shapes
    shapes = {k: v.shape for k, v in plain.state_dict().items() if not k.startswith("model.conv1")}
    mine = {k: v.shape for k, v in enc.state_dict().items() if not k.startswith("model.conv1")}
    assert mine == shapes
    enc.check_input_size((32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        enc.check_input_size((28, 28))


def test_pretrained_weights_are_refused() -> None:
    with pytest.raises(SSLBenchError, match="resnet18_cifar.*init"):
        create_encoder("resnet18_cifar", init="timm:resnet18.a1_in1k")
