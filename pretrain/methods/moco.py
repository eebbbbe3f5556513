"""MoCo v2, assembled from lightly's projection head, memory bank loss and momentum utilities.

Chen, Fan, Girshick and He, "Improved Baselines with Momentum Contrastive
Learning", arXiv:2003.04297, 2020 (on He et al., "Momentum Contrast for
Unsupervised Visual Representation Learning", CVPR 2020).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import nn

from pretrain.augment import ViewRecipe
from pretrain.distributed import gather_across_ranks
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


@METHODS.register("mocov2", aliases=("moco",))
class MoCoV2(MomentumMethod):
    """MoCo v2: queries against momentum-encoder keys and a queue of past keys.

    The query network is the shared encoder plus lightly's :class:`MoCoProjectionHead`
    (2-layer MLP, no batch norm); the key network is an exponential moving average
    of it (no gradients). Lightly's :class:`NTXentLoss` with a memory bank is the
    InfoNCE loss of the paper: view 0 is the query, view 1 the key, and the keys
    of the last ``memory_bank_size`` images are the negatives. The loss is not
    symmetrised (as in the paper). Shuffle BN is not used: on one device the
    whole key batch shares one batch-norm statistic anyway.

    Config (besides the common optimisation keys):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        hidden_dim: Hidden width of the projection head (paper: 2048; 512 here).
        output_dim: Size of the projections and queued keys (paper: 128).
        temperature: InfoNCE temperature, > 0 (paper: 0.2).
        memory_bank_size: Number of queued negative keys, > 0 (paper: 65536; 4096
            here). Keep it below the number of training images, or stale keys of
            the query's own image become negatives.
        momentum_start: Momentum of the key network at the first step, in [0, 1).
            The paper's fixed 0.999 suits 200 ImageNet epochs; short runs need the
            key network to follow faster, so it starts at 0.99 ...
        momentum_end: ... and follows a cosine schedule to this value, in
            [momentum_start, 1] (1.0 as in BYOL; set it to momentum_start for a fixed value).
        optimizer, lr, weight_decay: SGD, 0.03 per 256 images, 1e-4 (paper).
    """

    name: ClassVar[str] = "mocov2"
    family: ClassVar[str] = "contrastive"
    #: 59 images/s against SimCLR's 42 (README method table): 0.71x per image
    cost: ClassVar[float] = 0.71
    paper: ClassVar[str] = (
        "Chen et al., Improved Baselines with Momentum Contrastive Learning, arXiv:2003.04297, 2020"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.2,
        "jitter": 0.4,
        "hidden_dim": 512,
        "output_dim": 128,
        "temperature": 0.2,
        "memory_bank_size": 4096,
        "momentum_start": 0.99,
        "momentum_end": 1.0,
        "optimizer": "sgd",
        "lr": 0.03,
        "weight_decay": 1e-4,
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        **SMALL_VIEWS,
        "memory_bank_size": 256,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config
        self.projection_head = MoCoProjectionHead(
            encoder.num_features, cfg["hidden_dim"], cfg["output_dim"]
        )
        self.encoder_momentum = momentum_copy(encoder)
        self.projection_head_momentum = momentum_copy(self.projection_head)
        self.criterion = NTXentLoss(
            temperature=cfg["temperature"],
            memory_bank_size=(cfg["memory_bank_size"], cfg["output_dim"]),
            gather_distributed=gather_across_ranks(),
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "hidden_dim", "output_dim", "memory_bank_size", ge=1)
        cls.require_number(config, "temperature", gt=0)
        cls.require_number(config, "momentum_start", ge=0, lt=1)
        cls.require_number(config, "momentum_end", ge="momentum_start", le=1)

    @classmethod
    def chance_loss(cls, config: dict[str, Any], batch_size: int) -> float | None:
        """InfoNCE against the queue at uniform similarities: ln(queue + 1)."""
        return math.log(config["memory_bank_size"] + 1)

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """Query and key views from the same distribution (MoCo v2 = SimCLR-style recipe).

        Random resized crop (scale 0.2-1) and horizontal flip. Colour jitter
        (0.4, 0.4, 0.4, 0.1; p 0.8) keeps its greyscale part: brightness 0.4 as an
        intensity scale in [0.6, 1.4], contrast 0.4 as a gamma in [1/1.4, 1.4].
        Random greyscale is a no-op on greyscale images. Gaussian blur p 0.5 with
        sigma 0.1-2 px at 224 px, rescaled to ``size``. No rotation or noise.
        """
        recipe = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=0.5
        )
        return [recipe, recipe]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """Key network: encoder and projection head, cosine-scheduled momentum."""
        return [
            (self.encoder, self.encoder_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        features = self.encoder.forward_features(views[0])
        query = self.projection_head(features)
        with torch.no_grad():
            key = self.projection_head_momentum(self.encoder_momentum.forward_features(views[1]))
        loss = self.criterion(query, key)  # enqueues the keys after reading the queue
        logs = {"ema_momentum": self.momentum_at(step, total_steps)}
        return StepOutput(loss=loss, embeddings=features.detach(), logs=logs)
