"""Training of the latent diffusion generator (``ldm``), both stages, resumable.

Stage 1 (``ae_steps`` steps): the :class:`~monai.networks.nets.AutoencoderKL` learns
to reconstruct train images scaled to [-1, 1] from a posterior sample
``z = mu + sigma * eps``, minimising ``|x - D(z)|_1 + kl_weight * KL(q(z|x) || N(0, I))``
(KL summed over latent elements, averaged over the batch; ``kl_weight`` 1e-6 as in
Rombach et al. 2022's KL-f models and MONAI's tutorials) with Adam and gradient
clipping. No perceptual or adversarial loss: see :mod:`pretrain.generators.ldm`.

Between the stages the autoencoder is frozen and ``scale_factor = 1 / std(z)`` is
estimated on (up to) :data:`SCALE_IMAGES` train images, as MONAI's latent diffusion
tutorials do on one batch (Rombach et al. 2022 rescale KL-regularised latents to unit
variance the same way).

Stage 2 (``steps`` steps): the latent U-Net is trained like the pixel DDPM of
:mod:`pretrain.generators.ddpm_train` (simple epsilon-MSE objective, Adam, linear
warmup, gradient clipping at ``grad_clip``, EMA of the weights used for sampling),
with MONAI's :class:`~monai.inferers.LatentDiffusionInferer` encoding each batch and
adding the noise to the scaled latents. Options and profiles:
:mod:`pretrain.generators.ldm_config`.

Leakage guard: only the train split is read (:func:`ddpm_train.load_train_split`).

Determinism and resume: batch ``k`` of either stage holds positions ``[k B, (k+1) B)``
of an endless stream of seeded epoch permutations; the posterior samples, noise and
timesteps of a step come from RNGs seeded by ``(seed, stage, k)``. ``state.pt`` (both
models, EMA, optimisers, learning-rate schedule, both step counters, ``scale_factor``,
logs) is written every ``checkpoint_every`` steps of either stage and at the end, so a
rerun continues from the last checkpoint and ends with exactly the weights of an
uninterrupted run; a finished run is not retrained. Only the fields of
:data:`~pretrain.generators.ldm_config.RUN_CONTROL` (``steps`` of stage 2, the
sampling/checkpoint cadence, ``device``, the ``profile`` name) may change on resume.

Outputs in the run folder: ``state.pt``, ``metrics.jsonl`` (autoencoder rows carry
``ae_*`` keys, diffusion rows the DDPM's keys, each with its stage's step),
``samples/autoencoder.png`` (train images above their reconstructions),
``samples/step_XXXXXX.png`` (DDIM samples of the EMA model), ``generator.pt`` and
``generator.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.core.device import resolve_device
from benchmark.core.errors import DataError, OutputExistsError, SSLBenchError
from benchmark.core.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    provenance,
    sha256_file,
)
from benchmark.core.optim import adam
from pretrain.generators.base import (
    GENERATOR_TRAINERS,
    GeneratorDivergedError,
    GeneratorError,
    GeneratorTrainer,
    save_grid,
    seed_int,
    to_uint8,
)
from pretrain.generators.ddpm import (
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    WEIGHTS,
    build_unet,
    make_scheduler,
    model_config,
)
from pretrain.generators.ddpm_train import METRICS, SAMPLES, STATE, load_train_split
from pretrain.generators.ldm import (
    LDMGenerator,
    autoencoder_config,
    build_autoencoder,
    latent_scheduler_config,
    latent_shape,
)
from pretrain.generators.ldm_config import RUN_CONTROL, LDMConfig

#: Train images used to estimate the latent ``scale_factor``.
SCALE_IMAGES = 64
_DATA_TAG, _AE_TAG, _SCALE_TAG, _TRAIN_TAG, _LATENT_TAG = 0xDA7A, 0xAE, 0x5CA1E, 0x7EA1, 0x1A7


class LDMTrainer:
    """One two-stage latent diffusion run in a folder; see :func:`train_ldm`.

    The constructor checks everything (options, data, sizes) before any training.
    """

    def __init__(self, data: str | Path, out_dir: str | Path, config: LDMConfig) -> None:
        config.validate()
        self.config = config
        self.out = Path(out_dir)
        self.device = resolve_device(config.device)
        images, self.train_indices, self.data_info = load_train_split(data, config.size)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        dims = len(self.image_shape) - 1
        self.ae_config = autoencoder_config(
            dims,
            self.image_shape[0],
            config.ae_channels,
            config.latent_channels,
            config.ae_num_res_blocks,
        )
        self.latent_shape = latent_shape(self.image_shape, self.ae_config, config.channels)
        self.model_config = model_config(
            dims,
            config.latent_channels,
            config.channels,
            config.attention_levels,
            config.num_res_blocks,
            config.norm_num_groups,
            config.num_head_channels,
        )
        self.scheduler_config = latent_scheduler_config(config.num_train_timesteps)
        self.images = (images * 2.0 - 1.0).to(self.device)  # [-1, 1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # initial weights
            self.autoencoder = build_autoencoder(self.ae_config).to(self.device)
            self.model = build_unet(self.model_config).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ae_optimizer = adam(self.autoencoder.parameters(), decoupled=False, lr=config.ae_lr)
        self.optimizer = adam(self.model.parameters(), decoupled=False, lr=config.lr)
        warmup = max(1, config.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup)
        )
        self.noise_scheduler = make_scheduler(self.scheduler_config, "ddpm")
        self.inferer: Any = None
        self.scale_factor: float | None = None
        self.ae_step = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.ae_time = 0.0
        self.train_time = 0.0
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # -- data -------------------------------------------------------------------
    def batch_positions(self, stage: int, step: int) -> np.ndarray:
        """Positions (into the train split) of the images of ``step`` of ``stage`` (tag)."""
        n, b = int(self.images.shape[0]), self.config.batch_size
        out = np.empty(b, dtype=np.int64)
        for j, k in enumerate(range(step * b, (step + 1) * b)):
            epoch, offset = divmod(k, n)
            if (stage, epoch) not in self._perms:
                ss = np.random.SeedSequence([self.config.seed, _DATA_TAG, stage, epoch])
                self._perms = {(stage, epoch): np.random.default_rng(ss).permutation(n)}
            out[j] = self._perms[stage, epoch][offset]
        return out

    def _batch(self, stage: int, step: int) -> torch.Tensor:
        idx = torch.from_numpy(self.batch_positions(stage, step)).to(self.device)
        return self.images[idx]

    @contextlib.contextmanager
    def _seeded(self, *keys: int) -> Iterator[None]:
        """The global RNG seeded by ``keys``, restored afterwards (MONAI's posterior
        sampling ``z = mu + sigma * eps`` draws ``eps`` from it)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed_int(self.config.seed, *keys))
            yield

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "sslbench-ldm-state",
            "ae_step": self.ae_step,
            "step": self.step,
            "autoencoder": self.autoencoder.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scale_factor": self.scale_factor,
            "config": self.config.to_dict(),
            "data_hash": self.data_info["content_hash"],
            "history": self.history,
            "ae_time": self.ae_time,
            "train_time": self.train_time,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        where = self.out / STATE
        if state.get("format") != "sslbench-ldm-state":
            raise DataError(f"{where}: not a latent diffusion training state")
        saved = {k: v for k, v in state["config"].items() if k not in RUN_CONTROL}
        now = {k: v for k, v in self.config.to_dict().items() if k not in RUN_CONTROL}
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise SSLBenchError(
                f"{where}: saved run has different settings ({', '.join(diff)}); "
                "use the same options or a new output folder"
            )
        if state["data_hash"] != self.data_info["content_hash"]:
            raise SSLBenchError(
                f"{where}: saved run was trained on different data "
                f"(content hash {state['data_hash'][:12]}...)"
            )
        self.autoencoder.load_state_dict(state["autoencoder"])
        self.ae_optimizer.load_state_dict(state["ae_optimizer"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.ae_step, self.step = int(state["ae_step"]), int(state["step"])
        self.history = list(state["history"])
        self.ae_time, self.train_time = float(state["ae_time"]), float(state["train_time"])
        if state["scale_factor"] is not None:
            self.start_diffusion(float(state["scale_factor"]))

    def save_state(self) -> None:
        with atomic_path(self.out / STATE) as tmp:
            torch.save(self.state_dict(), tmp)
        atomic_write_text(self.out / METRICS, "".join(json.dumps(r) + "\n" for r in self.history))

    def export(self) -> dict[str, Any]:
        """The ``generator.pt`` content: both models and everything needed to sample."""
        if self.scale_factor is None:
            raise GeneratorError("the latent diffusion stage has not started yet")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generator": "ldm",
            "model_config": self.model_config,
            "scheduler_config": self.scheduler_config,
            "autoencoder_config": self.ae_config,
            "image_shape": list(self.image_shape),
            "latent_shape": list(self.latent_shape),
            "scale_factor": self.scale_factor,
            "ae_step": self.ae_step,
            "step": self.step,
            "data": self.data_info,
            "state_dict": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
            "autoencoder_state_dict": {
                k: v.detach().cpu() for k, v in self.autoencoder.state_dict().items()
            },
        }

    # -- stage 1 ----------------------------------------------------------------
    def _check(self, what: str, value: torch.Tensor, stage: str, step: int) -> None:
        if not torch.isfinite(value):
            last = self.out / STATE
            keep = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint"
            raise GeneratorDivergedError(
                f"{stage} {what} became non-finite at step {step}; {keep} (try a lower lr)"
            )

    def autoencoder_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L1 reconstruction of a posterior sample and the KL term (per image)."""
        recon, mu, sigma = self.autoencoder(x)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2)) - 1).flatten(1).sum(1)
        return F.l1_loss(recon.float(), x.float()), kl.mean()

    def train_autoencoder_step(self) -> dict[str, float]:
        """One stage-1 step (``ae_step``); returns its logs."""
        cfg = self.config
        x = self._batch(_AE_TAG, self.ae_step)
        self.autoencoder.train()
        with self._seeded(_AE_TAG, self.ae_step):
            l1, kl = self.autoencoder_loss(x)
        loss = l1 + cfg.kl_weight * kl
        self._check("loss", loss, "autoencoder", self.ae_step)
        self.ae_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.autoencoder.parameters(), cfg.grad_clip)
        self._check("gradient norm", norm, "autoencoder", self.ae_step)
        self.ae_optimizer.step()
        return {
            "ae_loss": float(loss.item()),
            "ae_l1": float(l1.item()),
            "ae_kl": float(kl.item()),
            "ae_grad_norm": float(norm),
        }

    def start_diffusion(self, scale_factor: float | None = None) -> float:
        """Freeze the autoencoder and set ``scale_factor`` (estimated unless given)."""
        from monai.inferers import LatentDiffusionInferer

        self.autoencoder.eval().requires_grad_(False)
        if scale_factor is None:
            n = min(SCALE_IMAGES, int(self.images.shape[0]))
            with self._seeded(_SCALE_TAG), torch.no_grad():
                z = torch.cat(
                    [
                        self.autoencoder.encode_stage_2_inputs(self.images[s : s + 16])
                        for s in range(0, n, 16)
                    ]
                )
            scale_factor = float(1.0 / z.float().std())
            if not np.isfinite(scale_factor):
                raise GeneratorDivergedError(f"latent std {1 / scale_factor} is not usable")
        self.scale_factor = float(scale_factor)
        self.inferer = LatentDiffusionInferer(self.noise_scheduler, scale_factor=self.scale_factor)
        return self.scale_factor

    # -- stage 2 ----------------------------------------------------------------
    def loss(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Epsilon-MSE on the scaled latents of ``x`` (posterior sample seeded per step)."""
        with self._seeded(_LATENT_TAG, self.step):
            pred = self.inferer(
                inputs=x,
                autoencoder_model=self.autoencoder,
                diffusion_model=self.model,
                noise=noise,
                timesteps=t,
            )
        return F.mse_loss(pred.float(), noise.float())

    def train_step(self) -> dict[str, float]:
        """One stage-2 step (``step``); :meth:`start_diffusion` must have run."""
        cfg = self.config
        x = self._batch(_TRAIN_TAG, self.step)
        gen = torch.Generator().manual_seed(seed_int(cfg.seed, _TRAIN_TAG, self.step))
        noise = torch.randn((x.shape[0], *self.latent_shape), generator=gen).to(self.device)
        t = torch.randint(0, cfg.num_train_timesteps, (x.shape[0],), generator=gen)
        self.model.train()
        loss = self.loss(x, noise, t.to(self.device))
        self._check("loss", loss, "latent diffusion", self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self._check("gradient norm", norm, "latent diffusion", self.step)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.lr_schedule.step()
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
            for eb, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                eb.copy_(b)
        return {"loss": float(loss.item()), "lr": float(lr), "grad_norm": float(norm)}

    # -- outputs ----------------------------------------------------------------
    def save_reconstructions(self, n: int = 8) -> Path:
        """Train images (top row) above their reconstructions from the posterior mean."""
        x = self.images[: min(n, int(self.images.shape[0]))]
        with torch.no_grad():
            mu, _ = self.autoencoder.encode(x)
            recon = self.autoencoder.decode(mu)
        both = np.concatenate([to_uint8(x, (-1.0, 1.0)), to_uint8(recon, (-1.0, 1.0))])
        return save_grid(both, self.out / SAMPLES / "autoencoder.png", ncol=len(x), scale=2)

    def save_samples(self) -> Path:
        """A grid of DDIM samples of the current EMA weights (fixed noise across steps)."""
        cfg = self.config
        gen = LDMGenerator(
            self.export(), "ddim", min(cfg.sample_steps, cfg.num_train_timesteps), self.device
        )
        images = gen.sample(cfg.sample_n, seed=cfg.seed, batch_size=cfg.sample_n)
        return save_grid(
            images,
            self.out / SAMPLES / f"step_{self.step:06d}.png",
            ncol=int(np.ceil(np.sqrt(cfg.sample_n))),
            scale=2,
        )

    def run(self, progress: bool = True) -> None:
        """Train both stages from the current steps to ``ae_steps`` and ``steps``."""
        cfg = self.config
        bar = tqdm(
            total=cfg.ae_steps + cfg.steps,
            initial=self.ae_step + self.step,
            disable=not progress,
            unit="step",
            desc="synth train ldm",
            dynamic_ncols=True,
        )
        try:
            while self.ae_step < cfg.ae_steps:
                t0 = time.perf_counter()
                logs = self.train_autoencoder_step()
                dt = time.perf_counter() - t0
                self.ae_time += dt
                self.ae_step += 1
                ips = cfg.batch_size / dt
                self.history.append({"step": self.ae_step, "ae_images_per_s": ips, **logs})
                bar.update(1)
                bar.set_postfix(ae_l1=f"{logs['ae_l1']:.4f}", img_s=f"{ips:.1f}")
                if cfg.checkpoint_every and self.ae_step % cfg.checkpoint_every == 0:
                    self.save_state()
            if self.scale_factor is None:
                self.start_diffusion()
                if cfg.sample_every:
                    self.save_reconstructions()
                self.save_state()
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                logs = self.train_step()
                dt = time.perf_counter() - t0
                self.train_time += dt
                self.step += 1
                ips = cfg.batch_size / dt
                self.history.append({"step": self.step, "images_per_s": ips, **logs})
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{ips:.1f}")
                if cfg.sample_every and (
                    self.step % cfg.sample_every == 0 or self.step == cfg.steps
                ):
                    self.save_samples()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_state()
        finally:
            bar.close()

    def finish(self) -> Path:
        """Write the final state, ``generator.pt`` and ``generator.json``."""
        self.save_state()
        with atomic_path(self.out / WEIGHTS) as tmp:
            torch.save(self.export(), tmp)
        cfg = self.config
        total = self.ae_time + self.train_time
        seen = (self.ae_step + self.step) * cfg.batch_size
        last: dict[str, Any] = next((r for r in reversed(self.history) if "loss" in r), {})
        last_ae: dict[str, Any] = next((r for r in reversed(self.history) if "ae_loss" in r), {})
        atomic_write_json(
            self.out / METADATA,
            {
                "generator": "ldm",
                "generator_sha256": sha256_file(self.out / WEIGHTS),
                "config": cfg.to_dict(),
                "autoencoder_config": self.ae_config,
                "model_config": self.model_config,
                "scheduler_config": self.scheduler_config,
                "image_shape": list(self.image_shape),
                "latent_shape": list(self.latent_shape),
                "scale_factor": self.scale_factor,
                "num_params": {
                    "autoencoder": sum(p.numel() for p in self.autoencoder.parameters()),
                    "unet": sum(p.numel() for p in self.model.parameters()),
                },
                "training_data": self.data_info,
                "ae_steps": self.ae_step,
                "steps": self.step,
                "images_seen": seen,
                "final_loss": last.get("loss"),
                "final_ae_l1": last_ae.get("ae_l1"),
                "ae_train_time_s": round(self.ae_time, 3),
                "diffusion_train_time_s": round(self.train_time, 3),
                "train_time_s": round(total, 3),
                "images_per_s": seen / total if total else None,
                "device": str(self.device),
                "references": [
                    "Rombach et al. 2022 (latent diffusion)",
                    "Ho et al. 2020 (DDPM)",
                    "Song et al. 2021 (DDIM)",
                    "Khader et al. 2022 (Medical Diffusion)",
                ],
                "provenance": provenance(),
            },
        )
        return self.out

    def finished(self) -> bool:
        """Both stages are done and the generator files exist."""
        return (
            self.ae_step >= self.config.ae_steps
            and self.step >= self.config.steps
            and (self.out / WEIGHTS).exists()
            and (self.out / METADATA).exists()
        )


def train_ldm(
    data: str | Path,
    out_dir: str | Path,
    config: LDMConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train (or resume) a latent diffusion model on the train split of ``data``.

    Args:
        data: sslbench HDF5 file; only its train split is read.
        out_dir: Run folder (see the module docstring for its files).
        config: Hyperparameters (:meth:`LDMConfig.from_options` applies a profile).
        resume: Continue from ``out_dir/state.pt`` (from step 0 if there is none yet);
            a finished run is returned as it is.
        overwrite: Start again in a folder that holds a run.
        progress: Show a progress bar.

    Returns:
        The run folder, which is also the generator checkpoint for ``synth sample``.

    Raises:
        OutputExistsError: The folder holds a run and neither flag was given.
        DataError: No train split, unreadable data or state (nothing is written).
        GeneratorError: Bad options or sizes (nothing is written).
        GeneratorDivergedError: NaN/inf loss; the last ``state.pt`` is kept.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    holds_run = any((out / f).exists() for f in (STATE, WEIGHTS, METADATA))
    if holds_run and not (resume or overwrite):
        raise OutputExistsError(
            f"{out}: holds a generator run already; pass --resume to continue "
            "it or --overwrite to start again"
        )
    trainer = LDMTrainer(data, out, config)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    if resume and not overwrite and state_path.exists():
        try:
            state = torch.load(state_path, map_location=trainer.device, weights_only=True)
        except Exception as exc:
            raise DataError(
                f"{state_path}: unreadable training state ({exc.__class__.__name__})"
            ) from None
        trainer.load_state_dict(state)
        if trainer.finished():
            return out
    elif overwrite:
        for name in (STATE, WEIGHTS, METADATA, METRICS):
            (out / name).unlink(missing_ok=True)
    trainer.run(progress=progress)
    return trainer.finish()


@GENERATOR_TRAINERS.register("ldm")
class LDMTraining(GeneratorTrainer):
    """The ``ldm`` generator's training, as the experiment runner calls it."""

    config_class = LDMConfig

    @staticmethod
    def fit(data: Path, out: Path, options: dict[str, Any], device: str) -> Path:
        """Train (or resume) with ``options`` (:class:`LDMConfig` fields) on ``device``."""
        cfg = LDMConfig.from_options({**options, "device": device})
        return train_ldm(data, out, cfg, resume=True, progress=False)
