"""MAE-specific behaviour: token dropping at the configured ratio, ViT only."""

from __future__ import annotations

import pytest
import torch

from pretrain.encoders import create_encoder
from pretrain.methods import create_method
from pretrain.methods.base import MethodConfigError
from pretrain.methods.mae import MAE


def _mae(**config: object) -> MAE:
    torch.manual_seed(0)
    method = create_method("mae", create_encoder("vit_tiny_p8", img_size=32), **config)
    assert isinstance(method, MAE)
    return method


@pytest.mark.parametrize(("ratio", "n_keep"), [(0.75, 4), (0.5, 8)])
def test_encoder_sees_only_the_kept_tokens(ratio: float, n_keep: int) -> None:
    method = _mae(mask_ratio=ratio)
    seen: list[int] = []
    first_block = method.backbone.vit.blocks[0]
    first_block.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    out = method.training_step([torch.rand(4, 1, 32, 32)], step=0, total_steps=1)
    assert seen == [1 + n_keep], "class token + kept patch tokens (16 patches at 32 px, patch 8)"
    assert out.logs["mask_ratio"] == pytest.approx(ratio)
    assert out.embeddings.shape == (4, 192) and not out.embeddings.requires_grad
    out.loss.backward()
    assert method.decoder.mask_token.grad is not None
    assert all(p.grad is not None for p in method.encoder.parameters())


def test_random_mask_partitions_the_patches() -> None:
    method = _mae()
    idx_keep, idx_mask = method.random_mask(3, 16, torch.device("cpu"))
    assert idx_keep.shape == (3, 1 + 4) and idx_mask.shape == (3, 12)
    assert (idx_keep[:, 0] == 0).all(), "the class token is always kept"
    for keep, mask in zip(idx_keep[:, 1:] - 1, idx_mask, strict=True):
        assert sorted(torch.cat([keep, mask]).tolist()) == list(range(16))


def test_views_of_another_size_than_the_encoder() -> None:
    method = _mae()
    assert method.view_recipes(64)[0].size == 64
    out = method.training_step([torch.rand(2, 1, 64, 64)], step=0, total_steps=1)
    assert torch.isfinite(out.loss)


def test_refuses_cnn_encoder_and_bad_config() -> None:
    with pytest.raises(MethodConfigError, match="ViT"):
        create_method("mae", create_encoder("resnet18", img_size=32))
    with pytest.raises(MethodConfigError, match="mask_ratio"):
        MAE.validate_config({"mask_ratio": 1.0})
    with pytest.raises(MethodConfigError, match="pos_embed"):
        MAE.validate_config({"pos_embed": "fixed"})


def test_init_encoder_false_keeps_pretrained_weights() -> None:
    encoder = create_encoder("vit_tiny_p8", img_size=32)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    create_method("mae", encoder, init_encoder=False)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
