"""``mixed``: real and synthetic images in every batch, replacing or added to the real ones.

Two modes answer two questions (README, "Mixing modes"):

* ``replace`` (the default): a batch of ``B`` images holds ``round(q * B)`` synthetic
  images and ``B - round(q * B)`` real ones. At the same steps x batch, the mixed arm
  sees the same number of images as the real-only arm but fewer real ones: *is
  different data better?*
* ``add`` (data inflation, AdaInf): every batch holds the ``B`` real images of the
  real-only arm's batch (the same stream: the real pool is seen exactly as often) plus
  ``round(B * q / (1 - q))`` synthetic images on top, so a step has more images:
  *does more (generated) data help on top of the real data?* Compute is matched by
  steps, not by images; ``images_seen`` says how many each arm saw.

``q`` is the synthetic share of a batch: ``q = r / (r + w (1 - r))`` for the
``synthetic_ratio`` ``r`` and ``real_weight`` ``w``, i.e. the share of synthetic
images when the real pool is repeated ``w`` times against the synthetic pool mixed at
``r`` (AdaInf repeats the real set 10x: ``w = 10``). ``w = 1`` (the default) leaves
``q = r``, today's ``replace`` runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmark.core.errors import DataError
from pretrain.sources.base import SOURCES, Source, SourceError

#: The mixing modes of :class:`MixedSource`.
MODES = ("replace", "add")


@SOURCES.register("mixed")
class MixedSource(Source):
    """Real and synthetic images with an exact number of each per batch (see the module)."""

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
        mode: str = "replace",
        real_weight: float = 1.0,
        pool_size: int | str | None = None,
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
        if mode not in MODES:
            raise SourceError(f"source 'mixed': mode must be one of {list(MODES)}, got {mode!r}")
        if mode == "add" and synthetic_ratio >= 1.0:
            raise SourceError(
                "source 'mixed': mode 'add' keeps every real image of the batch, so "
                "synthetic_ratio must be < 1 (use the synthetic source for synthetic only)"
            )
        if not float(real_weight) > 0:
            raise SourceError(f"source 'mixed': real_weight must be > 0, got {real_weight!r}")
        self.synthetic_ratio = float(synthetic_ratio)
        self.mode, self.real_weight = mode, float(real_weight)
        n_real, n_syn = mixed_counts(self.synthetic_ratio, self.batch_size, mode, real_weight)
        real_pool = self._add_pool("real", real, n_real)
        syn_pool = self._add_pool("synthetic", synthetic, n_syn, pool_size=pool_size, real=real)
        if syn_pool.image_shape != real_pool.image_shape:
            raise DataError(
                f"{syn_pool.path}: image shape {syn_pool.image_shape} differs from "
                f"{real_pool.image_shape} of the real file {real_pool.path}"
            )


def synthetic_share(synthetic_ratio: float, real_weight: float = 1.0) -> float:
    """``q = r / (r + w (1 - r))``: the synthetic share of a batch (module docstring)."""
    r, w = float(synthetic_ratio), float(real_weight)
    return r / (r + w * (1.0 - r)) if r > 0 else 0.0


def mixed_counts(
    synthetic_ratio: float, batch_size: int, mode: str = "replace", real_weight: float = 1.0
) -> tuple[int, int]:
    """(real, synthetic) images per batch (Python's ``round``; see the module docstring)."""
    q = synthetic_share(synthetic_ratio, real_weight)
    if mode == "add":
        return batch_size, round(batch_size * q / (1.0 - q))
    n_syn = round(q * batch_size)
    return batch_size - n_syn, n_syn
