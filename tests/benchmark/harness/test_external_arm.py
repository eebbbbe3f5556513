"""The ``external`` baseline of an experiment: validation, job keys, and a run end to end."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from benchmark.harness.experiment import ExperimentError, resolve_experiment
from benchmark.harness.jobs import Job, plan_jobs
from benchmark.harness.runner import run_experiment

EXTERNAL = "evaluate/phantom-cls/external-resnet18-imagenet_rgb"
SCRATCH = "evaluate/phantom-cls/baselines-resnet18"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A timm resnet18 state dict (3 channels, random weights) standing in for ImageNet's."""
    torch.manual_seed(0)
    path = tmp_path / "imagenet_rgb.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def raw_experiment(**evaluate: Any) -> dict[str, Any]:
    return {
        "name": "external",
        "datasets": {"phantom": {"phantom": {"n": 48, "size": 32, "seed": 1}}},
        "evaluate": {
            "tasks": [
                {"spec": "phantom-cls", "dataset": "phantom", "adapters": ["linear"]},
            ],
            "fractions": [1.0],
            "seeds": [0],
            "baselines": ["scratch", "external"],
            "external": {"resnet18": "imagenet_rgb.pth"},
            **evaluate,
        },
    }


def jobs_of(raw: dict[str, Any], base: Path, results: Path) -> dict[str, Job]:
    exp = resolve_experiment(raw, "test", base)
    return {j.id: j for j in plan_jobs(exp, results)}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"external": {}}, "'external' needs its weights in evaluate.external"),
        ({"baselines": ["scratch"]}, "'external' is not in evaluate.baselines"),
        ({"external": {"resnet50": "imagenet_rgb.pth"}}, "unknown key 'resnet50'"),
        ({"external": {"resnet18": "missing.pth"}}, r"missing\.pth does not exist"),
        ({"external": {"resnet18": "timm:resnet50.a1_in1k"}}, "is a 'resnet50' model"),
        ({"external": {"resnet18": "random"}}, "'random' is the scratch baseline"),
        (
            {"external": {"resnet18": ["imagenet_rgb.pth", "sub/imagenet_rgb.pth"]}},
            "two weights are named 'imagenet_rgb'",
        ),
    ],
)
def test_bad_external_arms_fail_before_any_work(
    tmp_path: Path, weights: Path, edit: dict[str, Any], message: str
) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(weights, tmp_path / "sub" / weights.name)
    with pytest.raises(ExperimentError, match=message):
        resolve_experiment(raw_experiment(**edit), "test", tmp_path)


def test_external_jobs_are_keyed_by_the_weights_content(tmp_path: Path, weights: Path) -> None:
    results = tmp_path / "results"
    jobs = jobs_of(raw_experiment(), tmp_path, results)
    ext = jobs[EXTERNAL]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ext.config["init"] == {"kind": "file", "sha256": sha}
    assert ext.run["init"] == str(weights.resolve())  # the location stays out of the key
    assert ext.cells == [["linear", "external", 1.0, 0]]
    assert jobs[SCRATCH].config["baselines"] == ["scratch"]
    # the same file elsewhere: same keys; an edited file: only the external arm reruns
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(weights, moved / weights.name)
    assert {k: j.key for k, j in jobs_of(raw_experiment(), moved, results).items()} == {
        k: j.key for k, j in jobs.items()
    }
    state = torch.load(weights, weights_only=True)
    state["layer1.0.conv1.weight"] += 1
    torch.save(state, weights)
    edited = jobs_of(raw_experiment(), tmp_path, results)
    assert edited[EXTERNAL].key != ext.key
    assert edited[SCRATCH].key == jobs[SCRATCH].key
    # a timm tag is keyed by the tag (no download while planning)
    tagged = jobs_of(
        raw_experiment(external={"resnet18": "timm:resnet18.a1_in1k"}), tmp_path, results
    )
    job = tagged["evaluate/phantom-cls/external-resnet18-resnet18.a1_in1k"]
    assert job.config["init"] == {"kind": "timm", "tag": "resnet18.a1_in1k"}


def test_pretraining_from_external_weights_is_keyed_by_them(tmp_path: Path, weights: Path) -> None:
    """``pretrain.encoder_config.<encoder>.init``: SSL from external weights; the scratch
    baseline of that encoder stays random."""
    raw = raw_experiment(baselines=["scratch"], external={}, seeds=[0, 1])
    raw["pretrain"] = {
        "dataset": "phantom",
        "steps": 2,
        "batch_size": 8,
        "image_size": 32,
        "encoder_config": {"resnet18": {"init": weights.name}},
    }
    jobs = jobs_of(raw, tmp_path, tmp_path / "results")
    pre = jobs["pretrain/real-simclr-resnet18-s0"]
    assert pre.config["encoder_config"]["init"]["sha256"]
    assert pre.run["init"] == str(weights.resolve())
    assert "init" not in jobs[SCRATCH].config["architecture"]["args"]


def test_external_arm_runs_and_is_a_leaderboard_row(tmp_path: Path, weights: Path) -> None:
    exp = resolve_experiment(raw_experiment(), "test", tmp_path)
    results = tmp_path / "results"
    summary = run_experiment(exp, results, progress=False, wandb_mode="disabled")
    assert not summary.failed and EXTERNAL in summary.ran
    (path,) = (results / "evaluate").rglob("external-resnet18-*/frac1_seed0.json")
    record = json.loads(path.read_text())
    assert record["baseline"] == "external"
    enc = record["encoder"]
    assert enc["label"] == "external init (imagenet_rgb.pth) / resnet18"
    init = enc["metadata"]["init"]
    assert init["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert init["adapted"][0].startswith("conv1.weight: 3 -> 1")
    assert init["sha256"] in record["fingerprint"]["encoder_hash"]
    board = json.loads((results / "leaderboard" / "leaderboard.json").read_text())
    rows = {r["strategy"]: r["kind"] for r in board["rows"]}
    assert rows == {
        "scratch / resnet18": "scratch",
        "external init (imagenet_rgb.pth) / resnet18": "external",
    }
    # a rerun is a no-op
    again = run_experiment(exp, results, progress=False, wandb_mode="disabled")
    assert not again.ran


def test_sweep_external_source(weights: Path) -> None:
    """In a sweep, ``external`` needs ``init``; its encoder is the same for every seed, and
    a scratch source never carries ``init``."""
    from benchmark.core.errors import SSLBenchError
    from tasks.spec import load_spec
    from tasks.sweep import SweepConfig, plan_cells
    from tasks.taskdata import EncoderSource

    spec = load_spec("phantom-cls")
    source = EncoderSource.scratch("resnet18", {"in_chans": 1, "init": str(weights)})
    assert "init" not in source.args
    cfg = SweepConfig(
        encoder=None,
        task="phantom-cls",
        adapters=["linear"],
        fractions=[1.0],
        seeds=[0, 1],
        baselines=["external"],
    )
    with pytest.raises(SSLBenchError, match="external baseline needs its weights"):
        plan_cells(spec, source, cfg)
    cfg.init = str(weights)
    cells = plan_cells(spec, source, cfg)
    ext = cells[0].source
    assert len(cells) == 2 and all(c.source is ext for c in cells)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert ext.id == f"external-resnet18-imagenet_rgb-{sha[:8]}"
    assert ext.hash_for(0) == ext.hash_for(1) and ext.hash_for(0).endswith(sha)
    assert ext.describe(0)["label"] == "external init (imagenet_rgb.pth) / resnet18"
