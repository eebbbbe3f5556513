"""Adam / AdamW: the fused kernel on a CPU, the same update rule as PyTorch's loop."""

from __future__ import annotations

import pytest
import timm
import torch

from benchmark.core.optim import adam


@pytest.mark.parametrize("decoupled", [True, False])
def test_fused_kernel_follows_the_reference_update(decoupled: bool) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", in_chans=1, num_classes=2)
    twin = timm.create_model("resnet18", in_chans=1, num_classes=2)
    twin.load_state_dict(model.state_dict())
    groups = [
        {"params": list(model.layer4.parameters()), "lr": 1e-3},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("layer4")]},
    ]
    opt = adam(groups, decoupled=decoupled, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    assert type(opt) is cls and opt.defaults["fused"] is True
    ref_groups = [
        {"params": list(twin.layer4.parameters()), "lr": 1e-3},
        {"params": [p for n, p in twin.named_parameters() if not n.startswith("layer4")]},
    ]
    ref = cls(ref_groups, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, foreach=False)
    # the same gradients for both (a model's own backward would drift apart by float
    # rounding after the first step): the update rule alone is compared
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    # the group learning rates are the declared ones
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
