"""Label-fraction x seed sweeps of task adapters, one JSON record per cell.

A sweep evaluates one encoder checkpoint on one task with one or more
adapters over fractions x seeds, plus baselines:

* ``scratch``: the same encoder architecture randomly initialised (seeded by
  the evaluation seed), same adapters, recipe and cells; for the frozen-feature
  adapters (linear, kNN: ``trains_encoder`` False) its batch-norm statistics are
  first calibrated on the task's train split (issue 23; :mod:`tasks.taskdata`),
  the adapters that train the encoder get the raw random init;
* ``supervised``: the ``finetune`` adapter on 100 % of the labels from a random
  initialisation, one cell per seed (the fully supervised reference);
* ``external`` (on request): the same architecture initialised from external
  weights, ``init`` (a timm tag such as ``timm:resnet18.a1_in1k``, i.e. ImageNet
  weights, or a local state-dict file; :mod:`pretrain.encoders.external`), same
  adapters, recipe and cells: the "ImageNet init" arm.

Subsets (:func:`benchmark.data.splits.subset`) are stratified (by class, or by
mask emptiness for segmentation), patient-grouped and nested: for one seed the
training subset of a fraction contains that of every smaller fraction. The
validation split is subsampled by the same fraction, raised where needed to
hold one example per class present in it (``max(fraction, n_classes / n_val)``,
still nested); the test split is never subsampled.

Each cell writes ``OUT/records/<task>/<adapter>/<encoder-id>/frac<f>_seed<s>.json``
atomically (fields in :func:`make_record`). A cell whose record exists is
skipped, so an interrupted sweep resumes where it stopped; a record written
with different settings (task version, adapter config, dataset, encoder) is
an error unless ``overwrite`` is set. Frozen-feature adapters share a feature
cache in ``OUT/cache/features`` (see :mod:`tasks.features`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmark.core.allocator import tune_allocator
from benchmark.core.errors import OutputExistsError, SplitError, SSLBenchError
from benchmark.core.io import atomic_write_json, provenance
from benchmark.core.registry import unknown_name_error
from pretrain.encoders import Encoder
from tasks.adapters import ADAPTERS, CellData, CellResult
from tasks.features import check_image_size
from tasks.spec import TaskSpec, load_spec
from tasks.taskdata import CALIBRATION_SPLIT, EncoderSource, TaskData

#: Version 2: one recipe for every arm (learning rate chosen on validation from a declared
#: grid), step budgets, per-case test outputs (``per_case``). Version 1 records are the
#: legacy protocol: read and shown, never compared with version 2 ones.
RECORD_SCHEMA = "sslbench-cell/2"
BASELINES = ("scratch", "supervised", "external")
#: Baselines of a sweep unless told otherwise (``external`` needs ``init`` weights).
DEFAULT_BASELINES = ("scratch", "supervised")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Fields compared to decide whether an existing record belongs to the same cell.
FINGERPRINT = ("task_version", "adapter_config", "dataset_hash", "encoder_hash")


def parse_fractions(value: str | list[float] | tuple[float, ...]) -> list[float]:
    """Fractions from ``"0.01,0.1,1"`` or a list: each in (0, 1], strictly increasing."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise SplitError(f"fraction {item!r} is not a number") from None
        if not (0.0 < f <= 1.0) or math.isnan(f):
            raise SplitError(f"fraction {f:g} is outside (0, 1]")
        out.append(f)
    if not out:
        raise SplitError("no fractions given")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise SplitError(f"fractions must be strictly increasing, got {out}")
    return out


def parse_seeds(value: str | list[int] | tuple[int, ...]) -> list[int]:
    """Seeds from ``"0,1,2"`` or a list: distinct non-negative integers."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [int(str(s).strip()) for s in items]
    except ValueError:
        raise SSLBenchError(f"seeds must be integers, got {value!r}") from None
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise SSLBenchError(f"seeds must be distinct non-negative integers, got {value!r}")
    return out


def fraction_tag(fraction: float) -> str:
    """``0.01`` -> ``"0.01"``, ``1.0`` -> ``"1"`` (file names)."""
    return f"{fraction:g}"


# -- cells and records --------------------------------------------------------------
@dataclass
class Cell:
    """One (adapter, encoder, fraction, seed) evaluation."""

    adapter: str
    config: dict[str, Any]
    source: EncoderSource
    fraction: float
    seed: int
    #: An identical cell planned earlier (a supervised cell equal to a scratch one).
    twin: Cell | None = None

    def record_path(self, out: Path, task: str) -> Path:
        return (
            out
            / "records"
            / task
            / self.adapter
            / self.source.id
            / f"frac{fraction_tag(self.fraction)}_seed{self.seed}.json"
        )


def _sha(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def make_record(
    cell: Cell,
    task: TaskData,
    data: CellData,
    result: CellResult,
    run_config: dict[str, Any],
    prov: dict[str, Any],
) -> dict[str, Any]:
    """The JSON record of a finished cell."""
    spec = task.spec
    return {
        "schema": RECORD_SCHEMA,
        "task": {
            "name": spec.name,
            "version": spec.version,
            "target": spec.target,
            "spec": spec.to_dict(),
        },
        "adapter": {"name": cell.adapter, "config": cell.config},
        "baseline": cell.source.baseline,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "subset": {
            "train_indices": data.train.tolist(),
            "val_indices": data.val.tolist(),
            "train_sha256": _sha(data.train),
            "val_sha256": _sha(data.val),
            "test_sha256": _sha(data.test),
        },
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "primary_metric": spec.primary_metric,
        "metrics": result.metrics,
        "val_metrics": result.val_metrics,
        "extra": result.extra,
        "per_case": result.per_case,
        "train_time_s": round(result.train_time_s, 4),
        "eval_time_s": round(result.eval_time_s, 4),
        "encoder": cell.source.describe(cell.seed),
        "dataset": {"path": str(task.path), "content_hash": task.content_hash},
        "fingerprint": fingerprint(cell, task),
        "config": run_config,
        "provenance": {**prov, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }


def fingerprint(cell: Cell, task: TaskData) -> dict[str, Any]:
    """What must match for an existing record to count as this cell's result."""
    return {
        "task_version": task.spec.version,
        "adapter_config": json.loads(json.dumps(cell.config, default=str)),
        "dataset_hash": task.content_hash,
        "encoder_hash": cell.source.hash_for(cell.seed),
    }


def _existing(path: Path, fp: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The record at ``path`` if it is this cell's; None if absent (or overwriting)."""
    if overwrite or not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # unreadable leftovers are recomputed
    if record.get("fingerprint") != fp:
        diff = [k for k in FINGERPRINT if record.get("fingerprint", {}).get(k) != fp[k]]
        raise OutputExistsError(
            f"{path}: record exists with different {', '.join(diff) or 'settings'}; "
            "pass --overwrite to replace it or choose another output folder"
        )
    return dict(record)


# -- the sweep ------------------------------------------------------------------------
@dataclass
class SweepConfig:
    """Everything a sweep depends on (recorded in every record as ``config``).

    Attributes:
        encoder: Encoder checkpoint folder; empty to run only the baselines of
            ``architecture``.
        task: Task spec name or YAML path.
        adapters: Adapters to run (default: the spec's ``adapters``).
        fractions: Label fractions, strictly increasing in (0, 1].
        seeds: Evaluation seeds (subsets, training and scratch initialisation).
        output: Output folder (records, feature cache, summaries).
        baselines: Any of ``scratch``, ``supervised`` and ``external``.
        supervised_seeds: Seeds of the ``supervised`` baseline (default: ``seeds``).
            The full-label reference enters no paired comparison, so a sweep may
            give it fewer seeds than the compared arms (its interval then
            resamples those seeds only; the leaderboard shows the count).
        data_root: Root for relative dataset paths of the spec.
        device: ``cpu``, ``cuda`` or ``auto``.
        overrides: Adapter options ``{"key": v}`` (every adapter having it) or
            ``{"adapter.key": v}``.
        overwrite: Recompute cells whose record exists.
        cache: Use the feature cache (``False`` re-extracts features in every cell).
        cache_dir: Feature cache folder (default ``output/cache/features``).
        encoder_name: Records folder label of the checkpoint (default: its folder name).
        progress: Show a progress bar.
        dataset: Dataset file replacing the spec's ``dataset`` (e.g. a runner's
            converted file).
        image_size: Image size replacing the spec's ``image_size``.
        architecture: ``{"name": ..., "args": {...}}`` of the baselines when no
            ``encoder`` checkpoint is given.
        keep_going: Record a failing cell (``failures`` of the result) and go on
            with the others instead of raising.
        init: Weights of the ``external`` baseline: ``timm:<tag>`` or a weights file
            (:mod:`pretrain.encoders.external`), loaded into the sweep's architecture.
    """

    encoder: str | None
    task: str
    adapters: list[str] | None = None
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    output: str = "results"
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    supervised_seeds: list[int] | None = None
    data_root: str | None = None
    device: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    cache: bool = True
    cache_dir: str | None = None
    encoder_name: str | None = None
    progress: bool = True
    dataset: str | None = None
    image_size: int | None = None
    architecture: dict[str, Any] | None = None
    keep_going: bool = False
    init: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = json.loads(json.dumps(asdict(self), default=str))
        if out["supervised_seeds"] is None:  # the default: records keep their old config
            del out["supervised_seeds"]
        return out


@dataclass
class SweepResult:
    """Records of a sweep and what happened to each cell."""

    records: list[dict[str, Any]]
    paths: list[Path]
    ran: int
    skipped: int
    reused: int
    time_s: float
    failures: list[dict[str, Any]] = field(default_factory=list)


def adapter_configs(
    spec: TaskSpec, names: list[str], overrides: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Resolved options of each adapter: defaults < spec protocol < overrides."""
    opts = {n: spec.adapter_options(n) for n in names}
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in opts:
            opts[prefix][rest] = value
            continue
        targets = [n for n in names if key in ADAPTERS.get(n).default_config]
        if not targets:
            valid = sorted({k for n in names for k in ADAPTERS.get(n).default_config})
            raise unknown_name_error(f"option of adapters {names}", key, valid)
        for n in targets:
            opts[n][key] = value
    return {n: dict(ADAPTERS.create(n, **o).config) for n, o in opts.items()}


def sweep_overrides(
    overrides: dict[str, Any], adapters: list[str], spec_name: str, baselines: list[str]
) -> dict[str, Any]:
    """The experiment's adapter overrides that apply to one sweep's adapters.

    ``adapter.key`` applies to that adapter only; a bare ``key`` to every adapter
    of the sweep having that option (including the supervised baseline's).
    """
    names = list(adapters)
    if "supervised" in baselines:
        names.append(supervised_adapter(load_spec(spec_name)))
    out = {}
    for key, value in overrides.items():
        prefix, dot, _ = key.partition(".")
        if dot and prefix in ADAPTERS:
            if prefix in names:
                out[key] = value
        elif any(key in ADAPTERS.get(n).default_config for n in names):
            out[key] = value
    return out


def supervised_seeds(cfg: SweepConfig) -> list[int]:
    """The seeds of a sweep's ``supervised`` cells (``supervised_seeds``, else ``seeds``)."""
    return list(cfg.seeds if cfg.supervised_seeds is None else cfg.supervised_seeds)


def supervised_adapter(spec: TaskSpec) -> str:
    """The end-to-end adapter of the ``supervised`` baseline.

    The first of the task's adapters, then of all registered adapters, that trains
    the encoder on the task's target (``finetune`` for labels, ``segmentation`` for
    masks): each adapter declares ``trains_encoder`` and ``target`` itself.
    """
    names = [n for n in spec.adapters if n in ADAPTERS] + ADAPTERS.names()
    for name in names:
        adapter = ADAPTERS.get(name)
        if adapter.trains_encoder and adapter.target == spec.target:
            return ADAPTERS.resolve(name)
    raise SSLBenchError(
        f"task {spec.name!r} has no end-to-end adapter for the supervised baseline; "
        "pass --baselines scratch (or none)"
    )


def plan_cells(spec: TaskSpec, source: EncoderSource, cfg: SweepConfig) -> list[Cell]:
    """Cells in run order: encoder, then seed, then adapter, then fraction."""
    adapters = list(cfg.adapters or spec.adapters)
    if not adapters:
        raise SSLBenchError(f"task {spec.name!r} lists no adapters; pass --adapter")
    for name in adapters:
        cls = ADAPTERS.get(name)
        if cls.target != spec.target:
            raise SSLBenchError(
                f"adapter {name!r} predicts {cls.target} but task {spec.name!r} predicts "
                f"{spec.target}"
            )
    bad = [b for b in cfg.baselines if b not in BASELINES]
    if bad:
        raise unknown_name_error("baseline", bad[0], list(BASELINES))
    sup = supervised_adapter(spec) if "supervised" in cfg.baselines else None
    names = adapters + ([sup] if sup and sup not in adapters else [])
    configs = adapter_configs(spec, names, cfg.overrides)
    sources = [source] if source.kind == "checkpoint" else []
    scratch_frozen = EncoderSource.scratch(
        source.name, source.args, "scratch", calibrate=CALIBRATION_SPLIT
    )
    if "scratch" in cfg.baselines:
        sources.append(EncoderSource.scratch(source.name, source.args, "scratch"))
    if "external" in cfg.baselines:
        if not cfg.init:
            raise SSLBenchError(
                "the external baseline needs its weights: init timm:<tag> (e.g. "
                "timm:resnet18.a1_in1k) or the path of a state-dict file (--init)"
            )
        sources.append(EncoderSource.external(source.name, source.args, cfg.init))

    def arm(src: EncoderSource, adapter: str) -> EncoderSource:
        """The scratch arm of a frozen-feature adapter is the BN-calibrated random init."""
        frozen = not ADAPTERS.get(adapter).trains_encoder
        return scratch_frozen if src.baseline == "scratch" and frozen else src

    cells = [
        Cell(a, configs[a], arm(src, a), f, s)
        for src in sources
        for s in cfg.seeds
        for a in adapters
        for f in cfg.fractions
    ]
    if sup:
        src = EncoderSource.scratch(source.name, source.args, "supervised")
        for s in supervised_seeds(cfg):
            twin = next(
                (
                    c
                    for c in cells
                    if c.source.baseline == "scratch"
                    and c.adapter == sup
                    and c.fraction == 1.0
                    and c.seed == s
                ),
                None,
            )
            cells.append(Cell(sup, configs[sup], src, 1.0, s, twin))
    return cells


class _Runner:
    """State shared by the cells of one sweep (encoders, subsets, provenance)."""

    def __init__(self, cfg: SweepConfig, spec: TaskSpec, task: TaskData, device: str) -> None:
        self.cfg, self.spec, self.task, self.device = cfg, spec, task, device
        self.out = Path(cfg.output)
        default_cache = self.out / "cache" / "features"
        self.cache_dir = (
            (Path(cfg.cache_dir) if cfg.cache_dir else default_cache) if cfg.cache else None
        )
        self.encoders: dict[tuple[str, int], Encoder] = {}
        self.kept: set[str] = set()  # ids of checkpoint encoders (never evicted)
        self.subsets: dict[tuple[float, int], CellData] = {}
        self.prov = provenance()
        self.run_config = cfg.to_dict()

    def encoder(self, source: EncoderSource, seed: int) -> Encoder:
        """A checkpoint or external encoder (loaded once) or the scratch encoder of ``seed``
        (latest kept)."""
        key = (source.id, seed if source.seeded else 0)
        if key not in self.encoders:
            if source.seeded:  # keep loaded weights, drop the scratch encoders of other seeds
                self.encoders = {
                    k: v for k, v in self.encoders.items() if k[0] in self.kept or k[1] == seed
                }
            else:
                self.kept.add(source.id)
            encoder = source.build(seed, self.device)
            if source.calibrate:  # the frozen-feature scratch arm (issue 23)
                images = self.task.split_images(source.calibrate, int(encoder.in_chans))
                source.calibrate_encoder(encoder, images, self.device)
            self.encoders[key] = encoder
        return self.encoders[key]

    def run(self, cell: Cell) -> dict[str, Any]:
        """Run one cell and return its record."""
        key = (cell.fraction, cell.seed)
        if key not in self.subsets:
            self.subsets[key] = self.task.cell(cell.fraction, cell.seed)
        data = self.subsets[key]
        encoder = self.encoder(cell.source, cell.seed)
        adapter = ADAPTERS.create(cell.adapter, **cell.config)
        adapter.check(encoder, data)
        result = adapter.run(encoder, data, cell.seed, device=self.device, cache_dir=self.cache_dir)
        record = make_record(cell, self.task, data, result, self.run_config, self.prov)
        calibration = getattr(encoder, "bn_calibration", None)
        if calibration is not None:
            record["encoder"]["metadata"]["bn_calibration"] = dict(calibration)
        return record

    def reuse(self, cell: Cell) -> dict[str, Any] | None:
        """The record of ``cell.twin`` relabelled for ``cell``, if it exists and matches."""
        if cell.twin is None:
            return None
        path = cell.twin.record_path(self.out, self.spec.name)
        twin = _existing(path, fingerprint(cell.twin, self.task), overwrite=False)
        if twin is None:
            return None
        return {
            **twin,
            "baseline": cell.source.baseline,
            "reused_from": str(path),
            "encoder": cell.source.describe(cell.seed),
        }


def sweep_spec(cfg: SweepConfig) -> TaskSpec:
    """The sweep's task spec with the config's dataset and image size applied."""
    import dataclasses

    from tasks.spec import load_spec

    spec = load_spec(cfg.task)
    if cfg.dataset is not None:
        spec = dataclasses.replace(spec, dataset=str(cfg.dataset))
    if cfg.image_size is not None:
        spec = dataclasses.replace(spec, image_size=int(cfg.image_size))
    return spec


def sweep_source(cfg: SweepConfig) -> EncoderSource:
    """The sweep's encoder: the checkpoint, or the baselines' architecture."""
    if cfg.encoder:
        return EncoderSource.from_checkpoint(cfg.encoder, cfg.encoder_name)
    arch = cfg.architecture or {}
    if "name" not in arch:
        raise SSLBenchError("a sweep needs an encoder checkpoint or an architecture")
    if not cfg.baselines:
        raise SSLBenchError("a sweep without an encoder checkpoint needs baselines")
    return EncoderSource.scratch(str(arch["name"]), dict(arch.get("args") or {}))


def run_sweep(cfg: SweepConfig, on_cell: Callable[[Cell, str], None] | None = None) -> SweepResult:
    """Run (or resume) a sweep; see the module docstring.

    Args:
        cfg: The sweep.
        on_cell: Called after each cell with its status (``ran``, ``skipped``,
            ``reused`` or ``failed``), e.g. to drive a progress display.
    """
    from benchmark.core.device import resolve_device

    tune_allocator()
    start = time.perf_counter()
    cfg.fractions = parse_fractions(cfg.fractions)
    cfg.seeds = parse_seeds(cfg.seeds)
    if cfg.supervised_seeds is not None:
        cfg.supervised_seeds = parse_seeds(cfg.supervised_seeds)
    spec = sweep_spec(cfg)
    spec.check_registries()
    source = sweep_source(cfg)
    task = TaskData.load(spec, cfg.data_root)
    cells = plan_cells(spec, source, cfg)
    runner = _Runner(cfg, spec, task, str(resolve_device(cfg.device)))
    check_image_size(runner.encoder(source, 0), spec.image_size)  # fail before any cell
    for f in cfg.fractions:  # draw every subset first: an impossible one fails here
        for s in cfg.seeds:
            runner.subsets[(f, s)] = task.cell(f, s)
    if any(c.fraction == 1.0 for c in cells):
        for s in sorted(set(cfg.seeds) | set(supervised_seeds(cfg))):
            runner.subsets.setdefault((1.0, s), task.cell(1.0, s))
    records, paths, failures = [], [], []
    ran = skipped = reused = 0
    bar = tqdm(
        cells,
        desc=f"evaluate {spec.name}",
        unit="cell",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    for cell in bar:
        bar.set_postfix_str(
            f"{cell.adapter} {cell.source.id} f={fraction_tag(cell.fraction)} s={cell.seed}"
        )
        path = cell.record_path(runner.out, spec.name)
        record = _existing(path, fingerprint(cell, task), cfg.overwrite)
        status = "skipped"
        if record is not None:
            skipped += 1
        else:
            try:
                record = runner.reuse(cell)
                if record is not None:
                    status, reused = "reused", reused + 1
                else:
                    record = runner.run(cell)
                    status, ran = "ran", ran + 1
            except Exception as exc:
                if not cfg.keep_going:
                    raise
                failures.append(_failure(cell, spec.name, path, exc))
                if on_cell is not None:
                    on_cell(cell, "failed")
                continue
            atomic_write_json(path, record)
            record = json.loads(path.read_text())  # as written: NaN -> null, tuples -> lists
        records.append(record)
        paths.append(path)
        if on_cell is not None:
            on_cell(cell, status)
    bar.close()
    return SweepResult(records, paths, ran, skipped, reused, time.perf_counter() - start, failures)


def _failure(cell: Cell, task: str, path: Path, exc: BaseException) -> dict[str, Any]:
    """What is recorded about a failed cell."""
    import traceback

    return {
        "task": task,
        "adapter": cell.adapter,
        "encoder": cell.source.id,
        "baseline": cell.source.baseline,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "record": str(path),
        "error": f"{exc.__class__.__name__}: {exc}",
        "traceback": traceback.format_exc(limit=8),
    }
