"""Sweeps: nested subsets, records, resuming, baselines and one-line CLI errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmark.cli import main
from benchmark.cli.evaluate import format_sweep_summary, summarize_sweep
from benchmark.core.errors import DataError, OutputExistsError, SplitError, SSLBenchError
from benchmark.data.phantom import generate_phantom
from pretrain.checkpoint import save_encoder
from pretrain.encoders import create_encoder
from tasks.features import EncoderInputError, clear_memory_cache
from tasks.spec import load_spec
from tasks.sweep import SweepConfig, TaskData, parse_fractions, parse_seeds, run_sweep

RECORD_FIELDS = {
    "schema", "task", "adapter", "baseline", "fraction", "seed", "subset", "n_train", "n_val",
    "n_test", "primary_metric", "metrics", "val_metrics", "extra", "train_time_s",
    "eval_time_s", "encoder", "dataset", "fingerprint", "config", "provenance",
}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a 32 px phantom, a spec file and a ResNet-18 checkpoint."""
    root = tmp_path_factory.mktemp("sweep")
    generate_phantom(root / "ph.h5", n=48, size=32, seed=0)
    spec = {
        "name": "tiny",
        "version": "1",
        "dataset": "ph.h5",
        "convert": "sslbench data phantom -o ph.h5 -n 48 --size 32",
        "target": "labels",
        "image_size": 32,
        "adapters": ["linear", "knn"],
        "protocol": {
            "linear": {"C_grid": [0.01, 1.0]},
            "finetune": {"epochs": 1, "min_steps": 1, "lr_encoder": [1e-4, 1e-3]},
        },
        "metrics": ["auc", "balanced_accuracy", "macro_f1", "accuracy"],
        "primary_metric": "auc",
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(spec))
    (root / "tiny48.yaml").write_text(yaml.safe_dump({**spec, "image_size": 48}))
    (root / "tiny-seg.yaml").write_text(
        yaml.safe_dump({**spec, "target": "masks", "adapters": [], "protocol": {}})
    )
    torch.manual_seed(0)
    save_encoder(root / "ssl" / "encoder", create_encoder("resnet18", img_size=32), {})
    return root


def config(root: Path, out: Path, **kw: object) -> SweepConfig:
    base: dict[str, object] = {
        "encoder": str(root / "ssl" / "encoder"),
        "task": str(root / "tiny.yaml"),
        "fractions": [0.25, 0.5, 1.0],
        "seeds": [0, 1],
        "output": str(out),
        "baselines": ["scratch"],
        "data_root": str(root),
        "progress": False,
    }
    base.update(kw)
    return SweepConfig(**base)  # type: ignore[arg-type]


def test_parse_fractions_and_seeds() -> None:
    assert parse_fractions("0.01,0.1,1") == [0.01, 0.1, 1.0]
    for bad, message in [
        ("0,0.5", "outside"), ("0.5,1.5", "outside"), ("-0.1", "outside"), ("a", "not a number"),
        ("0.5,0.25", "strictly increasing"), ("0.5,0.5", "strictly increasing"), ("nan", "outside"),
    ]:  # fmt: skip
        with pytest.raises(SplitError, match=message):
            parse_fractions(bad)
    assert parse_seeds("0, 2") == [0, 2]
    with pytest.raises(SSLBenchError):
        parse_seeds("0,0")


def test_subsets_are_nested_stratified_and_grouped(root: Path) -> None:
    task = TaskData.load(load_spec(root / "tiny.yaml"), root)
    for seed in (0, 1, 2):
        cells = [task.cell(f, seed) for f in (0.1, 0.25, 0.5, 1.0)]
        for small, big in itertools.pairwise(cells):
            assert set(small.train) <= set(big.train) and set(small.val) <= set(big.val)
            assert np.array_equal(small.test, big.test)
        assert np.array_equal(cells[-1].test, task.pool("test"))  # never subsampled
        assert np.array_equal(cells[-1].train, task.pool("train"))
        for c in cells:
            assert set(np.unique(task.strata[c.train])) == {0, 1, 2}
            assert set(np.unique(task.strata[c.val])) == set(
                np.unique(task.strata[task.pool("val")])
            )
            chosen = set(task.patient_ids[c.train])  # whole patients only
            pool = task.pool("train")
            assert set(c.train) == set(pool[np.isin(task.patient_ids[pool], list(chosen))])


def test_segmentation_strata_are_mask_emptiness(root: Path) -> None:
    task = TaskData.load(load_spec(root / "tiny-seg.yaml"), root)
    import h5py

    with h5py.File(root / "ph.h5") as f:
        labels = f["labels"][()]
    assert np.array_equal(task.strata, (labels != 0).astype(np.int64))  # class 0 = no lesion
    assert task.num_classes == 2 and task.class_names == ["background", "lesion"]


def test_sweep_records_resume_and_mismatch(root: Path, tmp_path: Path) -> None:
    clear_memory_cache()  # same weights as other tests' checkpoints: start cold
    result = run_sweep(config(root, tmp_path))
    # 2 adapters x 3 fractions x 2 seeds x 2 encoders
    assert (result.ran, result.skipped) == (24, 0)
    for path, record in zip(result.paths, result.records, strict=True):
        assert path.exists() and set(record) >= RECORD_FIELDS
        assert path.name == f"frac{record['fraction']:g}_seed{record['seed']}.json"
        assert path.parent.parent.name == record["adapter"]["name"]
        assert record["task"]["name"] == "tiny" and record["task"]["version"] == "1"
        assert record["n_train"] == len(record["subset"]["train_indices"])
        assert record["n_test"] == 10 and record["config"]["fractions"] == [0.25, 0.5, 1.0]
        assert record["provenance"]["versions"]["torch"] and record["provenance"]["git_commit"]
        assert record["dataset"]["content_hash"] and record["encoder"]["hash"]
        assert set(record["metrics"]) == {"auc", "balanced_accuracy", "macro_f1", "accuracy"}
    ssl = [r for r in result.records if r["baseline"] is None]
    scratch = [r for r in result.records if r["baseline"] == "scratch"]
    assert len(ssl) == len(scratch) == 12
    assert scratch[0]["encoder"]["hash"].startswith("scratch:resnet18:")
    assert ssl[0]["encoder"]["metadata"]["weights_sha256"] == ssl[0]["encoder"]["hash"]
    # features: extracted once for the checkpoint, once per seed for scratch encoders
    misses = [r for r in result.records if r["extra"]["feature_cache"] == "miss"]
    assert sorted((r["baseline"] or "ssl", r["seed"]) for r in misses) == [
        ("scratch", 0),
        ("scratch", 1),
        ("ssl", 0),
    ]
    # nested train indices across fractions of one seed, in the records themselves
    for seed in (0, 1):
        rs = sorted(
            (r for r in ssl if r["seed"] == seed and r["adapter"]["name"] == "linear"),
            key=lambda r: r["fraction"],
        )
        for a, b in itertools.pairwise(rs):
            assert set(a["subset"]["train_indices"]) <= set(b["subset"]["train_indices"])
    again = run_sweep(config(root, tmp_path))
    assert (again.ran, again.skipped) == (0, 24) and again.records == result.records
    changed = config(root, tmp_path, overrides={"linear.C_grid": [0.1]})
    with pytest.raises(OutputExistsError, match="different adapter_config"):
        run_sweep(changed)
    changed.overwrite, changed.adapters, changed.baselines = True, ["linear"], []
    assert run_sweep(changed).ran == 6
    rows = summarize_sweep(again.records)
    assert len(rows) == 12 and rows[0]["auc"]["n"] == 2
    assert "auc (higher is better)" in format_sweep_summary(rows, "auc")


def test_supervised_baseline_reuses_identical_scratch_cell(root: Path, tmp_path: Path) -> None:
    cfg = config(root, tmp_path, adapters=["finetune"], fractions=[1.0], seeds=[0],
                 baselines=["scratch", "supervised"])  # fmt: skip
    result = run_sweep(cfg)
    assert (result.ran, result.reused) == (2, 1)
    sup = result.records[-1]
    assert sup["baseline"] == "supervised" and sup["reused_from"].endswith("frac1_seed0.json")
    assert sup["encoder"]["id"].startswith("supervised-resnet18")
    # one recipe for every arm: the same declared grid, the rate chosen on validation
    grids = [r["extra"]["lr_selection"]["grid"] for r in result.records]
    assert grids[0] == grids[1] == grids[2]
    assert all(r["extra"]["lr_encoder_used"] in grids[0] for r in result.records)
    only = run_sweep(config(root, tmp_path / "b", adapters=["knn"], fractions=[0.5], seeds=[2],
                            baselines=["supervised"]))  # fmt: skip
    assert [r["baseline"] for r in only.records] == [None, "supervised"]
    assert only.records[1]["adapter"]["name"] == "finetune" and only.records[1]["fraction"] == 1.0


def test_supervised_seeds_give_the_reference_its_own_seeds(root: Path, tmp_path: Path) -> None:
    """The supervised reference runs at ``supervised_seeds`` only; the compared arms keep
    every seed; the records say which seeds were asked for."""
    result = run_sweep(config(root, tmp_path, adapters=["knn"], fractions=[0.5], seeds=[0, 1],
                              baselines=["scratch", "supervised"], supervised_seeds=[1]))  # fmt: skip
    cells = sorted((r["baseline"] or "encoder", r["seed"]) for r in result.records)
    assert cells == [("encoder", 0), ("encoder", 1), ("scratch", 0), ("scratch", 1),
                     ("supervised", 1)]  # fmt: skip
    assert all(r["config"]["supervised_seeds"] == [1] for r in result.records)
    default = run_sweep(config(root, tmp_path / "d", adapters=["knn"], fractions=[0.5],
                               seeds=[0], baselines=[]))  # fmt: skip
    assert "supervised_seeds" not in default.records[0]["config"]


def test_sweep_input_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such checkpoint"):
        run_sweep(config(root, tmp_path, encoder=str(root / "missing")))
    with pytest.raises(EncoderInputError, match="multiple of 32"):
        run_sweep(config(root, tmp_path, task=str(root / "tiny48.yaml")))
    with pytest.raises(DataError, match="create it with: sslbench data phantom"):
        run_sweep(config(root, tmp_path, data_root=str(tmp_path)))
    with pytest.raises(SplitError, match="outside"):
        run_sweep(config(root, tmp_path, fractions=[0.0, 1.0]))
    with pytest.raises(SSLBenchError, match="predicts masks"):
        run_sweep(config(root, tmp_path, adapters=["knn"], task=str(root / "tiny-seg.yaml")))
    with pytest.raises(SSLBenchError, match="did you mean 'scratch'"):
        run_sweep(config(root, tmp_path, baselines=["scrath"]))
    with pytest.raises(SSLBenchError, match="did you mean 'patience'"):
        run_sweep(config(root, tmp_path, baselines=["supervised"], overrides={"patiense": 3}))


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["evaluate", *args, "--no-progress"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sslbench: error: ")
    return lines[0]


def test_cli_sweep_and_one_line_errors(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, task = str(root / "ssl" / "encoder"), str(root / "tiny.yaml")
    common = ["--task", task, "--data-root", str(root), "-o", str(tmp_path)]
    assert main(["evaluate", "--encoder", ckpt, *common, "--adapter", "knn", "--fractions",
                 "0.5,1", "--seeds", "0", "--baselines", "none", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "auc (higher is better)" in out and "2 cells: 2 run" in out
    summary = json.loads(next((tmp_path / "summaries" / "tiny").glob("*.json")).read_text())
    assert [r["fraction"] for r in summary["rows"]] == [0.5, 1.0]
    assert "fraction 1.5 is outside (0, 1]" in cli_error(
        capsys, "--encoder", ckpt, *common, "--fractions", "0.5,1.5"
    )
    assert "strictly increasing" in cli_error(
        capsys, "--encoder", ckpt, *common, "--fractions", "0.5,0.1"
    )
    assert "no such checkpoint" in cli_error(capsys, "--encoder", str(tmp_path / "x"), *common)
    nan_enc = create_encoder("resnet18", img_size=32)
    with torch.no_grad():
        next(nan_enc.parameters()).fill_(float("nan"))
    save_encoder(tmp_path / "nan", nan_enc, {})
    assert "non-finite feature values" in cli_error(
        capsys, "--encoder", str(tmp_path / "nan"), *common, "--adapter", "knn", "--baselines",
        "none", "--fractions", "1",
    )  # fmt: skip
    assert "fewer than the 3 classes" in cli_error(capsys, "--encoder", ckpt, *common)  # 1 % of 30
    assert main(["evaluate", "--list-tasks"]) == 0
    assert "busi-cls" in capsys.readouterr().out
