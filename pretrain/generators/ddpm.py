"""Denoising diffusion generator on MONAI's ``DiffusionModelUNet``.

The model is a DDPM (Ho et al. 2020, *Denoising Diffusion Probabilistic
Models*) as used by Khader et al. 2022 (*Medical Diffusion*) to generate
synthetic medical images for self-supervised pretraining: a U-Net predicts the
noise added to an image at one of ``num_train_timesteps`` (default 1000) steps
of a fixed variance schedule (linear betas 1e-4 .. 0.02 by default), trained
with the simple MSE objective on images scaled to [-1, 1].

Sampling uses the same network with either

* ``ddim`` (default): the deterministic DDIM sampler (Song et al. 2021,
  *Denoising Diffusion Implicit Models*, eta = 0) on ``steps`` (default 50)
  evenly spaced timesteps, about 20x faster than
* ``ddpm``: ancestral sampling over all ``num_train_timesteps`` steps.

Everything is parametrised by ``spatial_dims`` taken from the training data,
so the same code trains and samples 2D images and 3D volumes (``results/hippocampus``
holds a 3D run).

Reproducibility. Sample ``i`` starts from Gaussian noise drawn from its own
generator seeded with ``(seed, i)``; the ancestral DDPM noise of batch ``b``
comes from ``(seed, b)``. DDIM samples therefore depend on ``(seed, i)`` only
(up to floating-point differences between batch sizes); DDPM samples on
``(seed, batch index, batch size)``. The same command always gives the same
images on the same machine.

The checkpoint folder holds ``generator.pt`` (EMA weights, model and scheduler
configuration, image shape, training-data provenance) and ``generator.json``
(human-readable metadata including the SHA-256 of ``generator.pt``), written by
:mod:`pretrain.generators.ddpm_train` (training lives there only: this module
samples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from benchmark.core.errors import DataError
from benchmark.core.io import sha256_file
from benchmark.data.h5format import DatasetMeta
from pretrain.generators.base import (
    GENERATORS,
    Generator,
    GeneratorError,
    resize,
    seed_int,
    to_uint8,
)

if TYPE_CHECKING:
    from monai.networks.nets import DiffusionModelUNet

WEIGHTS = "generator.pt"
METADATA = "generator.json"
FORMAT = "sslbench-generator"
FORMAT_VERSION = 1
SCHEDULERS = ("ddim", "ddpm")
_NOISE_TAG, _STEP_TAG = 0xD1FF, 0x5737


def default_norm_groups(channels: tuple[int, ...]) -> int:
    """Largest of 32, 16, 8, 4, 2, 1 dividing every channel count (GroupNorm groups)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def model_config(
    spatial_dims: int,
    in_channels: int,
    channels: tuple[int, ...],
    attention_levels: tuple[bool, ...] | None = None,
    num_res_blocks: int = 1,
    norm_num_groups: int | None = None,
    num_head_channels: int = 8,
) -> dict[str, Any]:
    """Keyword arguments of :class:`monai.networks.nets.DiffusionModelUNet`, validated.

    ``attention_levels`` defaults to attention at the lowest resolution only.
    """
    channels = tuple(int(c) for c in channels)
    if not channels or any(c < 1 for c in channels):
        raise GeneratorError(f"channels must be positive integers, got {channels}")
    levels = (
        tuple(bool(a) for a in attention_levels)
        if attention_levels is not None
        else tuple(i == len(channels) - 1 for i in range(len(channels)))
    )
    if len(levels) != len(channels):
        raise GeneratorError(
            f"attention levels {levels} must have one entry per channel level {channels}"
        )
    groups = default_norm_groups(channels) if norm_num_groups is None else int(norm_num_groups)
    if any(c % groups for c in channels):
        raise GeneratorError(f"norm_num_groups {groups} must divide every channel count {channels}")
    return {
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": int(in_channels),
        "channels": list(channels),
        "attention_levels": list(levels),
        "num_res_blocks": int(num_res_blocks),
        "norm_num_groups": groups,
        "num_head_channels": int(num_head_channels),
    }


def build_unet(config: dict[str, Any]) -> DiffusionModelUNet:
    """The noise-prediction U-Net of ``config`` (see :func:`model_config`)."""
    from monai.networks.nets import DiffusionModelUNet

    try:
        import einops  # noqa: F401  (MONAI's attention blocks need it)
    except ImportError:
        raise GeneratorError(
            "MONAI's DiffusionModelUNet needs the einops package (pip install einops)"
        ) from None
    try:
        return DiffusionModelUNet(**config)
    except ValueError as exc:  # MONAI validates channels / heads / groups
        raise GeneratorError(f"invalid DDPM U-Net configuration: {exc}") from None


def check_spatial(
    shape: tuple[int, ...], channels: tuple[int, ...] | list[int], where: str
) -> None:
    """Raise unless every spatial size halves cleanly ``len(channels) - 1`` times."""
    factor = 2 ** (len(channels) - 1)
    bad = [s for s in shape if s % factor or s < factor]
    if bad:
        raise GeneratorError(
            f"{where}: spatial size {tuple(shape)} must be a multiple of "
            f"{factor} for a U-Net with {len(channels)} levels"
        )


def scheduler_config(
    num_train_timesteps: int = 1000, schedule: str = "linear_beta"
) -> dict[str, Any]:
    """The noise schedule shared by training and every sampler."""
    if schedule not in ("linear_beta", "scaled_linear_beta", "cosine"):
        raise GeneratorError(
            f"unknown noise schedule {schedule!r} (use linear_beta, scaled_linear_beta or cosine)"
        )
    if int(num_train_timesteps) < 2:
        raise GeneratorError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return {
        "num_train_timesteps": int(num_train_timesteps),
        "schedule": schedule,
        "prediction_type": "epsilon",
        "clip_sample": True,
    }


def make_scheduler(
    config: dict[str, Any],
    kind: str = "ddpm",
    steps: int | None = None,
    device: torch.device | str | None = None,
) -> Any:
    """A MONAI DDPM or DDIM scheduler for ``config``, with timesteps set for sampling."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    total = int(config["num_train_timesteps"])
    if kind == "ddpm":
        steps = total if steps is None else int(steps)
        if steps != total:
            raise GeneratorError(
                f"the ddpm scheduler runs all {total} training timesteps; "
                f"got --steps {steps} (use --scheduler ddim for fewer steps)"
            )
        sched: Any = DDPMScheduler(**config)
    elif kind == "ddim":
        steps = 50 if steps is None else int(steps)
        if not 1 <= steps <= total:
            raise GeneratorError(f"ddim steps must lie in 1..{total}, got {steps}")
        sched = DDIMScheduler(**config)
    else:
        raise GeneratorError(f"unknown scheduler {kind!r}; use one of {SCHEDULERS}")
    sched.set_timesteps(steps, device=device)
    return sched


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name in (WEIGHTS, METADATA) else p


@GENERATORS.register("ddpm", aliases=("diffusion",))
class DDPMGenerator(Generator):
    """A trained DDPM loaded for sampling.

    Args:
        checkpoint: The dict stored in ``generator.pt``.
        scheduler: ``"ddim"`` or ``"ddpm"``.
        steps: Sampling steps (default 50 for DDIM, all training steps for DDPM).
        device: Where to sample.
        path: Checkpoint folder (for provenance).
        output_shape: Shape ``(C, *spatial)`` of the written samples when it differs from
            the trained one (e.g. the real file's grid, so that real and synthetic pools mix):
            samples are resized bilinearly (2D, antialiased) or trilinearly (3D).
    """

    name: ClassVar[str] = "ddpm"
    trainable: ClassVar[bool] = True
    has_sample_steps: ClassVar[bool] = True

    def __init__(
        self,
        checkpoint: dict[str, Any],
        scheduler: str = "ddim",
        steps: int | None = None,
        device: str | torch.device = "cpu",
        path: str | Path | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.model_shape = tuple(int(s) for s in checkpoint["image_shape"])
        if output_shape is not None and (
            len(output_shape) != len(self.model_shape) or output_shape[0] != self.model_shape[0]
        ):
            raise GeneratorError(
                f"cannot write samples of shape {tuple(output_shape)} from a generator "
                f"trained on {self.model_shape} (channels and dimensions must match)"
            )
        super().__init__(tuple(output_shape) if output_shape else self.model_shape)
        self.checkpoint = checkpoint
        self.path = Path(path) if path is not None else None
        self.device = torch.device(device)
        self.model = build_unet(checkpoint["model_config"]).to(self.device).eval()
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError:
            where = self.path / WEIGHTS if self.path else "checkpoint"
            raise DataError(
                f"{where}: weights do not fit the stored model configuration "
                "(incompatible checkpoint)"
            ) from None
        self.scheduler_kind = scheduler
        self.scheduler = make_scheduler(
            checkpoint["scheduler_config"], scheduler, steps, self.device
        )
        self.steps = len(self.scheduler.timesteps)
        self.weights_sha256 = sha256_file(self.path / WEIGHTS) if self.path else ""

    @classmethod
    def load(
        cls,
        path: str | Path,
        scheduler: str = "ddim",
        steps: int | None = None,
        device: str | torch.device = "cpu",
        size: int | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> DDPMGenerator:
        """Load a checkpoint folder (or its ``generator.pt``) written by ``synth train``.

        ``output_shape`` resizes the samples (see the class); ``size`` only checks the
        trained in-plane size.

        Raises:
            DataError: The folder or file is missing, unreadable or not a DDPM checkpoint.
            GeneratorError: ``size`` differs from the trained image size.
        """
        folder = _folder(path)
        weights = folder / WEIGHTS
        if not folder.exists():
            raise DataError(f"{folder}: no such generator checkpoint")
        if not weights.exists():
            raise DataError(f"{folder}: not a generator checkpoint (missing {WEIGHTS})")
        try:
            ckpt = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise DataError(
                f"{weights}: unreadable generator checkpoint ({exc.__class__.__name__})"
            ) from None
        required = (
            "format",
            "generator",
            "model_config",
            "scheduler_config",
            "image_shape",
            "state_dict",
        )
        if not isinstance(ckpt, dict) or any(k not in ckpt for k in required):
            raise DataError(f"{weights}: not an sslbench generator checkpoint (missing keys)")
        if ckpt["format"] != FORMAT or int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(
                f"{weights}: incompatible checkpoint format {ckpt['format']!r} "
                f"version {ckpt.get('format_version')}"
            )
        if ckpt["generator"] != cls.name:
            raise DataError(
                f"{weights}: checkpoint of generator {ckpt['generator']!r}, not {cls.name!r}"
            )
        meta_path = folder / METADATA
        if meta_path.exists():
            try:
                stored = json.loads(meta_path.read_text()).get("generator_sha256")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                raise DataError(f"{meta_path}: unreadable generator metadata") from None
            if stored and stored != sha256_file(weights):
                raise DataError(
                    f"{weights}: does not match the SHA-256 in {METADATA} (corrupted or replaced?)"
                )
        shape = tuple(int(s) for s in ckpt["image_shape"])
        if size is not None and tuple(shape[-2:]) != (int(size), int(size)):
            raise GeneratorError(
                f"{folder}: generator was trained on images of shape "
                f"{shape}; cannot sample size {size} (omit --size or train "
                f"a generator at that size)"
            )
        return cls(
            ckpt,
            scheduler=scheduler,
            steps=steps,
            device=device,
            path=folder.resolve(),
            output_shape=output_shape,
        )

    def sample_batch(self, start: int, count: int, seed: int, batch_index: int) -> np.ndarray:
        from monai.inferers import DiffusionInferer

        noise = torch.stack(
            [
                torch.randn(
                    self.model_shape,
                    generator=torch.Generator().manual_seed(seed_int(seed, _NOISE_TAG, i)),
                )
                for i in range(start, start + count)
            ]
        ).to(self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed_int(seed, _STEP_TAG, batch_index))  # ancestral DDPM noise
            inferer = DiffusionInferer(self.scheduler)
            x = inferer.sample(
                input_noise=noise,
                diffusion_model=self.model,
                scheduler=self.scheduler,
                verbose=False,
            )
        assert isinstance(x, torch.Tensor)
        if self.image_shape != self.model_shape:
            x = resize(((x + 1) / 2).clamp(0, 1), self.image_shape[1:])
            return to_uint8(x, (0.0, 1.0))
        return to_uint8(x, (-1.0, 1.0))

    def describe(self) -> dict[str, Any]:
        data = self.checkpoint.get("data", {})
        return {
            "name": self.name,
            "checkpoint": str(self.path) if self.path else None,
            "checkpoint_sha256": self.weights_sha256,
            "scheduler": self.scheduler_kind,
            "steps": self.steps,
            "train_steps": self.checkpoint.get("step"),
            "model_image_shape": list(self.model_shape),
            "resized": self.image_shape != self.model_shape,
            "model_config": self.checkpoint["model_config"],
            "scheduler_config": self.checkpoint["scheduler_config"],
            "training_data": data.get("path"),
            "training_data_content_hash": data.get("content_hash"),
            "training_data_name": data.get("name"),
        }

    def dataset_meta(self) -> DatasetMeta:
        meta = super().dataset_meta()
        data = self.checkpoint.get("data", {})
        if data.get("modality"):
            meta.modality = f"synthetic ({data['modality']})"
        if data.get("name"):
            meta.name = f"synth-ddpm-{data['name']}"
        meta.spacing = data.get("spacing")
        meta.citation = (
            "Ho et al. 2020 (DDPM); Song et al. 2021 (DDIM); Khader et al. 2022 (Medical Diffusion)"
        )
        return meta
