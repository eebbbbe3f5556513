"""Experiment files: loading, profiles, overrides and clear errors before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.harness.experiment import (
    EXPERIMENT_DIR,
    ExperimentError,
    experiment_hash,
    load_experiment,
)
from benchmark.harness.jobs import plan_jobs
from benchmark.harness.runner import run_experiment

TINY = EXPERIMENT_DIR / "phantom-tiny.yaml"


def write(tmp_path: Path, raw: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def tiny_raw() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_shipped_experiments_load(shared_data: Path) -> None:
    exp = load_experiment("phantom-tiny")
    assert exp.pretrain.methods == ["simclr", "vicreg"]
    assert exp.generator.train["steps"] == 4  # the file wins over the profile
    assert exp.evaluate.fractions == [0.5, 1.0]
    repo = Path(__file__).resolve().parents[3]
    assert (repo / "../shared/data/busi_256").resolve() == (shared_data / "busi_256").resolve()
    busi = load_experiment("busi-cpu", base_dir=repo)
    assert busi.generator.samples >= 2 * 499  # at least 2x the real pretraining pool
    assert busi.evaluate.fractions == [0.05, 0.1, 0.25, 0.5, 1.0]
    hippo = load_experiment("hippocampus-cpu", base_dir=repo)
    assert hippo.pretrain.encoders == ["resnet10_3d"]
    assert load_experiment("demo").evaluate.baselines == ["scratch", "supervised"]
    gpu = load_experiment("busi-gpu", base_dir=repo)  # the gpu-full profile underneath
    assert gpu.device == "auto" and gpu.pretrain.image_size == 224
    assert gpu.pretrain.encoders == ["resnet50"] and gpu.pretrain.nproc_per_node == 1
    assert load_experiment("busi-gpu", ["pretrain.nproc_per_node=4"], base_dir=repo)
    with pytest.raises(ExperimentError, match="does not divide across nproc_per_node"):
        load_experiment("busi-gpu", ["pretrain.nproc_per_node=3"], base_dir=repo)


def test_profile_defaults_and_overrides() -> None:
    exp = load_experiment(TINY, ["pretrain.steps=7", "evaluate.seeds=[3, 4]", "device=cpu"])
    assert exp.pretrain.steps == 7
    assert exp.evaluate.seeds == [3, 4]
    assert exp.pretrain.amp == "auto"  # from the built-in defaults
    base = load_experiment(TINY)
    assert experiment_hash(exp) != experiment_hash(base)
    assert experiment_hash(base) == experiment_hash(load_experiment(TINY))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(pretrian=r.pop("pretrain")), "did you mean 'pretrain'"),
        (lambda r: r["pretrain"].update(methods=["simclrr"]), "did you mean 'simclr'"),
        (lambda r: r["pretrain"].update(encoders=["resnet19"]), "unknown encoder 'resnet19'"),
        (lambda r: r["pretrain"].update(stpes=3), "did you mean 'steps'"),
        (lambda r: r["evaluate"].update(fractions=[1.0, 0.5]), "strictly increasing"),
        (lambda r: r["evaluate"].update(fractions=[0.0, 0.5]), "outside"),
        (lambda r: r["evaluate"]["tasks"][0].update(spec="phantom-clss"), "phantom-cls"),
        (lambda r: r["evaluate"]["tasks"][0].update(dataset="busi"), "not defined"),
        (lambda r: r["evaluate"]["overrides"].update({"finetune.epoch": 1}), "'epochs'"),
        (lambda r: r["evaluate"].update(baselines=["scrach"]), "did you mean 'scratch'"),
        (lambda r: r.update(datasets={"x": {"path": "missing.h5"}}), "does not exist"),
        (lambda r: r.update(profile="gpu-ful"), "did you mean 'gpu-full'"),
        (lambda r: r.pop("generator"), "need a 'generator'"),
        (lambda r: r["evaluate"].update(supervised_seeds=[]), "supervised_seeds: seeds must be"),
        (lambda r: r["pretrain"].update(modes=["inflate"]), "unknown mixing mode 'inflate'"),
        (lambda r: r["pretrain"].update(modes=[]), "give distinct modes"),
        (lambda r: r["pretrain"].update(real_weight=0), "real_weight: must be a number > 0"),
        (lambda r: r["pretrain"].update(pool_size="half"), "pool_size must be a positive int"),
        (lambda r: r["pretrain"].update(inflation="adainff"), "did you mean 'adainf'"),
        (lambda r: r["pretrain"].update(strengths=["strong"]), "strengths: expected one of"),
        (
            lambda r: (
                r.pop("generator"),
                r["pretrain"].update(sources=["real"], inflation="adainf"),
            ),
            "inflation need a 'generator'",
        ),
        (lambda r: r["evaluate"].update(supervised_seeds=[0, 0]), "distinct"),
        (lambda r: r["pretrain"].update(curation=[{"method": "dhsh"}]), "did you mean 'dhash'"),
        (
            lambda r: r["pretrain"].update(curation=["none", {"threshold": 70}]),
            "curation: curator 'dhash': threshold must be an int in",
        ),
        (lambda r: r["pretrain"].update(curation=["none", None]), "curation: give distinct"),
        (
            lambda r: r["pretrain"].update(
                curation=[{"scope": "dataset"}, {"scope": "dataset", "min_corr": 0.9}]
            ),
            "curation: give distinct",
        ),
        (lambda r: r["pretrain"].update(curation=[3]), "curation: entries are none or"),
        (
            lambda r: r["pretrain"].update(sources=["synthetic"], curation=["dhash"]),
            "no source in ['synthetic'] uses it",
        ),
        (
            lambda r: r["generator"].update(drop_near_real={"threshold": -1}),
            "drop_near_real: curator 'dhash': threshold must be",
        ),
        (lambda r: r["generator"].update(drop_near_real="yes"), "drop_near_real: false, true"),
        (
            lambda r: r["evaluate"].update(baselines=["scratch"], supervised_seeds=[0]),
            "'supervised' is not in",
        ),
    ],
)
def test_bad_experiments_fail_with_a_clear_message(tmp_path: Path, edit, message: str) -> None:
    raw = tiny_raw()
    edit(raw)
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_experiment(write(tmp_path, raw))


def test_missing_source_dataset_names_the_path(tmp_path: Path) -> None:
    raw = tiny_raw()
    raw["datasets"] = {"phantom": {"convert": {"kind": "busi", "src": "nowhere/busi"}}}
    with pytest.raises(ExperimentError, match="nowhere/busi does not exist"):
        load_experiment(write(tmp_path, raw), base_dir=tmp_path)


def test_bad_override_syntax() -> None:
    with pytest.raises(ExperimentError, match="KEY=VALUE"):
        load_experiment(TINY, ["pretrain.steps"])


def test_results_folder_of_another_experiment_is_refused(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "experiment.json").write_text('{"name": "other", "hash": "x"}')
    before = sorted(results.rglob("*"))
    with pytest.raises(ExperimentError, match="holds results of experiment 'other'"):
        run_experiment(load_experiment(TINY), results, progress=False)
    assert sorted(results.rglob("*")) == before  # nothing started
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(ExperimentError, match="not an sslbench results folder"):
        run_experiment(load_experiment(TINY), stray, progress=False)


def test_job_keys_change_only_downstream_of_an_edit(tmp_path: Path) -> None:
    base = {j.id: j.key for j in plan_jobs(load_experiment(TINY), tmp_path)}
    edited = {j.id: j.key for j in plan_jobs(load_experiment(TINY, ["pretrain.steps=4"]), tmp_path)}
    changed = {k for k in base if base[k] != edited[k]}
    assert changed and all(k.startswith(("pretrain/", "evaluate/")) for k in changed)
    assert base["data/phantom"] == edited["data/phantom"]
    assert base["generate/sample"] == edited["generate/sample"]
    assert (
        edited["evaluate/phantom-cls/baselines-resnet18"]
        == base["evaluate/phantom-cls/baselines-resnet18"]
    )


def test_typed_experiment_round_trips_and_keeps_its_hash() -> None:
    """The typed experiment saves the same mapping it was resolved from (hash included)."""
    from benchmark.harness.experiment import Experiment

    exp = load_experiment(TINY)
    assert exp.pretrain is not None and exp.evaluate is not None
    assert exp.evaluate.tasks[0].spec == "phantom-cls"
    again = Experiment.from_dict(yaml.safe_load(yaml.safe_dump(exp.to_dict())))
    assert again == exp
    assert experiment_hash(again) == experiment_hash(exp)
    # an unset supervised_seeds is left out of the mapping (older experiments keep their
    # hash); a set one round-trips
    assert "supervised_seeds" not in exp.to_dict()["evaluate"]
    fewer = load_experiment(TINY, ["evaluate.supervised_seeds=[1]"])
    assert fewer.evaluate is not None and fewer.evaluate.supervised_seeds == [1]
    assert Experiment.from_dict(yaml.safe_load(yaml.safe_dump(fewer.to_dict()))) == fewer
    assert experiment_hash(fewer) != experiment_hash(exp)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("evaluate.seeds=[0]", "evaluate.seeds"),
        ("evaluate.statistics.resamples=100", "evaluate.statistics.resamples"),
        ("evaluate.statistics.confidence=1.5", "evaluate.statistics.confidence"),
        ("evaluate.statistics={draws: 5}", "'draws'"),
    ],
)
def test_statistics_that_cannot_be_honest_are_refused(override: str, key: str) -> None:
    """A paired comparison with one seed, or a bootstrap of < 200 resamples, is an error
    naming the key, before any work."""
    with pytest.raises(ExperimentError, match=key):
        load_experiment(TINY, [override])
    ok = load_experiment(TINY, ["evaluate.statistics.resamples=500"])
    assert ok.evaluate is not None and ok.evaluate.statistics == {
        "resamples": 500,
        "confidence": 0.95,
    }
