"""Base class and registry of self-supervised pretraining methods.

A method owns everything that is specific to it: projection/prediction heads,
momentum or teacher networks, its loss (from ``lightly.loss``), its view recipes
(:class:`pretrain.augment.ViewRecipe`, the paper's recipe adapted to greyscale)
and its default hyper-parameters. The training loop in :mod:`pretrain.train` is
shared: it samples a batch from a source, builds the method's views on the
device, calls :meth:`SSLMethod.training_step`, steps the optimizer and calls
:meth:`SSLMethod.after_optimizer_step` (momentum updates).

Adding a method is one file in ``pretrain/methods/`` decorated with
``@METHODS.register("name")``; the contract tests pick it up automatically.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from benchmark.errors import SSLBenchError
from benchmark.registry import Registry
from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder

METHODS: Registry[type[SSLMethod]] = Registry(
    "methods", "self-supervised pretraining methods built from lightly"
)

#: Keys every method accepts (optimisation is shared by the training loop).
COMMON_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw",  # adamw | sgd | lars
    "lr": 1e-3,  # base learning rate for batch size 256 (scaled linearly by the loop)
    "weight_decay": 1e-4,
    "warmup_fraction": 0.05,  # fraction of steps with linear warm-up, then cosine decay
    "momentum": 0.9,  # SGD/LARS momentum
    "clip_grad": 0.0,  # clip the global gradient norm to this value (0: no clipping)
}


class MethodConfigError(SSLBenchError, ValueError):
    """A method's configuration has an unknown key or an invalid value."""


@dataclass
class StepOutput:
    """What one training step returns to the loop.

    Attributes:
        loss: Scalar loss to back-propagate.
        embeddings: (B, D) detached embeddings of one view (for the collapse indicator:
            std of L2-normalised embeddings, ~1/sqrt(D) when healthy, 0 when collapsed).
        logs: Extra scalars to log (floats).
    """

    loss: torch.Tensor
    embeddings: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base class of SSL methods.

    Class attributes to set in subclasses:
        family: ``contrastive``, ``distillation``, ``non-contrastive`` or ``masked``.
        paper: Reference of the method.
        default_config: Method hyper-parameters (merged over :data:`COMMON_DEFAULTS`).
        requires_vit: True if the method needs a patch-token ViT encoder.

    Args:
        encoder: The shared encoder being pretrained (saved alone at the end).
        **config: Overrides of :attr:`default_config`; unknown keys are errors.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {}
    requires_vit: ClassVar[bool] = False
    requires_multiscale: ClassVar[bool] = False

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__()
        self.check_encoder(encoder)
        self.config = self.validate_config(config)
        self.encoder = encoder

    # -- configuration -------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Common defaults overridden by this method's defaults."""
        return {**COMMON_DEFAULTS, **cls.default_config}

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Merge ``config`` over the defaults, rejecting unknown keys and bad values."""
        defaults = cls.defaults()
        for key in config:
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise MethodConfigError(f"method {cls.name!r}: unknown option {key!r}{hint}")
        merged = {**defaults, **config}
        for key, default in defaults.items():  # YAML reads "1e-3" as a string
            value = merged[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(value, str):
                    try:
                        value = float(value) if isinstance(default, float) else int(value)
                    except ValueError:
                        raise MethodConfigError(
                            f"method {cls.name!r}: {key} must be a number, got {value!r}"
                        ) from None
                    merged[key] = value
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise MethodConfigError(
                        f"method {cls.name!r}: {key} must be a number, got {value!r}"
                    )
        if merged["optimizer"] not in ("adamw", "sgd", "lars"):
            raise MethodConfigError(
                f"method {cls.name!r}: optimizer must be adamw, sgd or lars, got "
                f"{merged['optimizer']!r}"
            )
        if not merged["lr"] > 0:
            raise MethodConfigError(f"method {cls.name!r}: lr must be > 0, got {merged['lr']}")
        if not 0 <= merged["warmup_fraction"] < 1:
            raise MethodConfigError(f"method {cls.name!r}: warmup_fraction must be in [0, 1)")
        if merged["clip_grad"] < 0:
            raise MethodConfigError(f"method {cls.name!r}: clip_grad must be >= 0")
        if merged["weight_decay"] < 0:
            raise MethodConfigError(f"method {cls.name!r}: weight_decay must be >= 0")
        if not 0 <= merged["momentum"] < 1:
            raise MethodConfigError(f"method {cls.name!r}: momentum must be in [0, 1)")
        cls.check_config(merged)
        return merged

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Method-specific validation; raise :class:`MethodConfigError`."""

    @classmethod
    def check_encoder(cls, encoder: Encoder) -> None:
        """Raise :class:`MethodConfigError` if ``encoder`` cannot be used."""
        if cls.requires_multiscale and not encoder.supports_multiscale:
            raise MethodConfigError(
                f"method {cls.name!r} needs an encoder with multi-scale features; "
                f"{encoder.name!r} has none"
            )
        if cls.requires_vit and not encoder.is_vit:
            raise MethodConfigError(
                f"method {cls.name!r} needs a ViT encoder (patch tokens); "
                f"{encoder.name!r} is not one"
            )

    # -- training ------------------------------------------------------
    def view_recipes(self, size: int) -> list[ViewRecipe]:
        """Recipes of the views built from each image, at output ``size``."""
        raise NotImplementedError

    def training_step(self, views: list[torch.Tensor], step: int, total_steps: int) -> StepOutput:
        """Loss for one batch; ``views[i]`` follows ``view_recipes()[i]``."""
        raise NotImplementedError

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (momentum/EMA updates). Default: nothing."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups: no weight decay on biases and norm parameters."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for _, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "weight_decay": self.config["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def create_method(name: str, encoder: Encoder, **config: Any) -> SSLMethod:
    """Build a registered SSL method around ``encoder``.

    Buffers of the method's own modules (memory banks, centres, momentum copies)
    are made persistent so that a resumed run restores them; lightly registers
    some of them as non-persistent. The encoder's buffers are left as they are,
    so encoder checkpoints keep the encoder's own format.
    """
    method = METHODS.create(name, encoder, **config)
    assert isinstance(method, SSLMethod)
    encoder_modules = {id(m) for m in method.encoder.modules()}
    for module in method.modules():
        if id(module) not in encoder_modules:
            module._non_persistent_buffers_set.clear()
    return method
