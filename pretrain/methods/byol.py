"""BYOL, assembled from lightly's heads, loss and momentum utilities.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS 2020, https://arxiv.org/abs/2006.07733.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import nn

from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    SMALL_OPTIMISATION,
    SMALL_VIEWS,
    MomentumMethod,
    StepOutput,
    colour_jitter_recipe,
    momentum_copy,
)


@METHODS.register("byol")
class BYOL(MomentumMethod):
    """BYOL: an online network predicts the projections of a momentum target network.

    Online: shared encoder, lightly's :class:`BYOLProjectionHead` and
    :class:`BYOLPredictionHead`; target: an exponential moving average of the
    encoder and projection head (no gradients). The loss is lightly's
    :class:`NegativeCosineSimilarity`, symmetrised over the two views and scaled
    as in lightly's benchmark: ``2 * (ncs(p0, t1) + ncs(p1, t0))``, which is the
    paper's sum of normalised squared errors minus 4 (range [-4, 4]). The family
    is ``distillation``: a student is trained to match an EMA teacher, as in DINO.

    Config (besides the common optimisation keys):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        hidden_dim: Hidden width of both MLPs (paper: 4096; 1024 here).
        output_dim: Size of projections and predictions (paper: 256).
        momentum_start: Target momentum at the first step, in [0, 1); the paper's
            0.996 suits 300+ ImageNet epochs; 0.99 (the authors' 100-epoch setting,
            used by lightly's benchmark) lets the target follow in short runs.
        momentum_end: Cosine-scheduled final momentum, in [momentum_start, 1] (paper: 1).
        optimizer, lr, weight_decay: LARS, 0.2 per 256 images, 1.5e-6 (paper).
    """

    name: ClassVar[str] = "byol"
    family: ClassVar[str] = "distillation"
    #: 27 images/s against SimCLR's 42 (README method table): 1.56x per image
    cost: ClassVar[float] = 1.56
    paper: ClassVar[str] = (
        "Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised "
        "Learning, NeurIPS 2020, arXiv:2006.07733"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.08,
        "jitter": 0.4,
        "hidden_dim": 1024,
        "output_dim": 256,
        "momentum_start": 0.99,
        "momentum_end": 1.0,
        "optimizer": "lars",
        "lr": 0.2,
        "weight_decay": 1.5e-6,
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        **SMALL_VIEWS,
        # keeps the paper's jitter: on BUSI validation, linear-probe AUC@100 % 0.753 with
        # jitter 0.4 against 0.728 without (perf/bench_recipes.py)
        "jitter": 0.4,
        # base lr 1e-2 (3.5e-3 at batch 32) and a target that follows faster (momentum
        # from 0.95): 0.764 with the lr alone, 0.777 with both (calibrated random init
        # 0.696): in 300 steps a 0.99 target barely moves
        "lr": 1e-2,
        "momentum_start": 0.95,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        hidden, out = self.config["hidden_dim"], self.config["output_dim"]
        self.projection_head = BYOLProjectionHead(encoder.num_features, hidden, out)
        self.prediction_head = BYOLPredictionHead(out, hidden, out)
        self.encoder_momentum = momentum_copy(encoder)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NegativeCosineSimilarity()

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "hidden_dim", "output_dim", ge=1)
        cls.require_number(config, "momentum_start", ge=0, lt=1)
        cls.require_number(config, "momentum_end", ge="momentum_start", le=1)

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """The paper's asymmetric pair (its Table 6), adapted to greyscale.

        Both views: random resized crop (scale 0.08-1), horizontal flip, colour
        jitter p 0.8 whose greyscale part is kept (brightness 0.4 as an intensity
        scale in [0.6, 1.4], contrast 0.4 as a gamma in [1/1.4, 1.4]; saturation,
        hue and random greyscale do not apply). Gaussian blur (sigma 0.1-2 px at
        224 px, rescaled to ``size``) with p 1.0 on view 0 and 0.1 on view 1.
        Solarisation (p 0 / 0.2) is not available in :class:`ViewRecipe` and is
        left out; an intensity inversion of the bright half also does not keep
        the meaning of CT/MR/X-ray intensities. No rotation or noise.
        """
        view0 = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=1.0
        )
        return [view0, dataclasses.replace(view0, blur_p=0.1)]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Target network: encoder and projection head, cosine-scheduled momentum."""
        return [
            (self.encoder, self.encoder_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        f0 = self.encoder.forward_features(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.encoder.forward_features(views[1]))
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        with torch.no_grad():
            t0 = self.projection_head_momentum(self.encoder_momentum.forward_features(views[0]))
            t1 = self.projection_head_momentum(self.encoder_momentum.forward_features(views[1]))
        loss = 2 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        logs = {"ema_momentum": self.momentum_at(step, total_steps)}
        return StepOutput(loss=loss, embeddings=f0.detach(), logs=logs)
