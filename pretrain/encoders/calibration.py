"""Batch-norm calibration: running statistics of an encoder recomputed on a data split.

A randomly initialised CNN in eval mode normalises with batch-norm running
statistics of mean 0 and variance 1, which do not match real images, so its
frozen features are worse than random features need to be. Any pretraining run
updates those statistics on the data as a side effect, so a comparison of a
pretrained encoder against the raw random one ("pretrained beats random init",
"kNN accuracy rose from step 0") partly measures batch-norm calibration, not
learning. :func:`calibrate_batch_norm` removes that confound: one no-gradient
pass over a split with every batch norm in train mode and **cumulative**
averages (``momentum=None``: the running statistics become the plain mean over
the batches, not an exponential average dominated by the last batches), every
other module in eval mode (no dropout / drop-path), and the weights untouched.

Used by the online kNN monitor (its step-0 value is taken on a calibrated copy
of the initial encoder) and by the frozen-feature baselines (the ``scratch`` arm
of the linear and kNN probes). Only the **train** split may be passed here: the
caller loads it (the monitor and the baselines both do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Normalisation layers whose running statistics are recalibrated (2D and 3D batch norm,
#: and instance norm that tracks running statistics).
_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    """The normalisation layers of ``module`` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats]


@torch.no_grad()
def calibrate_batch_norm(
    encoder: nn.Module,
    images: torch.Tensor,
    *,
    split: str = "train",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Recompute the running statistics of every batch norm of ``encoder`` on ``images``.

    Args:
        encoder: Encoder whose normalisation statistics are reset and recomputed
            in place (weights are not changed; calibrate a copy to keep the original).
        images: ``(N, C, *spatial)`` float images of the calibration split.
        split: Name of the split the images come from, recorded in the returned
            provenance (the callers pass the train split).
        batch_size: Images per forward pass (the statistics are cumulative, so
            the result depends on the batch size only through each batch's
            variance estimate).
        device: Where the forward passes run.

    Returns:
        Provenance: ``{"calibrated": bool, "layers": n, "images": N, "split": ...,
        "batch_size": ..., "note": ...}``. Encoders without batch norm (ViTs with
        layer norm, 3D encoders with instance norm that keeps no running
        statistics) are left as they are, with ``calibrated: False`` and a note.
    """
    layers = batch_norm_layers(encoder)
    record: dict[str, Any] = {
        "calibrated": bool(layers),
        "layers": len(layers),
        "images": int(images.shape[0]),
        "split": split,
        "batch_size": int(batch_size),
        "method": "cumulative running mean/var, one no-grad pass, other modules in eval mode",
    }
    if not layers:
        record["note"] = "no batch norm with running statistics: nothing to calibrate"
        return record
    if images.shape[0] < 2:
        raise ValueError(f"batch-norm calibration needs at least 2 images, got {images.shape[0]}")
    was_training = encoder.training
    momenta = [m.momentum for m in layers]
    encoder.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
        m.train()
    try:
        size = max(2, int(batch_size))
        forward = getattr(encoder, "forward_features", encoder)
        n = images.shape[0]
        start = 0
        while start < n:
            end = start + size
            if n - end == 1:  # batch norm cannot take one image in train mode: fold it in
                end = n
            forward(images[start:end].to(device))
            start = end
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        encoder.train(was_training)
    return record
