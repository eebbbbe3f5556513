"""DINO: self-distillation with no labels.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021 (https://arxiv.org/abs/2104.14294).

A student (the shared encoder + a DINO head) is trained to match the centred,
sharpened output of a momentum teacher (an exponential moving average of the
student). Multi-crop: the teacher sees the two global views only, the student
sees all views, and every student view is matched to every *other* teacher view.
Built from lightly's ``DINOProjectionHead``, ``DINOLoss`` (centring, teacher
temperature), ``update_momentum`` and ``cosine_schedule``. Works with CNN and
ViT encoders (the head has no batch norm by default, as in the paper's ViTs).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, ClassVar

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from torch import nn

from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    SMALL_OPTIMISATION,
    MomentumMethod,
    StepOutput,
    colour_jitter_recipe,
    momentum_copy,
)


def _pair(value: Any) -> tuple[float, float]:
    low, high = value
    return float(low), float(high)


@METHODS.register("dino")
class DINO(MomentumMethod):
    """DINO (Caron et al. 2021) around the shared encoder.

    Config (besides :data:`~pretrain.methods.base.COMMON_DEFAULTS`):
        head_hidden_dim / head_bottleneck_dim / head_out_dim: DINO head (paper:
            2048 / 256 / 65536; ``head_out_dim`` is 2048 at CPU scale).
        head_batch_norm: Batch norm in the head MLP (paper: off for ViTs; on in the
            small recipe, which collapses without it at batch 32).
        norm_last_layer: Weight-normalised last layer with fixed norm (paper: on).
        momentum_start / momentum_end: Teacher EMA momentum, cosine schedule.
        teacher_temp / warmup_teacher_temp / warmup_teacher_temp_fraction: Linear
            teacher-temperature warm-up 0.04 -> 0.07 over the first 30% of steps.
        student_temp / center_momentum: Student temperature and centring EMA.
        n_local_views: Number of small local crops (0 disables multi-crop).
        jitter: Colour-jitter strength of every view, in [0, 1) (paper: 0.4; the
            small recipe: 0, as the other joint-embedding methods).
        global_scale / local_scale: Crop area ranges of global / local views.
        clip_grad: Gradient-norm clipping (paper: 3.0).
    """

    name: ClassVar[str] = "dino"
    family: ClassVar[str] = "distillation"
    #: 22 images/s against SimCLR's 42 (README method table): 1.91x per image
    cost: ClassVar[float] = 1.91
    paper: ClassVar[str] = (
        "Caron et al., Emerging Properties in Self-Supervised Vision Transformers (DINO), "
        "ICCV 2021, arXiv:2104.14294"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "lr": 5e-4,
        "weight_decay": 0.04,
        "warmup_fraction": 0.1,
        "clip_grad": 3.0,
        "head_hidden_dim": 2048,
        "head_bottleneck_dim": 256,
        "head_out_dim": 2048,
        "head_batch_norm": False,
        "norm_last_layer": True,
        "momentum_start": 0.996,
        "momentum_end": 1.0,
        "teacher_temp": 0.07,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_fraction": 0.3,
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "n_local_views": 2,
        "jitter": 0.4,
        "global_scale": (0.4, 1.0),
        "local_scale": (0.05, 0.4),
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        "warmup_fraction": 0.1,
        "momentum_start": 0.99,
        "jitter": 0.0,
        # Batch norm in the head MLP and a constant teacher temperature 0.04. On BUSI
        # (300 steps x 32, 64 px, ResNet-18) without them the output collapsed to uniform
        # (loss 7.47 -> 7.62 = ln 2048; validation linear-probe AUC@100 % 0.673, below the
        # calibrated random init's 0.696); temperature 0.04 alone: still collapsed (0.659);
        # head batch norm alone: 0.782 but the loss stayed within 1 % of chance (7.63 ->
        # 7.56); both: 0.792 and loss 7.61 -> 7.15.
        "head_batch_norm": True,
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config

        def make_head() -> DINOProjectionHead:
            with warnings.catch_warnings():  # lightly still uses nn.utils.weight_norm
                warnings.filterwarnings("ignore", ".*weight_norm", FutureWarning)
                return DINOProjectionHead(
                    input_dim=encoder.num_features,
                    hidden_dim=cfg["head_hidden_dim"],
                    bottleneck_dim=cfg["head_bottleneck_dim"],
                    output_dim=cfg["head_out_dim"],
                    batch_norm=cfg["head_batch_norm"],
                    norm_last_layer=cfg["norm_last_layer"],
                )

        self.student_head = make_head()
        # A weight-normalised layer cannot be deep-copied: build a twin and copy the state.
        self.teacher_head = make_head()
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher_encoder = momentum_copy(encoder)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=cfg["head_out_dim"],
            teacher_temp=cfg["teacher_temp"],
            student_temp=cfg["student_temp"],
            center_momentum=cfg["center_momentum"],
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "head_hidden_dim", "head_bottleneck_dim", "head_out_dim", ge=1)
        cls.require_number(config, "momentum_start", ge=0, le=1)
        cls.require_number(config, "momentum_end", ge="momentum_start", le=1)
        cls.require_number(config, "teacher_temp", "warmup_teacher_temp", "student_temp", gt=0)
        cls.require_number(config, "warmup_teacher_temp_fraction", ge=0, le=1)
        cls.require_number(config, "center_momentum", ge=0, lt=1)
        cls.require_int(config, "n_local_views", ge=0)
        for key in ("global_scale", "local_scale"):
            try:
                low, high = _pair(config[key])
            except (TypeError, ValueError):
                raise cls.config_error(f"{key} must be a pair (low, high)") from None
            if not 0 < low <= high <= 1:
                raise cls.config_error(f"{key} must be (low, high) with 0 < low <= high <= 1")

    def local_size(self, size: int) -> int:
        """Local crop size: ``size // 2`` floored to a size the encoder accepts.

        With 224 px global views and a stride-32 CNN this gives DINO's 96 px.
        """
        multiple = self.encoder.size_multiple
        return max(multiple, (size // 2) // multiple * multiple)

    @classmethod
    def chance_loss(cls, config: dict[str, Any], batch_size: int) -> float | None:
        """Cross-entropy of a uniform student against any teacher: ln(out_dim)."""
        return math.log(config["head_out_dim"])

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """DINO's multi-crop (its appendix / ``DataAugmentationDINO``), for greyscale.

        Two global views at ``size`` (crop scale ``global_scale``) and
        ``n_local_views`` local views at :meth:`local_size` (``local_scale``),
        all with horizontal flip and colour jitter p 0.8 whose greyscale part is
        kept (brightness 0.4 -> intensity scale [0.6, 1.4], contrast 0.4 -> gamma
        [1/1.4, 1.4]). Gaussian blur (sigma 0.1-2 px at 224 px, rescaled to
        ``size``) with p 1.0 / 0.1 on the global views and 0.5 on the local ones.
        Solarisation of the second global view has no counterpart in
        :class:`ViewRecipe`; rotation, vertical flips and noise are off.
        """
        global_scale = _pair(self.config["global_scale"])
        view0 = colour_jitter_recipe(
            size, scale=global_scale, jitter=self.config["jitter"], blur_p=1.0
        )
        local = dataclasses.replace(
            view0, size=self.local_size(size), scale=_pair(self.config["local_scale"]), blur_p=0.5
        )
        return [view0, dataclasses.replace(view0, blur_p=0.1)] + [local] * self.config[
            "n_local_views"
        ]

    def _teacher_temp(self, step: int, total_steps: int) -> float:
        cfg = self.config
        warmup = cfg["warmup_teacher_temp_fraction"] * total_steps
        if step >= warmup:
            return float(cfg["teacher_temp"])
        t = step / warmup
        return float(
            cfg["warmup_teacher_temp"] + t * (cfg["teacher_temp"] - cfg["warmup_teacher_temp"])
        )

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        n_expected = 2 + self.config["n_local_views"]
        if len(views) != n_expected:
            raise ValueError(f"dino expects {n_expected} views, got {len(views)}")
        global_views = torch.cat(views[:2])
        batch = views[0].shape[0]
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher_encoder.forward_features(global_views))
        student_features = [self.encoder.forward_features(global_views)]
        if len(views) > 2:  # all local views share one size: one forward pass
            student_features.append(self.encoder.forward_features(torch.cat(views[2:])))
        student_out = self.student_head(torch.cat(student_features))
        teacher_temp = self._teacher_temp(step, total_steps)
        loss = self.criterion(
            list(teacher_out.chunk(2)), list(student_out.split(batch)), teacher_temp=teacher_temp
        )
        embeddings = student_features[0][:batch].detach()
        return StepOutput(loss=loss, embeddings=embeddings, logs={"teacher_temp": teacher_temp})

    def momentum(self, step: int, total_steps: int) -> float:
        """Teacher EMA momentum at ``step`` (cosine from start to end value)."""
        return self.momentum_at(step, total_steps)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Teacher: encoder and DINO head, cosine-scheduled momentum."""
        return [(self.encoder, self.teacher_encoder), (self.student_head, self.teacher_head)]
