"""``mixed``: real and synthetic images in every batch, at a fixed ratio or by pool size.

Two modes answer two questions (README, "Mixing modes"); both keep the batch size
``B`` and the number of steps of the real-only arm, so every arm gets the same
compute (the project's rule, and AdaInf's protocol: its inflated runs keep the
baseline's steps and batch size and enlarge the *dataset*):

* ``replace`` (the default): every batch holds exactly ``round(q * B)`` synthetic
  images and the rest real, for a share ``q`` set by ``synthetic_ratio`` ``r``:
  ``q = r / (r + w (1 - r))``. *Is different data better?*
* ``add`` (data inflation, AdaInf): the synthetic pool is added to the real one and
  the union is sampled uniformly with each real image weighted ``w`` (AdaInf's
  ``dup``: the real set repeated ``w`` times). The share then follows from the pools,
  ``q = N_syn / (w N_real + N_syn)``, and ``synthetic_ratio`` is not used. *Does a
  larger (inflated) dataset help, and with which weight?* Each batch holds exactly
  ``round(q * B)`` synthetic images (the expected composition, not a random one, so
  the arm is a pure function of seed and step like every source).

``real_weight`` ``w = 1`` (the default) leaves ``replace`` runs exactly as before
the option existed (``q = r``).
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
        synthetic_ratio: float | None = 0.5,
        mode: str = "replace",
        real_weight: float = 1.0,
        pool_size: int | str | None = None,
        batch_size: int,
        seed: int,
        device: str | torch.device = "cpu",
        **_: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, device=device)
        if mode not in MODES:
            raise SourceError(f"source 'mixed': mode must be one of {list(MODES)}, got {mode!r}")
        ratio = 0.0 if synthetic_ratio is None else float(synthetic_ratio)
        if mode == "replace" and (synthetic_ratio is None or not 0.0 <= ratio <= 1.0):
            raise SourceError(
                f"source 'mixed': synthetic_ratio must be in [0, 1], got {synthetic_ratio}"
            )
        if isinstance(real_weight, bool) or not float(real_weight) > 0:
            raise SourceError(f"source 'mixed': real_weight must be > 0, got {real_weight!r}")
        self.mode, self.real_weight = mode, float(real_weight)
        self.synthetic_ratio = ratio if mode == "replace" else 0.0
        # the pools are loaded with no per-batch demand first: in mode add the
        # composition depends on their sizes
        real_pool = self._add_pool("real", real, 0)
        syn_pool = self._add_pool("synthetic", synthetic, 0, pool_size=pool_size, real=real)
        if syn_pool.image_shape != real_pool.image_shape:
            raise DataError(
                f"{syn_pool.path}: image shape {syn_pool.image_shape} differs from "
                f"{real_pool.image_shape} of the real file {real_pool.path}"
            )
        if mode == "add":  # the share of the weighted union (recorded as the ratio)
            self.synthetic_ratio = pooled_share(real_pool.size, syn_pool.size, self.real_weight)
            n_real, n_syn = mixed_counts(self.synthetic_ratio, self.batch_size)
        else:
            n_real, n_syn = mixed_counts(self.synthetic_ratio, self.batch_size, self.real_weight)
        self._set_part(real_pool, n_real)
        self._set_part(syn_pool, n_syn)


def synthetic_share(synthetic_ratio: float, real_weight: float = 1.0) -> float:
    """``q = r / (r + w (1 - r))``: the synthetic share of a batch in mode ``replace``."""
    r, w = float(synthetic_ratio), float(real_weight)
    return r / (r + w * (1.0 - r)) if r > 0 else 0.0


def pooled_share(n_real: int, n_synthetic: int, real_weight: float = 1.0) -> float:
    """``q = N_syn / (w N_real + N_syn)``: the synthetic share of a batch in mode ``add``."""
    return n_synthetic / (real_weight * n_real + n_synthetic) if n_synthetic else 0.0


def mixed_counts(
    synthetic_ratio: float, batch_size: int, real_weight: float = 1.0
) -> tuple[int, int]:
    """(real, synthetic) images per batch: ``round(q B)`` synthetic (Python's ``round``)."""
    n_syn = round(synthetic_share(synthetic_ratio, real_weight) * batch_size)
    return batch_size - n_syn, n_syn
