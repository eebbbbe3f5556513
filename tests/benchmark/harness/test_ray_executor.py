"""The Ray executor on a local Ray instance: same results as the local executor, retries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.runner import run_experiment
from benchmark.harness.tracking import read_offline_run
from tests.conftest import one_thread

ray = pytest.importorskip("ray", reason="the Ray executor is an optional extra (sslbench[ray])")
from benchmark.harness.ray_executor import RayOptions  # noqa: E402

pytestmark = pytest.mark.slow

TINY = EXPERIMENT_DIR / "phantom-tiny.yaml"
# real and mixed SimCLR encoders: the generator, two pretraining runs and their sweeps
# (and the baselines) are independent enough to run two at a time
SMALLER = ["pretrain.sources=[real, mixed]", "pretrain.methods=[simclr]"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def records(results: Path) -> dict[tuple, dict]:
    out = {}
    for p in sorted((results / "evaluate").rglob("frac*_seed*.json")):
        r = json.loads(p.read_text())
        key = (
            r["task"]["name"],
            r["adapter"]["name"],
            r["encoder"]["id"],
            r["fraction"],
            r["seed"],
        )
        out[key] = r["metrics"]
    return out


def test_ray_executor_gives_the_local_leaderboard(tmp_path: Path, local_ray: None) -> None:
    """Two 1-CPU Ray tasks at a time give bit-identical records to the local executor run
    with one thread (CPU results depend on the number of threads, not on the executor)."""
    exp = load_experiment(TINY, SMALLER)
    with one_thread():
        local = run_experiment(exp, tmp_path / "local", progress=False, wandb_mode="disabled")
    assert not local.failed
    remote = run_experiment(
        exp,
        tmp_path / "ray",
        progress=False,
        wandb_mode="offline",
        executor="ray",
        ray_options=RayOptions(cpus_per_job=1),
    )
    assert not remote.failed, remote.failed
    assert sorted(remote.ran) == sorted(local.ran)
    mine, theirs = records(tmp_path / "ray"), records(tmp_path / "local")
    expected = sum(len(j.cells) for j in plan_jobs(exp, (tmp_path / "ray").resolve()))
    assert len(mine) == expected == 28
    assert mine == theirs
    lb_local, lb_ray = tmp_path / "local" / "leaderboard", tmp_path / "ray" / "leaderboard"
    assert (lb_ray / "leaderboard.csv").read_bytes() == (lb_local / "leaderboard.csv").read_bytes()
    # the workers logged their jobs to W&B (offline files under the shared results folder)
    runs = [read_offline_run(d) for d in sorted((tmp_path / "ray" / "wandb").glob("offline-run-*"))]
    by_type: dict[str, list[dict]] = {}
    for r in runs:
        by_type.setdefault(r["run"]["job_type"], []).append(r)
    assert set(by_type) == {"generate", "pretrain", "evaluate", "leaderboard"}
    assert len(by_type["pretrain"]) == 2 and all(
        "final_loss" in r["summary"] for r in by_type["pretrain"]
    )
    # a second run has nothing left to do
    again = run_experiment(exp, tmp_path / "ray", progress=False, executor="ray")
    assert again.ran == [] and not again.failed


def test_a_failing_job_is_retried_then_recorded(tmp_path: Path, local_ray: None) -> None:
    exp = load_experiment(
        TINY,
        [
            *SMALLER,
            "pretrain.sources=[real]",
            "generator=null",
            "evaluate.baselines=[]",
            "evaluate.fractions=[1.0]",
            "evaluate.seeds=[0]",
            "evaluate.overrides={segmentation.mode: bogus, segmentation.epochs: 1}",
        ],
    )
    summary = run_experiment(
        exp,
        tmp_path / "r",
        progress=False,
        wandb_mode="disabled",
        executor="ray",
        ray_options=RayOptions(retries=2),
    )
    assert list(summary.failed) == ["evaluate/phantom-seg/real-simclr-resnet18-s0"]
    failure = json.loads(next((tmp_path / "r" / "failures").glob("*.json")).read_text())
    assert failure["attempts"] == 3 and "bogus" in failure["error"] and failure["traceback"]
    assert len(records(tmp_path / "r")) == 1  # the classification sweep ran
