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
    assert {c["reference_kind"] for c in comparisons} == {"scratch", "real"}
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
