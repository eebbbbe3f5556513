"""A grid split across runners, stage by stage, with concurrent shards (a Slurm job array).

The command lines are the ones of the README's Slurm recipe, with
``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`` filled in.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmark.harness.experiment import load_experiment
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.ledger import results_lock
from tests.benchmark.harness.test_runner import CLI, TINY, cli, env, records_of

pytestmark = pytest.mark.slow

SMALLER = ["pretrain.sources=[real, mixed]", "pretrain.methods=[simclr]"]


def base(results: Path) -> list[str]:
    return ["run", str(TINY), *SMALLER, "-o", str(results), "--no-progress"]


def shards(results: Path, stage: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    """``count`` array tasks of one stage, running at the same time."""
    procs = [
        subprocess.Popen(
            [
                *CLI,
                *base(results),
                "--wandb",
                "disabled",
                "--stage",
                stage,
                "--shard",
                f"{i}/{count}",
            ],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_stages_as_job_arrays_then_a_final_run_writes_the_leaderboard(tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = base(results)
    # evaluating before pretraining: nothing runs, and it says what is missing
    early = cli(*args, "--wandb", "disabled", "--stage", "evaluate", "--shard", "0/1")
    assert early.returncode == 1 and "not finished (run that stage first)" in early.stdout

    for stage, count in (("data", 1), ("generate", 1), ("pretrain", 2), ("evaluate", 3)):
        for proc in shards(results, stage, count):
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "0 failed" in proc.stdout
    assert not (results / "leaderboard").exists()  # shards write no leaderboard

    # while a shard holds the folder, a whole-grid run is refused
    with results_lock(results, shared=True):
        refused = cli(*args)
    assert refused.returncode == 2 and "another sslbench runner" in refused.stderr

    final = cli(*args, "--wandb", "disabled")
    jobs = plan_jobs(load_experiment(TINY, SMALLER), results.resolve())
    assert final.returncode == 0 and f" 0 ran, {len(jobs)} already done" in final.stdout
    expected = sum(len(j.cells) for j in jobs)
    assert len(records_of(results)) == expected
    index = json.loads((results / "index.json").read_text())
    assert len(index["records"]) == expected
    assert (results / "leaderboard" / "LEADERBOARD.md").exists()
