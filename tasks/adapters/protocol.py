"""The training protocol of the adapters that train weights: one recipe for every arm.

Pretrained, scratch and supervised arms get exactly the same optimiser, schedule,
step budget, early-stopping rule and learning-rate grid; nothing here, or in an
adapter, looks at where the encoder came from. Where the best learning rate
differs by initialisation, it is *chosen per arm on the validation subset* from
the declared grid (:func:`select_on_validation`), recorded in the cell's record,
and the time of every trial is counted in the cell's compute.

Step budget. A cell trains for ``total = max(min_steps, ceil(epochs x
steps_per_epoch))`` optimizer steps, so a cell at 5 % labels is not left with a
handful of steps (a fixed number of epochs gave 6-15 steps there). The model is
evaluated on the validation subset every ``eval_every`` steps (``0``: about 20
evaluations per run) and at the last step.

Early stopping. Never before ``stop_after`` x ``total`` steps; after that, a run
stops when the criterion has not improved for ``patience`` evaluations, and the
best evaluation's weights are restored. The criterion is one that a constant
prediction cannot win: the primary metric's AUC (a constant score gives 0.5) or
balanced accuracy for classification, Dice over the validation images with a
non-empty mask for segmentation (an all-empty prediction scores 0). Records keep
``steps_trained``, ``best_step`` (the optimizer steps behind the restored
weights; 0 means the restored weights are the initial ones, which the
leaderboard flags) and ``selection_criterion``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from benchmark.core.errors import SSLBenchError

#: Protocol options shared by the training adapters (merged into their defaults).
PROTOCOL_DEFAULTS: dict[str, Any] = {
    "min_steps": 100,
    "eval_every": 0,
    "patience": 5,
    "stop_after": 0.5,
}

T = TypeVar("T")


@dataclass(frozen=True)
class StepPlan:
    """How many steps a cell trains and when it is evaluated."""

    total: int
    per_epoch: int
    eval_every: int
    stop_after: int
    patience: int

    def evaluate_now(self, step: int) -> bool:
        """Whether to evaluate after optimizer step ``step`` (1-based)."""
        return step % self.eval_every == 0 or step == self.total

    def to_dict(self) -> dict[str, int]:
        return {
            "total_steps": self.total,
            "steps_per_epoch": self.per_epoch,
            "eval_every": self.eval_every,
            "no_stop_before": self.stop_after,
            "patience_evals": self.patience,
        }


def plan_steps(steps_per_epoch: int, cfg: dict[str, Any], name: str) -> StepPlan:
    """The step budget of a cell from its adapter config (see the module docstring).

    Raises:
        SSLBenchError: An option is out of range (named).
    """
    for key in ("epochs", "min_steps", "patience"):
        if int(cfg[key]) != cfg[key] or int(cfg[key]) < (0 if key == "min_steps" else 1):
            raise SSLBenchError(
                f"{name}: option {key} must be a positive integer, got {cfg[key]!r}"
            )
    if int(cfg["eval_every"]) != cfg["eval_every"] or int(cfg["eval_every"]) < 0:
        raise SSLBenchError(f"{name}: option eval_every must be >= 0, got {cfg['eval_every']!r}")
    if not 0.0 <= float(cfg["stop_after"]) <= 1.0:
        raise SSLBenchError(
            f"{name}: option stop_after must lie in [0, 1], got {cfg['stop_after']!r}"
        )
    per_epoch = max(1, int(steps_per_epoch))
    total = max(int(cfg["min_steps"]), math.ceil(float(cfg["epochs"]) * per_epoch), 1)
    every = int(cfg["eval_every"]) or max(1, math.ceil(total / 20))
    return StepPlan(
        total=total,
        per_epoch=per_epoch,
        eval_every=min(every, total),
        stop_after=math.ceil(float(cfg["stop_after"]) * total),
        patience=int(cfg["patience"]),
    )


def planned_passes(
    steps_per_epoch: int, images_per_step: float, cfg: dict[str, Any], name: str
) -> float:
    """Image passes of one training run of :func:`plan_steps`'s budget.

    ``images_per_step`` is the mean batch the adapter trains on; validation passes
    are not counted (estimates only: see
    :meth:`tasks.adapters.base.Adapter.training_passes`).
    """
    return plan_steps(steps_per_epoch, cfg, name).total * float(images_per_step)


@dataclass
class BestTracker:
    """Keeps the best validation evaluation and decides when to stop.

    Evaluations are compared on the criterion, then on ``tiebreak`` (the negative
    validation loss): a flat criterion (e.g. a Dice of 0 at every evaluation while
    a scratch model still predicts background only) then keeps the weights with
    the lowest validation loss instead of the least trained ones; full ties keep
    the earlier evaluation. Step 0 is the state before training; :meth:`observe`
    is called after optimizer steps only.
    """

    plan: StepPlan
    best_score: float = -math.inf
    best_tiebreak: float = -math.inf
    best_step: int = 0
    best_state: dict[str, Any] | None = None
    since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def observe(
        self, step: int, score: float, model: nn.Module, tiebreak: float = 0.0, **logged: float
    ) -> bool:
        """Record the evaluation after ``step``; returns True when training should stop."""
        self.history.append({"step": float(step), "val_score": float(score), **logged})
        tb = float(tiebreak) if math.isfinite(tiebreak) else -math.inf
        better = score > self.best_score or (score == self.best_score and tb > self.best_tiebreak)
        if math.isfinite(score) and better:
            self.best_score, self.best_tiebreak = float(score), tb
            self.best_step, self.since_best = step, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.since_best += 1
        return step >= self.plan.stop_after and self.since_best >= self.plan.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights (no-op when no evaluation improved on nothing)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def lr_grid(value: float | Sequence[float], name: str, key: str) -> list[float]:
    """A declared learning-rate grid: one value or a non-empty list of positive values."""
    values: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    try:
        grid = [float(v) for v in values]
    except (TypeError, ValueError):
        raise SSLBenchError(
            f"{name}: option {key} must be a number or a list, got {value!r}"
        ) from None
    if not grid or any(not v > 0 for v in grid):
        raise SSLBenchError(
            f"{name}: option {key} must hold positive learning rates, got {value!r}"
        )
    return grid


@dataclass
class Trial:
    """One training run of a grid: its learning rate, validation score and outcome."""

    lr: float
    score: float
    outcome: Any
    seconds: float


def select_on_validation(
    grid: Sequence[float], train: Callable[[float], tuple[float, T]]
) -> tuple[Trial, list[Trial]]:
    """Train once per grid value and keep the best validation score.

    ``train(lr)`` returns ``(validation score, outcome)``. Ties, and a grid whose
    scores are all undefined, keep the first value in declared order. Returns the
    chosen trial and every trial (whose times all count in the cell's compute).
    """
    trials: list[Trial] = []
    for lr in grid:
        start = time.perf_counter()
        score, outcome = train(lr)
        trials.append(Trial(lr, float(score), outcome, time.perf_counter() - start))
    best = trials[0]
    for t in trials[1:]:
        if math.isfinite(t.score) and (not math.isfinite(best.score) or t.score > best.score):
            best = t
    return best, trials


def selection_record(
    key: str, chosen: Trial, trials: Sequence[Trial], criterion: str
) -> dict[str, Any]:
    """What a record says about the learning-rate selection."""
    return {
        "key": key,
        "grid": [t.lr for t in trials],
        "val_scores": [None if not math.isfinite(t.score) else round(t.score, 6) for t in trials],
        "chosen": chosen.lr,
        "criterion": criterion,
        "trial_seconds": [round(t.seconds, 3) for t in trials],
    }
