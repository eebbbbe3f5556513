"""Barlow Twins, assembled from lightly's projection head and loss.

Zbontar, Jing, Misra, LeCun and Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021, https://arxiv.org/abs/2103.03230.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

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


@METHODS.register("barlowtwins")
class BarlowTwins(SSLMethod):
    """Barlow Twins: the cross-correlation of the two views' projections is pushed to identity.

    Shared encoder and lightly's :class:`BarlowTwinsProjectionHead` (3 linear
    layers, batch norm and ReLU after the first two). Lightly's
    :class:`BarlowTwinsLoss` standardises each projection dimension over the
    batch, then sums the squared off-identity of the D x D cross-correlation
    matrix: invariance on the diagonal, ``lambda_param`` times redundancy
    reduction off it. Needs batches of at least 2 (per-dimension batch statistics).

    Config (besides the common optimisation keys):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        hidden_dim: Width of the two hidden layers (paper: 8192; 2048 here, the
            size lightly uses for ResNet-18 on CIFAR-10, 16x cheaper in the D x D loss).
        output_dim: Size of the projections (paper: 8192; 2048 here; 512 in the
            small recipe, see below).
        lambda_param: Weight of the redundancy-reduction term, > 0 (paper: 5e-3,
            tuned at D = 8192; about 1/D is a common rescaling for other sizes).
        optimizer, lr, weight_decay: LARS, 0.2 per 256 images, 1.5e-6 (paper; its
            separate 0.0048 rate for biases and batch norm is not reproduced).
    """

    name: ClassVar[str] = "barlowtwins"
    family: ClassVar[str] = "non-contrastive"
    #: 33 images/s against SimCLR's 42 (README method table): 1.27x per image
    cost: ClassVar[float] = 1.27
    paper: ClassVar[str] = (
        "Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy "
        "Reduction, ICML 2021, arXiv:2103.03230"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.08,
        "jitter": 0.4,
        "hidden_dim": 2048,
        "output_dim": 2048,
        "lambda_param": 5e-3,
        "optimizer": "lars",
        "lr": 0.2,
        "weight_decay": 1.5e-6,
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        **SMALL_VIEWS,
        # A 512-d projection. Each off-diagonal entry of a cross-correlation estimated
        # from B images has variance ~1/B even for independent dimensions, so the
        # redundancy term has a noise floor of about lambda * D^2 / B: 655 at D = 2048
        # and B = 32, a third of the largest invariance term (D), against 41 at D = 512.
        # On BUSI validation (300 steps x 32, 64 px) the linear probe's AUC@100 % rose
        # from 0.738 (D = 2048) to 0.837 (D = 512); calibrated random init: 0.696.
        "output_dim": 512,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config
        self.projection_head = BarlowTwinsProjectionHead(
            encoder.num_features, cfg["hidden_dim"], cfg["output_dim"]
        )
        self.criterion = BarlowTwinsLoss(
            lambda_param=cfg["lambda_param"], gather_distributed=gather_across_ranks()
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "hidden_dim", "output_dim", ge=1)
        cls.require_number(config, "lambda_param", gt=0)

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """The BYOL asymmetric pair the paper uses, adapted to greyscale.

        Random resized crop (scale 0.08-1), horizontal flip, colour jitter p 0.8
        with its greyscale part kept (brightness 0.4 as an intensity scale in
        [0.6, 1.4], contrast 0.4 as a gamma in [1/1.4, 1.4]; saturation, hue and
        random greyscale do not apply), Gaussian blur (sigma 0.1-2 px at 224 px,
        rescaled to ``size``) with p 1.0 on view 0 and 0.1 on view 1. Solarisation
        (p 0 / 0.2) is not available in :class:`ViewRecipe` and is left out.
        """
        view0 = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=1.0
        )
        return [view0, dataclasses.replace(view0, blur_p=0.1)]

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        f0 = self.encoder.forward_features(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.encoder.forward_features(views[1]))
        loss = self.criterion(z0, z1)
        return StepOutput(loss=loss, embeddings=f0.detach())
