"""End-to-end fine-tuning: the encoder plus a linear head, trained on the label subset.

Recipe (defaults; every value is an adapter option a task spec or ``--set`` can
change). It is the same for every arm (pretrained, scratch, supervised): nothing
looks at where the encoder came from (:mod:`tasks.adapters.protocol`).

* Model: a copy of the encoder (the caller's encoder is never modified) and a
  linear head on its pooled features, initialised with ``torch.manual_seed(seed)``.
* Optimiser: AdamW, ``lr_head`` = 1e-3 for the new head, weight decay
  ``weight_decay`` = 1e-4 (not on biases and normalisation parameters). The
  encoder's learning rate ``lr_encoder`` is a declared grid (default 1e-4,
  3e-4, 1e-3): the cell trains once per value and keeps the one with the best
  validation criterion, so a randomly initialised encoder and a pretrained one
  each get their best rate by the same rule (recorded in ``extra.lr_selection``;
  every trial's time counts in the cell's compute). A one-value grid is a fixed
  rate.
* Budget: ``max(min_steps, epochs x steps per epoch)`` optimizer steps
  (defaults 100 and 30), linear warm-up over ``warmup_epochs`` (default 0)
  then cosine decay to zero; evaluation on the validation subset every
  ``eval_every`` steps (0: about 20 evaluations).
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
* Early stopping: the criterion is the task's primary metric on the
  validation subset (AUC; balanced accuracy where it is undefined), which a
  constant prediction cannot win; no stop before ``stop_after`` (half) of the
  budget, then after ``patience`` evaluations without improvement; the best
  evaluation's weights are restored. Without validation data the last step is
  kept.
* Outputs: test metrics, and per test sample its class probabilities
  (``per_case``), so that intervals can resample test cases.
* Determinism: the head, the permutations and the augmentations draw from
  ``seed`` (the same for every grid value), so a cell is reproducible on the
  same device and thread count.
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
from benchmark.core.optim import adam
from pretrain.augment import ViewRecipe, augment_batch
from pretrain.encoders import Encoder
from tasks.adapters.base import ADAPTERS, Adapter, CellData, CellResult, classification_cases
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
        "epochs": 30,
        "batch_size": 32,
        "lr_head": 1e-3,
        "lr_encoder": [1e-4, 3e-4, 1e-3],
        "weight_decay": 1e-4,
        "warmup_epochs": 0,
        **PROTOCOL_DEFAULTS,
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
        lr_grid(cfg["lr_encoder"], "finetune", "lr_encoder")
        if cfg["class_weight"] not in (None, "balanced"):
            raise SSLBenchError(
                f"finetune: class_weight must be null or 'balanced', got {cfg['class_weight']!r}"
            )

    def training_passes(self, n_train: int) -> float:
        n = max(1, int(n_train))
        bs = min(int(self.config["batch_size"]), n)
        per_epoch = len(batches(n, bs, torch.Generator().manual_seed(0)))
        grid = lr_grid(self.config["lr_encoder"], self.name, "lr_encoder")
        return len(grid) * planned_passes(per_epoch, n / per_epoch, self.config, self.name)

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
        bs = min(int(cfg["batch_size"]), len(tr_y))
        plan = plan_steps(
            len(batches(len(tr_y), bs, torch.Generator().manual_seed(0))), cfg, self.name
        )
        primary = data.primary_metric or "auc"

        def train(lr_encoder: float) -> tuple[float, tuple[Classifier, BestTracker, str]]:
            outcome = self._train(
                encoder, data, seed, device, lr_encoder, plan, tr_x, tr_y, va_x, va_y, primary
            )
            return outcome[1].best_score, outcome

        grid = lr_grid(cfg["lr_encoder"], self.name, "lr_encoder")
        chosen, trials = select_on_validation(grid, train)
        model, tracker, criterion = chosen.outcome
        eval_bs = int(cfg["eval_batch_size"])
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
        has_val = bool(len(va_y))
        selection = criterion if has_val else "none (last step)"
        return CellResult(
            metrics=metrics,
            val_metrics=val_metrics,
            extra={
                "confusion_matrix": cm,
                "steps_trained": int(tracker.history[-1]["step"]) if tracker.history else 0,
                "best_step": tracker.best_step,
                "selection_criterion": selection,
                "step_plan": plan.to_dict(),
                "lr_encoder_used": chosen.lr,
                "lr_selection": selection_record("lr_encoder", chosen, trials, selection),
                "history": tracker.history,
                "augment_recipe": {
                    k: v
                    for k, v in vars(replace(FINETUNE_VIEW, size=int(data.image_size))).items()
                    if k != "extra"
                },
            },
            per_case=classification_cases(data.test, labels[data.test], probs),
            train_time_s=train_time,
            eval_time_s=time.perf_counter() - start,
        )

    def _train(
        self,
        encoder: Encoder,
        data: CellData,
        seed: int,
        device: str,
        lr_encoder: float,
        plan: StepPlan,
        tr_x: torch.Tensor,
        tr_y: np.ndarray,
        va_x: torch.Tensor,
        va_y: np.ndarray,
        primary: str,
    ) -> tuple[Classifier, BestTracker, str]:
        """One training run at ``lr_encoder``: the model (best weights restored) and its tracker."""
        cfg = self.config
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = Classifier(copy.deepcopy(encoder), data.num_classes).to(device)
        opt = adam(_param_groups(model, lr_encoder, cfg))
        base_lrs = [g["lr"] for g in opt.param_groups]
        bs = min(int(cfg["batch_size"]), len(tr_y))
        warmup = int(cfg["warmup_epochs"]) * plan.per_epoch
        weight = balanced_weights(tr_y, data.num_classes) if cfg["class_weight"] else None
        loss_fn = nn.CrossEntropyLoss(
            weight=weight.to(device) if weight is not None else None,
            label_smoothing=float(cfg["label_smoothing"]),
        )
        recipe = replace(FINETUNE_VIEW, size=int(data.image_size))
        y_all = torch.from_numpy(tr_y).to(device)
        eval_bs = int(cfg["eval_batch_size"])
        tracker = BestTracker(plan)
        step, losses, selection_metric = 0, [], primary
        while step < plan.total:
            model.train()
            for idx in batches(len(tr_y), bs, gen):
                for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                    g["lr"] = lr * lr_factor(step, plan.total, warmup)
                idx = idx.to(device)
                x = tr_x[idx]
                if cfg["augment"]:
                    x = augment_batch(x, recipe, gen)
                loss = loss_fn(model(x), y_all[idx])
                if not torch.isfinite(loss):
                    raise SSLBenchError(
                        f"finetune: loss became {loss.item()} at step {step} "
                        f"(lr_encoder {lr_encoder:g}); try a lower lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                step += 1
                if plan.evaluate_now(step):
                    tiebreak = 0.0
                    if len(va_y):
                        probs = predict_proba(model, va_x, eval_bs, device)
                        score, selection_metric = selection_score(
                            primary, va_y, probs, data.num_classes
                        )
                        picked = probs[np.arange(len(va_y)), va_y]
                        tiebreak = float(np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
                    else:
                        score = float(step)  # no validation data: keep the last step
                    stop = tracker.observe(
                        step,
                        score,
                        model,
                        tiebreak=tiebreak,
                        train_loss=float(np.mean(losses)),
                        val_loss=-tiebreak,
                    )
                    losses = []
                    model.train()
                    if stop:
                        tracker.restore(model)
                        return model, tracker, selection_metric
                if step >= plan.total:
                    break
        tracker.restore(model)
        return model, tracker, selection_metric
