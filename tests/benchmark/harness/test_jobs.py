"""Job planning: keys that cover every input (and no path), components' own facts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmark.core.errors import SSLBenchError
from benchmark.core.hashing import digest
from benchmark.data.phantom import generate_phantom
from benchmark.harness.experiment import EXPERIMENT_DIR, load_experiment, resolve_experiment
from benchmark.harness.jobs import Job, _n_images, plan_jobs
from benchmark.harness.ledger import marker_path

TINY = EXPERIMENT_DIR / "phantom-tiny.yaml"
BASELINES = "evaluate/phantom-cls/baselines-resnet18"


def keys(overrides: list[str], results: Path) -> dict[str, str]:
    return {j.id: j.key for j in plan_jobs(load_experiment(TINY, overrides), results)}


@pytest.mark.parametrize(
    "edit",
    ["pretrain.image_size=48", "pretrain.encoder_config={resnet18: {drop_path_rate: 0.1}}"],
)
def test_baselines_rerun_when_their_encoder_changes(tmp_path: Path, edit: str) -> None:
    """The stale-baselines bug: the scratch encoder is built from ``pretrain.image_size``
    and ``encoder_config``, so its job key must change with them (it did not)."""
    base, edited = keys([], tmp_path), keys([edit], tmp_path)
    assert edited[BASELINES] != base[BASELINES]
    job = next(j for j in plan_jobs(load_experiment(TINY, [edit]), tmp_path) if j.id == BASELINES)
    args = job.config["architecture"]["args"]
    if "image_size" in edit:
        assert args["img_size"] == 48
    else:
        assert args["drop_path_rate"] == 0.1


def test_supervised_seeds_plan_fewer_reference_cells(tmp_path: Path) -> None:
    """``evaluate.supervised_seeds`` gives the full-label supervised reference its own
    seeds: only the baselines job changes (key and cells), every other key stays."""
    exp = load_experiment(TINY)
    assert exp.evaluate is not None and len(exp.evaluate.seeds) > 1
    jobs = {j.id: j for j in plan_jobs(exp, tmp_path)}
    fewer = {
        j.id: j
        for j in plan_jobs(load_experiment(TINY, ["evaluate.supervised_seeds=[1]"]), tmp_path)
    }
    changed = [i for i in jobs if jobs[i].key != fewer[i].key]
    assert (
        changed == [i for i in jobs if i.endswith("/baselines-resnet18")] and BASELINES in changed
    )
    sup = [c for c in jobs[BASELINES].cells if c[1] == "supervised"]
    assert [c[3] for c in sup] == exp.evaluate.seeds
    assert [c for c in fewer[BASELINES].cells if c[1] == "supervised"] == [
        [sup[0][0], "supervised", 1.0, 1]
    ]
    assert [c for c in fewer[BASELINES].cells if c[1] == "scratch"] == [
        c for c in jobs[BASELINES].cells if c[1] == "scratch"
    ]
    assert fewer[BASELINES].config["supervised_seeds"] == [1]
    assert "supervised_seeds" not in jobs[BASELINES].config


def test_every_job_key_is_the_hash_of_its_config(tmp_path: Path) -> None:
    """Data, generator and pretraining keys hash exactly their config (label aside); the
    locations a stage reads come from ``run`` or its dependencies, never the experiment."""
    for job in plan_jobs(load_experiment(TINY), tmp_path):
        if job.stage == "evaluate":
            assert "output" in job.run and "output" not in job.config
            continue
        cfg = {k: v for k, v in job.config.items() if k != "label"}
        assert job.key == digest(cfg, 12), job.id
        assert not any(isinstance(v, str) and str(tmp_path) in v for v in cfg.values())


def phantom_experiment(path: Path) -> dict[str, Any]:
    raw = {
        "name": "p",
        "datasets": {"mine": {"path": str(path)}},
        "pretrain": {"dataset": "mine", "steps": 2, "batch_size": 4, "image_size": 32},
    }
    return resolve_experiment(raw, "test", path.parent)


def plan_keys(exp: dict[str, Any], results: Path) -> dict[str, str]:
    return {j.id: j.key for j in plan_jobs(exp, results)}


def test_path_dataset_is_keyed_by_content_not_location(tmp_path: Path) -> None:
    """Bug: a ``path:`` dataset was keyed by its path; a replaced file reran nothing and
    a results folder could not move between machines."""
    a = generate_phantom(tmp_path / "a" / "d.h5", n=24, size=32, seed=0)
    b = tmp_path / "b" / "d.h5"
    b.parent.mkdir()
    shutil.copy(a, b)
    ka = plan_keys(phantom_experiment(Path(a)), tmp_path / "r")
    kb = plan_keys(phantom_experiment(b), tmp_path / "r")
    assert ka == kb  # moved: same keys all the way down
    generate_phantom(b, n=24, size=32, seed=1, overwrite=True)  # replaced in place
    kc = plan_keys(phantom_experiment(b), tmp_path / "r")
    assert kc["data/mine"] != ka["data/mine"]
    assert all(kc[j] != ka[j] for j in ka if j.startswith("pretrain/"))


def busi_experiment(src: Path) -> dict[str, Any]:
    raw = {
        "name": "b",
        "datasets": {"busi": {"convert": {"kind": "busi", "src": str(src), "size": 32}}},
    }
    return resolve_experiment(raw, "test", src.parent)


def test_converted_dataset_is_keyed_by_source_content(tmp_path: Path, shared_data: Path) -> None:
    """A converted dataset's key holds a fingerprint of its source folder, not its path."""
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(shared_data / "busi_raw_sample", one)
    shutil.copytree(shared_data / "busi_raw_sample", two)
    k1 = plan_keys(busi_experiment(one), tmp_path / "r")["data/busi"]
    assert plan_keys(busi_experiment(two), tmp_path / "r")["data/busi"] == k1
    victim = next(p for p in sorted(two.rglob("*.png")) if "_mask" not in p.name)
    victim.unlink()
    assert plan_keys(busi_experiment(two), tmp_path / "r")["data/busi"] != k1


def test_evaluation_estimates_are_the_adapters_training_passes(tmp_path: Path) -> None:
    """A training cell's estimate is its adapter's ``training_passes`` (every value of the
    learning-rate grid, the step floor) scaled by the encoder's ``cost``; the feature
    extraction is not. (It ignored the grid and the floor: about 4x low on BreastMNIST.)"""
    from pretrain.encoders import ENCODERS

    def estimate(options: str, arch: str = "resnet18", floor: int = 1) -> float:
        exp = load_experiment(
            TINY,
            [
                "evaluate.overrides={segmentation.epochs: 1, segmentation.batch_size: 8, "
                f"min_steps: {floor}, {options}}}",
                f"evaluate.baseline_encoders=[{arch}]",
            ],
        )
        job = f"evaluate/phantom-seg/baselines-{arch}"
        return next(j.estimate_s for j in plan_jobs(exp, tmp_path) if j.id == job)

    one, two, three = (estimate(f"segmentation.encoder_lr: {g}") for g in ([1], [1, 2], [1, 2, 3]))
    train = two - one  # the training part of one grid value
    assert train > 0 and three - two == pytest.approx(train)
    extraction = one - train
    assert extraction >= 0
    floor = estimate("segmentation.encoder_lr: [1]", floor=50)
    assert floor - extraction > 5 * train  # 50 steps a cell instead of one or two epochs
    cifar = estimate("segmentation.encoder_lr: [1]", "resnet18_cifar")
    ratio = ENCODERS.get("resnet18_cifar").cost / ENCODERS.get("resnet18").cost
    assert ratio > 1 and cifar - extraction == pytest.approx(ratio * train)


def test_generator_estimate_reads_the_converters_image_size(
    tmp_path: Path, shared_data: Path
) -> None:
    """MedMNIST files are 28 px: the DDPM estimate was that of 64 px (4x too long)."""
    from benchmark.harness.jobs import SPEED

    repo = Path(__file__).resolve().parents[3]
    exp = load_experiment("breastmnist-ref", base_dir=repo)
    job = next(j for j in plan_jobs(exp, tmp_path) if j.id == "generate/train")
    assert exp.generator is not None
    images = exp.generator.train["steps"] * exp.generator.train["batch_size"]
    assert job.estimate_s == pytest.approx(images / SPEED["ddpm_train_img_s"] * (28 / 64) ** 2)


def test_marker_path_of_a_job_and_of_its_id(tmp_path: Path) -> None:
    job = Job("pretrain/real-simclr-resnet18-s0", "pretrain", "k", [], {}, tmp_path)
    assert marker_path(tmp_path, job) == marker_path(tmp_path, job.id)
    assert marker_path(tmp_path, job).name == "pretrain__real-simclr-resnet18-s0.json"


def test_estimates_use_component_facts(tmp_path: Path) -> None:
    """An encoder's ``cost`` scales its pretraining estimate (no table in the harness)."""
    from pretrain.encoders import ENCODERS

    small = {j.id: j for j in plan_jobs(load_experiment(TINY), tmp_path)}
    big = {
        j.id: j
        for j in plan_jobs(load_experiment(TINY, ["pretrain.encoders=[resnet50]"]), tmp_path)
    }
    s = small["pretrain/real-simclr-resnet18-s0"].estimate_s
    b = big["pretrain/real-simclr-resnet50-s0"].estimate_s
    ratio = ENCODERS.get("resnet50").cost / ENCODERS.get("resnet18").cost
    assert b == pytest.approx(s * ratio)


@pytest.mark.parametrize("method", ["vicreg", "mocov2", "byol"])
def test_a_methods_cost_scales_its_pretraining_estimate(method: str, tmp_path: Path) -> None:
    """A method's ``cost`` (time per image relative to SimCLR) scales its estimate."""
    from pretrain.methods import METHODS

    exp = load_experiment(TINY, [f"pretrain.methods=[simclr, {method}]"])
    jobs = {j.id: j for j in plan_jobs(exp, tmp_path)}
    simclr = jobs["pretrain/real-simclr-resnet18-s0"].estimate_s
    other = jobs[f"pretrain/real-{method}-resnet18-s0"].estimate_s
    assert METHODS.get(method).cost != 1.0
    assert other == pytest.approx(simclr * METHODS.get(method).cost / METHODS.get("simclr").cost)


def test_mixing_modes_real_weight_and_pool_size_are_arms_with_their_own_keys(
    tmp_path: Path,
) -> None:
    """``pretrain.modes`` sweeps the mixed arms (``mixed0.5`` and ``mixedadd``); the
    default options stay out of the keys, so the replace arm keeps its old key; the real
    weight and the pool size enter the keys of the arms they change, and only those."""
    base = {j.id: j for j in plan_jobs(load_experiment(TINY), tmp_path)}
    edits = [
        "pretrain.modes=[replace, add]",
        "pretrain.real_weight=10",
        "pretrain.pool_size=matched",
    ]
    jobs = {j.id: j for j in plan_jobs(load_experiment(TINY, edits), tmp_path)}
    mixed = sorted(i for i in jobs if i.startswith("pretrain/mixed"))
    assert mixed == [
        "pretrain/mixed0.5-w10-simclr-resnet18-s0",
        "pretrain/mixed0.5-w10-vicreg-resnet18-s0",
        "pretrain/mixedadd-w10-simclr-resnet18-s0",  # no ratio: the pools set the share
        "pretrain/mixedadd-w10-vicreg-resnet18-s0",
    ]
    add = jobs["pretrain/mixedadd-w10-simclr-resnet18-s0"].config
    assert (add["mixing_mode"], add["real_weight"], add["pool_size"]) == ("add", 10.0, "matched")
    assert add["synthetic_ratio"] is None
    replace = jobs["pretrain/mixed0.5-w10-simclr-resnet18-s0"].config
    assert "mixing_mode" not in replace and replace["real_weight"] == 10.0
    assert jobs["pretrain/synthetic-simclr-resnet18-s0"].config["pool_size"] == "matched"
    assert "real_weight" not in jobs["pretrain/synthetic-simclr-resnet18-s0"].config
    real = "pretrain/real-simclr-resnet18-s0"
    assert "pool_size" not in jobs[real].config and jobs[real].key == base[real].key
    # the default mode alone plans exactly the jobs and keys of before
    same = {
        j.id: j.key
        for j in plan_jobs(load_experiment(TINY, ["pretrain.modes=[replace]"]), tmp_path)
    }
    assert same == {i: j.key for i, j in base.items()}


def test_strengths_are_an_axis_of_every_arm(tmp_path: Path) -> None:
    """``pretrain.strengths`` sweeps every arm; standard arms keep their labels and keys."""
    base = {j.id: j.key for j in plan_jobs(load_experiment(TINY), tmp_path)}
    jobs = {
        j.id: j
        for j in plan_jobs(
            load_experiment(TINY, ["pretrain.strengths=[standard, weak, 0.5]"]), tmp_path
        )
    }
    pre = sorted(i for i in jobs if i.startswith("pretrain/real-simclr"))
    assert pre == [
        "pretrain/real-simclr-resnet18-s0",
        "pretrain/real-simclr-s0.5-resnet18-s0",
        "pretrain/real-simclr-weak-resnet18-s0",
    ]
    assert jobs["pretrain/real-simclr-weak-resnet18-s0"].config["strength"] == "weak"
    assert jobs["pretrain/mixed0.5-simclr-s0.5-resnet18-s0"].config["strength"] == 0.5
    assert all(jobs[i].key == k for i, k in base.items() if i.startswith("pretrain/"))


def test_adainf_preset_adds_one_inflated_arm_per_ratio(tmp_path: Path) -> None:
    """``inflation: adainf`` adds the mixed arm in mode add with the real set weighted 10x
    and weak views (AdaInf's recipe) to an unchanged grid, per method / encoder / seed."""
    base = {j.id: j.key for j in plan_jobs(load_experiment(TINY), tmp_path)}
    jobs = {
        j.id: j for j in plan_jobs(load_experiment(TINY, ["pretrain.inflation=adainf"]), tmp_path)
    }
    added = sorted(set(jobs) - set(base))
    assert [i for i in added if i.startswith("pretrain/")] == [
        "pretrain/mixedadd-w10-simclr-weak-resnet18-s0",
        "pretrain/mixedadd-w10-vicreg-weak-resnet18-s0",
    ]
    cfg = jobs["pretrain/mixedadd-w10-simclr-weak-resnet18-s0"].config
    assert (cfg["mixing_mode"], cfg["real_weight"], cfg["strength"]) == ("add", 10.0, "weak")
    assert all(jobs[i].key == k for i, k in base.items() if i.startswith("pretrain/"))
    # each inflated encoder is evaluated like the others
    assert "evaluate/phantom-cls/mixedadd-w10-simclr-weak-resnet18-s0" in jobs


def test_curation_prunes_the_real_pool_of_every_real_using_arm(tmp_path: Path) -> None:
    """``pretrain.curation``: one ``curate/<label>`` job per curator; the real-using arms
    (here only AdaInf's mixed arm) run on the full and the pruned pool, the synthetic-only
    arm once; keys at the default (``[none]``) are those of before, and the curated arm's
    key names its curate job's key."""
    overrides = [
        "pretrain.sources=[synthetic]",
        "pretrain.inflation=adainf",
        "pretrain.methods=[simclr]",
    ]
    base = keys(overrides, tmp_path)
    cur = [*overrides, "pretrain.curation=[none, {method: dhash, scope: dataset}]"]
    jobs = {j.id: j for j in plan_jobs(load_experiment(TINY, cur), tmp_path)}
    assert {k: v for k, v in keys(cur, tmp_path).items() if k in base} == base
    assert "curate/dhash6d" in jobs
    pre = sorted(j for j in jobs if j.startswith("pretrain/"))
    added = [j for j in pre if j not in base]
    assert added == ["pretrain/mixedadd-w10-dhash6d-simclr-weak-resnet18-s0"]
    arm = jobs[added[0]]
    assert arm.config["curation"] == {"label": "dhash6d", "key": jobs["curate/dhash6d"].key}
    assert "curate/dhash6d" in arm.deps
    assert keys(["pretrain.curation=[none]"], tmp_path) == keys([], tmp_path)
    only = keys([*overrides, "pretrain.curation=[{method: dhash, scope: dataset}]"], tmp_path)
    assert "pretrain/mixedadd-w10-simclr-weak-resnet18-s0" not in only
    assert "pretrain/synthetic-simclr-resnet18-s0" in only


def test_exclude_leaves_runs_out_of_the_grid_and_keeps_the_other_keys(tmp_path: Path) -> None:
    """``pretrain.exclude`` (a CI matrix's exclude): a run is left out when every field of
    one entry matches it; the remaining runs keep their keys, and their evaluations are
    all that is planned for them."""
    grid = ["pretrain.seeds=[0, 1]", "pretrain.inflation=adainf"]
    base = keys(grid, tmp_path)
    exclude = [
        *grid,
        "pretrain.exclude=[{method: vicreg, source: mixed}, {seed: 1, method: vicreg},"
        " {seed: 1, source: mixed}]",
    ]
    jobs = keys(exclude, tmp_path)
    pre = sorted(j.removeprefix("pretrain/") for j in jobs if j.startswith("pretrain/"))
    assert pre == [
        "mixed0.5-simclr-resnet18-s0",
        "mixedadd-w10-simclr-weak-resnet18-s0",
        "real-simclr-resnet18-s0",
        "real-simclr-resnet18-s1",
        "real-vicreg-resnet18-s0",
        "synthetic-simclr-resnet18-s0",
        "synthetic-simclr-resnet18-s1",
        "synthetic-vicreg-resnet18-s0",
    ]
    assert all(base[j] == k for j, k in jobs.items())  # baselines included
    assert "evaluate/phantom-cls/mixed0.5-vicreg-resnet18-s0" in base
    assert "evaluate/phantom-cls/mixed0.5-vicreg-resnet18-s0" not in jobs
    # numbers match by value; the AdaInf arm by its mode or weight
    only = keys([*grid, "pretrain.exclude=[{real_weight: 10}, {ratio: 0.5}, {seed: 1}]"], tmp_path)
    assert sorted(j for j in only if j.startswith("pretrain/")) == [
        "pretrain/real-simclr-resnet18-s0",
        "pretrain/real-vicreg-resnet18-s0",
        "pretrain/synthetic-simclr-resnet18-s0",
        "pretrain/synthetic-vicreg-resnet18-s0",
    ]


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        ("[{methd: vicreg}]", "unknown exclude field 'methd'; did you mean 'method'"),
        ("[vicreg]", "entries are mappings"),
        ("[{}]", "entries are mappings"),
        ("[{method: byol}]", "[{'method': 'byol'}] match no run of the grid"),
        ("[{encoder: resnet18}]", "every run of the grid is excluded"),
    ],
)
def test_bad_exclude_entries_are_named(tmp_path: Path, exclude: str, message: str) -> None:
    with pytest.raises(SSLBenchError) as err:
        plan_jobs(load_experiment(TINY, [f"pretrain.exclude={exclude}"]), tmp_path)
    assert message in str(err.value)


REFERENCE_ARMS = {
    "busi-ref": [
        "mixed0.5-simclr-resnet18-s0",
        "mixedadd-w10-simclr-weak-resnet18-s0",
        "real-simclr-resnet18-s0",
        "real-simclr-resnet18-s1",
        "synthetic-simclr-resnet18-s0",
        "synthetic-simclr-resnet18-s1",
    ],
    "busi-masked": [
        "real-simclr-resnet18-s0",
        "real-spark-resnet18-s0",
        "real-vicreg-resnet18-s0",
    ],
    "hippocampus-ref": [
        "mixed0.5-simclr-resnet10_3d-s0",
        "real-dhash6d-simclr-resnet10_3d-s0",
        "real-simclr-resnet10_3d-s0",
        "real-vicreg-resnet10_3d-s0",
        "synthetic-simclr-resnet10_3d-s0",
    ],
    "breastmnist-ref": [
        "mixed0.5-simclr-resnet18-s0",
        "real-simclr-resnet18-s0",
        "real-simclr-resnet18-s1",
        "synthetic-simclr-resnet18-s0",
        "synthetic-simclr-resnet18-s1",
    ],
    "breastmnist-medmnist": [],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_ARMS))
def test_reference_experiments_plan_their_declared_arms(
    name: str, tmp_path: Path, shared_data: Path
) -> None:
    """The issue-22 reference grids: their pretraining arms, 5 evaluation seeds (3 for the
    MedMNIST-protocol check), the pool
    matched to the real train split wherever synthetic images are used, and (synthetic
    users) the memorisation filter on the sampled set."""
    repo = Path(__file__).resolve().parents[3]
    exp = load_experiment(name, base_dir=repo)
    jobs = plan_jobs(exp, tmp_path)
    arms = sorted(j.id.removeprefix("pretrain/") for j in jobs if j.stage == "pretrain")
    assert arms == REFERENCE_ARMS[name]
    assert exp.evaluate is not None
    # breastmnist-medmnist checks the task against a published single run (3 seeds)
    seeds = [0, 1, 2] if name == "breastmnist-medmnist" else [0, 1, 2, 3, 4]
    assert exp.evaluate.seeds == seeds
    for job in jobs:
        if job.stage == "pretrain" and job.config["synthetic"]:
            assert job.config["pool_size"] == "matched", job.id
    if exp.generator is not None:
        assert exp.generator.drop_near_real
        # a matched pool needs as many synthetic images as the real train split: sample at
        # least the whole dataset (hippocampus-ref once sampled 120 volumes for a 166-volume
        # train split, and its synthetic arms failed an hour into the run)
        assert exp.generator.samples >= _n_images(exp.datasets[exp.generator.dataset])
    if name == "busi-masked":  # SparK's smallest size at stride 32
        assert exp.pretrain is not None and exp.pretrain.image_size == 128
        assert {t.image_size for t in exp.evaluate.tasks} == {128}


def test_baseline_encoders_add_baseline_arms_and_keep_the_default_keys(tmp_path: Path) -> None:
    """``evaluate.baseline_encoders``: the scratch / supervised arms of each listed encoder
    (e.g. a supervised-only experiment comparing stems); the default arm keeps its key."""
    base = keys([], tmp_path)
    both = keys(["evaluate.baseline_encoders=[resnet18, resnet18_cifar]"], tmp_path)
    assert both[BASELINES] == base[BASELINES]
    assert "evaluate/phantom-cls/baselines-resnet18_cifar" in both
    assert (
        load_experiment(TINY).to_dict()
        == load_experiment(TINY, ["evaluate.baseline_encoders=null"]).to_dict()
    )
    with pytest.raises(SSLBenchError, match="unknown encoder 'resnet19'"):
        load_experiment(TINY, ["evaluate.baseline_encoders=[resnet19]"])
