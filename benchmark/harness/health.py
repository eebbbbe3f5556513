"""The pretraining health verdict as the harness reports it: run summary, ``--strict``, W&B.

Every pretraining run writes a health verdict into its ``pretrain.json`` and
into its checkpoint's ``encoder.json`` (:func:`pretrain.monitor.health`):
``learned``, ``did not learn`` or ``not checked``, with the online kNN
accuracy at the calibrated step 0 and at the end, the loss against its chance
level and a collapse indicator. This module reads that verdict back in the
compact form every harness output uses (:func:`compact`), formats it for the
end-of-run summary (:func:`format_health`) and turns a finished pretraining job
whose encoder did not learn into a failed one under ``sslbench run --strict``
(:func:`strict_outcome`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.core.io import read_json
from benchmark.harness.jobs import Job
from benchmark.harness.ledger import Outcome, job_done, marker_path

DID_NOT_LEARN = "did not learn"
#: Legend of the leaderboard's flag of encoders that did not learn.
FLAG = "⚠"
LEGEND = (
    f"{FLAG} did not learn: neither the kNN accuracy nor the monitor's linear-probe AUC rose by "
    ">= margin during pretraining (or the loss stayed at chance, or the embeddings collapsed) — "
    "its numbers are not comparable"
)


def compact(health: dict[str, Any] | None) -> dict[str, Any] | None:
    """The flat form of a run's ``health`` entry (None when the run has none).

    Returns:
        ``{"verdict", "reasons", "knn_init", "knn_end", "knn_gain", "margin",
        "knn_note", "linear_init", "linear_end", "loss_first", "loss_last",
        "loss_chance", "collapsed"}``, plus ``dense_init`` / ``dense_end`` where the
        dense-probe monitor of a mask-only dataset ran.
    """
    if not health or "verdict" not in health:
        return None
    knn, loss = health.get("knn") or {}, health.get("loss") or {}
    linear, dense = health.get("linear") or {}, health.get("dense") or {}
    out = {
        "verdict": str(health["verdict"]),
        "reasons": list(health.get("reasons") or []),
        "knn_init": knn.get("init"),
        "knn_end": knn.get("end"),
        "knn_gain": knn.get("gain"),
        "margin": knn.get("margin"),
        "knn_note": knn.get("note"),
        "linear_init": linear.get("init"),
        "linear_end": linear.get("end"),
        "loss_first": loss.get("first"),
        "loss_last": loss.get("last"),
        "loss_chance": loss.get("chance"),
        "collapsed": bool((health.get("collapse") or {}).get("collapsed")),
    }
    if dense.get("init") is not None:  # only then: kNN-monitored outputs stay byte-identical
        out.update(dense_init=dense["init"], dense_end=dense.get("end"))
    return out


def job_health(results: Path, job: Job) -> dict[str, Any] | None:
    """The compact health of a pretraining job: from its marker, else its ``pretrain.json``.

    Args:
        results: The results folder.
        job: A ``pretrain`` job (finished, failed under ``--strict``, or not run).

    Returns:
        :func:`compact` of the run's verdict, or None when the job has not written one
        (not run yet, or run before the monitor existed).
    """
    marker = read_json(marker_path(results, job)) or {}
    if marker.get("key") == job.key and (marker.get("outputs") or {}).get("health"):
        return dict(marker["outputs"]["health"])
    summary = read_json(job.out / "pretrain.json") or {}
    return compact(summary.get("health"))


def _num(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def format_health(h: dict[str, Any] | None) -> str:
    """``kNN 0.664 -> 0.702; linear AUC 0.70 -> 0.80; loss 4.19 -> 3.80 (chance 4.14); no
    collapse; learned`` (the linear part only where the monitor measured it)."""
    if h is None:
        return "no health verdict recorded (not run, or run before the kNN monitor)"
    if h.get("knn_init") is not None:
        knn = f"kNN {_num(h['knn_init'])} -> {_num(h['knn_end'])}"
    elif h.get("dense_init") is not None:
        knn = f"dense-probe Dice {_num(h['dense_init'])} -> {_num(h['dense_end'])}"
    else:
        knn = f"kNN – ({h.get('knn_note') or 'no monitor'})"
    if h.get("linear_init") is not None:
        knn += f"; linear AUC {_num(h['linear_init'])} -> {_num(h['linear_end'])}"
    chance = f" (chance {_num(h['loss_chance'])})" if h.get("loss_chance") is not None else ""
    loss = f"loss {_num(h.get('loss_first'))} -> {_num(h.get('loss_last'))}{chance}"
    collapse = "collapse" if h.get("collapsed") else "no collapse"
    return f"{knn}; {loss}; {collapse}; {h['verdict']}"


def wandb_summary(h: dict[str, Any]) -> dict[str, Any]:
    """The health entries of a pretraining job's W&B run summary (``health/...`` keys)."""
    out = {f"health/{k}": v for k, v in h.items() if k not in ("reasons", "knn_note")}
    out["health/reasons"] = "; ".join(h.get("reasons") or [])
    return {k: v for k, v in out.items() if v is not None}


def did_not_learn(h: dict[str, Any] | None) -> bool:
    """Whether a compact health says the encoder did not learn."""
    return h is not None and h.get("verdict") == DID_NOT_LEARN


def strict_message(job: Job, h: dict[str, Any]) -> str:
    """The failure message of a pretraining job failed by ``--strict``."""
    reasons = "; ".join(h.get("reasons") or []) or "no reason recorded"
    return (
        f"{job.id}: the encoder did not learn ({reasons}); --strict counts it as failed "
        f"(the encoder is still written to {job.out / 'encoder'}; rerun without --strict to use it)"
    )


def strict_outcome(job: Job, outcome: Outcome) -> Outcome:
    """Under ``--strict``: a finished pretraining job whose encoder did not learn, as a failure.

    The encoder and ``pretrain.json`` are kept; the job gets a failure record (with the
    job's outputs, health included, as its partial summary) instead of an ``ok`` marker,
    so its dependants do not run and a later run (without ``--strict``) resumes it.
    Any other outcome is returned unchanged.
    """
    h = (outcome.out or {}).get("health")
    if job.stage != "pretrain" or not outcome.ok or h is None or not did_not_learn(h):
        return outcome
    return Outcome(
        False,
        error=f"DidNotLearn: {strict_message(job, h)}",
        partial=dict(outcome.out),
        wall_s=outcome.wall_s,
        attempts=outcome.attempts,
        retry=False,
    )


def unhealthy_done(results: Path, jobs: list[Job]) -> dict[str, str]:
    """Finished pretraining jobs of ``jobs`` whose encoder did not learn.

    Returns:
        Job id -> the ``--strict`` failure message (:func:`strict_message`).
    """
    out = {}
    for job in jobs:
        if job.stage == "pretrain" and job_done(results, job):
            h = job_health(results, job)
            if h is not None and did_not_learn(h):
                out[job.id] = strict_message(job, h)
    return out
