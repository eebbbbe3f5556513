"""Segmentation adapter: a U-Net decoder on the shared encoder, frozen or fine-tuned.

Protocol (``default_config``; every value can be overridden):

* Model: the encoder's multi-scale features feed :class:`tasks.decoders.UNetDecoder`
  (U-Net, Ronneberger et al. 2015; MONAI residual blocks, batch norm, widths
  ``(128, 64, 32, 16)``).
* Modes: ``frozen`` trains the decoder only (encoder in eval mode, no
  autograd, batch-norm statistics untouched); ``finetune`` trains all weights,
  the encoder with a 10x lower learning rate. The caller's encoder is never
  modified: the adapter trains a deep copy (kept in :attr:`SegmentationAdapter.model`).
* Loss: MONAI ``DiceCELoss`` (softmax, one-hot targets). The Dice term skips
  the background and is a *batch* Dice (nnU-Net style: all images of a batch
  pooled), so empty-mask images do not give an undefined or constant per-image
  Dice term; cross-entropy covers every class and every pixel.
* Optimisation: AdamW (decoder lr 1e-3, encoder lr 1e-4, weight decay 1e-4),
  linear warm-up over 2 epochs then cosine decay to 0 over ``epochs``, batch
  size 16, at most 100 epochs, early stopping on validation mean Dice with
  patience 15 epochs, best weights restored. Without a validation set the
  last epoch is kept.
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
  empty-mask policy documented there).
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
from benchmark.data.dataset import H5Dataset
from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult
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
        "patience": 15,
        "batch_size": 16,
        "eval_batch_size": 32,
        "lr": 1e-3,
        "encoder_lr": 1e-4,
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
        self, model: SegmentationModel, steps: int
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        cfg = self.config
        groups: list[dict[str, Any]] = [
            {"params": list(model.decoder.parameters()), "lr": cfg["lr"]}
        ]
        if not model.freeze_encoder:
            groups.append({"params": list(model.encoder.parameters()), "lr": cfg["encoder_lr"]})
        try:  # the fused kernel is ~10x faster than foreach on a CPU (torch >= 2.4)
            opt: torch.optim.Optimizer = torch.optim.AdamW(
                groups, weight_decay=cfg["weight_decay"], fused=True
            )
        except (RuntimeError, TypeError, ValueError):
            opt = torch.optim.AdamW(groups, weight_decay=cfg["weight_decay"])
        warm = min(steps, round(cfg["warmup_epochs"] * steps / max(1, cfg["epochs"])))

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
        model = self._build(encoder, k, seed).to(device)
        self.model = model
        loss_fn = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=cfg["lambda_dice"],
            lambda_ce=cfg["lambda_ce"],
        )
        bs = min(int(cfg["batch_size"]), x_tr.shape[0])
        per_epoch = max(1, x_tr.shape[0] // bs)  # drop the last partial batch (batch norm)
        opt, sched = self._optimizer(model, per_epoch * int(cfg["epochs"]))
        gen = torch.Generator().manual_seed(seed)
        best_dice, best_epoch, best_state, since_best = -math.inf, -1, None, 0
        curve: list[dict[str, float]] = []
        for epoch in range(int(cfg["epochs"])):
            self._set_train(model)
            order = torch.randperm(x_tr.shape[0], generator=gen)
            total = 0.0
            for i in range(per_epoch):
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
            point = {"epoch": float(epoch), "train_loss": total / per_epoch}
            if x_va.shape[0]:
                pred = self.predict(model, x_va, device)
                val_dice = float(np.nanmean(per_image_scores(pred, y_va, k, hd95=False)["dice"]))
                point["val_dice"] = val_dice
                if val_dice > best_dice:
                    best_dice, best_epoch, since_best = val_dice, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
            curve.append(point)
            if since_best >= int(cfg["patience"]):
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        val_metrics: dict[str, float] = {}
        if x_va.shape[0]:
            val_metrics, _ = segmentation_metrics(
                self.predict(model, x_va, device), y_va, k, data.class_names
            )
        train_time = time.perf_counter() - t0
        t1 = time.perf_counter()
        x_te, y_te = sets["test"]
        metrics, details = segmentation_metrics(
            self.predict(model, x_te, device), y_te, k, data.class_names
        )
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "mode": cfg["mode"],
                "config": {key: list(v) if isinstance(v, tuple) else v for key, v in cfg.items()},
                "epochs_trained": len(curve),
                "best_epoch": best_epoch if best_state is not None else len(curve) - 1,
                "learning_curve": curve,
                "test_details": details,
                "n_train": int(x_tr.shape[0]),
                "n_val": int(x_va.shape[0]),
                "n_test": int(x_te.shape[0]),
                "image_size": int(data.image_size),
                "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
                "seed": int(seed),
            },
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - t1,
        )
