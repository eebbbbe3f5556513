"""Experiment files: one YAML describes a whole benchmark grid.

Layout (every section but ``name`` and ``datasets`` is optional; see
``benchmark/experiments/*.yaml`` for complete examples)::

    name: busi-cpu                  # identifies the results folder
    description: ...
    profile: cpu-small              # defaults layer: cpu-small or gpu-full
    device: cpu                     # cpu, cuda or auto
    datasets:                       # key -> exactly one of phantom / convert / path
      busi: {convert: {kind: busi, src: ../shared/data/busi_256, size: 64}}
      toy: {phantom: {n: 96, size: 32, seed: 0}}
      mine: {path: data/mine.h5}
    generator:                      # needed by the synthetic and mixed sources
      kind: ddpm                    # ddpm (trained), phantom (procedural) or import
      dataset: busi                 # ddpm trains on its train split only
      train: {steps: 1500, channels: [32, 64, 64]}   # DDPMConfig fields
      checkpoint: null              # or a `synth train` folder to reuse (no training)
      options: {}                   # phantom / import constructor options
      samples: 1000                 # synthetic images to sample
      sample_steps: 50              # DDIM steps
      seed: 0
      report: true                  # quality and memorisation report
      drop_near_real: false         # true or {threshold: 6}: drop samples that near-
                                    # duplicate a real train image (dhash+corr) before use
    pretrain:
      dataset: busi                 # real source (train split)
      sources: [real, synthetic, mixed]
      ratios: [0.5]                 # synthetic ratios of the mixed source
      methods: [simclr, vicreg]
      encoders: [resnet18]
      seeds: [0]
      steps: 300                    # compute matching: steps x batch_size images
      batch_size: 32
      image_size: 64
      nproc_per_node: 1             # > 1: data-parallel under torchrun (same global batch)
      method_config: {simclr: {temperature: 0.2}}
      encoder_config: {}            # per encoder, e.g. {resnet18: {init: timm:resnet18.a1_in1k}}
      modes: [replace]              # mixed arms: replace real images, or add synthetic ones
      real_weight: 1.0              # mixed arms: sampling weight of real images (AdaInf)
      pool_size: null               # synthetic pool: all, N or matched (the real train split)
      strengths: [standard]         # view strengths: standard, weak (AdaInf) or a number
      inflation: null               # adainf: + AdaInf's arm (add, real weight 10, weak views)
      curation: [none]              # real pools: none and/or curators, e.g.
                                    # {method: dhash, threshold: 6} (Less is More)
      exclude: []                   # runs left out of the grid, matched on source, ratio,
                                    # mode, real_weight, strength, method, encoder, seed,
                                    # curation, e.g. [{method: vicreg, source: mixed}]
    evaluate:
      tasks:
        - {spec: busi-cls, dataset: busi, adapters: [linear, finetune]}
        - {spec: busi-seg, dataset: busi}
      fractions: [0.05, 0.1, 0.25, 0.5, 1.0]
      seeds: [0, 1, 2, 3, 4]
      baselines: [scratch, supervised]   # + external: the encoders' arms with external weights
      supervised_seeds: null        # seeds of the full-label supervised reference (default: seeds)
      baseline_encoders: null       # encoders of the baselines (default: pretrain.encoders,
                                    # else resnet18), e.g. [resnet18, resnet18_cifar]
      external:                     # encoder -> init weights (one or a list) of `external`
        resnet18: timm:resnet18.a1_in1k   # timm tag (needs the internet) or a state-dict file
      overrides: {finetune.epochs: 30}
      statistics: {resamples: 2000, confidence: 0.95}   # leaderboard intervals and tests
                                    # (+ primary: [{kind: method}], a pre-declared primary
                                    # family for Holm; see benchmark/harness/families.py)
    wandb: {mode: offline, project: sslbench, entity: null, log_checkpoints: false}

The resolved experiment (a typed :class:`Experiment`) is ``profile defaults < file < CLI
overrides``
(``key.sub=value``, values parsed as YAML). Every key is checked: an unknown
key or name is an error naming the nearest valid one, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.core.errors import SSLBenchError, did_you_mean
from benchmark.core.hashing import digest

EXPERIMENT_DIR = Path(__file__).resolve().parents[1] / "experiments"

#: Defaults layered under an experiment file by its ``profile``.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu-small": {
        "device": "cpu",
        "generator": {
            "train": {"steps": 1500, "batch_size": 16, "channels": [32, 64, 64]},
            "samples": 1000,
            "sample_steps": 50,
        },
        "pretrain": {"steps": 300, "batch_size": 32, "image_size": 64},
        "evaluate": {
            "overrides": {"finetune.epochs": 30, "segmentation.epochs": 30},
        },
    },
    "gpu-full": {
        "device": "auto",
        "generator": {
            "train": {
                "steps": 30000,
                "batch_size": 64,
                "channels": [64, 128, 256, 256],
                "attention_levels": [False, False, True, True],
                "num_res_blocks": 2,
            },
            "samples": 10000,
            "sample_steps": 50,
        },
        "pretrain": {
            "steps": 20000,
            "batch_size": 256,
            "image_size": 224,
            "encoders": ["resnet50"],
        },
        "evaluate": {"overrides": {}},
    },
}

DEFAULTS: dict[str, Any] = {
    "description": "",
    "profile": "cpu-small",
    "device": "cpu",
    "datasets": {},
    "generator": None,
    "pretrain": None,
    "evaluate": None,
    "wandb": {"mode": None, "project": None, "entity": None, "log_checkpoints": False},
}
GENERATOR_DEFAULTS: dict[str, Any] = {
    "kind": "ddpm",
    "dataset": None,
    "train": {},
    "checkpoint": None,
    "options": {},
    "samples": 1000,
    "sample_steps": 50,
    "seed": 0,
    "report": True,
    "drop_near_real": False,  # or true / {threshold, min_corr}: the memorisation filter
}
PRETRAIN_DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "sources": ["real"],
    "ratios": [0.5],
    "methods": ["simclr"],
    "encoders": ["resnet18"],
    "seeds": [0],
    "steps": 300,
    "batch_size": 32,
    "image_size": 64,
    "method_config": {},
    "encoder_config": {},
    "amp": "auto",
    "checkpoint_every": 50,
    "nproc_per_node": 1,  # > 1: data-parallel processes under torchrun (not in job keys)
    "modes": ["replace"],  # mixed arms: synthetic images replace real ones, or are added
    "real_weight": 1.0,  # mixed arms: sampling weight of real images (AdaInf's repeat)
    "pool_size": None,  # synthetic pool: null (all), N, or matched (the real train split)
    "strengths": ["standard"],  # augmentation strengths of the views (pretrain.strength)
    "inflation": None,  # adainf: + AdaInf's arm (mode add, real weight 10, weak views)
    "curation": [None],  # real pools: None (the full train split) and/or curator specs
    "exclude": [],  # runs left out of the grid: [{field: value, ...}] (EXCLUDE_FIELDS)
}
#: Pretraining options left out of the saved experiment at their default (older hashes hold).
PRETRAIN_OPTIONAL = {
    k: PRETRAIN_DEFAULTS[k]
    for k in (
        "modes",
        "real_weight",
        "pool_size",
        "strengths",
        "inflation",
        "curation",
        "exclude",
    )
}
#: What an entry of ``pretrain.exclude`` may match on (all its fields must match).
EXCLUDE_FIELDS = (
    "source",
    "ratio",
    "mode",
    "real_weight",
    "strength",
    "method",
    "encoder",
    "seed",
    "curation",
)
EVALUATE_DEFAULTS: dict[str, Any] = {
    "tasks": [],
    "fractions": [0.05, 0.1, 0.25, 0.5, 1.0],
    "seeds": [0, 1, 2, 3, 4],
    "baselines": ["scratch", "supervised"],
    "supervised_seeds": None,
    "baseline_encoders": None,
    "external": {},
    "overrides": {},
    "statistics": {"resamples": 2000, "confidence": 0.95},
}
STATISTICS_KEYS = ("resamples", "confidence", "primary")
TASK_KEYS = ("spec", "dataset", "adapters", "image_size")
DATASET_KINDS = ("phantom", "convert", "path")
PHANTOM_KEYS = ("n", "size", "dims", "seed", "images_per_patient", "depth", "variant")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExperimentError(SSLBenchError, ValueError):
    """An experiment file is malformed, refers to unknown names, or misses data."""


def _suggest(word: str, valid: list[str] | tuple[str, ...]) -> str:
    return f"{did_you_mean(word, valid)} (valid: {', '.join(valid)})"


def check_keys(section: dict[str, Any], valid: list[str] | tuple[str, ...], where: str) -> None:
    """Raise for the first key of ``section`` not in ``valid``, naming the nearest."""
    if not isinstance(section, dict):
        raise ExperimentError(f"{where}: expected a mapping, got {type(section).__name__}")
    for key in section:
        if key not in valid:
            raise ExperimentError(f"{where}: unknown key {key!r}{_suggest(str(key), valid)}")


def check_name(what: str, name: str, valid: list[str], where: str) -> None:
    """Raise for ``name`` not in ``valid``, naming the nearest."""
    if name not in valid:
        raise ExperimentError(f"{where}: unknown {what} {name!r}{_suggest(str(name), valid)}")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base`` (mappings recursively, the rest replaced)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` assignments (values parsed as YAML) to ``raw``."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ExperimentError(f"override {item!r}: expected KEY=VALUE (e.g. pretrain.steps=50)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ExperimentError(f"override {item!r}: value is not valid YAML ({exc})") from None
        parts = key.strip().split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ExperimentError(f"override {item!r}: {where} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def experiment_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped experiment in ``benchmark/experiments``."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ExperimentError(f"{p}: experiment file not found")
        return p
    shipped = EXPERIMENT_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(x.stem for x in EXPERIMENT_DIR.glob("*.yaml"))
    raise ExperimentError(f"no experiment file {str(name_or_path)!r}{_suggest(str(p), names)}")


def load_experiment(
    name_or_path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None
) -> Experiment:
    """Read, merge with its profile and the overrides, and validate an experiment.

    Relative paths in ``datasets`` (``src``, ``path``) and generator options are
    resolved against ``base_dir`` (default: the current directory).
    """
    path = experiment_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: cannot read experiment ({exc})") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment file is a YAML mapping")
    raw = apply_overrides(raw, overrides or [])
    return resolve_experiment(raw, str(path), base_dir or Path.cwd())


def resolve_experiment(raw: dict[str, Any], where: str, base_dir: Path) -> Experiment:
    """Validate ``raw``, fill in every default and type it; see the module docstring."""
    return Experiment.from_dict(_resolve_mapping(raw, where, base_dir))


def _resolve_mapping(raw: dict[str, Any], where: str, base_dir: Path) -> dict[str, Any]:
    check_keys(raw, ["name", *DEFAULTS], where)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ExperimentError(f"{where}: 'name' must be a word of letters, digits, '-', '_', '.'")
    profile = raw.get("profile", DEFAULTS["profile"])
    check_name("profile", str(profile), sorted(PROFILES), where)
    exp = deep_merge(DEFAULTS, PROFILES[profile])
    for section, defaults in (
        ("generator", GENERATOR_DEFAULTS),
        ("pretrain", PRETRAIN_DEFAULTS),
        ("evaluate", EVALUATE_DEFAULTS),
    ):
        if raw.get(section) is None:
            exp[section] = None
            continue
        check_keys(raw[section], list(defaults), f"{where}: {section}")
        exp[section] = deep_merge(deep_merge(defaults, exp.get(section) or {}), raw[section])
    for key in ("name", "description", "profile", "device", "datasets"):
        if key in raw:
            exp[key] = raw[key]
    if raw.get("wandb") is not None:
        check_keys(raw["wandb"], list(DEFAULTS["wandb"]), f"{where}: wandb")
        exp["wandb"] = deep_merge(DEFAULTS["wandb"], raw["wandb"])
    _check_datasets(exp, where, base_dir)
    _check_generator(exp, where, base_dir)
    _check_pretrain(exp, where, base_dir)
    _check_evaluate(exp, where, base_dir)
    return exp


def _dataset_ref(exp: dict[str, Any], key: Any, where: str) -> None:
    if key not in exp["datasets"]:
        raise ExperimentError(
            f"{where}: dataset {key!r} is not defined in 'datasets'"
            f"{_suggest(str(key), sorted(exp['datasets']))}"
        )


def _check_datasets(exp: dict[str, Any], where: str, base_dir: Path) -> None:
    from benchmark.data.converters import CONVERTERS

    datasets = exp["datasets"]
    if not isinstance(datasets, dict) or not datasets:
        raise ExperimentError(f"{where}: 'datasets' must name at least one dataset")
    for key, entry in datasets.items():
        w = f"{where}: datasets.{key}"
        if not NAME_RE.match(str(key)):
            raise ExperimentError(f"{w}: dataset keys are words of letters, digits, '-', '_'")
        check_keys(entry, DATASET_KINDS, w)
        if len(entry) != 1:
            raise ExperimentError(f"{w}: give exactly one of {', '.join(DATASET_KINDS)}")
        kind, opts = next(iter(entry.items()))
        if kind == "path":
            p = Path(str(opts)).expanduser()
            p = p if p.is_absolute() else (base_dir / p)
            if not p.is_file():
                raise ExperimentError(f"{w}: dataset file {p} does not exist")
            entry["path"] = str(p.resolve())
        elif kind == "phantom":
            check_keys(opts or {}, PHANTOM_KEYS, f"{w}.phantom")
            entry["phantom"] = dict(opts or {})
        else:
            if not isinstance(opts, dict) or "kind" not in opts or "src" not in opts:
                raise ExperimentError(f"{w}.convert: needs 'kind' (converter) and 'src'")
            check_name("converter", str(opts["kind"]), CONVERTERS.names(), f"{w}.convert")
            src = Path(str(opts["src"])).expanduser()
            src = src if src.is_absolute() else base_dir / src
            if not src.exists():
                raise ExperimentError(
                    f"{w}.convert: source {src} does not exist (download the dataset there, "
                    "or point 'src' at it)"
                )
            entry["convert"] = {**opts, "src": str(src.resolve())}


def _check_generator(exp: dict[str, Any], where: str, base_dir: Path) -> None:
    from pretrain.generators import GENERATORS
    from pretrain.generators.base import GENERATOR_TRAINERS

    gen = exp["generator"]
    if gen is None:
        return
    w = f"{where}: generator"
    check_name("generator kind", str(gen["kind"]), GENERATORS.names(), w)
    cls = GENERATORS.get(gen["kind"])
    if cls.trainable or gen["dataset"] is not None:
        _dataset_ref(exp, gen["dataset"], w)
    if cls.trainable:
        config_class = GENERATOR_TRAINERS.get(gen["kind"]).config_class
        valid = [f.name for f in dataclasses.fields(config_class) if f.name != "device"]
        check_keys(gen["train"], valid, f"{w}.train")
        if gen["checkpoint"] is not None:
            p = Path(str(gen["checkpoint"])).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not (p / "generator.json").is_file() or not (p / "generator.pt").is_file():
                raise ExperimentError(
                    f"{w}.checkpoint: {p} is not a generator folder of `sslbench synth train` "
                    "(needs generator.pt and generator.json)"
                )
            gen["checkpoint"] = str(p.resolve())
    elif gen["train"] or gen["checkpoint"]:
        trainable = [n for n in GENERATORS.names() if GENERATORS.get(n).trainable]
        raise ExperimentError(
            f"{w}: only trainable generators ({', '.join(trainable)}) have 'train' or 'checkpoint'"
        )
    for opt in cls.path_options:
        src = gen["options"].get(opt)
        if src is None:
            raise ExperimentError(f"{w}.options: the {gen['kind']} generator needs {opt!r}")
        p = Path(str(src)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.exists():
            raise ExperimentError(f"{w}.options.{opt}: {p} does not exist")
        gen["options"][opt] = str(p.resolve())
    for key in ("samples", "sample_steps"):
        if not isinstance(gen[key], int) or gen[key] < 1:
            raise ExperimentError(f"{w}.{key}: must be a positive integer, got {gen[key]!r}")
    _check_drop_near_real(gen, w)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _resolve_init(init: Any, arch: str, where: str, base_dir: Path) -> str:
    """An ``init`` value checked for encoder ``arch`` (a file resolved and found)."""
    from pretrain.encoders import ENCODERS
    from pretrain.encoders.external import parse_init

    try:
        spec = parse_init(init, base_dir)
        ENCODERS.get(arch).check_init(spec)
    except SSLBenchError as exc:
        raise ExperimentError(f"{where}: {exc}") from None
    return spec.spec


def _check_pretrain(exp: dict[str, Any], where: str, base_dir: Path) -> None:
    from pretrain.encoders import ENCODERS
    from pretrain.methods import METHODS
    from pretrain.sources import SOURCES

    pre = exp["pretrain"]
    if pre is None:
        return
    w = f"{where}: pretrain"
    _dataset_ref(exp, pre["dataset"], w)
    for key, registry in (("sources", SOURCES), ("methods", METHODS), ("encoders", ENCODERS)):
        pre[key] = _as_list(pre[key])
        if not pre[key]:
            raise ExperimentError(f"{w}.{key}: must not be empty")
        for name in pre[key]:
            check_name(key[:-1], str(name), registry.names(), f"{w}.{key}")
    for key in ("method_config", "encoder_config"):
        names = pre["methods"] if key == "method_config" else pre["encoders"]
        check_keys(pre[key], names, f"{w}.{key}")
    for arch, options in pre["encoder_config"].items():
        if isinstance(options, dict) and options.get("init") not in (None, "random"):
            options["init"] = _resolve_init(
                options["init"], arch, f"{w}.encoder_config.{arch}.init", base_dir
            )
    pre["ratios"] = [float(r) for r in _as_list(pre["ratios"])]
    if any(not 0.0 < r < 1.0 for r in pre["ratios"]):
        raise ExperimentError(f"{w}.ratios: mixed ratios lie in (0, 1), got {pre['ratios']}")
    pre["seeds"] = _int_list(pre["seeds"], f"{w}.seeds")
    _check_mixing(pre, w)
    _check_curation(pre, w)
    _check_exclude(pre, w)
    for key in ("steps", "batch_size", "image_size", "nproc_per_node"):
        if not isinstance(pre[key], int) or pre[key] < 1:
            raise ExperimentError(f"{w}.{key}: must be a positive integer, got {pre[key]!r}")
    if pre["batch_size"] % pre["nproc_per_node"]:
        raise ExperimentError(
            f"{w}.batch_size: {pre['batch_size']} does not divide across nproc_per_node "
            f"{pre['nproc_per_node']} processes"
        )
    needing = [s for s in pre["sources"] if SOURCES.get(s).uses_synthetic]
    needing += ["inflation"] if pre["inflation"] else []
    if needing and exp["generator"] is None:
        raise ExperimentError(f"{w}.sources: {' and '.join(needing)} need a 'generator'")


def _check_mixing(pre: dict[str, Any], w: str) -> None:
    """``modes``, ``real_weight``, ``pool_size`` (:mod:`pretrain.sources.mixed`) and
    ``strengths`` (:mod:`pretrain.strength`)."""
    from pretrain.sources.mixed import MODES

    pre["modes"] = [str(m) for m in _as_list(pre["modes"])]
    if not pre["modes"] or len(set(pre["modes"])) != len(pre["modes"]):
        raise ExperimentError(f"{w}.modes: give distinct modes of {list(MODES)}")
    for mode in pre["modes"]:
        check_name("mixing mode", mode, list(MODES), f"{w}.modes")
    weight = pre["real_weight"]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ExperimentError(f"{w}.real_weight: must be a number > 0, got {weight!r}")
    pre["real_weight"] = float(weight)
    from pretrain.sources.base import check_pool_size

    try:
        pre["pool_size"] = check_pool_size(pre["pool_size"], f"{w}.pool_size")
    except SSLBenchError as exc:
        raise ExperimentError(str(exc)) from None
    from pretrain.strength import check_strength

    try:
        pre["strengths"] = [check_strength(v, f"{w}.strengths") for v in _as_list(pre["strengths"])]
    except SSLBenchError as exc:
        raise ExperimentError(str(exc)) from None
    pre["strengths"] = ["standard" if v == 1.0 else v for v in pre["strengths"]]
    if not pre["strengths"] or len(set(map(str, pre["strengths"]))) != len(pre["strengths"]):
        raise ExperimentError(f"{w}.strengths: give distinct strengths, got {pre['strengths']}")
    if pre["inflation"] is not None:
        check_name("inflation preset", str(pre["inflation"]), ["adainf"], f"{w}.inflation")


def _check_curation(pre: dict[str, Any], w: str) -> None:
    """``curation``: ``none`` and / or curator specs ``{method: dhash, **options}``, each
    checked by building the curator (:mod:`benchmark.data.curation`)."""
    from benchmark.data.curation import CURATORS
    from pretrain.sources import SOURCES

    out: list[dict[str, Any] | None] = []
    labels: list[str] = []
    for entry in _as_list(pre["curation"]):
        if entry is None or entry == "none":
            out.append(None)
            labels.append("none")
            continue
        if isinstance(entry, str):
            entry = {"method": entry}
        if not isinstance(entry, dict):
            raise ExperimentError(
                f"{w}.curation: entries are none or {{method: NAME, OPTION: value}}, got {entry!r}"
            )
        method = str(entry.get("method", "dhash"))
        check_name("curator", method, CURATORS.names(), f"{w}.curation")
        options = {k: v for k, v in entry.items() if k != "method"}
        try:
            curator = CURATORS.create(method, **options)
        except SSLBenchError as exc:
            raise ExperimentError(f"{w}.curation: {exc}") from None
        out.append({"method": method, **curator.options})
        labels.append(curator.label())
    if not out or len(set(labels)) != len(labels):
        # distinct pruning (labels name the options that prune: dhash6d, ...), not options
        # that only the near-real filter reads
        raise ExperimentError(f"{w}.curation: give distinct entries, got {pre['curation']}")
    uses_real = any(SOURCES.get(s).uses_real for s in _as_list(pre["sources"]))
    if any(out) and not uses_real and not pre["inflation"]:
        raise ExperimentError(
            f"{w}.curation: curation prunes the real pool, and no source in "
            f"{_as_list(pre['sources'])} uses it"
        )
    pre["curation"] = out


def _check_exclude(pre: dict[str, Any], w: str) -> None:
    """``exclude``: a list of mappings over :data:`EXCLUDE_FIELDS`; a run is left out
    when every field of one entry matches it (as a CI matrix's ``exclude``). Whether
    each entry matches some run is checked when the grid is planned."""
    entries = _as_list(pre["exclude"])
    for i, entry in enumerate(entries):
        where = f"{w}.exclude[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise ExperimentError(
                f"{where}: entries are mappings such as {{method: vicreg, source: mixed}}, "
                f"got {entry!r}"
            )
        for key in entry:
            check_name("exclude field", str(key), list(EXCLUDE_FIELDS), where)
    pre["exclude"] = entries


def _check_drop_near_real(gen: dict[str, Any], w: str) -> None:
    """``drop_near_real``: false, true, or dhash options ``{threshold, min_corr}``."""
    from benchmark.data.curation import CURATORS

    value = gen["drop_near_real"]
    if value is False or value is None:
        gen["drop_near_real"] = False
        return
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ExperimentError(
            f"{w}.drop_near_real: false, true or {{threshold: N, min_corr: C}}, got {value!r}"
        )
    if gen["dataset"] is None:
        raise ExperimentError(f"{w}.drop_near_real: needs the generator's real 'dataset'")
    try:
        curator = CURATORS.create("dhash", **value)
    except SSLBenchError as exc:
        raise ExperimentError(f"{w}.drop_near_real: {exc}") from None
    gen["drop_near_real"] = {k: curator.options[k] for k in ("threshold", "min_corr")}


def _int_list(value: Any, where: str) -> list[int]:
    from tasks.sweep import parse_seeds

    try:
        return parse_seeds(_as_list(value))
    except SSLBenchError as exc:
        raise ExperimentError(f"{where}: {exc}") from None


def _check_evaluate(exp: dict[str, Any], where: str, base_dir: Path) -> None:
    from tasks.adapters import ADAPTERS
    from tasks.spec import available_specs, load_spec
    from tasks.sweep import BASELINES, parse_fractions

    ev = exp["evaluate"]
    if ev is None:
        return
    w = f"{where}: evaluate"
    if not ev["tasks"]:
        raise ExperimentError(f"{w}.tasks: list at least one task")
    for i, task in enumerate(ev["tasks"]):
        tw = f"{w}.tasks[{i}]"
        if isinstance(task, str):
            task = ev["tasks"][i] = {"spec": task}
        check_keys(task, TASK_KEYS, tw)
        if "spec" not in task:
            raise ExperimentError(f"{tw}: needs 'spec' (a task spec name or YAML path)")
        spec_name = str(task["spec"])
        if not spec_name.endswith((".yaml", ".yml")):
            check_name("task spec", spec_name, available_specs(), tw)
        try:
            spec = load_spec(spec_name)
        except SSLBenchError as exc:
            raise ExperimentError(f"{tw}: {exc}") from None
        task.setdefault("dataset", None)
        if task["dataset"] is not None:
            _dataset_ref(exp, task["dataset"], tw)
        task["adapters"] = _as_list(task.get("adapters") or spec.adapters)
        for name in task["adapters"]:
            check_name("adapter", str(name), ADAPTERS.names(), f"{tw}.adapters")
        task.setdefault("image_size", None)
    try:
        ev["fractions"] = parse_fractions(_as_list(ev["fractions"]))
    except SSLBenchError as exc:
        raise ExperimentError(f"{w}.fractions: {exc}") from None
    ev["seeds"] = _int_list(ev["seeds"], f"{w}.seeds")
    ev["baselines"] = _as_list(ev["baselines"] or [])
    for name in ev["baselines"]:
        check_name("baseline", str(name), list(BASELINES), f"{w}.baselines")
    if ev["supervised_seeds"] is not None:
        ev["supervised_seeds"] = _int_list(ev["supervised_seeds"], f"{w}.supervised_seeds")
        if "supervised" not in ev["baselines"]:
            raise ExperimentError(
                f"{w}.supervised_seeds: given, but 'supervised' is not in {w}.baselines"
            )
    if ev["baseline_encoders"] is not None:
        from pretrain.encoders import ENCODERS

        ev["baseline_encoders"] = _as_list(ev["baseline_encoders"])
        if not ev["baseline_encoders"]:
            raise ExperimentError(f"{w}.baseline_encoders: must not be empty (or null)")
        for name in ev["baseline_encoders"]:
            check_name("encoder", str(name), ENCODERS.names(), f"{w}.baseline_encoders")
    _check_external(exp, ev, w, base_dir)
    if not isinstance(ev["overrides"], dict):
        raise ExperimentError(f"{w}.overrides: expected a mapping of adapter options")
    every = sorted({k for n in ADAPTERS.names() for k in ADAPTERS.get(n).default_config})
    for key in ev["overrides"]:
        prefix, dot, rest = str(key).partition(".")
        if dot:
            check_name("adapter", prefix, ADAPTERS.names(), f"{w}.overrides.{key}")
            valid = sorted(ADAPTERS.get(prefix).default_config)
            check_name(f"option of {prefix}", rest, valid, f"{w}.overrides")
        else:
            check_name("adapter option", str(key), every, f"{w}.overrides")
    if exp["pretrain"] is None and not ev["baselines"]:
        raise ExperimentError(f"{w}: nothing to evaluate without 'pretrain' or baselines")
    _check_statistics(exp, ev, w)


def _check_external(exp: dict[str, Any], ev: dict[str, Any], w: str, base_dir: Path) -> None:
    """``evaluate.external``: encoder -> init weights (one or a list) of the ``external``
    baseline, files resolved; given exactly when ``external`` is among the baselines."""
    from pretrain.encoders.external import parse_init

    external = ev["external"] or {}
    if not isinstance(external, dict):
        raise ExperimentError(
            f"{w}.external: expected a mapping encoder -> init weights, e.g. "
            "{resnet18: timm:resnet18.a1_in1k}"
        )
    wanted = "external" in ev["baselines"]
    if wanted and not external:
        raise ExperimentError(
            f"{w}.baselines: 'external' needs its weights in evaluate.external, e.g. "
            "external: {resnet18: timm:resnet18.a1_in1k} (or the path of a state-dict file)"
        )
    if external and not wanted:
        raise ExperimentError(
            f"{w}.external: weights are given but 'external' is not in evaluate.baselines; "
            "add it there (or remove evaluate.external)"
        )
    archs = exp["pretrain"]["encoders"] if exp["pretrain"] else PRETRAIN_DEFAULTS["encoders"]
    check_keys(external, archs, f"{w}.external")
    resolved: dict[str, list[str]] = {}
    for arch, inits in external.items():
        specs = [
            _resolve_init(init, arch, f"{w}.external.{arch}", base_dir) for init in _as_list(inits)
        ]
        if not specs or "random" in specs:
            raise ExperimentError(
                f"{w}.external.{arch}: give timm:<tag> or a state-dict file ('random' is the "
                "scratch baseline)"
            )
        slugs = [parse_init(s).slug() for s in specs]
        dup = next((s for s in slugs if slugs.count(s) > 1), None)
        if dup is not None:
            raise ExperimentError(
                f"{w}.external.{arch}: two weights are named {dup!r}; rename one file (the name "
                "identifies the arm's jobs)"
            )
        resolved[str(arch)] = specs
    ev["external"] = resolved


def _check_statistics(exp: dict[str, Any], ev: dict[str, Any], w: str) -> None:
    """The leaderboard's statistics: enough resamples, a confidence in (0, 1), and >= 2
    evaluation seeds whenever the grid holds paired comparisons (pretrained vs baselines or
    vs real-only)."""
    stats = ev["statistics"]  # the defaults are merged in already (deep_merge)
    check_keys(stats, STATISTICS_KEYS, f"{w}.statistics")
    if not isinstance(stats["resamples"], int) or stats["resamples"] < 200:
        raise ExperimentError(
            f"{w}.statistics.resamples: a bootstrap needs >= 200 resamples, got "
            f"{stats['resamples']!r}"
        )
    if not isinstance(stats["confidence"], int | float) or not 0 < stats["confidence"] < 1:
        raise ExperimentError(
            f"{w}.statistics.confidence: must lie in (0, 1), got {stats['confidence']!r}"
        )
    if "primary" in stats:  # optional, no default: experiments without it keep their hash
        from benchmark.harness.families import primary_problem
        from tasks.spec import load_spec

        # comparisons name a task by its spec's name (a spec given as a path has one too)
        tasks = {
            load_spec(str(t["spec"])).name: [str(a) for a in t["adapters"]] for t in ev["tasks"]
        }
        fractions = [float(f) for f in ev["fractions"]]
        problem = primary_problem(stats["primary"], tasks, fractions, f"{w}.statistics.primary")
        if problem:
            raise ExperimentError(problem)
    pre = exp["pretrain"]
    compared = pre is not None and (
        bool(ev["baselines"]) or any(s != "real" for s in pre["sources"])
    )
    if compared and len(ev["seeds"]) < 2:
        raise ExperimentError(
            f"{w}.seeds: the leaderboard's paired comparisons need >= 2 evaluation seeds, got "
            f"{ev['seeds']} (5 recommended)"
        )


def _without_defaults(section: dict[str, Any], optional: dict[str, Any]) -> dict[str, Any]:
    """A section without the options that sit at their default (newer options)."""
    return {k: v for k, v in section.items() if k not in optional or v != optional[k]}


def experiment_hash(exp: Experiment) -> str:
    """The hash of a resolved experiment (recorded in every output of a run)."""
    return digest(exp.to_dict())


# -- the typed experiment ---------------------------------------------------------------
@dataclass
class GeneratorSection:
    """``generator:``: how the synthetic pool is made (see the module docstring)."""

    kind: str
    dataset: str | None
    train: dict[str, Any]
    checkpoint: str | None
    options: dict[str, Any]
    samples: int
    sample_steps: int
    seed: int
    report: bool
    drop_near_real: bool | dict[str, Any] = False


@dataclass
class PretrainSection:
    """``pretrain:``: the grid of sources x methods x encoders x seeds and its budget."""

    dataset: str
    sources: list[str]
    ratios: list[float]
    methods: list[str]
    encoders: list[str]
    seeds: list[int]
    steps: int
    batch_size: int
    image_size: int
    method_config: dict[str, dict[str, Any]]
    encoder_config: dict[str, dict[str, Any]]
    amp: str
    checkpoint_every: int
    nproc_per_node: int
    modes: list[str] = field(default_factory=lambda: ["replace"])
    real_weight: float = 1.0
    pool_size: int | str | None = None
    strengths: list[str | float] = field(default_factory=lambda: ["standard"])
    inflation: str | None = None
    curation: list[dict[str, Any] | None] = field(default_factory=lambda: [None])
    exclude: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TaskEntry:
    """One entry of ``evaluate.tasks``."""

    spec: str
    dataset: str | None
    adapters: list[str]
    image_size: int | None


@dataclass
class EvaluateSection:
    """``evaluate:``: tasks, label fractions, seeds, baselines and adapter overrides.

    ``external`` maps an encoder to the init weights of its ``external`` baseline arms
    (``timm:<tag>`` or resolved file paths; empty unless ``external`` is a baseline).
    """

    tasks: list[TaskEntry]
    fractions: list[float]
    seeds: list[int]
    baselines: list[str]
    overrides: dict[str, Any]
    statistics: dict[str, Any] = field(default_factory=dict)
    supervised_seeds: list[int] | None = None
    baseline_encoders: list[str] | None = None
    external: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class WandbSection:
    """``wandb:``: tracking (offline by default)."""

    mode: str | None = None
    project: str | None = None
    entity: str | None = None
    log_checkpoints: bool = False


@dataclass
class Experiment:
    """A resolved, validated experiment (:func:`load_experiment`).

    ``datasets`` maps a key to exactly one of ``{"phantom": {...}}``,
    ``{"convert": {...}}`` or ``{"path": "..."}`` (paths resolved). :meth:`to_dict`
    gives the plain mapping that is saved as ``experiment.yaml`` and hashed.
    """

    name: str
    description: str
    profile: str
    device: str
    datasets: dict[str, dict[str, Any]]
    generator: GeneratorSection | None
    pretrain: PretrainSection | None
    evaluate: EvaluateSection | None
    wandb: WandbSection = field(default_factory=WandbSection)

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping (the layout of an experiment file, every default filled in;
        an empty ``evaluate.external`` and an unset ``evaluate.supervised_seeds`` or
        ``evaluate.baseline_encoders`` are left out, so older experiments keep their hash)."""
        evaluate = dataclasses.asdict(self.evaluate) if self.evaluate else None
        if evaluate is not None and not evaluate["external"]:
            del evaluate["external"]
        if evaluate is not None and evaluate["supervised_seeds"] is None:
            del evaluate["supervised_seeds"]
        if evaluate is not None and evaluate["baseline_encoders"] is None:
            del evaluate["baseline_encoders"]
        return {
            "description": self.description,
            "profile": self.profile,
            "device": self.device,
            "datasets": copy.deepcopy(self.datasets),
            "generator": _without_defaults(
                dataclasses.asdict(self.generator), {"drop_near_real": False}
            )
            if self.generator
            else None,
            "pretrain": _without_defaults(dataclasses.asdict(self.pretrain), PRETRAIN_OPTIONAL)
            if self.pretrain
            else None,
            "evaluate": evaluate,
            "wandb": dataclasses.asdict(self.wandb),
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, exp: dict[str, Any]) -> Experiment:
        """Build from a resolved mapping (:func:`resolve_experiment`)."""
        ev = exp["evaluate"]
        evaluate = None
        if ev is not None:
            tasks = [TaskEntry(**t) for t in ev["tasks"]]
            evaluate = EvaluateSection(**{**ev, "tasks": tasks})
        return cls(
            name=exp["name"],
            description=exp["description"],
            profile=exp["profile"],
            device=exp["device"],
            datasets=exp["datasets"],
            generator=GeneratorSection(**exp["generator"]) if exp["generator"] else None,
            pretrain=PretrainSection(**exp["pretrain"]) if exp["pretrain"] else None,
            evaluate=evaluate,
            wandb=WandbSection(**(exp.get("wandb") or {})),
        )
