"""The pretraining health verdict in the harness: job graph, W&B, run summary, --strict."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.io import read_json
from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment, resolve_experiment
from benchmark.harness.health import compact, format_health
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.ledger import marker_path, record_success
from benchmark.harness.runner import format_run_summary, run_experiment
from benchmark.harness.stages import Context, run_job
from benchmark.harness.tracking import Tracker, read_offline_run
from tests.conftest import one_thread

TINY = EXPERIMENT_DIR / "phantom-tiny.yaml"


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    with one_thread():
        yield


def test_every_pretraining_job_depends_on_the_dataset_of_its_monitor(tmp_path: Path) -> None:
    """Synthetic-only runs read the experiment's dataset for the kNN monitor: it is their
    dependency and in their key; real and mixed runs name it in ``real`` (keys unchanged)."""
    jobs = {j.id: j for j in plan_jobs(load_experiment(TINY), tmp_path)}
    data = jobs["data/phantom"]
    pretraining = [j for j in jobs.values() if j.stage == "pretrain"]
    assert len(pretraining) == 6
    for job in pretraining:
        assert data.id in job.deps, job.id
        if job.config["source"] == "synthetic":
            assert job.config["monitor_data"] == data.key and job.config["real"] is None
        else:
            assert "monitor_data" not in job.config and job.config["real"] == data.key


def read_run(folder: Path, rows: int) -> dict[str, Any]:
    """An offline run read back once its ``rows`` history rows are on disk (the W&B service
    may still be writing the file for a moment after ``finish``)."""
    deadline = time.time() + 30
    while True:
        run = read_offline_run(folder)
        if len(run["history"]) >= rows or time.time() > deadline:
            return run
        time.sleep(0.5)


def test_log_history_logs_the_knn_series_at_its_steps(tmp_path: Path) -> None:
    """metrics.jsonl of a monitored run: monitor lines (one with a nested calibration
    record) interleaved with training lines; each series lands at its own steps."""
    rows: list[dict[str, Any]] = [
        {"step": 0, "calibration": {"calibrated": True, "layers": 20}, "knn_acc": 0.5},
        {"step": 2, "loss": 3.0, "lr": 0.1, "embedding_std": 0.02},
        {"step": 2, "knn_acc": 0.55, "knn_balanced_acc": 0.4, "knn_time_s": 0.1},
        {"step": 4, "loss": 2.5, "lr": 0.1, "embedding_std": 0.02},
        {"step": 3, "knn_acc": 0.6, "knn_balanced_acc": 0.45, "knn_time_s": 0.1},
        {"step": 5, "calibration": {"calibrated": False}},  # nothing numeric: skipped
    ]
    tracker = Tracker(mode="offline", project="p", group="g", dir=tmp_path)
    with tracker.run("pretrain/x", "pretrain", {}) as wb:
        wb.log_history(rows)
    run = read_run(next((tmp_path / "wandb").glob("offline-run-*")), rows=4)
    knn = {h["_step"]: h["knn_acc"] for h in run["history"] if "knn_acc" in h}
    loss = {h["_step"]: h["loss"] for h in run["history"] if "loss" in h}
    assert knn == {0: 0.5, 2: 0.55, 3: 0.6} and loss == {2: 3.0, 4: 2.5}
    assert not any(k.startswith("calibration") for h in run["history"] for k in h)


def experiment(tmp_path: Path, *, lr: float | None = None, **pretrain: Any) -> Any:
    """Phantom data, a tiny DDPM, synthetic-only pretraining and a linear probe."""
    raw = {
        "name": "health",
        "datasets": {"phantom": {"phantom": {"n": 48, "size": 32, "seed": 1}}},
        "generator": {  # as phantom-tiny's (a phantom generator is refused under a profile)
            "kind": "ddpm",
            "dataset": "phantom",
            "train": {
                "steps": 2,
                "batch_size": 8,
                "channels": [8, 16, 16],
                "num_head_channels": 4,
                "sample_every": 0,
                "checkpoint_every": 0,
            },
            "samples": 16,
            "sample_steps": 2,
            "report": False,
        },
        "pretrain": {
            "dataset": "phantom",
            "sources": ["synthetic"],
            "methods": ["simclr"],
            "steps": 4,
            "batch_size": 8,
            "image_size": 32,
            "checkpoint_every": 0,
            **({"method_config": {"simclr": {"lr": lr}}} if lr is not None else {}),
            **pretrain,
        },
        "evaluate": {
            "tasks": [
                {
                    "spec": "phantom-cls",
                    "dataset": "phantom",
                    "adapters": ["linear"],
                    "image_size": 32,
                }
            ],
            "fractions": [1.0],
            "seeds": [0, 1],
            "baselines": [],
        },
    }
    return resolve_experiment(raw, "test", tmp_path)


def test_a_synthetic_only_run_gets_its_verdict_into_outputs_and_wandb(tmp_path: Path) -> None:
    results = tmp_path / "results"
    exp = experiment(tmp_path, lr=0.0)
    jobs = plan_jobs(exp, results)
    ctx = Context(results, Tracker(mode="offline", group="health", dir=results), "cpu")
    for job in jobs:
        if job.stage == "evaluate":
            continue
        outcome = run_job(job, ctx)
        assert outcome.ok, outcome.error + outcome.traceback
        record_success(results, job, outcome)
    pre = next(j for j in jobs if j.stage == "pretrain")
    marker = read_json(marker_path(results, pre))
    assert marker is not None
    health = marker["outputs"]["health"]
    summary = json.loads((pre.out / "pretrain.json").read_text())
    assert health == compact(summary["health"])
    data = read_json(marker_path(results, "data/phantom"))["outputs"]["path"]  # type: ignore[index]
    assert summary["monitor"]["dataset"] == data  # the real dataset, not the synthetic pool
    assert health["knn_init"] is not None and health["verdict"] == "did not learn"  # lr 0
    assert "kNN balanced accuracy rose by" in health["reasons"][0]
    assert "did not learn" in format_health(health) and "kNN " in format_health(health)

    folder = next(
        d
        for d in sorted((results / "wandb").glob("offline-run-*"))
        if read_offline_run(d)["run"].get("job_type") == "pretrain"
    )
    wb = read_run(folder, rows=5)
    s = wb["summary"]
    assert s["health/verdict"] == "did not learn" and s["health/reasons"]
    assert s["health/knn_init"] == pytest.approx(health["knn_init"])
    assert s["health/knn_end"] == pytest.approx(health["knn_end"])
    assert s["health/loss_first"] == pytest.approx(health["loss_first"])
    assert s["health/loss_chance"] == pytest.approx(health["loss_chance"])
    knn_steps = [h["_step"] for h in wb["history"] if "knn_acc" in h]
    assert knn_steps == [p["step"] for p in summary["monitor"]["points"]] == [0, 1, 2, 3, 4]
    assert [h["_step"] for h in wb["history"] if "loss" in h] == [
        r["step"]
        for r in map(json.loads, (pre.out / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def test_strict_fails_an_encoder_that_did_not_learn_and_resumes_without(tmp_path: Path) -> None:
    results = tmp_path / "results"
    exp = experiment(tmp_path, lr=0.0)
    kw: dict[str, Any] = {"wandb_mode": "disabled", "progress": False, "leaderboard": False}
    pre_id = "pretrain/synthetic-simclr-resnet18-s0"
    ev_id = "evaluate/phantom-cls/synthetic-simclr-resnet18-s0"

    # 1. --strict: the pretraining job fails naming the reasons; its sweep does not run
    first = run_experiment(exp, results, strict=True, **kw)
    assert set(first.failed) == {pre_id, ev_id}
    assert "did not learn (kNN balanced accuracy rose by" in first.failed[pre_id]
    assert pre_id in first.failed[pre_id] and "--strict" in first.failed[pre_id]
    assert first.failed[ev_id] == f"skipped: depends on failed {pre_id}"
    pre = next(j for j in plan_jobs(exp, results) if j.id == pre_id)
    assert (pre.out / "encoder" / "encoder.pt").exists()  # the encoder is still written
    assert read_json(marker_path(results, pre))["status"] == "partial"  # type: ignore[index]
    failure = json.loads((results / "failures" / f"{pre.slug}.json").read_text())
    assert failure["error"].startswith("DidNotLearn:") and failure["partial"]["health"]
    assert first.health[pre_id]["verdict"] == "did not learn"  # type: ignore[index]
    text = format_run_summary(first)
    assert f"  {pre_id}: kNN " in text and "; did not learn" in text
    assert "WARNING: 1 pretrained encoder(s) did not learn" in text and pre_id in text

    # 2. without --strict: the job resumes and succeeds, its sweep runs; still a warning
    second = run_experiment(exp, results, **kw)
    assert not second.failed and set(second.ran) == {pre_id, ev_id}
    text = format_run_summary(second)
    assert "WARNING: 1 pretrained encoder(s) did not learn" in text
    assert "--strict fails such jobs" in text

    # 3. --strict again: the finished job counts as failed (nothing reruns)
    third = run_experiment(exp, results, strict=True, **kw)
    assert set(third.failed) == {pre_id} and not third.ran
    assert "did not learn" in third.failed[pre_id]


def test_compact_health_and_its_summary_line() -> None:
    """Runs from before the monitor have no verdict; a verdict reads as one line."""
    assert compact(None) is None and compact({}) is None
    assert format_health(None).startswith("no health verdict")
    h = compact(
        {
            "verdict": "learned",
            "reasons": [],
            "knn": {"init": 0.5, "end": 0.6, "gain": 0.1, "margin": 0.02, "note": None},
            "loss": {"first": 4.0, "last": 3.0, "chance": 4.1},
            "collapse": {"collapsed": False},
        }
    )
    assert (
        format_health(h)
        == "kNN 0.500 -> 0.600; loss 4.000 -> 3.000 (chance 4.100); no collapse; learned"
    )
