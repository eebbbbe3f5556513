"""SparK-specific behaviour: zeroed masked input, loss on masked patches only, encoders."""

from __future__ import annotations

import pytest
import torch

from pretrain.encoders import create_encoder
from pretrain.encoders.base import Encoder
from pretrain.methods import create_method
from pretrain.methods.base import MethodConfigError
from pretrain.methods.spark import SparK


def _spark(encoder: str = "resnet18", size: int = 64, **config: object) -> SparK:
    torch.manual_seed(0)
    method = create_method("spark", create_encoder(encoder, img_size=size), **config)
    assert isinstance(method, SparK)
    return method


@pytest.mark.parametrize("encoder", ["resnet18", "convnext_atto"])
def test_step_masks_input_and_trains_only_on_masked_patches(encoder: str) -> None:
    method = _spark(encoder, decoder_width=32, mask_stride=16)
    images = torch.rand(4, 1, 64, 64) + 0.1  # no exact zeros
    seen: list[torch.Tensor] = []  # encoder input
    forward_multiscale = method.encoder.forward_multiscale

    def spy(x: torch.Tensor) -> list[torch.Tensor]:
        seen.append(x)
        return forward_multiscale(x)

    method.encoder.forward_multiscale = spy  # type: ignore[method-assign]
    preds: list[torch.Tensor] = []  # full-resolution prediction

    def keep_grad(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        preds.append(output)

    method.head.register_forward_hook(keep_grad)

    out = method.training_step([images], step=0, total_steps=1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logs["mask_stride"] == 16
    masked_input = SparK.patchify(seen[0], 16)  # (B, 16, 256)
    zeroed = (masked_input == 0).all(dim=-1)
    assert ((masked_input != 0).all(dim=-1) | zeroed).all(), "whole patches are zeroed"
    assert zeroed.float().mean().item() == pytest.approx(out.logs["mask_ratio"])
    assert out.logs["mask_ratio"] == pytest.approx(10 / 16)  # round(16 * 0.4) = 6 kept
    assert preds[0].grad is not None
    grad = SparK.patchify(preds[0].grad, 16).abs().sum(dim=-1)  # (B, 16)
    assert (grad[~zeroed] == 0).all(), "no loss on visible patches"
    assert (grad[zeroed] > 0).all()
    assert out.embeddings.shape == (4, method.encoder.feature_info[-1].channels)
    assert all(p.grad is not None for p in method.mask_tokens.values())


def test_mask_stride_defaults_to_coarsest_stride() -> None:
    method = _spark(decoder_width=16)
    assert method.mask_stride(64, 64) == 32 and method.mask_stride(224, 224) == 32
    assert method.mask_stride(32, 32) == 16, "halved until there are 2x2 patches"
    with pytest.raises(MethodConfigError, match="mask_stride"):
        create_method("spark", method.encoder, mask_stride=64)
    with pytest.raises(MethodConfigError, match="mask_stride"):
        SparK.validate_config({"mask_stride": 24})


class _FlatEncoder(Encoder):
    name = "flat"
    supports_multiscale = False

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 4
        self.proj = torch.nn.Linear(1, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def test_refuses_encoder_without_multiscale_support() -> None:
    with pytest.raises(MethodConfigError, match="multi-scale"):
        create_method("spark", _FlatEncoder())
