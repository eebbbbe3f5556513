"""Adam / AdamW with PyTorch's fused kernel wherever the parameters allow it.

PyTorch picks the single-tensor implementation of Adam and AdamW for CPU
parameters by default (``foreach`` is the default on CUDA only). On this
project's 2-core reference machine one AdamW step over a ResNet-18 (11 M
parameters) then takes 44 ms (foreach: 39 ms), half as long as the forward and
backward pass of a batch of 32 images at 32 px (97 ms); ``fused=True`` (CPU since
torch 2.4, CUDA since 2.0) takes 7 ms (``perf/bench_optim.py``). The fused kernel
implements the same update rule; its float rounding differs from the loop's in the
last bits, so the weights of a run depend on which kernel ran. The kernel follows
from the device and the torch version, both in every output's provenance. Every
Adam-family optimizer in sslbench (pretraining with ``optimizer: adamw``, the
generators, fine-tuning, segmentation) is built here, so every arm of a fresh run
gets the same kernel; a results folder resumed across this change (same job keys)
keeps cells of the older kernel next to new ones, which differ in the last bits only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def adam(params: Iterable[Any], *, decoupled: bool = True, **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (``decoupled``) or ``torch.optim.Adam``, fused where possible.

    Args:
        params: Parameters or parameter groups, as for ``torch.optim``.
        decoupled: AdamW's decoupled weight decay (True) or Adam's L2 penalty (False).
        **kwargs: Optimizer options (``lr``, ``betas``, ``weight_decay``, ...).

    Returns:
        The optimizer; it falls back to PyTorch's default implementation when the
        fused kernel does not support the parameters' device or dtype.
    """
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    groups = list(params)
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups, **kwargs)
