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

Collapse indicator. The loop logs ``embedding_std``, the standard deviation of
the L2-normalised :attr:`StepOutput.embeddings` (lightly's
``std_of_l2_normalized``). To keep it comparable across methods, every method
returns the same tensor: the backbone's **pooled features** of its first view
(what :meth:`Encoder.forward_features` returns, ``(B, encoder.num_features)``),
never projections (whose width and normalisation differ from method to
method). They are the features the method's own forward pass already
computed, detached: no extra forward pass, so batch-norm statistics, RNG
draws and the trained weights are exactly those of the loss computation
(a method that forwards several views in one batch returns the first view's
rows). Masked methods see only the visible part of the image: MAE returns
timm's pooling of ``forward_features`` (class token or token mean, then
``fc_norm``) applied to the tokens it encoded (the visible patches and the
prefix tokens); SparK's dense encoder has no pooled output in its forward,
so it returns its coarsest feature map averaged over the visible positions
(the global average pooling of the CNN and 3D encoders' ``forward_features``,
restricted to what SparK's sparse encoder would see).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, ClassVar, TypeVar

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from benchmark.core.errors import SSLBenchError, did_you_mean
from benchmark.core.registry import Registry
from pretrain.augment import ViewRecipe
from pretrain.encoders.base import Encoder

METHODS: Registry[type[SSLMethod]] = Registry(
    "methods", "self-supervised pretraining methods built from lightly"
)

#: Image size the papers' blur sigmas (pixels) refer to; they are rescaled to the view size.
PAPER_SIZE = 224

#: ``recipe: auto`` picks the paper recipe from this batch size up, the small one below it.
PAPER_RECIPE_MIN_BATCH = 256

#: Batch size the base learning rate ``lr`` refers to (``lr_scaling`` rescales it).
REFERENCE_BATCH = 256

RECIPES = ("auto", "small", "paper")
LR_SCALING = ("linear", "sqrt", "none")

#: Keys every method accepts (optimisation is shared by the training loop).
COMMON_DEFAULTS: dict[str, Any] = {
    "recipe": "auto",  # auto | small | paper (see SSLMethod.small_recipe)
    "optimizer": "adamw",  # adamw | sgd | lars
    "lr": 1e-3,  # base learning rate for batch size REFERENCE_BATCH, rescaled by lr_scaling
    "lr_scaling": "linear",  # linear (lr x B/256) | sqrt (lr x sqrt(B/256)) | none
    "weight_decay": 1e-4,
    "warmup_fraction": 0.05,  # fraction of steps with linear warm-up, then cosine decay
    "momentum": 0.9,  # SGD/LARS momentum
    "adam_beta1": 0.9,  # AdamW betas
    "adam_beta2": 0.999,
    "clip_grad": 0.0,  # clip the global gradient norm to this value (0: no clipping)
}

#: The optimisation part shared by the small-batch recipes of most methods (see
#: :attr:`SSLMethod.small_recipe`): AdamW at 1.06e-3 for batch 32 (3e-3 x sqrt(32/256)),
#: 5 % warm-up, then cosine decay. Chosen on BUSI (train split for SSL, validation
#: split for the kNN / linear check) at 300 steps x 32 images, 64 px; see README
#: "Pretraining recipes" for the evidence.
SMALL_OPTIMISATION: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 3e-3,
    "lr_scaling": "sqrt",
    "weight_decay": 1e-4,
    "warmup_fraction": 0.05,
}


#: The view part of the small-batch recipes of the joint-embedding methods: crops from
#: 30 % of the image (the papers' 8-20 % leave too little of a lesion in a 64 px view)
#: and no intensity jitter (echogenicity is diagnostic in ultrasound: on BUSI's validation
#: split SimCLR's linear-probe AUC@100 % rose from 0.826 with jitter 0.4 to 0.862 without).
SMALL_VIEWS: dict[str, Any] = {"crop_min": 0.3, "jitter": 0.0}


def resolve_recipe(config: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """``config`` with ``recipe: auto`` (or no recipe) resolved for ``batch_size``.

    ``auto`` becomes ``paper`` from :data:`PAPER_RECIPE_MIN_BATCH` images per
    step and ``small`` below; an explicit ``small`` or ``paper`` is kept.
    """
    recipe = config.get("recipe", "auto")
    if recipe != "auto":
        return dict(config)
    return {**config, "recipe": "paper" if batch_size >= PAPER_RECIPE_MIN_BATCH else "small"}


def scaled_lr(config: dict[str, Any], batch_size: int) -> float:
    """The learning rate the optimizer gets: ``lr`` rescaled from batch 256 by ``lr_scaling``."""
    ratio = batch_size / REFERENCE_BATCH
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[config["lr_scaling"]]
    return float(config["lr"]) * factor


class MethodConfigError(SSLBenchError, ValueError):
    """A method's configuration has an unknown key or an invalid value."""


@dataclass
class StepOutput:
    """What one training step returns to the loop.

    Attributes:
        loss: Scalar loss to back-propagate.
        embeddings: (B, D) detached pooled backbone features of the first view, D =
            ``encoder.num_features`` (see the module docstring), for the collapse
            indicator: std of the L2-normalised embeddings over the batch, 0 when
            collapsed, at most ~1/sqrt(D) (lower for non-negative post-ReLU features:
            ~0.04 for a ResNet-18, D = 512, at initialisation).
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
        default_config: Method hyper-parameters (merged over :data:`COMMON_DEFAULTS`);
            its optimisation and view keys are the paper's recipe (``recipe: paper``).
        small_recipe: Overrides of :attr:`default_config` for small batches and short
            schedules (``recipe: small``, what ``auto`` picks below
            :data:`PAPER_RECIPE_MIN_BATCH` images per step); every key must exist in
            the defaults. User options override either recipe.
        requires_vit: True if the method needs a patch-token ViT encoder.
        spatial_dims: Encoder dimensionalities the method supports ((2, 3) unless it
            uses 2D-only operations).
        dense_statistics_at_export: True if the encoder's batch-norm running
            statistics collected during training do not describe whole, dense
            images (SparK: statistics over visible positions of masked inputs). The
            trainer then recomputes them on the pretraining pool's un-augmented
            images before saving the encoder (weights untouched; recorded in
            ``pretrain.json`` as ``bn_recalibration``).
        cost: Training time per image relative to SimCLR with the same encoder and
            input size (``sslbench run --dry-run`` estimates), from the 64 px method
            table of the README (``perf/bench_recipes.py``: images/s of each method's
            small recipe, ResNet-18 on 2 CPU cores, kNN monitor included; SimCLR 42).
            A rough factor: at 32 px the ratios differ (VICReg 2.6x, DINO 2.3x, MoCo v2
            0.86x there), and the monitor's share does not scale with the method.

    Args:
        encoder: The shared encoder being pretrained (saved alone at the end).
        **config: Overrides of :attr:`default_config`; unknown keys are errors.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_config: ClassVar[dict[str, Any]] = {}
    small_recipe: ClassVar[dict[str, Any]] = {}
    requires_vit: ClassVar[bool] = False
    requires_multiscale: ClassVar[bool] = False
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    dense_statistics_at_export: ClassVar[bool] = False
    cost: ClassVar[float] = 1.0

    def __init__(self, encoder: Encoder, **config: Any) -> None:
        super().__init__()
        self.check_encoder(encoder)
        self.config = self.validate_config(config)
        self.encoder = encoder

    # -- configuration -------------------------------------------------
    @classmethod
    def defaults(cls, recipe: str = "paper") -> dict[str, Any]:
        """Common defaults, overridden by this method's defaults, then by ``recipe``'s values."""
        merged = {**COMMON_DEFAULTS, **cls.default_config}
        if recipe in ("small", "auto"):
            merged.update(cls.small_recipe)
        merged["recipe"] = "small" if recipe == "auto" else recipe
        return merged

    @classmethod
    def chance_loss(cls, config: dict[str, Any], batch_size: int) -> float | None:
        """The loss of an encoder that learned nothing, or None where there is no such level.

        Contrastive and distillation methods declare theirs (NT-Xent: ln(2B - 1),
        MoCo: ln(queue + 1), DINO: ln(out_dim)); the training summary prints the
        loss's first and last value against it.
        """
        return None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Merge ``config`` over the defaults of its recipe, rejecting unknown keys and bad values.

        ``recipe: auto`` without a batch size resolves to ``small``; the training
        loop resolves it for its batch size first (:func:`resolve_recipe`).
        """
        recipe = config.get("recipe", "auto")
        if recipe not in RECIPES:
            raise MethodConfigError(
                f"method {cls.name!r}: recipe must be one of {', '.join(RECIPES)}, got {recipe!r}"
            )
        defaults = cls.defaults(recipe)
        for key in config:
            if key not in defaults:
                hint = did_you_mean(key, defaults, cutoff=0.6)
                raise MethodConfigError(f"method {cls.name!r}: unknown option {key!r}{hint}")
        merged = {**defaults, **config, "recipe": defaults["recipe"]}
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
        if not merged["lr"] >= 0:  # lr 0 is a control run: nothing but batch norm changes
            raise MethodConfigError(f"method {cls.name!r}: lr must be >= 0, got {merged['lr']}")
        if merged["lr_scaling"] not in LR_SCALING:
            raise MethodConfigError(
                f"method {cls.name!r}: lr_scaling must be one of {', '.join(LR_SCALING)}, got "
                f"{merged['lr_scaling']!r}"
            )
        for beta in ("adam_beta1", "adam_beta2"):
            if not 0 <= merged[beta] < 1:
                raise MethodConfigError(f"method {cls.name!r}: {beta} must be in [0, 1)")
        if not 0 <= merged["warmup_fraction"] < 1:
            raise MethodConfigError(f"method {cls.name!r}: warmup_fraction must be in [0, 1)")
        if merged["clip_grad"] < 0:
            raise MethodConfigError(f"method {cls.name!r}: clip_grad must be >= 0")
        if merged["weight_decay"] < 0:
            raise MethodConfigError(f"method {cls.name!r}: weight_decay must be >= 0")
        if not 0 <= merged["momentum"] < 1:
            raise MethodConfigError(f"method {cls.name!r}: momentum must be in [0, 1)")
        if "crop_min" in merged:  # the view keys of the joint-embedding methods
            cls.require_number(merged, "crop_min", gt=0, le=1)
        if "jitter" in merged:
            cls.require_number(merged, "jitter", ge=0, lt=1)
        cls.check_config(merged)
        return merged

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Method-specific validation; raise :class:`MethodConfigError`."""

    @classmethod
    def config_error(cls, message: str) -> MethodConfigError:
        """A :class:`MethodConfigError` naming this method: ``method 'name': message``."""
        return MethodConfigError(f"method {cls.name!r}: {message}")

    @classmethod
    def require_int(cls, config: dict[str, Any], *keys: str, ge: int) -> None:
        """Raise unless each ``config[key]`` is an int (not a bool) ``>= ge``."""
        for key in keys:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < ge:
                what = "a positive integer" if ge == 1 else f"an integer >= {ge}"
                raise cls.config_error(f"{key} must be {what}, got {value!r}")

    @classmethod
    def require_number(
        cls,
        config: dict[str, Any],
        *keys: str,
        gt: float | str | None = None,
        ge: float | str | None = None,
        lt: float | str | None = None,
        le: float | str | None = None,
    ) -> None:
        """Raise unless each ``config[key]`` is a real number (not a bool) within the bounds.

        Bounds are numbers or names of other config keys (compared with their
        values, named in the message: ``momentum_end must be in [momentum_start, 1]``).
        NaN fails every bound.
        """
        if (gt is not None and ge is not None) or (lt is not None and le is not None):
            raise TypeError("require_number: give at most one lower and one upper bound")
        low, high = (ge if gt is None else gt), (le if lt is None else lt)

        def bound(b: float | str) -> Any:
            return config[b] if isinstance(b, str) else b

        if low is not None and high is not None:
            rule = f"in {'[' if gt is None else '('}{low}, {high}{']' if lt is None else ')'}"
        elif low is not None:
            rule = f"{'>=' if gt is None else '>'} {low}"
        elif high is not None:
            rule = f"{'<=' if lt is None else '<'} {high}"
        else:
            rule = "a number"
        for key in keys:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, Real):
                raise cls.config_error(f"{key} must be a number, got {value!r}")
            ok = (
                (gt is None or value > bound(gt))
                and (ge is None or value >= bound(ge))
                and (lt is None or value < bound(lt))
                and (le is None or value <= bound(le))
            )
            if not ok:
                raise cls.config_error(f"{key} must be {rule}, got {value!r}")

    @classmethod
    def check_encoder(cls, encoder: Encoder) -> None:
        """Raise :class:`MethodConfigError` if ``encoder`` cannot be used."""
        if cls.requires_multiscale and not encoder.supports_multiscale:
            raise MethodConfigError(
                f"method {cls.name!r} needs an encoder with multi-scale features; "
                f"{encoder.name!r} has none"
            )
        if encoder.spatial_dims not in cls.spatial_dims:
            raise MethodConfigError(
                f"method {cls.name!r} supports {'/'.join(f'{d}D' for d in cls.spatial_dims)} "
                f"encoders; {encoder.name!r} is {encoder.spatial_dims}D"
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


_M = TypeVar("_M", bound=nn.Module)


def momentum_copy(module: _M) -> _M:
    """A deep copy of ``module`` with gradients off, to be updated by momentum only."""
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


class MomentumMethod(SSLMethod):
    """Base class of methods with momentum (EMA) copies of some of their modules.

    The config has ``momentum_start`` and ``momentum_end``; after every optimizer
    step each momentum copy listed by :meth:`momentum_pairs` moves towards its
    online module (lightly's ``update_momentum``) with the momentum of a cosine
    schedule from ``momentum_start`` (first step) to ``momentum_end`` (last step).
    """

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The ``(online, momentum copy)`` module pairs, updated in this order."""
        raise NotImplementedError

    def momentum_at(self, step: int, total_steps: int) -> float:
        """Momentum at ``step`` (cosine from momentum_start to momentum_end)."""
        cfg = self.config
        return cosine_schedule(step, total_steps, cfg["momentum_start"], cfg["momentum_end"])

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        m = self.momentum_at(step, total_steps)
        for online, twin in self.momentum_pairs():
            update_momentum(online, twin, m=m)


def crop_flip_recipe(size: int, *, scale: tuple[float, float]) -> ViewRecipe:
    """A view with random resized crop (area ``scale``) and horizontal flip (p 0.5) only."""
    return ViewRecipe(
        size=size,
        scale=scale,
        hflip_p=0.5,
        vflip_p=0.0,
        rotate_p=0.0,
        intensity_p=0.0,
        gamma_p=0.0,
        blur_p=0.0,
        noise_p=0.0,
    )


def colour_jitter_recipe(
    size: int, *, scale: tuple[float, float], jitter: float, blur_p: float
) -> ViewRecipe:
    """The SimCLR-family view (crop, flip, colour jitter, blur), adapted to greyscale.

    Random resized crop (area ``scale``) and horizontal flip (p 0.5). Colour
    jitter (p 0.8) keeps its greyscale part: brightness ``jitter`` becomes an
    intensity scale in [1 - jitter, 1 + jitter] and contrast ``jitter`` a gamma
    in [1 / (1 + jitter), 1 + jitter] (each applied with p 0.8); saturation, hue
    and random greyscale have no greyscale counterpart. Gaussian blur with p
    ``blur_p`` and sigma 0.1-2 px at :data:`PAPER_SIZE` px, rescaled to ``size``.
    No intensity shift, rotation, vertical flip or noise (none is in the papers).
    """
    k = size / PAPER_SIZE
    high = 1 + jitter
    return dataclasses.replace(
        crop_flip_recipe(size, scale=scale),
        # rounded so that jitter 0.8 gives 0.2, not 1 - 0.8 = 0.19999999999999996
        intensity_scale=(round(1 - jitter, 12), high),
        intensity_shift=(0.0, 0.0),
        intensity_p=0.8,
        gamma=(1 / high, high),
        gamma_p=0.8,
        blur_sigma=(0.1 * k, 2.0 * k),
        blur_p=blur_p,
    )


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
