"""``synthetic``: a file of generated images (its train samples, or all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.sources.base import SOURCES, Source


@SOURCES.register("synthetic")
class SyntheticSource(Source):
    """A generated-image file: its train samples, or all if none is marked train.

    ``pool_size`` keeps the first N of them (an int), as many as the real file's train
    split (``matched``: the pool-matched arm, ``real`` gives the file) or all (None).
    """

    name = "synthetic"
    uses_synthetic = True

    def __init__(
        self,
        *,
        synthetic: str | Path | None = None,
        real: str | Path | None = None,
        pool_size: int | str | None = None,
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        **_: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, device=device)
        self.synthetic_ratio = 1.0
        self._add_pool("synthetic", synthetic, self.batch_size, pool_size=pool_size, real=real)
