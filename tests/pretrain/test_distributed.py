"""Data-parallel pretraining: sharded batches and views, and real ``torchrun`` runs on gloo."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.augment import ViewRecipe, make_views
from pretrain.distributed import DistInfo, torchrun_command
from pretrain.sources import create_source
from pretrain.train import Trainer, pretrain
from tests.conftest import one_thread
from tests.pretrain.test_train import config, tiny_file, weights


def test_source_rows_are_the_slices_of_the_global_batch(tmp_path: Path) -> None:
    real = tiny_file(tmp_path / "real.h5", n=40)
    syn = tiny_file(tmp_path / "syn.h5", n=30)
    src = create_source(
        "mixed", real=real, synthetic=syn, synthetic_ratio=0.25, batch_size=8, seed=3
    )
    for step in (0, 1, 7):
        full = src.batch(step)
        parts = [src.batch(step, DistInfo(r, 4).rows(8)) for r in range(4)]
        assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("dims", [2, 3])
def test_sharded_views_equal_the_global_views(dims: int) -> None:
    """Each rank's views are its rows of the views of the global batch (noise included)."""
    images = torch.rand(8, 1, *([12] * dims))
    recipe = ViewRecipe(size=8, noise_p=0.7, blur_p=0.5, gamma_p=0.5, rotate_p=0.5)
    recipes = [recipe, ViewRecipe(size=6, noise_p=1.0)]
    full = make_views(images, recipes, torch.Generator().manual_seed(5))
    for world in (2, 4):
        per = 8 // world
        shards = [
            make_views(
                images[r * per : (r + 1) * per],
                recipes,
                torch.Generator().manual_seed(5),
                shard=(r, world),
            )
            for r in range(world)
        ]
        for v in range(len(recipes)):  # (blur convolutions of other batch sizes: ~1 ulp)
            assert torch.allclose(torch.cat([s[v] for s in shards]), full[v], atol=1e-6, rtol=0)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """The single-process reference runs with the 1 thread of each torchrun rank."""
    with one_thread():
        yield


def torchrun(tmp_path: Path, nproc: int, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``sslbench pretrain`` under a real torchrun with ``nproc`` CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = torchrun_command(nproc, tmp_path / "run.yaml", out, "--no-progress", *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def write_config(tmp_path: Path, **kw) -> dict:
    import yaml

    cfg = config(tmp_path, **kw).to_dict()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path: Path, single_thread: None) -> None:
    """MoCo on a ViT (no batch norm anywhere; batch norm is per rank on CPU): 2 gloo ranks,
    whose memory banks are filled with the keys gathered from both, give the losses and
    weights of one process on the same global batch."""
    cfg = write_config(
        tmp_path,
        method="moco",
        encoder="vit_tiny",
        steps=4,
        batch_size=8,
        checkpoint_every=0,
        log_every=1,
        method_config={"memory_bank_size": 16},
    )
    single = pretrain(config(tmp_path, **cfg), tmp_path / "single", progress=False)
    proc = torchrun(tmp_path, 2, tmp_path / "ddp")
    assert proc.stdout.count("encoder checkpoint:") == 1  # rank 0 alone reports
    assert np.allclose(losses(tmp_path / "ddp"), losses(tmp_path / "single"), rtol=1e-4)
    meta = json.loads((tmp_path / "ddp/pretrain.json").read_text())
    assert meta["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batch_norm": False}
    assert meta["images_seen"] == single.summary["images_seen"] == 32
    w1, w2 = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4, rtol=1e-3), k


@pytest.mark.slow
def test_resume_with_a_different_number_of_ranks(tmp_path: Path, single_thread: None) -> None:
    """Two steps in one process, the rest under torchrun with 2 ranks: the run ends
    where an uninterrupted single-process run ends (DINO: multi-crop views, a momentum
    teacher and a centre averaged over the ranks)."""
    kw = dict(
        method="dino",
        encoder="vit_tiny",
        steps=4,
        batch_size=8,
        checkpoint_every=2,
        log_every=1,
        # no batch norm anywhere (the small recipe's head batch norm is per rank on CPU,
        # where torch has no SyncBatchNorm, so 2 ranks x 4 images != 1 x 8 there)
        method_config={"head_batch_norm": False},
    )
    write_config(tmp_path, **kw)
    ref = pretrain(config(tmp_path, **kw), tmp_path / "ref", progress=False)
    t = Trainer(config(tmp_path, **kw), tmp_path / "split")
    (tmp_path / "split").mkdir()
    for record in t.run(progress=False):
        if record["step"] == 3:  # state saved at step 2, step 3 lost
            break
    del t
    torchrun(tmp_path, 2, tmp_path / "split", "--resume")
    meta = json.loads((tmp_path / "split/pretrain.json").read_text())
    assert meta["distributed"]["world_size"] == 2
    assert np.allclose(losses(tmp_path / "split"), losses(ref.out_dir), rtol=1e-4)
    w1, w2 = weights(ref.out_dir), weights(tmp_path / "split")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4, rtol=1e-3), k


@pytest.mark.slow
def test_runner_launches_pretraining_under_torchrun(tmp_path: Path) -> None:
    """``pretrain.nproc_per_node: 2`` in an experiment: the runner's pretraining job is a
    real torchrun with 2 gloo processes, and the grid goes on with its encoder."""
    from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment
    from benchmark.harness.runner import run_experiment

    exp = load_experiment(
        EXPERIMENT_DIR / "phantom-tiny.yaml",
        [
            "pretrain.sources=[real]",
            "pretrain.methods=[simclr]",
            "pretrain.nproc_per_node=2",
            "generator=null",
            "evaluate.tasks=[{spec: phantom-cls, dataset: phantom, adapters: [linear], "
            "image_size: 32}]",
            "evaluate.fractions=[1.0]",
            "evaluate.seeds=[0]",
            "evaluate.baselines=[]",
        ],
    )
    summary = run_experiment(exp, tmp_path / "r", progress=False, wandb_mode="disabled")
    assert not summary.failed, summary.failed
    marker = json.loads((tmp_path / "r/jobs/pretrain__real-simclr-resnet18-s0.json").read_text())
    assert marker["outputs"]["world_size"] == 2
    run = next((tmp_path / "r/pretrain").iterdir())
    meta = json.loads((run / "pretrain.json").read_text())
    assert meta["distributed"]["world_size"] == 2 and meta["images_seen"] == 3 * 8
    assert (tmp_path / "r/leaderboard/LEADERBOARD.md").exists()
