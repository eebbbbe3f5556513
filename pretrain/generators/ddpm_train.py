"""Training loop of the DDPM generator (``sslbench synth train``).

Objective (Ho et al. 2020, Alg. 1): for an image ``x0`` scaled to [-1, 1], a
timestep ``t ~ U{0, T-1}`` and noise ``eps ~ N(0, I)``, minimise
``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2`` with
Adam, a linear learning-rate warmup, gradient clipping at norm 1 and an
exponential moving average (EMA) of the weights that is used for sampling, as
in Ho et al. 2020 and Khader et al. 2022. The EMA decay ramps up as
``min(decay, (1 + step) / (10 + step))`` so short runs are not dominated by the
random initialisation.

Leakage guard. Only images of the **train split** are ever used: the file's
split column is checked before the images are loaded (a file without train
samples is an error) and every loaded index is verified to be a train index,
so validation and test images cannot leak into the synthetic data that later
pretrains an encoder.

Determinism and resume. Batch ``k`` holds positions ``[k B, (k+1) B)`` of an
endless stream of epochs, epoch ``e`` being a permutation drawn from
``SeedSequence([seed, tag, e])``; its noise and timesteps come from a generator
seeded by ``(seed, k)``. A run resumed from ``state.pt`` (model, EMA,
optimiser, learning-rate schedule, step, RNG) therefore ends with exactly the
weights of an uninterrupted run. Only ``steps`` and the logging/sampling
cadence may change on resume (e.g. to train further).

Outputs in the run folder: ``state.pt`` (training state, every
``checkpoint_every`` steps and at the end), ``metrics.jsonl``,
``samples/step_XXXXXX.png`` (DDIM samples of the EMA model every
``sample_every`` steps), ``generator.pt`` and ``generator.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
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
from benchmark.data.dataset import H5Dataset
from benchmark.data.h5format import compute_content_hash, open_h5, read_split
from pretrain.generators.base import (
    GENERATOR_TRAINERS,
    GeneratorDivergedError,
    GeneratorError,
    GeneratorTrainer,
    resize,
    save_grid,
    seed_int,
)
from pretrain.generators.ddpm import (
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    WEIGHTS,
    DDPMGenerator,
    build_unet,
    check_spatial,
    make_scheduler,
    model_config,
    scheduler_config,
)

STATE = "state.pt"
METRICS = "metrics.jsonl"
SAMPLES = "samples"
_DATA_TAG, _TRAIN_TAG = 0xDA7A, 0x7EA1
#: Fields that may differ when a run is resumed (they do not change the weights).
RUN_CONTROL = ("steps", "sample_every", "sample_steps", "sample_n", "checkpoint_every", "device")


@dataclass
class DDPMConfig:
    """Hyperparameters of a DDPM training run (defaults sized for a CPU at 64 px).

    ``size`` resizes the in-plane axes (H, W) of the training images to ``size x size``;
    volumes keep their depth D (MSD hippocampus 48 x 64 x 48 at ``size=32`` trains on
    48 x 32 x 32). ``None`` trains at the stored size.
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] | None = None
    num_res_blocks: int = 1
    num_head_channels: int = 8
    norm_num_groups: int | None = None
    size: int | None = None
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    ema_decay: float = 0.999
    seed: int = 0
    sample_every: int = 500
    sample_steps: int = 50
    sample_n: int = 16
    checkpoint_every: int = 500
    device: str = "auto"

    def validate(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "num_res_blocks",
            "num_head_channels",
            "sample_steps",
            "sample_n",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise GeneratorError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "sample_every", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise GeneratorError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise GeneratorError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise GeneratorError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.size is not None and self.size < 8:
            raise GeneratorError(f"size must be >= 8, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_train_split(
    path: str | Path, size: int | None = None
) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """The train-split images of ``path`` as float [0, 1], their file indices and provenance.

    Raises:
        DataError: The file is unreadable or has no train samples, or a non-train
            index would be loaded (leakage guard).
    """
    p = Path(path)
    with open_h5(p) as f:
        split = read_split(f)
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    expected = np.flatnonzero(split == "train")
    if expected.size == 0:
        raise DataError(
            f"{p}: has no samples in the train split ({counts}); the generator is "
            "trained on the train split only so that val/test images never leak"
        )
    ds = H5Dataset(p, split="train", in_memory=True, keys=())
    if not (
        np.array_equal(np.sort(ds.indices), expected)
        and (ds.split == "train").all()
        and (split[ds.indices] == "train").all()
    ):
        raise DataError(f"{p}: leakage guard: the loaded samples are not exactly the train split")
    images = ds.to_float(ds.raw_images())
    original = tuple(images.shape[1:])
    if size is not None:
        images = resize(images, (*original[1:-2], int(size), int(size)))
    meta = ds.meta
    info = {
        "path": str(p.resolve()),
        "content_hash": str(meta.get("content_hash") or compute_content_hash(p)),
        "name": meta.get("name", ""),
        "modality": meta.get("modality", ""),
        "spacing": meta.get("spacing") if tuple(images.shape[1:]) == original else None,
        "split_counts": counts,
        "n_train": int(expected.size),
        "train_indices_sha256": hashlib.sha256(
            np.ascontiguousarray(ds.indices, dtype=np.int64).tobytes()
        ).hexdigest(),
        "original_shape": list(original),
        "image_shape": list(images.shape[1:]),
    }
    ds.close()
    return images, np.asarray(ds.indices), info


class DDPMTrainer:
    """One DDPM training run in a folder; see :func:`train_ddpm`."""

    def __init__(self, data: str | Path, out_dir: str | Path, config: DDPMConfig) -> None:
        from monai.inferers import DiffusionInferer

        config.validate()
        self.config = config
        self.out = Path(out_dir)
        self.device = resolve_device(config.device)
        images, self.train_indices, self.data_info = load_train_split(data, config.size)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        check_spatial(self.image_shape[1:], config.channels, str(data))
        self.images = (images * 2.0 - 1.0).to(self.device)  # [-1, 1]
        self.model_config = model_config(
            len(self.image_shape) - 1,
            self.image_shape[0],
            config.channels,
            config.attention_levels,
            config.num_res_blocks,
            config.norm_num_groups,
            config.num_head_channels,
        )
        self.scheduler_config = scheduler_config(config.num_train_timesteps, config.schedule)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # initial weights
            self.model = build_unet(self.model_config).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = adam(self.model.parameters(), decoupled=False, lr=config.lr)
        warmup = max(1, config.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup)
        )
        self.noise_scheduler = make_scheduler(self.scheduler_config, "ddpm")
        self.inferer = DiffusionInferer(self.noise_scheduler)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self._perms: dict[int, np.ndarray] = {}

    # -- data -------------------------------------------------------------------
    def batch_positions(self, step: int) -> np.ndarray:
        """Positions (into the train split) of the images of optimizer step ``step``."""
        n, b = int(self.images.shape[0]), self.config.batch_size
        out = np.empty(b, dtype=np.int64)
        for j, k in enumerate(range(step * b, (step + 1) * b)):
            epoch, offset = divmod(k, n)
            if epoch not in self._perms:
                ss = np.random.SeedSequence([self.config.seed, _DATA_TAG, epoch])
                self._perms = {epoch: np.random.default_rng(ss).permutation(n)}
            out[j] = self._perms[epoch][offset]
        return out

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "sslbench-ddpm-state",
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": self.config.to_dict(),
            "data_hash": self.data_info["content_hash"],
            "history": self.history,
            "train_time": self.train_time,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        where = self.out / STATE
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
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.train_time = float(state["train_time"])

    def save_state(self) -> None:
        with atomic_path(self.out / STATE) as tmp:
            torch.save(self.state_dict(), tmp)
        atomic_write_text(self.out / METRICS, "".join(json.dumps(r) + "\n" for r in self.history))

    def export(self) -> dict[str, Any]:
        """The ``generator.pt`` content: EMA weights and everything needed to sample."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generator": "ddpm",
            "model_config": self.model_config,
            "scheduler_config": self.scheduler_config,
            "image_shape": list(self.image_shape),
            "step": self.step,
            "data": self.data_info,
            "state_dict": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
        }

    # -- loop -------------------------------------------------------------------
    def loss(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The simple DDPM objective: MSE between the added and the predicted noise."""
        pred = self.inferer(inputs=x, diffusion_model=self.model, noise=noise, timesteps=t)
        return F.mse_loss(pred.float(), noise.float())

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        x = self.images[torch.from_numpy(self.batch_positions(self.step)).to(self.device)]
        gen = torch.Generator().manual_seed(seed_int(cfg.seed, _TRAIN_TAG, self.step))
        noise = torch.randn(x.shape, generator=gen).to(self.device)
        t = torch.randint(0, cfg.num_train_timesteps, (x.shape[0],), generator=gen)
        self.model.train()
        loss = self.loss(x, noise, t.to(self.device))
        last = self.out / STATE
        keep = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint yet"
        if not torch.isfinite(loss):
            raise GeneratorDivergedError(
                f"DDPM loss became {loss.item()} at step {self.step}; {keep} (try a lower --lr)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if not torch.isfinite(norm):
            raise GeneratorDivergedError(
                f"DDPM gradients became non-finite at step {self.step}; {keep} (try a lower --lr)"
            )
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

    def save_samples(self) -> Path:
        """A grid of DDIM samples of the current EMA weights (fixed noise across steps)."""
        cfg = self.config
        gen = DDPMGenerator(
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
        """Train from the current step to ``config.steps``."""
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not progress,
            unit="step",
            desc="synth train ddpm",
            dynamic_ncols=True,
        )
        try:
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
        images_seen = self.step * cfg.batch_size
        last = self.history[-1] if self.history else {}
        atomic_write_json(
            self.out / METADATA,
            {
                "generator": "ddpm",
                "generator_sha256": sha256_file(self.out / WEIGHTS),
                "config": cfg.to_dict(),
                "model_config": self.model_config,
                "scheduler_config": self.scheduler_config,
                "image_shape": list(self.image_shape),
                "num_params": sum(p.numel() for p in self.model.parameters()),
                "training_data": self.data_info,
                "steps": self.step,
                "images_seen": images_seen,
                "final_loss": last.get("loss"),
                "train_time_s": round(self.train_time, 3),
                "images_per_s": images_seen / self.train_time if self.train_time else None,
                "device": str(self.device),
                "references": [
                    "Ho et al. 2020 (DDPM)",
                    "Song et al. 2021 (DDIM)",
                    "Khader et al. 2022 (Medical Diffusion)",
                ],
                "provenance": provenance(),
            },
        )
        return self.out


def train_ddpm(
    data: str | Path,
    out_dir: str | Path,
    config: DDPMConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train (or resume) a DDPM on the train split of ``data`` into ``out_dir``.

    Args:
        data: sslbench HDF5 file; only its train split is read.
        out_dir: Run folder (see the module docstring for its files).
        config: Hyperparameters.
        resume: Continue from ``out_dir/state.pt`` (from step 0 if there is none yet).
        overwrite: Start again in a folder that holds a run.
        progress: Show a progress bar (loss, images/s, ETA).

    Returns:
        The run folder, which is also the generator checkpoint for ``synth sample``.

    Raises:
        OutputExistsError: The folder holds a run and neither flag was given.
        DataError: No train split, unreadable data (nothing is written).
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
    trainer = DDPMTrainer(data, out, config)
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
    elif overwrite:
        for name in (STATE, WEIGHTS, METADATA, METRICS):
            (out / name).unlink(missing_ok=True)
    trainer.run(progress=progress)
    return trainer.finish()


@GENERATOR_TRAINERS.register("ddpm")
class DDPMTraining(GeneratorTrainer):
    """The ``ddpm`` generator's training, as the experiment runner calls it."""

    config_class = DDPMConfig

    @staticmethod
    def fit(data: Path, out: Path, options: dict[str, Any], device: str) -> Path:
        """Train (or resume) with ``options`` (:class:`DDPMConfig` fields) on ``device``."""
        train = dict(options)
        for key in ("channels", "attention_levels"):
            if train.get(key) is not None:
                train[key] = tuple(train[key])
        cfg = DDPMConfig(**{**train, "device": device})
        cfg.validate()
        return train_ddpm(data, out, cfg, resume=True, progress=False)
