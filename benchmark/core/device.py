"""One device resolution for pretraining, the generators and the task adapters."""

from __future__ import annotations

import torch

from benchmark.core.errors import SSLBenchError


class DeviceError(SSLBenchError):
    """A requested device does not exist on this machine."""


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as given.

    Raises:
        DeviceError: ``cuda`` (or ``cuda:N``) was asked for on a machine without CUDA,
            or the name is not a torch device.
    """
    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"device {text!r}: not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} requested but CUDA is not available")
    return device
