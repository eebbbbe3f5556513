"""VICReg: Variance-Invariance-Covariance Regularization.

Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning", ICLR 2022 (https://arxiv.org/abs/2105.04906).

Two views of each image go through the shared encoder and an MLP *expander*;
the loss pulls the two expanded embeddings together (invariance) while keeping
the standard deviation of every dimension above 1 (variance) and decorrelating
the dimensions (covariance). No negatives, no momentum encoder, no predictor.
Built from lightly's ``VICRegProjectionHead`` and ``VICRegLoss``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from lightly.loss import VICRegLoss
from lightly.loss.vicreg_loss import invariance_loss, variance_loss
from lightly.models.modules.heads import VICRegProjectionHead

from pretrain.augment import ViewRecipe
from pretrain.distributed import gather_across_ranks
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    SMALL_OPTIMISATION,
    SMALL_VIEWS,
    SSLMethod,
    StepOutput,
    colour_jitter_recipe,
)


@METHODS.register("vicreg")
class VICReg(SSLMethod):
    """VICReg (Bardes et al. 2022) around the shared encoder.

    Config (besides :data:`~pretrain.methods.base.COMMON_DEFAULTS`):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        proj_hidden_dim / proj_output_dim / proj_layers: Expander MLP (the paper
            uses 3 layers of 8192 units; 2048 keeps CPU runs cheap).
        lambda_param / mu_param / nu_param: Weights of the invariance, variance
            and covariance terms (paper: 25, 25, 1).

    The optimiser defaults follow the paper (LARS, base lr 0.2 for batch 256,
    weight decay 1e-6).
    """

    name: ClassVar[str] = "vicreg"
    family: ClassVar[str] = "non-contrastive"
    #: 24 images/s against SimCLR's 42 (README method table): 1.75x per image
    cost: ClassVar[float] = 1.75
    paper: ClassVar[str] = (
        "Bardes, Ponce & LeCun, VICReg: Variance-Invariance-Covariance Regularization for "
        "Self-Supervised Learning, ICLR 2022, arXiv:2105.04906"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.08,
        "jitter": 0.4,
        "optimizer": "lars",
        "lr": 0.2,
        "weight_decay": 1e-6,
        "proj_hidden_dim": 2048,
        "proj_output_dim": 2048,
        "proj_layers": 3,
        "lambda_param": 25.0,
        "mu_param": 25.0,
        "nu_param": 1.0,
    }
    small_recipe: ClassVar[dict[str, Any]] = {**SMALL_OPTIMISATION, **SMALL_VIEWS}

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config
        self.projection_head = VICRegProjectionHead(
            input_dim=encoder.num_features,
            hidden_dim=cfg["proj_hidden_dim"],
            output_dim=cfg["proj_output_dim"],
            num_layers=cfg["proj_layers"],
        )
        self.criterion = VICRegLoss(
            lambda_param=cfg["lambda_param"],
            mu_param=cfg["mu_param"],
            nu_param=cfg["nu_param"],
            gather_distributed=gather_across_ranks(),
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "proj_hidden_dim", "proj_output_dim", ge=1)
        cls.require_int(config, "proj_layers", ge=2)
        cls.require_number(config, "lambda_param", "mu_param", "nu_param", ge=0)
        if config["lambda_param"] + config["mu_param"] + config["nu_param"] <= 0:
            raise cls.config_error("at least one loss weight must be > 0")

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """BYOL's asymmetric pair (VICReg's appendix C.1), adapted to greyscale.

        Random resized crop (scale 0.08-1) and horizontal flip; colour jitter
        (p 0.8) keeps its greyscale part: brightness 0.4 becomes an intensity
        scale in [0.6, 1.4] and contrast 0.4 a gamma in [1/1.4, 1.4]. Gaussian
        blur (sigma 0.1-2 px at 224 px, rescaled to ``size``) with p 1.0 on view 0
        and 0.1 on view 1. Solarisation (p 0 / 0.2) has no counterpart in
        :class:`ViewRecipe`; rotation, vertical flips and noise are not in the
        paper (off).
        """
        view0 = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=1.0
        )
        return [view0, dataclasses.replace(view0, blur_p=0.1)]

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        if len(views) != 2:
            raise ValueError(f"vicreg expects 2 views, got {len(views)}")
        features = [self.encoder.forward_features(v) for v in views]
        z_a, z_b = (self.projection_head(f) for f in features)
        loss = self.criterion(z_a, z_b)
        with torch.no_grad():
            logs = {
                "invariance": float(invariance_loss(z_a, z_b)),
                "variance": float(0.5 * (variance_loss(z_a) + variance_loss(z_b))),
            }
        return StepOutput(loss=loss, embeddings=features[0].detach(), logs=logs)
