"""The collapse indicator is computed on one tensor for every method: pooled backbone features.

``StepOutput.embeddings`` (whose L2-normalised std the loop logs as
``embedding_std``) must be the pooled features that the method's own forward
pass took from the encoder for its first view: ``Encoder.forward_features``
rows, timm's pooling of the tokens MAE encoded, or SparK's coarsest map
averaged over the visible positions. The tensors are recorded while the
method runs (no second forward pass), so the comparison is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightly.utils.debug import std_of_l2_normalized

from pretrain.augment import make_views
from pretrain.methods import METHODS
from pretrain.methods.mae import MAE
from pretrain.methods.spark import SparK, _resize_mask
from tests.pretrain.methods.test_method_contract import BATCH, SIZE, build, size_of


def record(obj: Any, name: str) -> list[Any]:
    """Record the return values of ``obj.name`` (the real method still runs)."""
    calls: list[Any] = []
    original: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    object.__setattr__(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("name", METHODS.names())
def test_embeddings_are_the_pooled_backbone_features(name: str) -> None:
    torch.manual_seed(0)
    method = build(name)
    method.train()
    gen = torch.Generator().manual_seed(0)
    size = size_of(name)
    views = make_views(
        torch.rand(BATCH, 1, size, size, generator=gen), method.view_recipes(size), gen
    )
    pooled = record(method.encoder, "forward_features")
    tokens = record(method.backbone, "encode") if isinstance(method, MAE) else []
    maps = record(method.encoder, "forward_multiscale") if isinstance(method, SparK) else []
    masks = record(method, "random_mask") if isinstance(method, SparK) else []

    out = method.training_step(views, 0, 1)

    if pooled:  # the first forward_features call of the online encoder starts with view 0
        expected = pooled[0][:BATCH]
    elif tokens:  # MAE: the pooling of Encoder.forward_features, on the visible tokens
        expected = method.encoder.model.forward_head(tokens[0], pre_logits=True)
    elif maps:  # SparK: global average of the coarsest map over the visible positions
        coarsest = maps[0][-1]
        m = _resize_mask(masks[0], coarsest.shape[2:])
        expected = (coarsest * m).sum((2, 3)) / m.sum((2, 3))
    else:
        pytest.fail(f"{name}: took no pooled features from the encoder")
    emb = out.embeddings
    assert emb.shape == (BATCH, method.encoder.num_features)
    assert not emb.requires_grad
    assert torch.equal(emb, expected.detach())
    assert std_of_l2_normalized(emb) == std_of_l2_normalized(expected.detach())


def test_mae_pooling_is_that_of_forward_features() -> None:
    """Without masking, MAE's pooling of its encoded tokens is Encoder.forward_features."""
    torch.manual_seed(0)
    method = build("mae")
    assert isinstance(method, MAE)
    method.eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        pooled = method.encoder.model.forward_head(method.backbone.encode(x), pre_logits=True)
        assert torch.allclose(pooled, method.encoder.forward_features(x), atol=1e-5)
