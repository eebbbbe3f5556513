"""``real``: the train split of a real sslbench file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.sources.base import SOURCES, Source


@SOURCES.register("real")
class RealSource(Source):
    """The train split of a real dataset file (``synthetic`` is ignored)."""

    name = "real"
    uses_real = True

    def __init__(
        self,
        *,
        real: str | Path | None = None,
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        **_: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, device=device)
        self._add_pool("real", real, self.batch_size)
