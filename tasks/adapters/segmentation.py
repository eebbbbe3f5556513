"""Segmentation adapter: a U-Net decoder on the shared encoder, frozen or fine-tuned.

Protocol (``default_config``; every value can be overridden):

* Model: the encoder's multi-scale features feed :class:`tasks.decoders.UNetDecoder`
  (U-Net, Ronneberger et al. 2015; MONAI residual blocks, batch norm, widths
  ``(128, 64, 32, 16)``).
* Modes: ``frozen`` trains the decoder only (encoder in eval mode, no
  autograd, batch-norm statistics untouched); ``finetune`` trains all weights. The caller's encoder is never
  modified: the adapter trains a deep copy (kept in :attr:`SegmentationAdapter.model`).
* Loss: MONAI ``DiceCELoss`` (softmax, one-hot targets). The Dice term skips
  the background and is a *batch* Dice (nnU-Net style: all images of a batch
  pooled), so empty-mask images do not give an undefined or constant per-image
  Dice term; cross-entropy covers every class and every pixel.
* Optimisation (one recipe for every arm, :mod:`tasks.adapters.protocol`):
  AdamW (decoder lr 1e-3, weight decay 1e-4); the encoder's rate ``encoder_lr``
  is a declared grid (default 1e-4, 3e-4, 1e-3) chosen per cell on the
  validation criterion (recorded; every trial's time counts); a budget of
  ``max(min_steps, epochs x steps per epoch)`` steps (defaults 100 and 100),
  linear warm-up over 2 epochs then cosine decay to 0, batch size 16.
* Early stopping: the criterion is the validation Dice over images whose mask
  is not empty (an all-empty prediction scores 0 there; plain Dice would reward
  it with the share of empty masks), falling back to the mean Dice when no
  validation mask is non-empty; no stop before half the budget, then after
  ``patience`` evaluations without improvement; best weights restored. Without
  a validation set the last step is kept.
* Augmentation (training only): joint random horizontal flip (p 0.5) and, with
  probability 0.5, a small affine (rotation +-10 deg, scale 0.9-1.1,
  translation +-5 %), applied with one sampling grid to the image (bilinear)
  and the mask (nearest). Vertical flips are off by default: the vertical axis
  is the depth axis of ultrasound. No intensity augmentation.
* Inputs: images in [0, 1] as in pretraining (no normalisation); images whose
  stored size differs from ``data.image_size`` are resized once (bilinear with
  anti-aliasing for images, nearest-exact for masks); metrics are computed at
  that resolution. Single-channel images are repeated for multi-channel
  encoders.
* Metrics: :func:`tasks.metrics.segmentation.segmentation_metrics` (Dice, Dice on
  non-empty masks, false-positive rate on empty masks, HD95; explicit
  empty-mask policy documented there), and per test case its Dice and HD95
  (``per_case``), so that intervals can resample test cases.
* Determinism: weights, shuffling and augmentation draw from generators
  seeded by ``seed`` (the global RNG state is restored afterwards), so a cell
  is reproducible on the CPU.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from benchmark.core.errors import DataError, SSLBenchError
from benchmark.core.optim import adam
from benchmark.data.dataset import H5Dataset
from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult, segmentation_cases
from tasks.adapters.protocol import (
    PROTOCOL_DEFAULTS,
    BestTracker,
    StepPlan,
    lr_grid,
    plan_steps,
    planned_passes,
    select_on_validation,
    selection_record,
)
from tasks.decoders import DEFAULT_DECODER_CHANNELS, SegmentationModel
from tasks.metrics.segmentation import per_image_scores, segmentation_metrics

MODES = ("frozen", "finetune")


def load_cell_split(
    path: Path, indices: np.ndarray, size: int, spatial_dims: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, C, *S)`` float in [0, 1] and masks ``(N, *S)`` int64 at ``size``."""
    ds = H5Dataset(
        path, indices=np.asarray(indices, dtype=np.int64), in_memory=True, keys=("mask",)
    )
    if not ds.has_masks:
        raise DataError(f"{path}: the file has no masks; segmentation needs them")
    if len(ds) == 0:
        shape = (0, ds.image_shape[0], *([size] * spatial_dims))
        return torch.zeros(shape), torch.zeros((0, *shape[2:]), dtype=torch.int64)
    images = ds.to_float(ds.raw_images())
    masks = torch.stack([ds[i]["mask"] for i in range(len(ds))])
    target = (size,) * spatial_dims
    if tuple(images.shape[2:]) != target:
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        images = F.interpolate(
            images, size=target, mode=mode, align_corners=False, antialias=spatial_dims == 2
        ).clamp_(0.0, 1.0)
        masks = F.interpolate(masks[:, None].float(), size=target, mode="nearest-exact")
        masks = masks[:, 0].round().long()
    return images, masks


def joint_augment(
    images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator, cfg: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random flip + affine per sample, applied identically to image and mask.

    Args:
        images: ``(B, C, *spatial)`` floats.
        masks: ``(B, *spatial)`` integer labels.
        gen: CPU generator of all random draws.
        cfg: ``hflip_p``, ``vflip_p``, ``affine_p``, ``rotate_deg``, ``scale``
            (low, high) and ``translate`` (fraction of the size).
    """
    b, d = images.shape[0], images.ndim - 2
    u = torch.rand(b, 7, generator=gen, dtype=torch.float64)
    theta = torch.zeros(b, d, d + 1, dtype=torch.float64)
    theta[:, range(d), range(d)] = 1.0
    affine = u[:, 2] < cfg["affine_p"]
    ang = torch.deg2rad((2 * u[:, 3] - 1) * cfg["rotate_deg"]) * affine
    lo, hi = cfg["scale"]
    scale = torch.where(affine, lo + (hi - lo) * u[:, 4], torch.ones(b, dtype=torch.float64))
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    # grid coordinates are (x=W, y=H[, z=D]); rotate in the H-W plane.
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, d] = (2 * u[:, 5] - 1) * 2 * cfg["translate"] * affine
    theta[:, 1, d] = (2 * u[:, 6] - 1) * 2 * cfg["translate"] * affine
    theta[:, :, 0] *= torch.where(u[:, 0] < cfg["hflip_p"], -1.0, 1.0)[:, None]
    theta[:, :, 1] *= torch.where(u[:, 1] < cfg["vflip_p"], -1.0, 1.0)[:, None]
    grid = F.affine_grid(theta.float().to(images.device), list(images.shape), align_corners=False)
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    msk = F.grid_sample(
        masks[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return img, msk[:, 0].round().long()


@ADAPTERS.register("segmentation", aliases=("seg",))
class SegmentationAdapter(Adapter):
    """U-Net segmentation on the shared encoder (see the module docstring).

    ``trains_encoder`` is True because the default mode fine-tunes; with
    ``mode="frozen"`` the encoder is untouched (see :attr:`updates_encoder`).

    Attributes:
        model: The trained :class:`SegmentationModel` of the last :meth:`run`
            (best validation weights), for inspection; None before.
    """

    target: ClassVar[str] = "masks"
    trains_encoder: ClassVar[bool] = True
    default_config: ClassVar[dict[str, Any]] = {
        "mode": "finetune",
        "epochs": 100,
        **PROTOCOL_DEFAULTS,
        "batch_size": 16,
        "eval_batch_size": 32,
        "lr": 1e-3,
        "encoder_lr": [1e-4, 3e-4, 1e-3],
        "weight_decay": 1e-4,
        "warmup_epochs": 2,
        "decoder_channels": DEFAULT_DECODER_CHANNELS,
        "norm": "batch",
        "lambda_dice": 1.0,
        "lambda_ce": 1.0,
        "augment": True,
        "hflip_p": 0.5,
        "vflip_p": 0.0,
        "affine_p": 0.5,
        "rotate_deg": 10.0,
        "scale": (0.9, 1.1),
        "translate": 0.05,
    }

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        cfg = self.config
        if cfg["mode"] not in MODES:
            raise SSLBenchError(f"segmentation mode must be one of {MODES}, got {cfg['mode']!r}")
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if int(cfg[key]) != cfg[key] or cfg[key] < 1:
                raise SSLBenchError(
                    f"segmentation option {key} must be a positive integer, got {cfg[key]!r}"
                )
        lr_grid(cfg["encoder_lr"], "segmentation", "encoder_lr")
        self.model: SegmentationModel | None = None

    @property
    def updates_encoder(self) -> bool:
        """True if this configuration changes encoder weights (``finetune``)."""
        return bool(self.config["mode"] == "finetune")

    def check(self, encoder: Encoder, data: CellData) -> None:
        """Raise :class:`SSLBenchError` if this encoder or cell cannot be segmented."""
        if data.target != "masks":
            raise SSLBenchError(
                f"the segmentation adapter needs target 'masks', got {data.target!r}"
            )
        if not encoder.supports_multiscale or not encoder.feature_info:
            raise SSLBenchError(
                f"encoder {encoder.name!r} cannot produce multi-scale features "
                "(supports_multiscale is False), so it cannot feed a U-Net decoder; "
                "choose a multi-scale encoder for segmentation"
            )
        size = (int(data.image_size),) * encoder.spatial_dims
        try:
            encoder.check_input_size(size)
        except ValueError as exc:
            raise SSLBenchError(
                f"image size {data.image_size} does not suit encoder {encoder.name!r}: {exc}"
            ) from exc
        if data.num_classes < 2:
            raise SSLBenchError(
                f"segmentation needs >= 2 mask classes (incl. background), got {data.num_classes}"
            )
        if len(data.train) < 2 or len(data.test) == 0:
            raise SSLBenchError(
                f"{data.path}: segmentation needs >= 2 training images (batch norm) and a "
                f"non-empty test set, got {len(data.train)} and {len(data.test)}"
            )

    # -- training -----------------------------------------------------------
    def _build(self, encoder: Encoder, num_classes: int, seed: int) -> SegmentationModel:
        frozen = self.config["mode"] == "frozen"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SegmentationModel(
                copy.deepcopy(encoder),
                num_classes,
                channels=self.config["decoder_channels"],
                norm=self.config["norm"],
                freeze_encoder=frozen,
            )
        if frozen:
            model.encoder.requires_grad_(False)
        return model

    def _set_train(self, model: SegmentationModel) -> None:
        model.train()
        if model.freeze_encoder:
            model.encoder.eval()

    def _optimizer(
        self, model: SegmentationModel, plan: StepPlan, encoder_lr: float
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cfg = self.config
        steps = plan.total
        groups: list[dict[str, Any]] = [
            {"params": list(model.decoder.parameters()), "lr": cfg["lr"]}
        ]
        if not model.freeze_encoder:
            groups.append({"params": list(model.encoder.parameters()), "lr": encoder_lr})
        opt = adam(groups, weight_decay=cfg["weight_decay"])
        warm = min(steps, round(cfg["warmup_epochs"] * plan.per_epoch))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, steps - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    @torch.no_grad()
    def predict(self, model: SegmentationModel, images: torch.Tensor, device: str) -> torch.Tensor:
        """Argmax labels ``(N, *spatial)`` of ``images`` in eval mode."""
        model.eval()
        out = [
            model(images[i : i + self.config["eval_batch_size"]].to(device)).argmax(1).cpu()
            for i in range(0, images.shape[0], self.config["eval_batch_size"])
        ]
        return torch.cat(out) if out else torch.zeros((0, *images.shape[2:]), dtype=torch.int64)

    def training_passes(self, n_train: int) -> float:
        n = max(1, int(n_train))
        bs = min(int(self.config["batch_size"]), n)
        grid = lr_grid(self.config["encoder_lr"], self.name, "encoder_lr")
        trials = 1 if self.config["mode"] == "frozen" else len(grid)
        # batches of ``bs`` images, ``n // bs`` per epoch (the remainder is left out)
        return trials * planned_passes(max(1, n // bs), bs, self.config, self.name)

    def run(
        self,
        encoder: Encoder,
        data: CellData,
        seed: int,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
    ) -> CellResult:
        """Train on ``data.train``, select on ``data.val``, evaluate on ``data.test``.

        ``cache_dir`` is unused: with augmentation there are no fixed features to cache.
        """
        self.check(encoder, data)
        cfg, k = self.config, int(data.num_classes)
        t0 = time.perf_counter()
        sets = {
            name: load_cell_split(data.path, idx, data.image_size, encoder.spatial_dims)
            for name, idx in (("train", data.train), ("val", data.val), ("test", data.test))
        }
        for name, (images, masks) in sets.items():
            if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= k):
                raise DataError(f"{data.path}: {name} masks hold labels outside [0, {k})")
            c = images.shape[1]
            if c != encoder.in_chans:
                if c != 1:
                    raise DataError(
                        f"{data.path}: images have {c} channels, encoder "
                        f"{encoder.name!r} takes {encoder.in_chans}"
                    )
                sets[name] = (images.expand(-1, encoder.in_chans, *images.shape[2:]), masks)
        x_tr, y_tr = sets["train"]
        x_va, y_va = sets["val"]
        bs = min(int(cfg["batch_size"]), x_tr.shape[0])
        plan = plan_steps(max(1, x_tr.shape[0] // bs), cfg, self.name)
        nonempty_val = bool(x_va.shape[0]) and bool((y_va.flatten(1) > 0).any(1).any())
        criterion = "dice_nonempty" if nonempty_val else "dice"

        def train(encoder_lr: float) -> tuple[float, tuple[SegmentationModel, BestTracker]]:
            model, tracker = self._train(
                encoder, k, seed, device, encoder_lr, plan, x_tr, y_tr, x_va, y_va, criterion
            )
            return tracker.best_score, (model, tracker)

        grid = lr_grid(cfg["encoder_lr"], self.name, "encoder_lr")
        if cfg["mode"] == "frozen":
            grid = grid[:1]  # the encoder does not train: its rate is unused
        chosen, trials = select_on_validation(grid, train)
        model, tracker = chosen.outcome
        self.model = model
        val_metrics: dict[str, float] = {}
        if x_va.shape[0]:
            val_metrics, _ = segmentation_metrics(
                self.predict(model, x_va, device), y_va, k, data.class_names
            )
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        x_te, y_te = sets["test"]
        pred_te = self.predict(model, x_te, device)
        metrics, details = segmentation_metrics(pred_te, y_te, k, data.class_names)
        scores = per_image_scores(pred_te, y_te, k)
        selection = criterion if x_va.shape[0] else "none (last step)"
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "mode": cfg["mode"],
                "config": {key: list(v) if isinstance(v, tuple) else v for key, v in cfg.items()},
                "steps_trained": int(tracker.history[-1]["step"]) if tracker.history else 0,
                "best_step": tracker.best_step,
                "selection_criterion": selection,
                "step_plan": plan.to_dict(),
                "encoder_lr_used": chosen.lr if cfg["mode"] == "finetune" else None,
                "lr_selection": selection_record("encoder_lr", chosen, trials, selection),
                "learning_curve": tracker.history,
                "test_details": details,
                "n_train": int(x_tr.shape[0]),
                "n_val": int(x_va.shape[0]),
                "n_test": int(x_te.shape[0]),
                "image_size": int(data.image_size),
                "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
                "seed": int(seed),
            },
            per_case=segmentation_cases(data.test, scores["dice"], scores["hd95"]),
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - t1,
        )

    def _train(
        self,
        encoder: Encoder,
        k: int,
        seed: int,
        device: str,
        encoder_lr: float,
        plan: StepPlan,
        x_tr: torch.Tensor,
        y_tr: torch.Tensor,
        x_va: torch.Tensor,
        y_va: torch.Tensor,
        criterion: str,
    ) -> tuple[SegmentationModel, BestTracker]:
        """One training run at ``encoder_lr``: the model (best weights restored) and its tracker."""
        cfg = self.config
        model = self._build(encoder, k, seed).to(device)
        loss_fn = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=cfg["lambda_dice"],
            lambda_ce=cfg["lambda_ce"],
        )
        bs = min(int(cfg["batch_size"]), x_tr.shape[0])
        opt, sched = self._optimizer(model, plan, encoder_lr)
        gen = torch.Generator().manual_seed(seed)
        tracker = BestTracker(plan)
        step, total = 0, 0.0
        while step < plan.total:
            self._set_train(model)
            order = torch.randperm(x_tr.shape[0], generator=gen)
            for i in range(plan.per_epoch):
                idx = order[i * bs : (i + 1) * bs]
                xb, yb = x_tr[idx], y_tr[idx]
                if cfg["augment"]:
                    xb, yb = joint_augment(xb, yb, gen, cfg)
                logits = model(xb.to(device))
                loss = loss_fn(logits, yb.to(device)[:, None])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
                step += 1
                if plan.evaluate_now(step):
                    score, val_loss = self._criterion(
                        model, x_va, y_va, k, device, criterion, step, loss_fn
                    )
                    n = step - int(tracker.history[-1]["step"]) if tracker.history else step
                    stop = tracker.observe(
                        step,
                        score,
                        model,
                        tiebreak=-val_loss,
                        train_loss=total / max(1, n),
                        val_loss=val_loss,
                    )
                    total = 0.0
                    self._set_train(model)
                    if stop:
                        tracker.restore(model)
                        return model, tracker
                if step >= plan.total:
                    break
        tracker.restore(model)
        return model, tracker

    def _criterion(
        self,
        model: SegmentationModel,
        x_va: torch.Tensor,
        y_va: torch.Tensor,
        k: int,
        device: str,
        criterion: str,
        step: int,
        loss_fn: torch.nn.Module,
    ) -> tuple[float, float]:
        """The validation criterion (higher is better) and the validation loss (the
        tie-break); the step itself (and loss 0) without validation data."""
        if not x_va.shape[0]:
            return float(step), 0.0
        model.eval()
        bs = int(self.config["eval_batch_size"])
        preds: list[torch.Tensor] = []
        loss_sum = 0.0
        with torch.no_grad():
            for i in range(0, x_va.shape[0], bs):
                logits = model(x_va[i : i + bs].to(device))
                yb = y_va[i : i + bs].to(device)[:, None]
                loss_sum += float(loss_fn(logits, yb)) * logits.shape[0]
                preds.append(logits.argmax(1).cpu())
        val_loss = loss_sum / x_va.shape[0]
        s = per_image_scores(torch.cat(preds), y_va, k, hd95=False)
        dice, gt = s["dice"], s["gt_present"]
        if criterion == "dice_nonempty":
            per_class = [
                float(dice[gt[:, c], c].mean()) for c in range(dice.shape[1]) if gt[:, c].any()
            ]
            return float(np.mean(per_class)), val_loss
        return float(np.nanmean(dice)), val_loss
