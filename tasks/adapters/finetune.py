"""End-to-end fine-tuning: the encoder plus a linear head, trained on the label subset.

Recipe (defaults; every value is an adapter option a task spec or ``--set``
can change):

* Model: a copy of the encoder (the caller's encoder is never modified) and a
  linear head on its pooled features, initialised with ``torch.manual_seed(seed)``.
* Optimiser: AdamW with two learning rates, ``lr_head`` = 1e-3 for the new
  head and ``lr_encoder`` = 1e-4 for the pretrained encoder, weight decay
  ``weight_decay`` = 1e-4 (not on biases and normalisation parameters). A
  randomly initialised encoder (the ``scratch`` and ``supervised`` baselines,
  marked by the sweep with a ``scratch_id``) has nothing to preserve and would
  be under-trained at the fine-tuning rate, so it gets ``lr_encoder_scratch``
  = 1e-3 instead (set it equal to ``lr_encoder`` for an identical recipe).
* Schedule: optional linear warm-up (``warmup_epochs``, default 0) then cosine
  decay to zero over ``epochs`` x steps per epoch.
* Data: mini-batches of ``batch_size`` = 32 from a seeded permutation per
  epoch (a trailing batch of one sample is merged into the previous batch, as
  batch normalisation cannot train on a single sample); light augmentation
  built on the batch with :func:`pretrain.augment.augment_batch` and
  :data:`FINETUNE_VIEW`: random resized crop with scale (0.8, 1) and aspect
  ratio (0.9, 1.1), horizontal flip (p 0.5; no vertical flip, as ultrasound
  depth has a direction), rotation up to 10 degrees (p 0.5), intensity scale
  0.9-1.1 and shift +-0.05 (p 0.5), gamma 0.85-1.2 (p 0.3); no blur or noise.
* Loss: cross-entropy, optionally class-balanced (``class_weight:
  balanced``: weights ``n / (C * n_c)`` from the training subset) and with
  ``label_smoothing``.
* Early stopping: after every epoch the model is evaluated on the validation
  subset with the task's primary metric (balanced accuracy when it is
  undefined); training stops when it has not improved for ``patience`` epochs
  and the best epoch's weights are restored before testing. Without
  validation data the last epoch is kept.
* Determinism: the head, the permutations and the augmentations draw from
  ``seed``, so a cell is reproducible on the same device and thread count.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from benchmark.core.errors import SSLBenchError
from pretrain.augment import ViewRecipe, augment_batch
from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult
from tasks.features import check_classification, check_image_size, load_images, read_labels
from tasks.metrics import classification_report, selection_score

#: Mild augmentation of fine-tuning batches (``size`` is set to the task's image size).
FINETUNE_VIEW = ViewRecipe(
    size=64,
    scale=(0.8, 1.0),
    ratio=(0.9, 1.1),
    hflip_p=0.5,
    vflip_p=0.0,
    rotate_deg=10.0,
    rotate_p=0.5,
    intensity_scale=(0.9, 1.1),
    intensity_shift=(-0.05, 0.05),
    intensity_p=0.5,
    gamma=(0.85, 1.2),
    gamma_p=0.3,
    blur_p=0.0,
    noise_p=0.0,
    padding_mode="border",
)


class Classifier(nn.Module):
    """Encoder + linear head on pooled features."""

    def __init__(self, encoder: Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x))


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of ``range(n)`` cut into batches (no batch of size 1 if n > 1)."""
    perm = torch.randperm(n, generator=generator)
    out = list(perm.split(batch_size))
    if len(out) > 1 and out[-1].numel() == 1:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


def balanced_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class (classes without samples get weight 0)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = y.size / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


@torch.no_grad()
def predict_proba(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: str
) -> np.ndarray:
    """Softmax probabilities ``(N, C)`` in eval mode."""
    model.eval()
    out = [
        torch.softmax(model(images[i : i + batch_size].to(device)).float(), dim=1).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float64)


def _param_groups(
    model: Classifier, lr_encoder: float, cfg: dict[str, Any]
) -> list[dict[str, Any]]:
    groups = []
    for part, lr in ((model.encoder, lr_encoder), (model.head, cfg["lr_head"])):
        decay = [p for p in part.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in part.parameters() if p.requires_grad and p.ndim <= 1]
        groups.append(
            {"params": decay, "lr": float(lr), "weight_decay": float(cfg["weight_decay"])}
        )
        groups.append({"params": no_decay, "lr": float(lr), "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@ADAPTERS.register("finetune")
class FinetuneAdapter(Adapter):
    """Encoder + linear head trained end to end (see the module docstring for the recipe)."""

    target: ClassVar[str] = "labels"
    trains_encoder: ClassVar[bool] = True
    default_config: ClassVar[dict[str, Any]] = {
        "epochs": 50,
        "batch_size": 32,
        "lr_head": 1e-3,
        "lr_encoder": 1e-4,
        "lr_encoder_scratch": 1e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 0,
        "patience": 10,
        "class_weight": None,
        "label_smoothing": 0.0,
        "augment": True,
        "eval_batch_size": 128,
    }

    def check(self, encoder: Encoder, data: CellData) -> None:
        check_classification(self.name, data)
        check_image_size(encoder, data.image_size)
        cfg = self.config
        if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1 or int(cfg["patience"]) < 1:
            raise SSLBenchError(f"finetune: epochs, batch_size and patience must be >= 1: {cfg}")
        if cfg["class_weight"] not in (None, "balanced"):
            raise SSLBenchError(
                f"finetune: class_weight must be null or 'balanced', got {cfg['class_weight']!r}"
            )

    def run(
        self,
        encoder: Encoder,
        data: CellData,
        seed: int,
        *,
        device: str = "cpu",
        cache_dir: Path | None = None,
    ) -> CellResult:
        self.check(encoder, data)
        cfg = self.config
        start = time.perf_counter()
        images = load_images(data, int(encoder.in_chans))
        labels = read_labels(data)
        # the training subset lives on the device; batches are cut and augmented there
        tr_x, va_x = images[data.train].to(device), images[data.val]
        tr_y, va_y = labels[data.train].astype(np.int64), labels[data.val].astype(np.int64)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = Classifier(copy.deepcopy(encoder), data.num_classes).to(device)
        scratch = getattr(encoder, "scratch_id", None) is not None
        lr_encoder = float(cfg["lr_encoder_scratch"] if scratch else cfg["lr_encoder"])
        opt = torch.optim.AdamW(_param_groups(model, lr_encoder, cfg))
        base_lrs = [g["lr"] for g in opt.param_groups]
        bs = min(int(cfg["batch_size"]), len(tr_y))
        steps_per_epoch = len(batches(len(tr_y), bs, torch.Generator().manual_seed(0)))
        total = int(cfg["epochs"]) * steps_per_epoch
        warmup = int(cfg["warmup_epochs"]) * steps_per_epoch
        weight = balanced_weights(tr_y, data.num_classes) if cfg["class_weight"] else None
        loss_fn = nn.CrossEntropyLoss(
            weight=weight.to(device) if weight is not None else None,
            label_smoothing=float(cfg["label_smoothing"]),
        )
        recipe = replace(FINETUNE_VIEW, size=int(data.image_size))
        y_all = torch.from_numpy(tr_y).to(device)
        primary = data.primary_metric or "auc"
        eval_bs = int(cfg["eval_batch_size"])
        best_score, best_epoch, best_state, bad_epochs = -math.inf, -1, None, 0
        history: list[dict[str, Any]] = []
        step, selection_metric = 0, primary
        for epoch in range(int(cfg["epochs"])):
            model.train()
            losses = []
            for idx in batches(len(tr_y), bs, gen):
                for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                    g["lr"] = lr * lr_factor(step, total, warmup)
                idx = idx.to(device)
                x = tr_x[idx]
                if cfg["augment"]:
                    x = augment_batch(x, recipe, gen)
                loss = loss_fn(model(x), y_all[idx])
                if not torch.isfinite(loss):
                    raise SSLBenchError(
                        f"finetune: loss became {loss.item()} at epoch {epoch}; try a lower lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
            record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            if len(va_y):
                probs = predict_proba(model, va_x, eval_bs, device)
                score, selection_metric = selection_score(primary, va_y, probs, data.num_classes)
                record["val_score"] = score
            else:
                score = float(epoch)  # no validation data: keep the last epoch
            history.append(record)
            if score > best_score:
                best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= int(cfg["patience"]):
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        val_metrics: dict[str, float] = {}
        if len(va_y):
            val_metrics, _ = classification_report(
                data.metrics, va_y, predict_proba(model, va_x, eval_bs, device), data.num_classes
            )
        train_time = time.perf_counter() - start
        start = time.perf_counter()
        probs = predict_proba(model, images[data.test], eval_bs, device)
        metrics, cm = classification_report(
            data.metrics, labels[data.test], probs, data.num_classes
        )
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "confusion_matrix": cm,
                "epochs_trained": len(history),
                "best_epoch": best_epoch,
                "stopped_early": len(history) < int(cfg["epochs"]),
                "selection_metric": selection_metric if len(va_y) else "none (last epoch)",
                "steps": step,
                "lr_encoder_used": lr_encoder,
                "history": history,
                "augment_recipe": {k: v for k, v in vars(recipe).items() if k != "extra"},
            },
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - start,
        )
