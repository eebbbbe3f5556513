"""The job graph of an experiment: convert -> generate -> pretrain -> evaluate.

Every job's output lives under a path keyed by the hash of everything that
produced it (its resolved settings and the keys of its inputs), so a rerun
finds finished work, an edited experiment reruns only what changed, and two
experiments never mix outputs::

    RESULTS/data/<dataset>-<key>.h5
    RESULTS/generator/<kind>-<key>/            (ddpm training run)
    RESULTS/synthetic/<kind>-<key>.h5          (+ <kind>-<key>-report/)
    RESULTS/pretrain/<strategy>-<key>/         (encoder/ checkpoint)
    RESULTS/evaluate/<task>-<key>/records/...  (one JSON record per cell)
    RESULTS/cache/features/                    (frozen features, shared)

:mod:`benchmark.harness.runner` executes the jobs in order; this module only plans
them and knows how to run each kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.core.hashing import digest
from benchmark.core.io import read_json

#: Rough CPU speeds (2 cores, 64 px) used by ``--dry-run`` estimates; ``segment_img_s`` and
#: ``finetune_img_s`` calibrated on the busi-cpu reference run (13.5 min per 15-cell
#: segmentation sweep, about 8 min per fine-tuning sweep, uncontended).
SPEED = {
    "convert_s_per_image": 0.004,
    "phantom_s_per_image": 0.01,
    "ddpm_train_img_s": 13.0,
    "ddim50_img_s": 0.8,
    "pretrain_img_s": 80.0,
    "extract_img_s": 400.0,
    "probe_fit_s": 0.3,
    "finetune_img_s": 46.0,
    "segment_img_s": 27.0,
    "report_s": 30.0,
}
ENCODER_COST = {"resnet50": 3.0, "vit_small": 2.5, "efficientnet_b0": 1.5, "vit_tiny_p8": 2.0}


@dataclass
class Job:
    """One unit of the graph.

    Attributes:
        id: Human-readable unique id, e.g. ``pretrain/real-simclr-resnet18-s0``.
        stage: ``data``, ``generate``, ``pretrain`` or ``evaluate``.
        key: Hash of the job's settings and its inputs' keys.
        deps: Ids of jobs whose outputs it reads.
        config: Resolved settings (saved with the job and logged to W&B).
        out: Main output path.
        cells: Planned evaluation cells ``(adapter, baseline, fraction, seed)``.
        estimate_s: Rough CPU time estimate.
    """

    id: str
    stage: str
    key: str
    deps: list[str]
    config: dict[str, Any]
    out: Path
    cells: list[list[Any]] = field(default_factory=list)
    estimate_s: float = 0.0

    @property
    def slug(self) -> str:
        return self.id.replace("/", "__")


def _area(size: int | None, dims: int = 2) -> float:
    """Pixels (voxels) of an input relative to a 64 x 64 image: the cost unit of SPEED."""
    return float((size or (64 if dims == 2 else 48)) ** dims) / 64.0**2


def _dims(entry: dict[str, Any] | None) -> int:
    """Spatial dimensions of a dataset entry (for estimates)."""
    if not entry:
        return 2
    if "phantom" in entry:
        return int(entry["phantom"].get("dims") or 2)
    if "convert" in entry:
        return 3 if entry["convert"]["kind"] in ("msd", "nifti") else 2
    try:
        import h5py

        with h5py.File(entry["path"], "r") as f:
            return int(f["images"].ndim) - 2
    except (OSError, KeyError):
        return 2


def _n_images(entry: dict[str, Any]) -> int:
    """Rough number of images of a dataset entry (for estimates)."""
    if "phantom" in entry:
        return int(entry["phantom"].get("n") or 240)
    if "path" in entry:
        try:
            import h5py

            with h5py.File(entry["path"], "r") as f:
                return int(f["images"].shape[0])
        except (OSError, KeyError):
            return 500
    src = Path(entry["convert"]["src"])
    if entry["convert"]["kind"] in ("msd", "nifti"):
        return len(list((src / "imagesTr").glob("*.nii*"))) or 800
    if src.is_dir():
        return sum(1 for p in src.rglob("*.png") if "_mask" not in p.name) or 800
    return 800


def dataset_size(entry: dict[str, Any]) -> int | None:
    """The image side of a dataset entry, if it is known before converting."""
    opts = entry.get("phantom") or entry.get("convert") or {}
    return int(opts["size"]) if "size" in opts else None


def strategy_label(source: str, ratio: float | None, method: str, encoder: str, seed: int) -> str:
    """``mixed0.5-simclr-resnet18-s0``."""
    src = f"mixed{ratio:g}" if source == "mixed" else source
    return f"{src}-{method}-{encoder}-s{seed}"


def plan_jobs(exp: dict[str, Any], results: Path) -> list[Job]:
    """All jobs of the resolved experiment ``exp``, in a valid run order."""
    from benchmark.data.converters import CONVERTERS

    jobs: list[Job] = []
    data: dict[str, Job] = {}
    for name, entry in exp["datasets"].items():
        kind = next(iter(entry))
        cfg = {"dataset": name, **entry}
        if kind == "convert":
            cfg["converter_version"] = CONVERTERS.get(entry["convert"]["kind"]).version
        key = digest(cfg, 12)
        n = _n_images(entry)
        est = (
            0.0
            if kind == "path"
            else n * SPEED[f"{'phantom' if kind == 'phantom' else 'convert'}_s_per_image"]
        )
        out = Path(entry["path"]) if kind == "path" else results / "data" / f"{name}-{key}.h5"
        data[name] = Job(f"data/{name}", "data", key, [], cfg, out, estimate_s=est)
    jobs += data.values()

    synth: Job | None = None
    gen = exp["generator"]
    if gen is not None:
        deps, train_key = [], None
        gen_entry = exp["datasets"][gen["dataset"]] if gen["dataset"] else None
        size = gen["train"].get("size") or (dataset_size(gen_entry) if gen_entry else None)
        gdims = _dims(gen_entry)
        if gen["kind"] == "ddpm" and gen["checkpoint"]:
            meta = read_json(Path(gen["checkpoint"]) / "generator.json") or {}
            train_key = digest({"checkpoint": meta.get("generator_sha256")}, 12)
            deps = [data[gen["dataset"]].id]
        elif gen["kind"] == "ddpm":
            dj = data[gen["dataset"]]
            tcfg = {"kind": "ddpm", "data": dj.key, "train": gen["train"], "device": exp["device"]}
            train_key = digest({**tcfg, "device": None}, 12)
            steps = int(gen["train"].get("steps", 2000))
            bs = int(gen["train"].get("batch_size", 16))
            est = steps * bs / SPEED["ddpm_train_img_s"] * _area(size, gdims)
            train = Job(
                "generate/train",
                "generate",
                train_key,
                [dj.id],
                tcfg,
                results / "generator" / f"ddpm-{train_key}",
                estimate_s=est,
            )
            jobs.append(train)
            deps = [train.id]
        elif gen["dataset"]:
            deps = [data[gen["dataset"]].id]
        scfg = {
            "kind": gen["kind"],
            "generator": train_key,
            "like": data[gen["dataset"]].key if gen["dataset"] else None,
            "options": gen["options"],
            "samples": gen["samples"],
            "sample_steps": gen["sample_steps"] if gen["kind"] == "ddpm" else None,
            "seed": gen["seed"],
            "report": gen["report"],
        }
        skey = digest(scfg, 12)
        per = gen["sample_steps"] / 50 / SPEED["ddim50_img_s"] if gen["kind"] == "ddpm" else 0.01
        est = gen["samples"] * per * _area(size, gdims) + (
            SPEED["report_s"] if gen["report"] else 0
        )
        synth = Job(
            "generate/sample",
            "generate",
            skey,
            deps,
            scfg,
            results / "synthetic" / f"{gen['kind']}-{skey}.h5",
            estimate_s=est,
        )
        jobs.append(synth)

    encoders: dict[str, Job] = {}
    pre = exp["pretrain"]
    if pre is not None:
        dj = data[pre["dataset"]]
        for source in pre["sources"]:
            ratios: list[float | None] = list(pre["ratios"]) if source == "mixed" else [None]
            for ratio in ratios:
                for method in pre["methods"]:
                    for encoder in pre["encoders"]:
                        for seed in pre["seeds"]:
                            label = strategy_label(source, ratio, method, encoder, seed)
                            cfg = {
                                "method": method,
                                "encoder": encoder,
                                "source": source,
                                "synthetic_ratio": ratio if ratio is not None else 0.5,
                                "steps": pre["steps"],
                                "batch_size": pre["batch_size"],
                                "image_size": pre["image_size"],
                                "seed": seed,
                                "method_config": pre["method_config"].get(method, {}),
                                "encoder_config": pre["encoder_config"].get(encoder, {}),
                                "amp": pre["amp"],
                                "checkpoint_every": pre["checkpoint_every"],
                                "real": dj.key if source != "synthetic" else None,
                                "synthetic": synth.key if synth and source != "real" else None,
                            }
                            key = digest(cfg, 12)
                            deps = [dj.id] + ([synth.id] if synth and source != "real" else [])
                            est = (
                                pre["steps"]
                                * pre["batch_size"]
                                / SPEED["pretrain_img_s"]
                                * _area(pre["image_size"], _dims(exp["datasets"][pre["dataset"]]))
                                * ENCODER_COST.get(encoder, 1.0)
                            )
                            job = Job(
                                f"pretrain/{label}",
                                "pretrain",
                                key,
                                deps,
                                cfg,
                                results / "pretrain" / f"{label}-{key}",
                                estimate_s=est,
                            )
                            job.config["label"] = label
                            encoders[label] = job
        jobs += encoders.values()

    ev = exp["evaluate"]
    if ev is not None:
        jobs += _plan_evaluation(exp, results, data, encoders)
    return jobs


def _plan_evaluation(
    exp: dict[str, Any], results: Path, data: dict[str, Job], encoders: dict[str, Job]
) -> list[Job]:
    from tasks.spec import load_spec
    from tasks.sweep import supervised_adapter

    ev, pre = exp["evaluate"], exp["pretrain"]
    jobs = []
    archs = list(pre["encoders"]) if pre else ["resnet18"]
    for task in ev["tasks"]:
        spec = load_spec(task["spec"])
        dj = data[task["dataset"]] if task["dataset"] else None
        tcfg = {
            "spec": task["spec"],
            "spec_version": spec.version,
            "dataset": dj.key if dj else None,
            "image_size": task["image_size"],
            "adapters": task["adapters"],
            "overrides": ev["overrides"],
        }
        tkey = digest(tcfg, 12)
        out = results / "evaluate" / f"{spec.name}-{tkey}"
        size = task["image_size"] or spec.image_size
        n = _n_images(exp["datasets"][task["dataset"]]) if task["dataset"] else 500
        n_train = 0.65 * n
        dims = _dims(exp["datasets"][task["dataset"]] if task["dataset"] else None)
        base = {
            **tcfg,
            "data": task["dataset"],
            "fractions": ev["fractions"],
            "seeds": ev["seeds"],
            "output": str(out),
        }

        def cell_cost(
            adapter: str,
            fraction: float,
            target: str = spec.target,
            n_train: float = n_train,
            size: int = size,
            dims: int = dims,
        ) -> float:
            return _cell_cost(ev["overrides"], adapter, fraction, target, n_train, size, dims)

        def cells(adapters: list[str], baseline: str | None) -> list[list[Any]]:
            return [
                [a, baseline, f, s] for s in ev["seeds"] for a in adapters for f in ev["fractions"]
            ]

        for label, pj in encoders.items():
            c = cells(task["adapters"], None)
            est = n / SPEED["extract_img_s"] + sum(cell_cost(a, f) for a, _, f, _ in c)
            deps = [pj.id] + ([dj.id] if dj else [])
            jobs.append(
                Job(
                    f"evaluate/{spec.name}/{label}",
                    "evaluate",
                    digest({**tcfg, "encoder": pj.key}, 12),
                    deps,
                    {**base, "encoder": label, "baselines": []},
                    out,
                    cells=c,
                    estimate_s=est,
                )
            )
        if ev["baselines"]:
            for arch in archs:
                c = cells(task["adapters"], "scratch") if "scratch" in ev["baselines"] else []
                if "supervised" in ev["baselines"]:
                    sup = supervised_adapter(spec)
                    c += [[sup, "supervised", 1.0, s] for s in ev["seeds"]]
                est = sum(cell_cost(a, f) + n / SPEED["extract_img_s"] for a, _, f, _ in c)
                jobs.append(
                    Job(
                        f"evaluate/{spec.name}/baselines-{arch}",
                        "evaluate",
                        digest({**tcfg, "baselines": ev["baselines"], "arch": arch}, 12),
                        [dj.id] if dj else [],
                        {**base, "architecture": arch, "baselines": ev["baselines"]},
                        out,
                        cells=c,
                        estimate_s=est,
                    )
                )
    return jobs


def _cell_cost(
    overrides: dict[str, Any],
    adapter: str,
    fraction: float,
    target: str,
    n_train: float,
    size: int,
    dims: int = 2,
) -> float:
    """Rough seconds of one evaluation cell on the CPU."""
    if adapter in ("linear", "knn"):
        return SPEED["probe_fit_s"]
    epochs = float(overrides.get(f"{adapter}.epochs", overrides.get("epochs", 30)))
    speed = SPEED["segment_img_s" if target == "masks" else "finetune_img_s"]
    return epochs * max(n_train * fraction, 8) / speed * _area(size, dims) * 0.5


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``."""
    s = math.ceil(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
