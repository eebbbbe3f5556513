"""SimSiam, assembled from lightly's heads and loss.

Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
https://arxiv.org/abs/2011.10566.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder
from pretrain.methods.base import (
    METHODS,
    SMALL_OPTIMISATION,
    SMALL_VIEWS,
    SSLMethod,
    StepOutput,
    colour_jitter_recipe,
)


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    """SimSiam: each view's prediction matches the other view's stop-gradient projection.

    Shared encoder, lightly's :class:`SimSiamProjectionHead` (3-layer MLP, batch
    norm on every layer) and :class:`SimSiamPredictionHead` (2-layer bottleneck
    MLP). The loss is the paper's symmetric
    ``0.5 * (ncs(p0, stopgrad(z1)) + ncs(p1, stopgrad(z0)))`` with lightly's
    :class:`NegativeCosineSimilarity` (range [-1, 1]); the stop-gradient is what
    prevents collapse, there is no momentum network and there are no negatives.

    Config (besides the common optimisation keys):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        hidden_dim: Hidden width of the projection MLP (paper: 2048; 512 here).
        output_dim: Size of projections and predictions (paper: 2048; 512 here).
        pred_hidden_dim: Bottleneck of the prediction MLP (paper: 512 = output_dim / 4;
            128 here, the same ratio).
        optimizer, lr, weight_decay: SGD, 0.05 per 256 images, 1e-4 (paper). The
            paper's fixed (undecayed) predictor learning rate is not reproduced:
            the shared loop schedules every parameter group alike.
    """

    name: ClassVar[str] = "simsiam"
    family: ClassVar[str] = "non-contrastive"
    #: 36 images/s against SimCLR's 42 (README method table): 1.17x per image
    cost: ClassVar[float] = 1.17
    paper: ClassVar[str] = (
        "Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021, arXiv:2011.10566"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.2,
        "jitter": 0.4,
        "hidden_dim": 512,
        "output_dim": 512,
        "pred_hidden_dim": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "weight_decay": 1e-4,
    }
    small_recipe: ClassVar[dict[str, Any]] = {**SMALL_OPTIMISATION, **SMALL_VIEWS}

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config
        self.projection_head = SimSiamProjectionHead(
            encoder.num_features, cfg["hidden_dim"], cfg["output_dim"]
        )
        self.prediction_head = SimSiamPredictionHead(
            cfg["output_dim"], cfg["pred_hidden_dim"], cfg["output_dim"]
        )
        self.criterion = NegativeCosineSimilarity()

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "hidden_dim", "output_dim", "pred_hidden_dim", ge=1)

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """Two views from the same distribution (the MoCo v2 recipe the paper uses).

        Random resized crop (scale 0.2-1), horizontal flip, colour jitter p 0.8 with
        its greyscale part kept (brightness 0.4 as an intensity scale in [0.6, 1.4],
        contrast 0.4 as a gamma in [1/1.4, 1.4]; saturation, hue and random
        greyscale do not apply), Gaussian blur p 0.5 with sigma 0.1-2 px at 224 px
        rescaled to ``size``. No rotation or noise.
        """
        recipe = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=0.5
        )
        return [recipe, recipe]

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        f0 = self.encoder.forward_features(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.encoder.forward_features(views[1]))
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return StepOutput(loss=loss, embeddings=f0.detach())
