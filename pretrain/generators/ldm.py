"""Latent diffusion generator: a KL autoencoder and a DDPM in its latent space.

The model is a latent diffusion model (Rombach et al. 2022, *High-Resolution
Image Synthesis with Latent Diffusion Models*): "To enable DM training on
limited computational resources while retaining their quality and flexibility,
we apply them in the latent space of powerful pretrained autoencoders."
Khader et al. 2022 (*Medical Diffusion*) generate 3D medical volumes the same
way (a VQ-GAN, then a DDPM on its latents) and pretrain on them. Two stages:

1. an autoencoder (MONAI :class:`~monai.networks.nets.AutoencoderKL`) trained on
   the real train split with an L1 reconstruction loss plus a small KL penalty
   towards N(0, I) (the KL-regularised variant of Rombach et al. 2022, Sec. 3.1),
   downsampling every spatial axis by ``2 ** (len(ae_channels) - 1)``;
2. a noise-prediction :class:`~monai.networks.nets.DiffusionModelUNet` trained on
   the autoencoder's posterior samples ``z`` through MONAI's
   :class:`~monai.inferers.LatentDiffusionInferer`, with ``z`` multiplied by
   ``scale_factor = 1 / std(z)`` estimated on train images before stage 2 (as Rombach
   et al. 2022 and MONAI's latent diffusion tutorials do), so that the diffusion runs
   on latents of unit variance.

Sampling draws latent noise, denoises it with DDIM (Song et al. 2021, eta = 0;
default 50 steps) or ancestral DDPM steps, divides by ``scale_factor`` and decodes.
``spatial_dims`` comes from the training data: 2D images and 3D volumes alike.

Deviations, and why:

* **KL autoencoder, not VQ-GAN** (Khader et al.): MONAI ships AutoencoderKL, the
  KL-regularised first stage that Rombach et al. also evaluate; a VQ-GAN needs a
  codebook and the adversarial loss below.
* **No perceptual (LPIPS) or patch-adversarial loss** in stage 1 (both used by
  Rombach et al. and Khader et al.): LPIPS needs ImageNet (or MedicalNet) weights
  downloaded at run time, which sslbench never does, and on a 2-core CPU a
  VGG/AlexNet forward pass and a discriminator would cost more than the
  autoencoder itself. Reconstructions are therefore smoother than the papers'.
* **Noise schedule**: Rombach et al.'s scaled-linear betas 0.0015 .. 0.0195 (as in
  MONAI's tutorials), with ``clip_sample`` off, since scaled latents are not
  confined to [-1, 1] (the pixel DDPM clips its predictions to the image range).
* **Other output shapes**: the pixel DDPM resizes its samples to any
  ``output_shape``; this generator only upsamples by a whole factor per axis (see
  :func:`check_output_shape`), because a non-integer ratio means a generator
  trained on another grid (another dataset or crop) was picked by mistake.

Reproducibility follows :mod:`pretrain.generators.ddpm`: the latent noise of
sample ``i`` is drawn from its own generator seeded with ``(seed, i)``.

The checkpoint folder holds ``generator.pt`` (autoencoder weights, EMA weights of
the latent U-Net, their configurations, ``scale_factor``, image and latent shapes,
training-data provenance) and ``generator.json``, written by
:mod:`pretrain.generators.ldm_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from benchmark.core.errors import DataError
from benchmark.data.h5format import DatasetMeta
from pretrain.generators.base import GENERATORS, GeneratorError, resize, seed_int, to_uint8
from pretrain.generators.ddpm import WEIGHTS, DDPMGenerator, default_norm_groups

if TYPE_CHECKING:
    from monai.networks.nets import AutoencoderKL

#: Rombach et al. 2022's noise schedule of the latent diffusion models.
LATENT_SCHEDULE = {"schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195}
#: Keys of ``generator.pt`` beyond the DDPM checkpoint's.
LDM_KEYS = ("autoencoder_config", "autoencoder_state_dict", "scale_factor", "latent_shape")
_NOISE_TAG, _STEP_TAG = 0x1A7E, 0x1A75


def autoencoder_config(
    spatial_dims: int,
    in_channels: int,
    channels: tuple[int, ...],
    latent_channels: int = 3,
    num_res_blocks: int = 1,
    norm_num_groups: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of :class:`monai.networks.nets.AutoencoderKL`, validated.

    No attention anywhere (as MONAI's 2D tutorial): self-attention over every voxel of a
    volume is the most expensive part of the model and matters little at these sizes.
    """
    channels = tuple(int(c) for c in channels)
    if not channels or any(c < 1 for c in channels):
        raise GeneratorError(f"ae_channels must be positive integers, got {channels}")
    if int(latent_channels) < 1:
        raise GeneratorError(f"latent_channels must be >= 1, got {latent_channels!r}")
    groups = default_norm_groups(channels) if norm_num_groups is None else int(norm_num_groups)
    if any(c % groups for c in channels):
        raise GeneratorError(f"norm_num_groups {groups} must divide every ae_channels {channels}")
    return {
        "spatial_dims": int(spatial_dims),
        "in_channels": int(in_channels),
        "out_channels": int(in_channels),
        "channels": list(channels),
        "latent_channels": int(latent_channels),
        "num_res_blocks": int(num_res_blocks),
        "attention_levels": [False] * len(channels),
        "norm_num_groups": groups,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }


def build_autoencoder(config: dict[str, Any]) -> AutoencoderKL:
    """The stage-1 autoencoder of ``config`` (see :func:`autoencoder_config`)."""
    from monai.networks.nets import AutoencoderKL

    try:
        return AutoencoderKL(**config)
    except ValueError as exc:  # MONAI validates channels / groups / levels
        raise GeneratorError(f"invalid autoencoder configuration: {exc}") from None


def downsampling_factor(ae_config: dict[str, Any]) -> int:
    """How much the autoencoder shrinks every spatial axis (2 per level below the first)."""
    return int(2 ** (len(ae_config["channels"]) - 1))


def latent_shape(
    image_shape: tuple[int, ...], ae_config: dict[str, Any], unet_channels: tuple[int, ...]
) -> tuple[int, ...]:
    """The latent shape ``(latent_channels, *spatial / factor)`` of images of ``image_shape``.

    Raises:
        GeneratorError: (naming ``size``) a spatial size is not a multiple of the
            autoencoder's downsampling factor, or the latent grid does not halve
            cleanly through the latent U-Net's levels.
    """
    spatial = tuple(int(s) for s in image_shape[1:])
    factor = downsampling_factor(ae_config)
    if any(s % factor for s in spatial):
        raise GeneratorError(
            f"size: spatial size {spatial} must be a multiple of the autoencoder's "
            f"downsampling factor {factor} ({len(ae_config['channels'])} ae_channels levels); "
            "pick another size or fewer ae_channels"
        )
    latent = tuple(s // factor for s in spatial)
    unet_factor = 2 ** (len(unet_channels) - 1)
    if any(s % unet_factor or s < unet_factor for s in latent):
        raise GeneratorError(
            f"size: latent grid {latent} of spatial size {spatial} must be a multiple of "
            f"{unet_factor} for a latent U-Net with {len(unet_channels)} channels levels; "
            "pick another size or fewer channels"
        )
    return (int(ae_config["latent_channels"]), *latent)


def latent_scheduler_config(num_train_timesteps: int = 1000) -> dict[str, Any]:
    """The latent noise schedule (:data:`LATENT_SCHEDULE`, no clipping) for every sampler."""
    if int(num_train_timesteps) < 2:
        raise GeneratorError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    return {
        "num_train_timesteps": int(num_train_timesteps),
        **LATENT_SCHEDULE,
        "prediction_type": "epsilon",
        "clip_sample": False,
    }


def check_output_shape(output_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> None:
    """Raise unless ``output_shape`` is ``model_shape`` upsampled by whole factors per axis."""
    out, model = tuple(int(s) for s in output_shape), tuple(int(s) for s in model_shape)
    if (
        len(out) != len(model)
        or out[0] != model[0]
        or any(o < m or o % m for o, m in zip(out[1:], model[1:], strict=True))
    ):
        raise GeneratorError(
            f"output_shape {out}: this latent diffusion generator was trained on {model}; "
            "it writes samples with the same channels and dimensions and each spatial size "
            "a whole multiple of the trained one (train it on this grid instead)"
        )


@GENERATORS.register("ldm", aliases=("latent-diffusion",))
class LDMGenerator(DDPMGenerator):
    """A trained latent diffusion model loaded for sampling.

    Loading, checkpoint checks and the noise schedulers are those of
    :class:`~pretrain.generators.ddpm.DDPMGenerator`; the U-Net runs on latents
    and its output is decoded by the stage-1 autoencoder.

    Args:
        checkpoint: The dict stored in ``generator.pt``.
        scheduler: ``"ddim"`` or ``"ddpm"``.
        steps: Sampling steps (default 50 for DDIM, all training steps for DDPM).
        device: Where to sample.
        path: Checkpoint folder (for provenance).
        output_shape: Shape ``(C, *spatial)`` of the written samples when it differs
            from the trained one: each spatial size must be a whole multiple of the
            trained size (:func:`check_output_shape`); samples are decoded at the trained
            size and upsampled bilinearly (2D, antialiased) or trilinearly (3D).
    """

    name: ClassVar[str] = "ldm"

    def __init__(
        self,
        checkpoint: dict[str, Any],
        scheduler: str = "ddim",
        steps: int | None = None,
        device: str | torch.device = "cpu",
        path: str | Path | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        where = Path(path) / WEIGHTS if path is not None else "checkpoint"
        if any(k not in checkpoint for k in LDM_KEYS):
            raise DataError(f"{where}: not a latent diffusion checkpoint (missing keys)")
        if output_shape is not None:
            check_output_shape(output_shape, tuple(checkpoint["image_shape"]))
        super().__init__(checkpoint, scheduler, steps, device, path, output_shape)
        self.latent_shape = tuple(int(s) for s in checkpoint["latent_shape"])
        self.scale_factor = float(checkpoint["scale_factor"])
        self.autoencoder = build_autoencoder(checkpoint["autoencoder_config"])
        self.autoencoder.to(self.device).eval()
        try:
            self.autoencoder.load_state_dict(checkpoint["autoencoder_state_dict"])
        except RuntimeError:
            raise DataError(
                f"{where}: autoencoder weights do not fit the stored configuration "
                "(incompatible checkpoint)"
            ) from None

    @classmethod
    def load(
        cls,
        path: str | Path,
        scheduler: str = "ddim",
        steps: int | None = None,
        device: str | torch.device = "cpu",
        size: int | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> LDMGenerator:
        """Load a folder written by ``synth train`` (see :meth:`DDPMGenerator.load`).

        Raises:
            DataError: Missing, unreadable or not a latent diffusion checkpoint.
            GeneratorError: ``size`` differs from the trained size, or ``output_shape``
                is not the trained shape upsampled by whole factors.
        """
        gen = super().load(path, scheduler, steps, device, size, output_shape)
        assert isinstance(gen, LDMGenerator)
        return gen

    def sample_batch(self, start: int, count: int, seed: int, batch_index: int) -> np.ndarray:
        from monai.inferers import LatentDiffusionInferer

        noise = torch.stack(
            [
                torch.randn(
                    self.latent_shape,
                    generator=torch.Generator().manual_seed(seed_int(seed, _NOISE_TAG, i)),
                )
                for i in range(start, start + count)
            ]
        ).to(self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed_int(seed, _STEP_TAG, batch_index))  # ancestral DDPM noise
            inferer = LatentDiffusionInferer(self.scheduler, scale_factor=self.scale_factor)
            x = inferer.sample(
                input_noise=noise,
                autoencoder_model=self.autoencoder,
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
        return {
            **super().describe(),
            "autoencoder_config": self.checkpoint["autoencoder_config"],
            "autoencoder_steps": self.checkpoint.get("ae_step"),
            "latent_shape": list(self.latent_shape),
            "scale_factor": self.scale_factor,
        }

    def dataset_meta(self) -> DatasetMeta:
        meta = super().dataset_meta()
        data = self.checkpoint.get("data", {})
        meta.name = f"synth-ldm-{data['name']}" if data.get("name") else "synth-ldm"
        meta.citation = (
            "Rombach et al. 2022 (latent diffusion); Ho et al. 2020 (DDPM); "
            "Song et al. 2021 (DDIM); Khader et al. 2022 (Medical Diffusion)"
        )
        return meta
