"""SimCLR, assembled from lightly's projection head and NT-Xent loss.

Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive Learning
of Visual Representations", ICML 2020, https://arxiv.org/abs/2002.05709.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

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


@METHODS.register("simclr")
class SimCLR(SSLMethod):
    """SimCLR: NT-Xent between two views with the other images of the batch as negatives.

    Pooled encoder features go through lightly's :class:`SimCLRProjectionHead`
    (2-layer MLP with batch norm); lightly's :class:`NTXentLoss` contrasts the 2B
    L2-normalised projections (one positive and 2B - 2 negatives per view).

    Config (besides the common optimisation keys):
        crop_min, jitter: Smallest area fraction of the random resized crop, in (0, 1],
            and colour-jitter strength, in [0, 1) (paper values under ``recipe: paper``;
            ``recipe: small`` sets its own, see ``small_recipe``).
        hidden_dim: Hidden width of the projection head (paper: 2048 for ResNet-50;
            512 here, the width of ResNet-18 features).
        output_dim: Size of the projections (paper: 128).
        temperature: NT-Xent temperature, > 0. Default 0.5, lightly's default and
            suited to the small batches (<= 512) of this benchmark; the paper uses
            0.1 at batch 4096 on ImageNet and tunes it in {0.1, 0.5, 1.0} on CIFAR-10.
        optimizer, lr, weight_decay: LARS, 0.3 per 256 images (linear scaling),
            1e-6: the paper recipe (``recipe: paper``, batches >= 256).

    Small-batch recipe (``recipe: small``, chosen below 256 images per step):
    AdamW at 3e-3 x sqrt(B/256) (1.06e-3 at batch 32), weight decay 1e-4, 5 %
    warm-up, temperature 0.2, crops from 30 % of the image, no intensity jitter.
    Evidence (``perf/bench_recipes.py``, BUSI 64 px, 300 steps x 32 images, train
    split for SSL, validation split for the probe): the paper recipe stays at
    chance (loss 4.21 -> 4.06, chance ln(63) = 4.14); the small recipe with
    jitter 0.4 reaches loss 1.97 and linear-probe AUC@100 % 0.826, without
    jitter 1.28 and 0.862 (the batch-norm calibrated random init: 0.696);
    lr 6e-3 gave 0.873, within noise of 3e-3, so the shared value was kept.
    """

    name: ClassVar[str] = "simclr"
    family: ClassVar[str] = "contrastive"
    paper: ClassVar[str] = (
        "Chen et al., A Simple Framework for Contrastive Learning of Visual "
        "Representations, ICML 2020, arXiv:2002.05709"
    )
    default_config: ClassVar[dict[str, Any]] = {
        "crop_min": 0.08,
        "jitter": 0.8,
        "hidden_dim": 512,
        "output_dim": 128,
        "temperature": 0.5,
        "optimizer": "lars",
        "lr": 0.3,
        "weight_decay": 1e-6,
    }
    small_recipe: ClassVar[dict[str, Any]] = {
        **SMALL_OPTIMISATION,
        **SMALL_VIEWS,
        "temperature": 0.2,
    }

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__(encoder, **config)
        cfg = self.config
        self.projection_head = SimCLRProjectionHead(
            encoder.num_features, cfg["hidden_dim"], cfg["output_dim"]
        )
        self.criterion = NTXentLoss(
            temperature=cfg["temperature"], gather_distributed=gather_across_ranks()
        )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        cls.require_int(config, "hidden_dim", "output_dim", ge=1)
        cls.require_number(config, "temperature", gt=0)

    @classmethod
    def chance_loss(cls, config: dict[str, Any], batch_size: int) -> float | None:
        """NT-Xent of uniform similarities: ln(2B - 1) (one positive among 2B - 1 candidates)."""
        return math.log(2 * batch_size - 1)

    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """Two views from the same distribution, the paper's recipe for greyscale.

        Random resized crop (scale 0.08-1) and horizontal flip as in the paper.
        Colour jitter (strength 1, p 0.8) keeps its greyscale part: brightness 0.8
        becomes an intensity scale in [0.2, 1.8] and contrast 0.8 a gamma in
        [1/1.8, 1.8]; saturation, hue and random greyscale have no greyscale
        counterpart. Gaussian blur p 0.5 with sigma 0.1-2 px at 224 px, rescaled to
        ``size``. Rotation, vertical flips and noise are not in the paper (off).
        """
        recipe = colour_jitter_recipe(
            size, scale=(self.config["crop_min"], 1.0), jitter=self.config["jitter"], blur_p=0.5
        )
        return [recipe, recipe]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Projections ``(B, output_dim)`` of a batch of views."""
        return self.projection_head(self.encoder.forward_features(x))

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        # One forward over both views: batch norm sees all 2B views, like the
        # paper's global batch norm (and like lightly's SimCLR benchmark).
        features = self.encoder.forward_features(torch.cat(views[:2]))
        z0, z1 = self.projection_head(features).chunk(2)
        loss = self.criterion(z0, z1)
        # collapse indicator on the pooled features of the first view
        return StepOutput(loss=loss, embeddings=features[: views[0].shape[0]].detach())
