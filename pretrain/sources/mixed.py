"""``mixed``: real and synthetic images at an exact ratio in every batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import DataError
from pretrain.sources.base import SOURCES, Source, SourceError


@SOURCES.register("mixed")
class MixedSource(Source):
    """Real and synthetic images with exactly ``round(ratio * B)`` synthetic per batch."""

    name = "mixed"
    uses_real = True
    uses_synthetic = True
    takes_ratio = True

    def __init__(
        self,
        *,
        real: str | Path | None = None,
        synthetic: str | Path | None = None,
        synthetic_ratio: float = 0.5,
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        **_: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, device=device)
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise SourceError(
                f"source 'mixed': synthetic_ratio must be in [0, 1], got {synthetic_ratio}"
            )
        self.synthetic_ratio = float(synthetic_ratio)
        n_syn = mixed_counts(self.synthetic_ratio, self.batch_size)[1]
        real_pool = self._add_pool("real", real, self.batch_size - n_syn)
        syn_pool = self._add_pool("synthetic", synthetic, n_syn)
        if syn_pool.image_shape != real_pool.image_shape:
            raise DataError(
                f"{syn_pool.path}: image shape {syn_pool.image_shape} differs from "
                f"{real_pool.image_shape} of the real file {real_pool.path}"
            )


def mixed_counts(synthetic_ratio: float, batch_size: int) -> tuple[int, int]:
    """(real, synthetic) images per batch: ``round(ratio * B)`` synthetic."""
    n_syn = round(synthetic_ratio * batch_size)
    return batch_size - n_syn, n_syn
