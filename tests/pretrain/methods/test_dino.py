"""DINO-specific behaviour: frozen momentum teacher on global views, multi-crop sizes."""

from __future__ import annotations

import pytest
import torch

from pretrain.encoders import create_encoder
from pretrain.methods import create_method
from pretrain.methods.dino import DINO

SMALL_HEAD = {"head_hidden_dim": 32, "head_bottleneck_dim": 16, "head_out_dim": 64}


def _dino(encoder: str = "vit_tiny_p8", size: int = 32, **config: object) -> DINO:
    torch.manual_seed(0)
    method = create_method("dino", create_encoder(encoder, img_size=size), **SMALL_HEAD, **config)
    assert isinstance(method, DINO)
    return method


def _views(method: DINO, size: int = 32, batch: int = 4) -> list[torch.Tensor]:
    return [torch.rand(batch, 1, r.size, r.size) for r in method.view_recipes(size)]


def test_teacher_gets_no_gradient_and_sees_global_views_only() -> None:
    method = _dino()
    seen: list[int] = []
    teacher_model = method.teacher_encoder.model
    assert isinstance(teacher_model, torch.nn.Module)
    teacher_model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = method.training_step(_views(method), step=0, total_steps=10)
    out.loss.backward()
    assert seen == [2 * 4], "the teacher encodes the two global views (one batched pass)"
    teacher = [*method.teacher_encoder.parameters(), *method.teacher_head.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert all(p.grad is not None for p in method.encoder.parameters())
    trained = {id(p) for g in method.parameter_groups() for p in g["params"]}
    assert not trained & {id(p) for p in teacher}


def test_teacher_follows_student_by_momentum() -> None:
    method = _dino()
    with torch.no_grad():  # make student and teacher differ
        for p in [*method.encoder.parameters(), *method.student_head.parameters()]:
            p.add_(torch.randn_like(p))
    student = [p.clone() for p in method.encoder.parameters()]
    before = [p.clone() for p in method.teacher_encoder.parameters()]
    step, total = 3, 10
    m = method.momentum(step, total)
    assert method.config["momentum_start"] < m < method.config["momentum_end"]
    method.after_optimizer_step(step, total)
    for s, t0, t1 in zip(student, before, method.teacher_encoder.parameters(), strict=True):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)
    assert method.momentum(total - 1, total) == 1.0


@pytest.mark.parametrize(
    ("encoder", "size", "local"),
    [("vit_tiny_p8", 32, 16), ("resnet18", 64, 32), ("resnet18", 224, 96), ("resnet18", 32, 32)],
)
def test_local_crops_are_smaller_valid_inputs(encoder: str, size: int, local: int) -> None:
    method = _dino(encoder, n_local_views=3)
    recipes = method.view_recipes(size)
    assert [r.size for r in recipes] == [size, size, local, local, local]
    assert recipes[0].scale == (0.4, 1.0) and recipes[2].scale == (0.05, 0.4)
    method.encoder.check_input_size((local, local))


def test_multicrop_step_and_teacher_temperature_warmup() -> None:
    method = _dino(n_local_views=2, warmup_teacher_temp_fraction=0.5, recipe="paper")
    out = method.training_step(_views(method), step=0, total_steps=10)
    assert torch.isfinite(out.loss) and out.embeddings.shape == (4, method.encoder.num_features)
    assert out.logs["teacher_temp"] == pytest.approx(0.04)
    assert method._teacher_temp(5, 10) == pytest.approx(0.07)
    assert 0.04 < method._teacher_temp(2, 10) < 0.07
