"""Behaviour specific to some lightly-based methods: momentum networks, MoCo's queue, configs.

The generic checks (loss, backward, determinism, ...) are in test_method_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from pretrain.encoders import create_encoder
from pretrain.methods import METHODS, SSLMethod, create_method
from pretrain.methods.base import MethodConfigError
from pretrain.methods.byol import BYOL
from pretrain.methods.moco import MoCoV2

SIZE = 32
BATCH = 8


def build(name: str, **config: object) -> SSLMethod:
    torch.manual_seed(0)
    return create_method(name, create_encoder("resnet18", img_size=SIZE), **config)


def views(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(BATCH, 1, SIZE, SIZE, generator=g) for _ in range(n)]


def test_moco_alias() -> None:
    assert METHODS.get("moco") is METHODS.get("mocov2")


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_momentum_network_is_frozen_and_follows(name: str) -> None:
    method = build(name)
    assert isinstance(method, MoCoV2 | BYOL)
    frozen = list(method.encoder_momentum.parameters()) + list(
        method.projection_head_momentum.parameters()
    )
    assert frozen and not any(p.requires_grad for p in frozen)
    trained = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert not trained & {id(p) for p in frozen}, "momentum weights must not be optimised"
    before = [p.detach().clone() for p in frozen]
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    out = method.training_step(views(), 0, 100)
    out.loss.backward()
    assert all(p.grad is None for p in frozen)
    optimizer.step()
    method.after_optimizer_step(0, 100)
    assert method.config["momentum_start"] <= out.logs["ema_momentum"] < 1.0
    changed = [not torch.equal(a, p) for a, p in zip(before, frozen, strict=True)]
    assert any(changed), "after_optimizer_step must move the momentum network"
    # m = 1 at the end of the cosine schedule: the target stops moving
    frozen_now = [p.detach().clone() for p in frozen]
    method.after_optimizer_step(99, 100)
    assert all(torch.equal(a, p) for a, p in zip(frozen_now, frozen, strict=True))


def test_moco_queue_fills_and_wraps() -> None:
    method = build("mocov2", memory_bank_size=12)
    assert isinstance(method, MoCoV2)
    bank = method.criterion.memory_bank
    initial = bank.bank.clone()
    out = method.training_step(views(), 0, 10)
    assert int(bank.bank_ptr) == BATCH
    assert not torch.equal(bank.bank[:BATCH], initial[:BATCH])
    assert torch.equal(bank.bank[BATCH:], initial[BATCH:])
    assert torch.allclose(bank.bank[:BATCH].norm(dim=1), torch.ones(BATCH))  # normalised keys
    assert out.embeddings.shape == (BATCH, method.encoder.num_features)  # pooled features
    method.training_step(views(), 1, 10)
    assert int(bank.bank_ptr) == 0  # wrapped around


@pytest.mark.parametrize(
    ("name", "config", "key"),
    [
        ("simclr", {"temperature": 0.0}, "temperature"),
        ("simclr", {"output_dim": 0}, "output_dim"),
        ("simclr", {"hidden_dim": 12.5}, "hidden_dim"),
        ("mocov2", {"memory_bank_size": 0}, "memory_bank_size"),
        ("mocov2", {"momentum_start": 1.0}, "momentum_start"),
        ("mocov2", {"momentum_start": 0.999, "momentum_end": 0.99}, "momentum_end"),
        ("mocov2", {"temperature": "warm"}, "temperature"),
        ("byol", {"momentum_start": -0.1}, "momentum_start"),
        ("byol", {"momentum_end": 1.5}, "momentum_end"),
        ("simsiam", {"pred_hidden_dim": -4}, "pred_hidden_dim"),
        ("barlowtwins", {"lambda_param": 0}, "lambda_param"),
        ("barlowtwins", {"output_dim": True}, "output_dim"),
    ],
)
def test_bad_values(name: str, config: dict[str, object], key: str) -> None:
    with pytest.raises(MethodConfigError, match=key):
        METHODS.get(name).validate_config(config)


def test_fixed_momentum_is_allowed() -> None:
    config = METHODS.get("byol").validate_config({"momentum_start": 0.996, "momentum_end": 0.996})
    assert config["momentum_end"] == 0.996


@pytest.mark.parametrize("name", ["byol", "barlowtwins"])
def test_asymmetric_blur(name: str) -> None:
    v0, v1 = build(name).view_recipes(64)
    assert (v0.blur_p, v1.blur_p) == (1.0, 0.1)
    assert v0.blur_sigma[1] == pytest.approx(2.0 * 64 / 224)
