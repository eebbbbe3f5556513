"""The job graph of an experiment: convert -> generate -> pretrain -> evaluate.

Every job's output lives under a path keyed by the hash of everything that
produced it (its resolved settings and the keys of its inputs), so a rerun
finds finished work, an edited experiment reruns only what changed, and two
experiments never mix outputs::

    RESULTS/data/<dataset>-<key>.h5
    RESULTS/generator/<kind>-<key>/            (ddpm training run)
    RESULTS/synthetic/<kind>-<key>.h5          (+ <kind>-<key>-report/)
    RESULTS/curated/<dataset>-<label>-<key>.h5 (a pruned real pool, Less is More)
    RESULTS/pretrain/<strategy>-<key>/         (encoder/ checkpoint)
    RESULTS/evaluate/<task>-<key>/records/...  (one JSON record per cell)
    RESULTS/cache/features/                    (frozen features, shared)

A job describes itself: its ``config`` holds every setting that shapes its
outputs (its key is the hash of that config, which names its inputs by *their*
keys), and its ``run`` holds what does not change the result (input and output
locations, process counts). A stage function (:mod:`benchmark.harness.stages`)
reads only these and its dependencies' recorded outputs, so the key covers every
input by construction. Paths never enter a key: datasets are keyed by content
(an HDF5 file's recorded content hash, a source folder's fingerprint), so a
results folder can move between machines; external initial weights (``init``) are
keyed the same way, a file by its SHA-256 and a timm weights tag by the tag, while
the file's location travels in ``run``. This module only plans the jobs;
:mod:`benchmark.harness.runner` runs them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.core.errors import SSLBenchError
from benchmark.core.hashing import digest
from benchmark.core.io import read_json, source_fingerprint
from benchmark.data.h5format import read_meta
from benchmark.harness.experiment import PRETRAIN_DEFAULTS, Experiment, PretrainSection

if TYPE_CHECKING:
    from tasks.adapters.base import Adapter

#: Rough CPU speeds (2 cores, 64 px) used by ``--dry-run`` estimates. ``finetune_img_s`` and
#: ``segment_img_s`` are training image passes per second (validation passes included),
#: from the cells' recorded train times: fine-tuning ResNet-18 on BUSI 64 px about 55,
#: on BreastMNIST 32 px about 93 per 64 px area; U-Net segmentation: see below.
#: ``pretrain_img_s``: SimCLR with its kNN monitor took 60 s for 300 x 32 images at 32 px
#: (BreastMNIST) and 170-210 s at 64 px (BUSI), about 40-50 per 64 px area; other
#: methods scale it by their ``cost``. ``ddpm_train_img_s``: 1500 x 16 images at 28 px in
#: 418 s (11 per area). Per-component factors (an encoder's and a method's ``cost``, a
#: converter's ``dims`` and ``image_size``, an adapter's ``training_passes``) belong to
#: the components. Recalibrated on the current references (``perf/bench_planner.py``,
#: which sets each job's estimate beside its cells' recorded seconds and the share of
#: their planned steps they trained before early stopping): at 36 segmentation passes/s
#: the rate alone was 1.87x long on BUSI 64 px and 2.79x on hippocampus 32^3, fine-tuning
#: 0.98-1.15x; hence 67 passes/s, 1.5x that for 3D volumes. Early stopping (cells ran
#: 72-87 % of their planned steps) stays in the estimates, which thus err on the long side.
SPEED = {
    "convert_s_per_image": 0.004,
    "phantom_s_per_image": 0.01,
    "ddpm_train_img_s": 13.0,
    "ddim50_img_s": 0.8,
    "pretrain_img_s": 45.0,
    "extract_img_s": 400.0,
    "probe_fit_s": 0.3,
    "finetune_img_s": 60.0,
    "segment_img_s": 67.0,
    "segment_3d_speedup": 1.5,
    "report_s": 30.0,
}


@dataclass
class Job:
    """One unit of the graph.

    Attributes:
        id: Human-readable unique id, e.g. ``pretrain/real-simclr-resnet18-s0``.
        stage: ``data``, ``generate``, ``curate``, ``pretrain`` or ``evaluate``.
        key: Hash of the settings that shape the outputs, which name the job's inputs
            by their keys: all of ``config`` for data, generator and pretraining jobs
            (the ``label`` aside); for a sweep, the task settings and its encoder's (or
            baselines') key, as its cells (fractions x seeds) are tracked one by one.
        deps: Ids of jobs whose outputs it reads.
        config: Every setting that shapes the outputs (saved with the job, logged to W&B).
        out: Main output path.
        run: What does not change the outputs and stays out of the key: source
            locations, the sweep's output folder, process counts.
        cells: Planned evaluation cells ``(adapter, baseline, fraction, seed)``.
        estimate_s: Rough CPU time estimate.
    """

    id: str
    stage: str
    key: str
    deps: list[str]
    config: dict[str, Any]
    out: Path
    run: dict[str, Any] = field(default_factory=dict)
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
    from benchmark.data.converters import CONVERTERS

    if not entry:
        return 2
    if "phantom" in entry:
        return int(entry["phantom"].get("dims") or 2)
    if "convert" in entry:
        return CONVERTERS.get(entry["convert"]["kind"]).dims
    try:
        return len(read_meta(entry["path"])["image_shape"]) - 1
    except (OSError, KeyError, SSLBenchError):
        return 2


def _n_images(entry: dict[str, Any]) -> int:
    """Rough number of images of a dataset entry (for estimates)."""
    from benchmark.data.converters import CONVERTERS

    if "phantom" in entry:
        return int(entry["phantom"].get("n") or 240)
    if "path" in entry:
        try:
            return int(read_meta(entry["path"])["n"])
        except (OSError, KeyError, SSLBenchError):
            return 500
    opts = entry["convert"]
    return CONVERTERS.get(opts["kind"]).count_images(Path(opts["src"])) or 800


def dataset_size(entry: dict[str, Any]) -> int | None:
    """The image side of a dataset entry, if it is known before converting."""
    from benchmark.data.converters import CONVERTERS

    if "convert" in entry:
        opts = entry["convert"]
        return CONVERTERS.get(opts["kind"]).image_size(Path(opts["src"]), opts)
    opts = entry.get("phantom") or {}
    return int(opts["size"]) if "size" in opts else None


def strategy_label(
    source: str,
    ratio: float | None,
    method: str,
    encoder: str,
    seed: int,
    mode: str = "replace",
    real_weight: float = 1.0,
    strength: str | float = "standard",
    curation: str | None = None,
) -> str:
    """``mixed0.5-simclr-resnet18-s0`` (a ratio-swept source carries its ratio; a mixed arm
    in mode ``add`` carries ``add``, a real weight other than 1 ``w<weight>``, a strength
    other than standard its label: ``mixedadd-w10-simclr-weak-resnet18-s0``; a curated
    real pool its curator's label: ``real-dhash6-simclr-resnet18-s0``)."""
    from pretrain.strength import strength_label

    src = f"{source}{ratio:g}" if ratio is not None else source
    if mode != "replace":
        src += mode
    if real_weight != 1.0:
        src += f"-w{real_weight:g}"
    if curation:
        src += f"-{curation}"
    views = strength_label(strength)
    return f"{src}-{method}{'-' + views if views else ''}-{encoder}-s{seed}"


def _data_job(name: str, entry: dict[str, Any], results: Path) -> Job:
    """Convert / phantom / existing file, keyed by content and never by a path."""
    from benchmark.data.converters import CONVERTERS

    kind, opts = next(iter(entry.items()))
    run: dict[str, Any] = {}
    if kind == "path":
        cfg: dict[str, Any] = {
            "dataset": name,
            "path": {"content_hash": read_meta(opts).get("content_hash")},
        }
        run["path"] = str(opts)
    elif kind == "convert":
        options = {k: v for k, v in opts.items() if k != "src"}
        cfg = {
            "dataset": name,
            "convert": {**options, "source": source_fingerprint(opts["src"])},
            "converter_version": CONVERTERS.get(opts["kind"]).version,
        }
        run["src"] = str(opts["src"])
    else:
        cfg = {"dataset": name, kind: opts}
    key = digest(cfg, 12)
    n = _n_images(entry)
    est = (
        0.0
        if kind == "path"
        else n * SPEED[f"{'phantom' if kind == 'phantom' else 'convert'}_s_per_image"]
    )
    out = Path(opts) if kind == "path" else results / "data" / f"{name}-{key}.h5"
    return Job(f"data/{name}", "data", key, [], cfg, out, run=run, estimate_s=est)


def _matched_pool_samples(exp: Experiment) -> int | None:
    """The generator's sample count where pretraining arms match their synthetic pool to
    the real train split of the generator's dataset (``pool_size: matched``), else None.

    That split's size is known once the data job ran: the generator jobs check it first
    (``stages.check_matched_pool``), so a too-small sample count fails in seconds rather
    than at the first synthetic pretraining, after the generator trained.
    """
    from pretrain.sources import SOURCES

    pre, gen = exp.pretrain, exp.generator
    if pre is None or gen is None or pre.pool_size != "matched" or pre.dataset != gen.dataset:
        return None
    if not pre.inflation and not any(SOURCES.get(s).uses_synthetic for s in pre.sources):
        return None  # (AdaInf's arm is a mixed one, whatever the sources)
    return int(gen.samples)


def _generator_jobs(exp: Experiment, results: Path, data: dict[str, Job]) -> list[Job]:
    """``generate/train`` (trainable kinds without a checkpoint) and ``generate/sample``."""
    from pretrain.generators import GENERATORS

    gen = exp.generator
    assert gen is not None
    cls = GENERATORS.get(gen.kind)
    jobs: list[Job] = []
    gen_entry = exp.datasets[gen.dataset] if gen.dataset else None
    like = data[gen.dataset] if gen.dataset else None
    size = gen.train.get("size") or (dataset_size(gen_entry) if gen_entry else None)
    gdims = _dims(gen_entry)
    deps = [like.id] if like else []
    train_key: str | None = None
    run: dict[str, Any] = {}
    matched = _matched_pool_samples(exp)
    if matched is not None:  # checked against the train split before training and sampling
        run["matched_pool_samples"] = matched
    if cls.trainable and gen.checkpoint:
        meta = read_json(Path(gen.checkpoint) / "generator.json") or {}
        train_key = digest({"checkpoint": meta.get("generator_sha256")}, 12)
        run["checkpoint"] = str(gen.checkpoint)
    elif cls.trainable:
        assert like is not None  # the experiment checks that a trainable kind has a dataset
        tcfg = {"kind": gen.kind, "data": like.key, "train": gen.train}
        train_key = digest(tcfg, 12)
        steps = int(gen.train.get("steps", 2000))
        bs = int(gen.train.get("batch_size", 16))
        est = steps * bs / SPEED["ddpm_train_img_s"] * _area(size, gdims)
        out = results / "generator" / f"{gen.kind}-{train_key}"
        jobs.append(
            Job(
                "generate/train",
                "generate",
                train_key,
                [like.id],
                tcfg,
                out,
                run={k: v for k, v in run.items() if k == "matched_pool_samples"},
                estimate_s=est,
            )
        )
        deps = [*deps, "generate/train"]
    options = dict(gen.options)
    for opt in cls.path_options:
        if options.get(opt) is not None:
            run[opt] = options[opt]
            options[opt] = {"source": source_fingerprint(options[opt])}
    scfg = {
        "kind": gen.kind,
        "generator": train_key,
        "like": like.key if like else None,
        "options": options,
        "samples": gen.samples,
        "sample_steps": gen.sample_steps if cls.has_sample_steps else None,
        "seed": gen.seed,
        "report": gen.report,
    }
    if isinstance(gen.drop_near_real, dict):  # resolved from true / options; unset: as before
        scfg["drop_near_real"] = {"curator": "dhash", **gen.drop_near_real}
    skey = digest(scfg, 12)
    per = gen.sample_steps / 50 / SPEED["ddim50_img_s"] if cls.has_sample_steps else 0.01
    est = gen.samples * per * _area(size, gdims) + (SPEED["report_s"] if gen.report else 0)
    out = results / "synthetic" / f"{gen.kind}-{skey}.h5"
    jobs.append(Job("generate/sample", "generate", skey, deps, scfg, out, run=run, estimate_s=est))
    return jobs


#: AdaInf's inflated arm (Wang et al. 2024): the synthetic pool added to the real one, the
#: real set weighted 10x (the official config repeats it 10 times: ``dup=10``) and weak
#: views, at the baseline's steps and batch size. (mode, real weight, strength).
ADAINF: tuple[str, float, str] = ("add", 10.0, "weak")


def pretraining_arms(pre: Any) -> list[tuple[str, float | None, str, float, str | float]]:
    """The grid's arms ``(source, ratio, mode, real_weight, strength)``, in planning order.

    Sources x (ratios in mode ``replace``, or one arm in mode ``add``, whose share comes
    from the pool sizes, for ratio-taking sources) x strengths, then, with ``inflation:
    adainf``, the AdaInf arm (:data:`ADAINF`) if the grid does not hold it already.
    """
    from pretrain.sources import SOURCES

    arms: list[tuple[str, float | None, str, float, str | float]] = []
    for source in pre.sources:
        takes = SOURCES.get(source).takes_ratio
        weight = pre.real_weight if takes else 1.0
        for mode in pre.modes if takes else ["replace"]:
            ratios: list[float | None] = list(pre.ratios) if takes and mode == "replace" else [None]
            for ratio, strength in itertools.product(ratios, pre.strengths):
                arms.append((source, ratio, mode, weight, strength))
    if pre.inflation == "adainf":
        arm = ("mixed", None, *ADAINF)
        if arm not in arms:
            arms.append(arm)
    return arms


def _curation_jobs(exp: Experiment, results: Path, data: dict[str, Job]) -> dict[str, Job]:
    """One ``curate/<label>`` job per curator spec of ``pretrain.curation``: the real
    train split pruned (2D: images; 3D: whole volumes, so 3D encoders can use it)."""
    from benchmark.data.curation import CURATORS

    pre = exp.pretrain
    assert pre is not None
    dj = data[pre.dataset]
    dims = _dims(exp.datasets[pre.dataset])
    jobs: dict[str, Job] = {}
    for spec in pre.curation:
        if spec is None:
            continue
        options = {k: v for k, v in spec.items() if k != "method"}
        curator = CURATORS.create(spec["method"], **options)
        if dims == 3:
            try:
                curator.check_volumes()
            except SSLBenchError as exc:
                raise SSLBenchError(f"pretrain.curation: {exc}") from None
        label = curator.label()
        cfg = {
            "curator": spec["method"],
            "options": dict(curator.options),
            "data": dj.key,
            "label": label,
        }
        key = digest(cfg, 12)
        est = _n_images(exp.datasets[pre.dataset]) * SPEED["convert_s_per_image"]
        out = results / "curated" / f"{pre.dataset}-{label}-{key}.h5"
        jobs[label] = Job(f"curate/{label}", "curate", key, [dj.id], cfg, out, estimate_s=est)
    return jobs


def _pretrain_jobs(
    exp: Experiment,
    results: Path,
    data: dict[str, Job],
    synth: Job | None,
    curated: dict[str, Job] | None = None,
) -> dict[str, Job]:
    from pretrain.encoders import ENCODERS
    from pretrain.methods import METHODS
    from pretrain.sources import SOURCES

    pre = exp.pretrain
    assert pre is not None
    dj = data[pre.dataset]
    dims = _dims(exp.datasets[pre.dataset])
    curated = curated or {}
    pools: list[Job | None] = [None, *curated.values()]
    encoders: dict[str, Job] = {}
    excluded = [0] * len(pre.exclude)
    for (source, ratio, mode, weight, strength), pool in itertools.product(
        pretraining_arms(pre), pools
    ):
        src = SOURCES.get(source)
        if pool is not None and not src.uses_real:
            continue  # curation prunes the real pool only
        if pool is None and src.uses_real and None not in pre.curation:
            continue  # only curated real pools were asked for
        for method in pre.methods:
            for encoder in pre.encoders:
                for seed in pre.seeds:
                    run = {
                        "source": source,
                        "ratio": ratio,
                        "mode": mode,
                        "real_weight": weight,
                        "strength": strength,
                        "method": method,
                        "encoder": encoder,
                        "seed": seed,
                        "curation": pool.config["label"] if pool else "none",
                    }
                    hits = [i for i, e in enumerate(pre.exclude) if _matches(e, run)]
                    for i in hits:
                        excluded[i] += 1
                    if hits:
                        continue
                    label = strategy_label(
                        source,
                        ratio,
                        method,
                        encoder,
                        seed,
                        mode,
                        weight,
                        strength,
                        pool.config["label"] if pool else None,
                    )
                    synthetic = synth if src.uses_synthetic else None
                    enc_cfg, init_run = _keyed_init(pre.encoder_config.get(encoder, {}))
                    cfg = {
                        "method": method,
                        "encoder": encoder,
                        "source": source,
                        "synthetic_ratio": None
                        if mode == "add"
                        else (0.5 if ratio is None else ratio),
                        "steps": pre.steps,
                        "batch_size": pre.batch_size,
                        "image_size": pre.image_size,
                        "seed": seed,
                        "method_config": pre.method_config.get(method, {}),
                        "encoder_config": enc_cfg,
                        "amp": pre.amp,
                        "checkpoint_every": pre.checkpoint_every,
                        "real": dj.key if src.uses_real else None,
                        "synthetic": synthetic.key if synthetic else None,
                    }
                    # options at their default stay out of the key (older keys hold)
                    if mode != "replace":
                        cfg["mixing_mode"] = mode
                    if weight != 1.0:
                        cfg["real_weight"] = weight
                    if src.uses_synthetic and pre.pool_size is not None:
                        cfg["pool_size"] = pre.pool_size
                    if strength != "standard":
                        cfg["strength"] = strength
                    if pool is not None:  # the real pool is the curated file
                        cfg["curation"] = {"label": pool.config["label"], "key": pool.key}
                    if not src.uses_real:
                        # the kNN monitor (and so the health verdict in pretrain.json)
                        # reads the experiment's dataset; real and mixed runs name it
                        # in ``real`` already, so their keys are unchanged
                        cfg["monitor_data"] = dj.key
                    key = digest(cfg, 12)
                    # every run reads the dataset: as its real source, or for the monitor
                    deps = [dj.id] + ([synthetic.id] if synthetic else [])
                    deps += [pool.id] if pool is not None else []
                    est = (
                        pre.steps
                        * pre.batch_size
                        / SPEED["pretrain_img_s"]
                        * _area(pre.image_size, dims)
                        * ENCODERS.get(encoder).cost
                        * METHODS.get(method).cost
                    )
                    job = Job(
                        f"pretrain/{label}",
                        "pretrain",
                        key,
                        deps,
                        cfg,
                        results / "pretrain" / f"{label}-{key}",
                        run={"nproc_per_node": pre.nproc_per_node, **init_run},
                        estimate_s=est,
                    )
                    job.config["label"] = label
                    encoders[label] = job
    unused = [pre.exclude[i] for i, n in enumerate(excluded) if not n]
    if unused:
        raise SSLBenchError(f"pretrain.exclude: {unused} match no run of the grid")
    if not encoders:
        raise SSLBenchError("pretrain.exclude: every run of the grid is excluded")
    return encoders


def _matches(entry: dict[str, Any], run: dict[str, Any]) -> bool:
    """Whether every field of a ``pretrain.exclude`` entry matches ``run`` (numbers by
    value: ``ratio: 0.5`` matches 0.5, ``real_weight: 10`` matches 10.0)."""
    for key, want in entry.items():
        have = run[key]
        if isinstance(want, int | float) and isinstance(have, int | float):
            if not isinstance(want, bool) and float(want) == float(have):
                continue
            return False
        if str(want).lower() != str(have).lower():
            return False
    return True


def plan_jobs(exp: Experiment, results: Path) -> list[Job]:
    """All jobs of the resolved experiment ``exp``, in a valid run order."""
    data = {name: _data_job(name, entry, results) for name, entry in exp.datasets.items()}
    jobs: list[Job] = list(data.values())
    synth: Job | None = None
    if exp.generator is not None:
        gen_jobs = _generator_jobs(exp, results, data)
        jobs += gen_jobs
        synth = gen_jobs[-1]
    encoders: dict[str, Job] = {}
    if exp.pretrain is not None:
        curated = _curation_jobs(exp, results, data)
        jobs += curated.values()
        encoders = _pretrain_jobs(exp, results, data, synth, curated)
        jobs += encoders.values()
    if exp.evaluate is not None:
        jobs += _plan_evaluation(exp, results, data, encoders)
    return jobs


def _plan_evaluation(
    exp: Experiment, results: Path, data: dict[str, Job], encoders: dict[str, Job]
) -> list[Job]:
    from pretrain.encoders import ENCODERS
    from pretrain.encoders.external import parse_init
    from tasks.adapters import ADAPTERS
    from tasks.spec import load_spec
    from tasks.sweep import adapter_configs, supervised_adapter, sweep_overrides

    ev, pre = exp.evaluate, exp.pretrain
    assert ev is not None
    jobs = []
    identities: dict[str, dict[str, Any]] = {}  # init spec -> identity (files hashed once)
    archs = list(pre.encoders) if pre else list(PRETRAIN_DEFAULTS["encoders"])
    if ev.baseline_encoders is not None:
        archs = list(ev.baseline_encoders)
    for task in ev.tasks:
        spec = load_spec(task.spec)
        dj = data[task.dataset] if task.dataset else None
        tcfg = {
            "spec": task.spec,
            "spec_version": spec.version,
            "dataset": dj.key if dj else None,
            "image_size": task.image_size,
            "adapters": task.adapters,
            "overrides": ev.overrides,
        }
        tkey = digest(tcfg, 12)
        out = results / "evaluate" / f"{spec.name}-{tkey}"
        size = task.image_size or spec.image_size
        n = _n_images(exp.datasets[task.dataset]) if task.dataset else 500
        n_train = 0.65 * n
        dims = _dims(exp.datasets[task.dataset] if task.dataset else None)
        base = {**tcfg, "fractions": ev.fractions, "seeds": ev.seeds}

        # the cells' adapters with their resolved options (defaults < spec < overrides)
        names = sorted({*task.adapters, supervised_adapter(spec)})
        # (an option an adapter refuses fails its cells at run time, recorded like any
        # other failure; the estimate then falls back to the adapters' defaults)
        mine = sweep_overrides(ev.overrides, names, task.spec, [])
        try:
            configs = adapter_configs(spec, names, mine)
            adapters = {n: ADAPTERS.create(n, **c) for n, c in configs.items()}
            for adapter in adapters.values():
                adapter.training_passes(100)  # the step plan checks its options
        except SSLBenchError:
            configs = adapter_configs(spec, names, {})
            adapters = {n: ADAPTERS.create(n, **c) for n, c in configs.items()}

        def cell_cost(
            adapter: str,
            fraction: float,
            arch: str,
            n_train: float = n_train,
            size: int = size,
            dims: int = dims,
            adapters: dict[str, Adapter] = adapters,
        ) -> float:
            return _cell_cost(
                adapters[adapter], fraction, n_train, size, dims, ENCODERS.get(arch).cost
            )

        def cells(adapters: list[str], baseline: str | None) -> list[list[Any]]:
            return [[a, baseline, f, s] for s in ev.seeds for a in adapters for f in ev.fractions]

        for label, pj in encoders.items():
            c = cells(task.adapters, None)
            arch = pj.config["encoder"]
            est = n / SPEED["extract_img_s"] + sum(cell_cost(a, f, arch) for a, _, f, _ in c)
            deps = [pj.id] + ([dj.id] if dj else [])
            jobs.append(
                Job(
                    f"evaluate/{spec.name}/{label}",
                    "evaluate",
                    digest({**tcfg, "encoder": pj.key}, 12),
                    deps,
                    {**base, "encoder": label, "encoder_key": pj.key, "baselines": []},
                    out,
                    run={"output": str(out)},
                    cells=c,
                    estimate_s=est,
                )
            )
        random_arms = [b for b in ev.baselines if b != "external"]
        if random_arms:
            for arch in archs:
                c = cells(task.adapters, "scratch") if "scratch" in ev.baselines else []
                if "supervised" in ev.baselines:
                    sup = supervised_adapter(spec)
                    sup_seeds = ev.seeds if ev.supervised_seeds is None else ev.supervised_seeds
                    c += [[sup, "supervised", 1.0, s] for s in sup_seeds]
                est = sum(cell_cost(a, f, arch) + n / SPEED["extract_img_s"] for a, _, f, _ in c)
                # the scratch / supervised encoder is built as pretraining would build it,
                # so its construction arguments are part of the key (input channels come
                # from the dataset, whose key is in ``tcfg``)
                architecture = {"name": arch, "args": _baseline_args(pre, arch)}
                bcfg: dict[str, Any] = {
                    **tcfg,
                    "baselines": random_arms,
                    "architecture": architecture,
                }
                if "supervised" in random_arms and ev.supervised_seeds is not None:
                    bcfg["supervised_seeds"] = ev.supervised_seeds  # (unset: keys unchanged)
                if "scratch" in random_arms and _frozen(task.adapters):
                    # the frozen-feature scratch arm is the random init with batch norms
                    # calibrated on the train split (issue 23): sweeps keyed before it rerun
                    # those cells (new records folder), the others are skipped as recorded
                    bcfg["scratch_frozen_init"] = _scratch_frozen_init()
                jobs.append(
                    Job(
                        f"evaluate/{spec.name}/baselines-{arch}",
                        "evaluate",
                        digest(bcfg, 12),
                        [dj.id] if dj else [],
                        {**base, **bcfg},
                        out,
                        run={"output": str(out)},
                        cells=c,
                        estimate_s=est,
                    )
                )
        for arch in archs if "external" in ev.baselines else []:
            for init in ev.external.get(arch, []):
                # one job per (task, encoder, weights): the weights' identity (a file's
                # SHA-256, a timm tag) is in the key, the file's location in ``run``
                spec_init = parse_init(init)
                if init not in identities:
                    identities[init] = spec_init.identity()
                c = cells(task.adapters, "external")
                est = n / SPEED["extract_img_s"] + sum(cell_cost(a, f, arch) for a, _, f, _ in c)
                architecture = {"name": arch, "args": _baseline_args(pre, arch)}
                ecfg = {
                    **tcfg,
                    "baselines": ["external"],
                    "architecture": architecture,
                    "init": identities[init],
                }
                jobs.append(
                    Job(
                        f"evaluate/{spec.name}/external-{arch}-{spec_init.slug()}",
                        "evaluate",
                        digest(ecfg, 12),
                        [dj.id] if dj else [],
                        {**base, **ecfg},
                        out,
                        run={"output": str(out), "init": init},
                        cells=c,
                        estimate_s=est,
                    )
                )
    return jobs


def _scratch_frozen_init() -> dict[str, Any]:
    """How the scratch arm of the frozen-feature adapters is initialised (in job keys)."""
    from tasks.taskdata import CALIBRATION_BATCH, CALIBRATION_SPLIT

    return {"init": "random", "bn_calibration": CALIBRATION_SPLIT, "batch": CALIBRATION_BATCH}


def _frozen(adapters: list[str]) -> list[str]:
    """The frozen-feature adapters (linear, kNN) among ``adapters``."""
    from tasks.adapters import ADAPTERS

    return [a for a in adapters if not ADAPTERS.get(a).trains_encoder]


def _baseline_args(pre: PretrainSection | None, arch: str) -> dict[str, Any]:
    """Constructor arguments of the baselines' encoder ``arch`` (as pretraining builds it,
    without ``init``: the baselines bring their own initialisation)."""
    if not pre:
        return {}
    options = {k: v for k, v in pre.encoder_config.get(arch, {}).items() if k != "init"}
    return {"img_size": int(pre.image_size), **options}


def _keyed_init(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An encoder config for a job key, and the ``run`` entry of its ``init`` weights.

    A non-random ``init`` is replaced by its identity (a file's SHA-256 or a timm tag),
    so an edited weights file reruns the job and a moved one does not; the spec itself
    (a path) goes to ``run["init"]`` for the stage.
    """
    init = options.get("init")
    if init in (None, "random"):
        return dict(options), {}
    from pretrain.encoders.external import parse_init

    return {**options, "init": parse_init(init).identity()}, {"init": str(init)}


def _cell_cost(
    adapter: Adapter,
    fraction: float,
    n_train: float,
    size: int,
    dims: int = 2,
    encoder_cost: float = 1.0,
) -> float:
    """Rough seconds of one evaluation cell on the CPU.

    A probe on frozen features costs one fit; an adapter that trains (the encoder, or a
    decoder on it) costs its :meth:`~tasks.adapters.base.Adapter.training_passes` (the
    step floor, epochs and batch size, times every value of its learning-rate grid) at
    the calibrated image rate, scaled by the input's area and the encoder's ``cost``.
    """
    passes = adapter.training_passes(max(2, round(n_train * fraction)))
    if not passes:  # frozen features: a probe fit
        return SPEED["probe_fit_s"]
    speed = SPEED["segment_img_s" if adapter.target == "masks" else "finetune_img_s"]
    if adapter.target == "masks" and dims == 3:
        speed *= SPEED["segment_3d_speedup"]
    return passes / speed * _area(size, dims) * encoder_cost


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``."""
    s = math.ceil(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
