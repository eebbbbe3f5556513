"""The shared pretraining loop: source x SSL method x encoder -> encoder checkpoint.

A run is defined by its number of optimizer steps and its batch size, not by
epochs over a pool, so real-only, synthetic-only and mixed runs see exactly the
same number of images (compute matching). Each step:

1. the source returns the batch of step ``t`` (a pure function of seed and ``t``);
2. the method's views are built on the device by batched tensor augmentations;
3. forward, loss, backward, optimizer and scheduler step, momentum updates.

All randomness of step ``t`` (augmentations, masks, dropout) is drawn from
generators re-seeded from ``(seed, t)``, so a run killed at any point and
resumed from its last checkpoint ends with the same weights as an uninterrupted
run. The training state (model, optimizer, scheduler, fp16 loss scaler, RNG
states, step) is saved every ``checkpoint_every`` steps; the final encoder is
saved in the shared checkpoint format (:mod:`pretrain.checkpoint`).

Resuming checks that the saved run had the same configuration, except for the
run-control keys :data:`RUN_CONTROL_KEYS` (device, logging and checkpoint
cadence, memory format), so a run started on a GPU can be finished on a CPU
host.

Mixed precision. ``amp`` autocasts the forward pass to bf16 or fp16. fp16 has
a narrow exponent range, so small gradients would underflow to zero: fp16 runs
scale the loss with a dynamic :class:`torch.amp.GradScaler`
(:func:`make_grad_scaler`), unscale the gradients before clipping and logging
their norm, and skip the optimizer step (lowering the scale) when a scaled
gradient overflowed. bf16 and fp32 runs use a disabled scaler, which changes
nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightly.utils.debug import std_of_l2_normalized
from tqdm.auto import tqdm

from benchmark.core.allocator import tune_allocator
from benchmark.core.device import resolve_device
from benchmark.core.errors import SSLBenchError
from benchmark.core.io import atomic_path, atomic_write_json, atomic_write_text, provenance
from benchmark.core.optim import adam
from pretrain import distributed
from pretrain.augment import make_views
from pretrain.checkpoint import save_encoder
from pretrain.dense_monitor import DenseProbeMonitor
from pretrain.encoders import create_encoder
from pretrain.encoders.calibration import calibrate_batch_norm
from pretrain.methods import METHODS, create_method
from pretrain.methods.base import resolve_recipe, scaled_lr
from pretrain.monitor import (
    DEFAULT_MARGIN,
    DENSE_METRIC,
    KNNMonitor,
    health,
    monitor_steps,
    resize_images,
)
from pretrain.sources import create_source
from pretrain.strength import check_strength, with_strength

STATE = "state.pt"
CONFIG = "config.json"
SUMMARY = "pretrain.json"
METRICS = "metrics.jsonl"
ENCODER_DIR = "encoder"

#: :class:`PretrainConfig` fields that may differ when a run is resumed: they
#: choose where and how the run executes and what it records, not what it
#: learns (``device`` moves the arithmetic, ``channels_last`` only the memory
#: layout, so either may change the weights by rounding only). Every other field
#: (method and its config, data, steps, batch size, seed, amp, ...) must match.
#: The DDPM trainer has its own list for its config
#: (:data:`pretrain.generators.ddpm_train.RUN_CONTROL`).
RUN_CONTROL_KEYS: tuple[str, ...] = (
    "device",
    "log_every",
    "checkpoint_every",
    "channels_last",
    # the kNN monitor reads features in eval mode without touching weights or RNGs
    "knn_every",
    "monitor_data",
    "health_margin",
)


class TrainingDivergedError(SSLBenchError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (saved as ``config.json``).

    Attributes:
        method: Registered SSL method name.
        encoder: Registered encoder name.
        source: ``real``, ``synthetic`` or ``mixed``.
        real: Real dataset file (its train split is used).
        synthetic: Synthetic dataset file.
        synthetic_ratio: Fraction of synthetic images per batch for ``mixed``.
        mixing_mode: ``mixed``'s mode (:mod:`pretrain.sources.mixed`): ``replace``
            (``synthetic_ratio`` of every batch is synthetic) or ``add`` (the synthetic
            pool added to the real one, the union sampled with real images weighted
            ``real_weight``; ``synthetic_ratio`` unused, None). Same batch size either way.
        real_weight: ``mixed``'s sampling weight of real against synthetic images
            (AdaInf's repeat factor of the real set; 1 leaves ``synthetic_ratio`` as is).
        pool_size: Size of the synthetic pool: None (all samples), an int (the first
            N) or ``matched`` (as many as the real file's train split).
        strength: Augmentation strength of the method's views (:mod:`pretrain.strength`):
            ``standard``, ``weak`` (AdaInf's preset) or a number scaling every deviation.
        steps: Number of optimizer steps.
        batch_size: Images per step (compute matching: steps x batch_size).
        image_size: Spatial size of the views fed to the encoder.
        seed: Seed of everything random in the run.
        method_config: Overrides of the method's defaults.
        encoder_config: Extra encoder constructor arguments.
        checkpoint_every: Save the training state every N steps (0: only at the end).
        log_every: Record metrics every N steps.
        device: ``cpu``, ``cuda``, ``cuda:1``, or ``auto``.
        amp: Mixed precision: ``auto`` (bf16 on CUDA if supported, fp16 on CUDA
            without bf16, off elsewhere), ``bf16``, ``fp16`` or ``none``. fp16 runs use
            a dynamic loss scale (:func:`make_grad_scaler`).
        channels_last: Memory format of 2D CNN weights and views: ``auto`` (on for 2D
            CNNs, where oneDNN/cuDNN convolutions run faster in NHWC: ~1.2-1.6x for
            ResNet-18 on a 2-core CPU), ``on`` or ``off``.
        knn_every: Online kNN monitor cadence (:mod:`pretrain.monitor`; on a dataset with
            masks but no class labels the dense-probe monitor,
            :mod:`pretrain.dense_monitor`): every N steps plus step 0 and the end; 0
            (default) spreads 5 points over the run, -1 turns it off.
        monitor_data: Labelled dataset of the monitor (its train split is the bank,
            its validation split the queries); default: ``real``.
        health_margin: Minimum rise of the monitor's kNN balanced accuracy (or of the
            dense probe's Dice) from step 0 to the end for the run to count as having
            learned.
        curation: Provenance of a curated ``real`` pool (label, curator, options, kept
            counts; :mod:`benchmark.data.curation`), recorded only: the pool is ``real``.
    """

    method: str = "simclr"
    encoder: str = "resnet18"
    source: str = "real"
    real: str | None = None
    synthetic: str | None = None
    synthetic_ratio: float | None = 0.5
    mixing_mode: str = "replace"
    real_weight: float = 1.0
    pool_size: int | str | None = None
    strength: str | float = "standard"
    steps: int = 100
    batch_size: int = 64
    image_size: int = 64
    seed: int = 0
    method_config: dict[str, Any] = field(default_factory=dict)
    encoder_config: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 50
    log_every: int = 10
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    knn_every: int = 0
    monitor_data: str | None = None
    health_margin: float = DEFAULT_MARGIN
    curation: dict[str, Any] | None = None

    def validate(self) -> None:
        """Raise :class:`SSLBenchError` for values that cannot run."""
        METHODS.resolve(self.method)
        from pretrain.encoders import ENCODERS

        ENCODERS.resolve(self.encoder)
        if self.steps <= 0 or self.batch_size <= 1:
            raise SSLBenchError(
                f"steps must be > 0 and batch_size > 1 (got {self.steps}, {self.batch_size})"
            )
        check_strength(self.strength)
        if self.channels_last not in ("auto", "on", "off"):
            raise SSLBenchError(
                f"channels_last must be auto, on or off, got {self.channels_last!r}"
            )
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise SSLBenchError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PretrainResult:
    """Paths and figures of a finished run."""

    out_dir: Path
    checkpoint: Path
    summary: dict[str, Any]


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def make_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of a run autocast to ``dtype`` on ``device``.

    Enabled for fp16 only (its 5-bit exponent underflows small gradients); a
    disabled scaler (bf16, fp32) passes the loss, the gradients and the optimizer
    step through unchanged.
    """
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def build_optimizer(
    method: torch.nn.Module, config: dict[str, Any], batch_size: int
) -> torch.optim.Optimizer:
    """The method's optimizer at ``lr`` rescaled by the config's rule (:func:`scaled_lr`)."""
    groups = method.parameter_groups()  # type: ignore[operator]
    lr = scaled_lr(config, batch_size)
    name = config["optimizer"]
    if name == "adamw":
        return adam(groups, lr=lr, betas=(config["adam_beta1"], config["adam_beta2"]))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config["momentum"])
    from lightly.utils.lars import LARS

    return LARS(groups, lr=lr, momentum=config["momentum"])


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Any:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to 0."""
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def memory_format(encoder: Any, setting: str = "auto") -> torch.memory_format:
    """The memory format for training ``encoder``: channels-last for 2D CNNs under ``auto``."""
    if setting == "on" or (setting == "auto" and encoder.spatial_dims == 2 and not encoder.is_vit):
        return torch.channels_last if encoder.spatial_dims == 2 else torch.channels_last_3d
    return torch.contiguous_format


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


class Trainer:
    """One pretraining run in a folder; see :func:`pretrain`."""

    def __init__(self, config: PretrainConfig, out_dir: str | Path) -> None:
        config.validate()
        self.config = config
        self.out = Path(out_dir)
        self.dist, self.device = distributed.setup(resolve_device(config.device), config.batch_size)
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.scaler = make_grad_scaler(self.amp_dtype, self.device)
        torch.manual_seed(config.seed)  # initial weights
        self.source = create_source(
            config.source,
            real=config.real,
            synthetic=config.synthetic,
            synthetic_ratio=config.synthetic_ratio,
            batch_size=config.batch_size,
            seed=config.seed,
            device=str(self.device),
            mode=config.mixing_mode,
            real_weight=config.real_weight,
            pool_size=config.pool_size,
        )
        in_chans = int(self.source.image_shape[0])
        encoder = create_encoder(
            config.encoder, in_chans=in_chans, img_size=config.image_size, **config.encoder_config
        )
        spatial = (config.image_size,) * encoder.spatial_dims
        try:
            encoder.check_input_size(spatial)
        except ValueError as exc:
            raise SSLBenchError(str(exc)) from None
        self.memory_format = memory_format(encoder, config.channels_last)
        method_config = resolve_recipe(config.method_config, config.batch_size)
        self.method = create_method(config.method, encoder, **method_config)
        self.sync_bn = distributed.sync_batch_norm(self.method, self.dist, self.device)
        # Module.to accepts memory_format at run time; torch's stubs do not declare it.
        self.method.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        distributed.broadcast_module(self.method, self.dist)
        self.recipes = [
            with_strength(r, config.strength) for r in self.method.view_recipes(config.image_size)
        ]
        self.optimizer = build_optimizer(self.method, self.method.config, config.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.steps, self.method.config["warmup_fraction"])
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.monitor_history: list[dict[str, Any]] = []
        self.monitor_time = 0.0
        self.monitor_at = set(monitor_steps(config.steps, config.knn_every))
        self.monitor, self.monitor_note = self._make_monitor()

    def _make_monitor(self) -> tuple[KNNMonitor | DenseProbeMonitor | None, str | None]:
        cfg = self.config
        if not self.monitor_at:
            return None, "kNN monitor off (knn_every < 0)"
        path = cfg.monitor_data or cfg.real
        if path is None:
            return None, "no labelled dataset for the kNN monitor (set monitor_data)"
        knn = KNNMonitor(path, cfg.image_size, self.device)
        if knn.enabled:
            return knn, None
        if knn.has_classes:  # e.g. no validation split: no monitor, the note says why
            return None, knn.note
        dense = DenseProbeMonitor(path, cfg.image_size, self.device)  # a mask-only file
        return (dense, None) if dense.enabled else (None, f"{knn.note}; {dense.note}")

    def monitor_point(self) -> dict[str, Any] | None:
        """Run the monitor (kNN or dense probe) at the current step if it is due (main
        process only)."""
        if self.monitor is None or self.step not in self.monitor_at or not self.dist.is_main:
            return None
        if any(r["step"] == self.step for r in self.monitor_history):
            return None  # already measured before a resume
        t0 = time.perf_counter()
        record = {
            "step": self.step,
            **self.monitor.evaluate(self.method.encoder, calibrate=True),
        }
        self.monitor_time += time.perf_counter() - t0
        self.monitor_history.append(record)
        return record

    # -- state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),  # {} unless fp16
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "train_time": self.train_time,
            "monitor_history": self.monitor_history,
            "monitor_time": self.monitor_time,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; its config must match but for :data:`RUN_CONTROL_KEYS`."""
        # a key missing from an older state predates its option: the default was in force
        older = {**PretrainConfig().to_dict(), **state["config"]}
        saved = {k: v for k, v in older.items() if k not in RUN_CONTROL_KEYS}
        now = {k: v for k, v in self.config.to_dict().items() if k not in RUN_CONTROL_KEYS}
        if saved != now:
            diff = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
            raise SSLBenchError(
                f"{self.out / STATE}: saved run has a different config ({', '.join(diff)}); "
                "use the same settings or a new output folder"
            )
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # States saved before the scaler existed, or by a bf16/fp32 run ({}) that now
        # resolves to fp16 (amp=auto on another device), start with a fresh scaler.
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():  # a GPU run resumed on a CPU
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.train_time = float(state["train_time"])
        self.monitor_history = list(state.get("monitor_history", []))
        self.monitor_time = float(state.get("monitor_time", 0.0))

    def save_state(self) -> None:
        """Save the training state, refusing to overwrite a good one with diverged weights."""
        for name, p in self.method.state_dict().items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise TrainingDivergedError(
                    f"{name} became non-finite by step {self.step}; the last good checkpoint "
                    f"is {self.out / STATE} (try a lower lr or amp=none)"
                )
        if self.dist.is_main:
            with atomic_path(self.out / STATE) as tmp:
                torch.save(self.state_dict(), tmp)
        distributed.barrier(self.dist)

    # -- loop -------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step; returns the logged scalars."""
        seed = _step_seed(self.config.seed, step)
        dist_info = self.dist
        torch.manual_seed(seed + dist_info.rank)  # dropout, masks and other global-RNG draws
        gen = torch.Generator(device=self.device).manual_seed(seed)
        shard = (dist_info.rank, dist_info.world_size) if dist_info.enabled else None
        images = self.source.batch(step, dist_info.rows(self.config.batch_size))
        views = [
            v.contiguous(memory_format=self.memory_format)
            for v in make_views(images, self.recipes, gen, shard)
        ]
        self.method.train()
        with self._autocast():
            out = self.method.training_step(views, step, self.config.steps)
        loss = out.loss.float()
        # every rank checks the mean loss, so all stop together
        mean_loss = distributed.mean_over_ranks({"loss": loss.item()}, dist_info, self.device)
        if not math.isfinite(mean_loss["loss"]):
            raise TrainingDivergedError(
                f"loss became {mean_loss['loss']} at step {step}; the last good checkpoint is "
                f"{self.out / STATE} (try a lower lr or amp=none)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler  # disabled (a no-op) unless fp16
        scaler.scale(loss).backward()
        # Every rank averages the same scaled gradients, so all ranks see the same
        # overflow and skip (or take) the step together.
        distributed.average_gradients(self.method, dist_info)
        scaler.unscale_(self.optimizer)  # clip and log the true gradients
        clip = float(self.method.config["clip_grad"]) or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.method.parameters(), clip)
        scale = scaler.get_scale()  # 1.0 when disabled
        # fp16 with a loss scale > 1: an overflow only lowers the scale and skips the step
        if not torch.isfinite(grad_norm) and (not scaler.is_enabled() or scale <= 1.0):
            raise TrainingDivergedError(
                f"gradients became {grad_norm.item()} at step {step}; the last good checkpoint "
                f"is {self.out / STATE} (try a lower lr or amp=none)"
            )
        scaler.step(self.optimizer)  # optimizer.step(), skipped on an fp16 overflow
        scaler.update()
        with warnings.catch_warnings():
            # a skipped first step makes torch warn that the schedule stepped first
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        self.method.after_optimizer_step(step, self.config.steps)
        # Collapse indicator on the backbone's pooled features (StepOutput.embeddings).
        local = {"embedding_std": float(std_of_l2_normalized(out.embeddings.detach().float()))}
        local.update({k: float(v) for k, v in out.logs.items()})
        logs = {
            **mean_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm.item(),
        }
        if scaler.is_enabled():
            logs["loss_scale"] = scale
        logs.update(distributed.mean_over_ranks(local, dist_info, self.device))
        return logs

    def run(self, progress: bool = True) -> Iterator[dict[str, Any]]:
        """Train from the current step to the end, yielding logged records."""
        cfg = self.config
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (progress and self.dist.is_main),
            unit="step",
            desc=f"pretrain {cfg.method}/{cfg.encoder}/{cfg.source}",
            dynamic_ncols=True,
        )
        try:
            # step 0, or a resumed run's first step if its point was not measured yet
            if point := self.monitor_point():
                yield point
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                logs = self.train_step(self.step)
                dt = time.perf_counter() - t0
                self.train_time += dt
                self.step += 1
                ips = cfg.batch_size / dt
                bar.update(1)
                bar.set_postfix(
                    loss=f"{logs['loss']:.4f}",
                    img_s=f"{ips:.0f}",
                    std=f"{logs['embedding_std']:.3f}",
                )
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record = {"step": self.step, "images_per_s": ips, **logs}
                    self.history.append(record)
                    yield record
                if point := self.monitor_point():
                    figure = "knn_acc" if "knn_acc" in point else DENSE_METRIC
                    bar.set_postfix({figure: f"{point[figure]:.3f}"}, refresh=False)
                    yield point
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_state()
        finally:
            bar.close()

    @property
    def chance(self) -> float | None:
        """The method's chance loss at this batch size (None where it has none)."""
        return type(self.method).chance_loss(self.method.config, self.config.batch_size)

    def health(self) -> dict[str, Any]:
        """The run's health verdict (:func:`pretrain.monitor.health`)."""
        return health(
            self.history,
            self.monitor_history,
            chance=self.chance,
            num_features=int(self.method.encoder.num_features),
            margin=self.config.health_margin,
            note=self.monitor_note,
        )

    def metrics_lines(self) -> list[str]:
        """``metrics.jsonl``: training records and monitor points in step order."""
        rows = [(r["step"], 0, r) for r in self.history]
        rows += [(r["step"], 1, r) for r in self.monitor_history]
        return [json.dumps(r) for _, _, r in sorted(rows, key=lambda x: (x[0], x[1]))]

    def dense_statistics(self) -> dict[str, Any] | None:
        """Batch-norm statistics of the encoder recomputed on the pool's whole images.

        Only for methods with ``dense_statistics_at_export`` (SparK): every image of
        every pool of the source, un-augmented, at the run's view size; weights are
        not changed. Returns the calibration record, or None for other methods.
        """
        if not self.method.dense_statistics_at_export:
            return None
        pools = [pool for pool, _ in self.source.parts.values()]
        images = torch.cat([pool.gather(np.arange(pool.size)) for pool in pools])
        images = resize_images(images, self.config.image_size)
        split = "+".join(f"{pool.kind}:{pool.split or 'all'}" for pool in pools)
        return calibrate_batch_norm(self.method.encoder, images, split=split, device=self.device)

    def finish(self) -> PretrainResult:
        """Save the encoder checkpoint and the run summary."""
        cfg = self.config
        bn_recalibration = self.dense_statistics()
        last = self.history[-1] if self.history else {}
        images_seen = cfg.steps * cfg.batch_size
        summary = {
            "method": cfg.method,
            "method_config": self.method.config,
            "encoder": cfg.encoder,
            "source": self.source.describe(),
            "synthetic_ratio": cfg.synthetic_ratio
            if cfg.source == "mixed"
            else (1.0 if cfg.source == "synthetic" else 0.0),
            # the synthetic images of every batch over its size (mode add: from the pools)
            "synthetic_share": self.source.parts.get("synthetic", (None, 0))[1] / cfg.batch_size,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "images_seen": images_seen,
            "data_usage": self.source.stats(cfg.steps),
            "seed": cfg.seed,
            "image_size": cfg.image_size,
            "final_loss": last.get("loss"),
            "final_embedding_std": last.get("embedding_std"),
            "recipe": self.method.config["recipe"],
            "lr_scaling": self.method.config["lr_scaling"],
            "effective_lr": scaled_lr(self.method.config, cfg.batch_size),
            "loss_chance": self.chance,
            "monitor": {
                **(self.monitor.describe() if self.monitor else {"note": self.monitor_note}),
                "points": self.monitor_history,
                "time_s": round(self.monitor_time, 3),
            },
            "health": self.health(),
            "bn_recalibration": bn_recalibration,
            "train_time_s": round(self.train_time, 3),
            "images_per_s": images_seen / self.train_time if self.train_time else None,
            "device": str(self.device),
            "amp": str(self.amp_dtype) if self.amp_dtype else "none",
            "distributed": {
                "world_size": self.dist.world_size,
                "backend": self.dist.backend or "none",
                "sync_batch_norm": self.sync_bn,
            },
            "config": cfg.to_dict(),
            "provenance": provenance(),
        }
        ckpt = self.out / ENCODER_DIR
        if self.dist.is_main:
            ckpt = save_encoder(ckpt, self.method.encoder, summary)
            atomic_write_json(self.out / SUMMARY, summary)
        distributed.barrier(self.dist)
        return PretrainResult(self.out, ckpt, summary)


def pretrain(
    config: PretrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Run (or resume) a pretraining run into ``out_dir``.

    Under ``torchrun`` every process calls this; the run is data-parallel over
    the processes (:mod:`pretrain.distributed`) and rank 0 writes the outputs.

    Args:
        config: The run's configuration.
        out_dir: Output folder (``config.json``, ``state.pt``, ``metrics.jsonl``,
            ``pretrain.json`` and the ``encoder/`` checkpoint).
        resume: Continue from ``state.pt`` if present.
        overwrite: Start again even if the folder holds a run.
        progress: Show a progress bar.
    """
    tune_allocator()
    out = Path(out_dir)
    state_path = out / STATE
    if out.exists() and not (resume or overwrite):
        if (out / ENCODER_DIR).exists() or state_path.exists():
            raise SSLBenchError(
                f"{out}: holds a pretraining run already; pass --resume to continue it or "
                "--overwrite to start again"
            )
    trainer = Trainer(config, out)
    out.mkdir(parents=True, exist_ok=True)
    if resume and state_path.exists() and not overwrite:
        try:
            state = torch.load(state_path, map_location=trainer.device, weights_only=False)
        except Exception as exc:
            raise SSLBenchError(f"{state_path}: unreadable training state ({exc})") from None
        trainer.load_state_dict(state)
    main = trainer.dist.is_main
    if main:
        atomic_write_json(out / CONFIG, config.to_dict())
    for _record in trainer.run(progress=progress):
        pass
    if main:
        atomic_write_text(out / METRICS, "\n".join(trainer.metrics_lines()) + "\n")
    if config.checkpoint_every:
        trainer.save_state()
    return trainer.finish()
