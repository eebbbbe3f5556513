"""fp16 mixed precision: a dynamic loss scale (GradScaler), unscaled before clipping, checkpointed.

torch autocasts to float16 on the CPU too, so the fp16 path runs here for real:
real modules, real autocast, real scaler.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.train import Trainer, make_grad_scaler, pretrain
from tests.conftest import one_thread
from tests.pretrain.test_train import config, weights

CPU = torch.device("cpu")


def test_grad_scaler_is_enabled_for_fp16_only() -> None:
    assert make_grad_scaler(torch.float16, CPU).is_enabled()
    assert not make_grad_scaler(torch.bfloat16, CPU).is_enabled()
    assert not make_grad_scaler(None, CPU).is_enabled()


def _grads(scaler: torch.amp.GradScaler | None) -> list[torch.Tensor]:
    """Gradients of a tiny loss through a net autocast to fp16 (None: no autocast)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(8, 16)
    if scaler is None:
        loss = net(x).sum() * 1e-8
        loss.backward()
    else:
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        loss = out.float().sum() * 1e-8  # d loss / d out = 1e-8: below fp16's 6e-8
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    return [p.grad.clone() for p in net.parameters() if p.grad is not None]


def test_loss_scale_keeps_small_fp16_gradients() -> None:
    reference = _grads(None)
    unscaled = _grads(make_grad_scaler(None, CPU))  # what fp16 did before: no scale
    scaled = _grads(make_grad_scaler(torch.float16, CPU))
    assert all(g.abs().sum() == 0 for g in unscaled), "fp16 gradients should underflow"
    for got, want in zip(scaled, reference, strict=True):
        assert torch.allclose(got, want, rtol=1e-2, atol=1e-12)


@pytest.mark.parametrize(("amp", "enabled"), [("fp16", True), ("bf16", False), ("none", False)])
def test_trainer_scaler_follows_amp(tmp_path: Path, amp: str, enabled: bool) -> None:
    trainer = Trainer(config(tmp_path, amp=amp), tmp_path / amp)
    assert trainer.scaler.is_enabled() is enabled
    assert bool(trainer.state_dict()["grad_scaler"]) is enabled  # {} when disabled


def test_fp16_steps_skip_overflows_and_clip_unscaled_gradients(tmp_path: Path) -> None:
    """Overflowing steps leave the weights alone and halve the scale; the logged
    (and clipped) gradient norm is that of the true, unscaled gradients."""
    with one_thread():
        trainer = Trainer(config(tmp_path, amp="fp16", steps=8), tmp_path / "fp16")
        start = {k: p.detach().clone() for k, p in trainer.method.named_parameters()}
        step, scales = 0, []
        while True:
            logs = trainer.train_step(step)
            scales.append(logs["loss_scale"])
            if torch.isfinite(torch.tensor(logs["grad_norm"])):
                break
            now = dict(trainer.method.named_parameters())  # (BN statistics do move)
            assert all(torch.equal(now[k], start[k]) for k in start), "skipped step moved weights"
            assert trainer.scaler.get_scale() == scales[-1] / 2
            step += 1
            assert step < 8, "the loss scale never came down"
        # same weights as at initialisation: compare with an fp32 step of the same batch
        fp32 = Trainer(config(tmp_path, amp="none", steps=8), tmp_path / "fp32")
        ref = fp32.train_step(step)
    assert scales[0] == 65536.0
    assert logs["grad_norm"] == pytest.approx(ref["grad_norm"], rel=0.05)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trainer.method.parameters())


def test_fp16_resume_restores_the_scaler(tmp_path: Path) -> None:
    """An fp16 run resumed from its checkpoint ends with the uninterrupted run's weights,
    which needs the loss scale back (a fresh scale would skip steps again)."""
    cfg = config(tmp_path, amp="fp16", steps=4, checkpoint_every=2)
    with one_thread():
        ref = pretrain(cfg, tmp_path / "ref", progress=False)
        t = Trainer(cfg, tmp_path / "run")
        (tmp_path / "run").mkdir()
        for record in t.run(progress=False):
            if record["step"] == 3:  # state saved at step 2; step 3 is lost
                break
        saved = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
        assert saved["grad_scaler"]["scale"] < 65536.0, "the test needs a scale that moved"
        res = pretrain(cfg, tmp_path / "run", resume=True, progress=False)
    wa, wb = weights(ref.out_dir), weights(res.out_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # an old state without the scaler loads with a fresh one
    del saved["grad_scaler"]
    fresh = Trainer(cfg, tmp_path / "old")
    fresh.load_state_dict(saved)
    assert fresh.step == 2 and fresh.scaler.get_scale() == 65536.0
