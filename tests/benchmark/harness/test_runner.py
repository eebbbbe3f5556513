"""The runner end to end on the phantom: a real subprocess, a real SIGKILL, real wandb files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.ledger import results_lock
from benchmark.harness.tracking import read_offline_run

pytestmark = pytest.mark.slow

TINY = EXPERIMENT_DIR / "phantom-tiny.yaml"


CLI = [sys.executable, "-m", "benchmark.cli"]


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``sslbench ARGS`` as a real subprocess (W&B offline)."""
    return subprocess.run([*CLI, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def records_of(results: Path) -> list[Path]:
    return sorted((results / "evaluate").rglob("frac*_seed*.json"))


def test_tiny_grid_survives_sigkill_reruns_as_noop_and_writes_the_leaderboard(
    tmp_path: Path,
) -> None:
    results = tmp_path / "results"
    args = ["run", str(TINY), "-o", str(results), "--no-progress"]
    # 1. start, kill -9 as soon as some evaluation cells are recorded (mid-grid)
    proc = subprocess.Popen(
        [*CLI, *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(records_of(results)) < 3:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(records_of(results))
    expected = sum(len(j.cells) for j in plan_jobs(load_experiment(TINY), results.resolve()))
    assert 3 <= killed_at < expected

    # 2. rerun: finishes the grid, every cell exactly once, no partial files left
    done = cli(*args, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    records = records_of(results)
    assert len(records) == expected == 60
    cells = [json.loads(p.read_text()) for p in records]
    keys = {
        (r["task"]["name"], r["adapter"]["name"], r["encoder"]["id"], r["fraction"], r["seed"])
        for r in cells
    }
    assert len(keys) == len(cells)
    assert not list(results.rglob(".*.partial-*"))
    index = json.loads((results / "index.json").read_text())
    assert len(index["records"]) == expected
    assert set(index["compute_s"]) >= {"data", "generate", "pretrain", "evaluate"}

    # 3. a third run is a no-op
    again = cli(*args)
    assert again.returncode == 0 and " 0 ran, 23 already done" in again.stdout, again.stdout
    assert len(records_of(results)) == expected

    # 4. the leaderboard: every row and column, regenerated identically
    lb = results / "leaderboard"
    board = json.loads((lb / "leaderboard.json").read_text())
    rows = [r["strategy"] for r in board["rows"]]
    assert rows == [*STRATEGIES_ORDERED, "scratch / resnet18", "supervised / resnet18"]
    md = (lb / "LEADERBOARD.md").read_text()
    for col in ("linear@0.5", "linear@1", "segmentation@0.5", "segmentation@1", "finetune@1"):
        assert col in md
    for strategy in rows:
        # a row whose encoder did not learn carries a flag before its name
        assert re.search(rf"\| {re.escape(strategy)}( ⚠(\d+/\d+)?)? \|", md), strategy
    assert (lb / "curves_phantom-cls.png").stat().st_size > 0
    assert (lb / "curves_phantom-seg.png").stat().st_size > 0
    csv_lines = (lb / "leaderboard.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,adapter,fraction,strategy")
    comparisons = board["comparisons"]
    # the grid's VICReg real arm is also compared with its SimCLR real arm (kind "method")
    assert {c["reference_kind"] for c in comparisons} == {"scratch", "real", "method"}
    assert {c["reference"] for c in comparisons if c["reference_kind"] == "method"} == {
        "real / simclr / resnet18"
    }
    # current protocol: two-level paired comparisons with Holm-adjusted p-values
    assert all(c["protocol"] == "current" and "p_adjusted" in c for c in comparisons)
    assert board["findings"] and board["multiplicity"] == "Holm"
    assert board["provenance"]["experiment_hash"] == index["experiment_hash"]
    regen = cli("leaderboard", str(results), "-o", str(tmp_path / "lb2"))
    assert regen.returncode == 0, regen.stderr
    for name in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json"):
        assert (tmp_path / "lb2" / name).read_bytes() == (lb / name).read_bytes()

    # the exported (committable) folder regenerates the same leaderboard; no data or checkpoints
    export = tmp_path / "export"
    ex = cli("export", str(results), str(export))
    assert ex.returncode == 0, ex.stderr
    assert not list(export.rglob("*.h5")) and not list(export.rglob("*.pt"))
    from benchmark.harness.leaderboard import build_leaderboard

    regen2 = build_leaderboard(export, out=tmp_path / "lb3")
    for name in ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json"):
        assert (regen2 / name).read_bytes() == (lb / name).read_bytes()

    # 5. wandb offline runs: config and final metrics are in the run files
    runs = [read_offline_run(d) for d in sorted((results / "wandb").glob("offline-run-*"))]
    runs = [r for r in runs if r["run"]]  # the run open at the SIGKILL may have no record yet
    by_type: dict[str, list[dict]] = {}
    for r in runs:
        by_type.setdefault(r["run"]["job_type"], []).append(r)
    assert set(by_type) == {"generate", "pretrain", "evaluate", "leaderboard"}
    assert all(r["run"]["group"] == "phantom-tiny" for r in runs)
    pre = next(r for r in by_type["pretrain"] if r["config"]["method"] == "vicreg")
    assert pre["config"]["steps"] == 3 and "final_loss" in pre["summary"]
    assert any("loss" in h for h in pre["history"])
    # every sweep finished exactly once (the one open at the SIGKILL has no summary)
    finished = [r for r in by_type["evaluate"] if any(k.endswith("/seed1") for k in r["summary"])]
    n_sweeps = sum(
        j.stage == "evaluate" for j in plan_jobs(load_experiment(TINY), results.resolve())
    )
    assert len(finished) == n_sweeps
    assert all(r["config"]["fractions"] == [0.5, 1.0] for r in finished)
    assert "leaderboard._type" in by_type["leaderboard"][-1]["summary"]


STRATEGIES_ORDERED = [
    "real / simclr / resnet18",
    "synthetic / simclr / resnet18",
    "mixed 0.5 / simclr / resnet18",
    "real / vicreg / resnet18",
    "synthetic / vicreg / resnet18",
    "mixed 0.5 / vicreg / resnet18",
]


def small_experiment(tmp_path: Path, **evaluate: object) -> Path:
    raw = {
        "name": "small",
        "datasets": {"phantom": {"phantom": {"n": 48, "size": 32, "seed": 1}}},
        "pretrain": {
            "dataset": "phantom",
            "methods": ["simclr"],
            "steps": 2,
            "batch_size": 8,
            "image_size": 32,
            "checkpoint_every": 0,
        },
        "evaluate": {
            "tasks": [
                {
                    "spec": "phantom-cls",
                    "dataset": "phantom",
                    "adapters": ["linear"],
                    "image_size": 32,
                },
                {"spec": "phantom-seg", "dataset": "phantom", "image_size": 32},
            ],
            "fractions": [1.0],
            "seeds": [0],
            "baselines": [],
            "overrides": {
                "segmentation.epochs": 1,
                "segmentation.min_steps": 1,
                "segmentation.encoder_lr": [1e-3],
            },
            **evaluate,
        },
    }
    import yaml

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_failing_job_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    exp = small_experiment(
        tmp_path, overrides={"segmentation.epochs": 1, "segmentation.mode": "bogus"}
    )
    results = tmp_path / "results"
    proc = cli(
        "run", str(exp), "-o", str(results), "--no-progress", "--wandb", "disabled", timeout=600
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "1 failed" in proc.stdout and "evaluate/phantom-seg/real-simclr-resnet18-s0" in proc.stdout
    )
    failure = json.loads(next((results / "failures").glob("*.json")).read_text())
    assert "bogus" in failure["error"] and failure["traceback"]
    assert len(records_of(results)) == 1  # the classification cell still ran
    assert (results / "leaderboard" / "LEADERBOARD.md").exists()
    assert not (results / "wandb").exists()


def test_progress_bar_ends_at_its_total(tmp_path: Path) -> None:
    """The bar's total is the sum of the job estimates and every job credits exactly its
    own: no tqdm clamping warning, no negative remaining time at the last cell."""
    exp = small_experiment(tmp_path)
    proc = cli("run", str(exp), "-o", str(tmp_path / "results"), "--wandb", "disabled")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clamping frac" not in proc.stderr
    assert "-00:00" not in proc.stderr
    assert "100%" in proc.stderr


def test_a_second_runner_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    exp = small_experiment(tmp_path)
    results = tmp_path / "results"
    with results_lock(results):
        proc = cli("run", str(exp), "-o", str(results), "--no-progress")
    assert proc.returncode == 2
    assert "another sslbench runner is using this folder" in proc.stderr
    assert not (results / "pretrain").exists()


def test_dry_run_lists_jobs_and_an_estimate(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = cli("run", str(TINY), "-o", str(results), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert (
        "todo" in proc.stdout and "evaluate/phantom-seg/baselines-resnet18 (6 cells)" in proc.stdout
    )
    assert "estimated time" in proc.stdout
    assert not results.exists()


@pytest.mark.slow
def test_added_and_pool_matched_arms_run_end_to_end(tmp_path: Path) -> None:
    """``pretrain.modes=[add]`` and ``pool_size=matched`` through the runner: the synthetic
    arm's pool is the size of the real train split (resolved for a synthetic-only arm from
    the dataset), the added arm samples the union of the two pools (4 + 4 of a batch of 8),
    and the leaderboard labels the arm."""
    results = tmp_path / "results"
    proc = cli(
        "run", str(TINY),
        "pretrain.sources=[synthetic, mixed]", "pretrain.methods=[simclr]",
        "pretrain.modes=[add]", "pretrain.pool_size=matched", "generator.samples=80",
        "evaluate.tasks=[{spec: phantom-cls, dataset: phantom, adapters: [linear], image_size: 32}]",
        "evaluate.baselines=[]", "evaluate.fractions=[1.0]",
        "-o", str(results), "--no-progress",
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = next((results / "data").glob("*.h5"))
    with h5py.File(data) as f:
        n_train = int(np.sum(f["split"][:].astype(str) == "train"))
    syn = json.loads(next((results / "pretrain").glob("synthetic-*/pretrain.json")).read_text())
    assert syn["source"]["synthetic"]["pool_size"] == n_train < 80
    assert syn["source"]["synthetic"]["pool_of"] == 80 and syn["config"]["pool_size"] == n_train
    add = json.loads(next((results / "pretrain").glob("mixedadd-*/pretrain.json")).read_text())
    # the weighted union of two pools of n_train images at w = 1: half of every batch of 8
    assert add["source"]["per_batch"] == {"real": 4, "synthetic": 4}
    assert add["images_seen"] == 3 * 8 and add["source"]["synthetic"]["pool_size"] == n_train
    board = json.loads((results / "leaderboard" / "leaderboard.json").read_text())
    assert "mixed+add / simclr / resnet18" in {r["strategy"] for r in board["rows"]}


def test_dry_run_lists_the_arms_of_the_seed_paper_experiments(tmp_path: Path) -> None:
    """The AdaInf and Less is More experiments plan their arms (no work is done)."""
    proc = cli("run", "adainf-busi", "-o", str(tmp_path / "a"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for job in ("pretrain/real-simclr-resnet18-s0", "pretrain/mixedadd-simclr-resnet18-s0",
                "pretrain/mixedadd-w10-simclr-weak-resnet18-s0"):  # fmt: skip
        assert job in proc.stdout
    proc = cli("run", "lessismore-hippocampus", "-o", str(tmp_path / "l"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for job in ("curate/dhash6d", "pretrain/real-simclr-resnet10_3d-s0",
                "pretrain/real-dhash6d-simclr-resnet10_3d-s0"):  # fmt: skip
        assert job in proc.stdout
    assert not (tmp_path / "a").exists() and not (tmp_path / "l").exists()


@pytest.mark.slow
def test_lessismore_hippocampus_runs_end_to_end(tmp_path: Path) -> None:
    """The shipped Less is More experiment on a reduced budget (3 SimCLR steps, a few
    segmentation steps at one fraction): the curated pool is a 3D file of fewer train
    volumes (147 of 166 at the shipped threshold), the pruned arm pretrains on it, and the
    leaderboard compares it with the full pool."""
    results = tmp_path / "results"
    proc = cli(
        "run", "lessismore-hippocampus",
        "pretrain.steps=3", "pretrain.batch_size=4", "evaluate.fractions=[0.05]",
        "evaluate.seeds=[0,1]", "evaluate.baselines=[]",
        "evaluate.overrides={segmentation.epochs: 1, segmentation.batch_size: 4, "
        "segmentation.min_steps: 2, segmentation.encoder_lr: [0.001]}",
        "-o", str(results), "--no-progress",
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (curated,) = (results / "curated").glob("hippocampus-dhash6d-*.h5")
    with h5py.File(curated) as f:
        split = f["split"][:].astype(str)
        assert f["images"].ndim == 5  # whole volumes, for the 3D encoder
    with h5py.File(next((results / "data").glob("*.h5"))) as f:
        full = f["split"][:].astype(str)
    kept, n = int(np.sum(split == "train")), int(np.sum(full == "train"))
    assert 0 < kept < n and np.sum(split == "test") == np.sum(full == "test")
    pruned = json.loads(
        next((results / "pretrain").glob("real-dhash6d-*/pretrain.json")).read_text()
    )
    assert pruned["source"]["real"]["pool_size"] == kept
    assert pruned["config"]["curation"]["train_kept"] == kept
    board = json.loads((results / "leaderboard" / "leaderboard.json").read_text())
    row = next(r for r in board["rows"] if r["strategy"].startswith("real dhash6d"))
    assert row["pool_kept"] == f"{kept}/{n}"
    (contrast,) = [c for c in board["comparisons"] if c["reference_kind"] == "unpruned"]
    assert contrast["reference"] == "real / simclr / resnet10_3d"
    assert f"(pool {kept}/{n})" in (results / "leaderboard" / "LEADERBOARD.md").read_text()
    findings = proc.stdout.split("findings (generated from the leaderboard):")[1]
    assert "hippocampus-seg (dice), 0.05 of the labels (no scratch arm):" in findings
    assert "pruned (Less is More) vs full real pool at 0.05: " in findings


@pytest.mark.slow
def test_adainf_busi_runs_end_to_end(tmp_path: Path) -> None:
    """The shipped AdaInf experiment on a reduced budget: the near-real filter runs on
    the generated set (its counts recorded), and the real, vanilla-inflation and AdaInf
    arms reach the leaderboard with their labels."""
    results = tmp_path / "results"
    proc = cli(
        "run", "adainf-busi",
        "generator.train={steps: 2, batch_size: 4, channels: [8, 8, 8], checkpoint_every: 2}",
        "generator.samples=40", "generator.sample_steps=2", "generator.report=false",
        "pretrain.steps=3", "pretrain.batch_size=8",
        "evaluate.tasks=[{spec: busi-cls, dataset: busi, adapters: [linear]}]",
        "evaluate.fractions=[1.0]", "evaluate.seeds=[0,1]", "evaluate.baselines=[]",
        "-o", str(results), "--no-progress",
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    marker = json.loads((results / "jobs" / "generate__sample.json").read_text())
    near = marker["outputs"]["near_real_filter"]
    assert near["train_in"] == 40 and near["pruned"] is False
    assert near["train_kept"] == 40 - near["dropped_near_real"] == marker["outputs"]["samples"]
    board = json.loads((results / "leaderboard" / "leaderboard.json").read_text())
    assert {r["strategy"] for r in board["rows"]} == {
        "real / simclr / resnet18",
        "mixed+add / simclr / resnet18",
        "mixed+add x10 / simclr-weak / resnet18",
    }


def test_a_generator_too_small_for_a_matched_pool_fails_before_training(tmp_path: Path) -> None:
    """hippocampus-ref once sampled 120 volumes for a pool matched to 166 train volumes: the
    synthetic and mixed arms failed an hour in. The generator jobs now check the train split
    first: the run fails in seconds, names both numbers, and trains nothing."""
    results = tmp_path / "results"
    overrides = [
        "pretrain.pool_size=matched",
        "pretrain.sources=[synthetic]",
        "pretrain.methods=[simclr]",
        "generator.samples=8",
        "evaluate=null",
    ]
    exp = load_experiment(TINY, overrides)
    gen = {j.id: j for j in plan_jobs(exp, results.resolve()) if j.stage == "generate"}
    assert gen["generate/train"].run == {"matched_pool_samples": 8}
    assert gen["generate/sample"].run["matched_pool_samples"] == 8
    # without a matched pool nothing is checked
    plain = plan_jobs(load_experiment(TINY), results.resolve())
    assert all("matched_pool_samples" not in j.run for j in plain)

    proc = cli(
        "run", str(TINY), *overrides, "-o", str(results), "--no-progress", "--wandb", "disabled"
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "generator.samples is 8" in out and "train split of" in out, out
    failure = json.loads((results / "failures" / "generate__train.json").read_text())
    assert "set generator.samples to at least" in json.dumps(failure)
    assert not list((results / "generator").rglob("generator.json"))  # nothing trained
