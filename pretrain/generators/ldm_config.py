"""Options of the latent diffusion generator (``generator.train`` of kind ``ldm``).

The option names that :class:`LDMConfig` shares with
:class:`~pretrain.generators.ddpm_train.DDPMConfig` (``steps``, ``batch_size``, ``lr``,
``channels``, ``attention_levels``, ``num_res_blocks``, ``size``, ...) mean the same
there and describe the latent U-Net, so an experiment ``profile``'s defaults for
``generator.train`` (written for the DDPM) apply to either kind. The ``ae_*`` options,
``latent_channels`` and ``kl_weight`` describe the stage-1 autoencoder.

Profiles (:data:`PROFILES`, option ``profile``): ``cpu`` is the dataclass defaults,
sized for MSD hippocampus at 32^3 on 2 CPU cores (about 30 minutes on an idle machine:
600 autoencoder steps of ~1.35 s and 3000 latent steps of ~0.3 s at batch 8, measured
alone; about 2.4 s and 0.4 s while another job shared the cores); ``gpu`` is sized for
one large GPU (untested: no GPU was lent). Options given explicitly override the
profile; in an experiment these include the experiment profile's ``generator.train``
defaults (``cpu-small``: steps 1500, batch 16, channels 32,64,64).
The CPU profile's autoencoder learning rate is 5e-4 rather than the 1e-4 of MONAI's
tutorials (kept by the GPU profile): on hippocampus 32^3 its L1 after 40 steps was
0.256 against 0.314 at 1e-4, and the CPU budget allows only a few hundred steps.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pretrain.generators.base import GeneratorError

#: Fields that may differ when a run is resumed (they do not change the weights).
RUN_CONTROL = (
    "steps",
    "sample_every",
    "sample_steps",
    "sample_n",
    "checkpoint_every",
    "device",
    "profile",
)
_TUPLES = ("channels", "attention_levels", "ae_channels")

#: Presets of the ``profile`` option; explicit options override them.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {},  # the LDMConfig defaults
    "gpu": {
        "batch_size": 32,
        "ae_steps": 20000,
        "ae_lr": 1e-4,
        "ae_channels": (64, 128, 128),
        "ae_num_res_blocks": 2,
        "steps": 50000,
        "channels": (128, 256, 256),
        "attention_levels": (False, True, True),
        "num_res_blocks": 2,
        "num_head_channels": 32,
        "sample_every": 5000,
        "checkpoint_every": 2000,
    },
}


@dataclass
class LDMConfig:
    """Hyperparameters of a latent diffusion run (defaults: the ``cpu`` profile).

    ``size`` resizes the in-plane axes (H, W) as for the DDPM; every spatial size must
    be a multiple of the autoencoder's downsampling factor ``2 ** (len(ae_channels)-1)``.
    Build it with :meth:`from_options` to apply a ``profile``.
    """

    # stage 2: the latent U-Net (same names and meaning as DDPMConfig)
    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] | None = None
    num_res_blocks: int = 1
    num_head_channels: int = 8
    norm_num_groups: int | None = None  # latent U-Net only; the autoencoder picks its own
    size: int | None = None
    num_train_timesteps: int = 1000
    ema_decay: float = 0.999
    # stage 1: the autoencoder
    ae_steps: int = 600
    ae_lr: float = 5e-4
    ae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 3
    ae_num_res_blocks: int = 1
    kl_weight: float = 1e-6
    # run control
    profile: str = "cpu"
    seed: int = 0
    sample_every: int = 500
    sample_steps: int = 50
    sample_n: int = 16
    checkpoint_every: int = 500
    device: str = "auto"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> LDMConfig:
        """Options (``generator.train``) over the ``profile`` preset over the defaults.

        Raises:
            GeneratorError: An unknown option or profile, or an invalid value (named).
        """
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in valid:
                raise GeneratorError(f"{key}: unknown ldm train option (valid: {', '.join(valid)})")
        profile = options.get("profile") or "cpu"
        if profile not in PROFILES:
            raise GeneratorError(
                f"profile: unknown profile {profile!r} (use {', '.join(PROFILES)})"
            )
        values = {**PROFILES[profile], **options, "profile": profile}
        for key in _TUPLES:
            if isinstance(values.get(key), list | tuple):
                values[key] = tuple(values[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        minimum = {
            "steps": 1,
            "batch_size": 1,
            "num_res_blocks": 1,
            "num_head_channels": 1,
            "num_train_timesteps": 2,
            "ae_steps": 1,
            "latent_channels": 1,
            "ae_num_res_blocks": 1,
            "sample_steps": 1,
            "sample_n": 1,
            "warmup_steps": 0,
            "sample_every": 0,
            "checkpoint_every": 0,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GeneratorError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "ae_lr", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value > 0 and np.isfinite(value)):
                raise GeneratorError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.kl_weight, int | float) or not self.kl_weight >= 0:
            raise GeneratorError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}")
        if not isinstance(self.ema_decay, int | float) or not 0.0 <= self.ema_decay < 1.0:
            raise GeneratorError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        for name in ("channels", "ae_channels"):
            value = getattr(self, name)
            if not (
                isinstance(value, tuple)
                and value
                and all(isinstance(c, int) and c >= 1 for c in value)
            ):
                raise GeneratorError(f"{name} must be a list of positive integers, got {value!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 8):
            raise GeneratorError(f"size must be an integer >= 8, got {self.size!r}")
        if self.profile not in PROFILES:
            raise GeneratorError(f"profile: unknown profile {self.profile!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))
