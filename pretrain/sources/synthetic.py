"""``synthetic``: a file of generated images (its train samples, or all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.sources.base import SOURCES, Source


@SOURCES.register("synthetic")
class SyntheticSource(Source):
    """A generated-image file: its train samples, or all if none is marked train."""

    name = "synthetic"
    uses_synthetic = True

    def __init__(
        self,
        *,
        synthetic: str | Path | None = None,
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        **_: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, device=device)
        self.synthetic_ratio = 1.0
        self._add_pool("synthetic", synthetic, self.batch_size)
