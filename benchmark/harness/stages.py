"""How each kind of job runs: convert, generate, curate, pretrain, evaluate.

Each function takes the job and the run context and returns a small JSON-able
summary of its outputs that the runner saves in the job's marker file. A stage
reads only its job (``config``, ``run``) and the recorded outputs of the jobs it
depends on (:meth:`Context.output`), never the experiment: the job key covers
every input by construction. Outputs are written
atomically by the underlying commands, and every long stage resumes: DDPM and
pretraining runs continue from their last checkpoint, sweeps skip recorded
cells.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.errors import SSLBenchError
from benchmark.core.io import read_json
from benchmark.data.h5format import read_meta
from benchmark.harness.health import compact, wandb_summary
from benchmark.harness.jobs import Job
from benchmark.harness.ledger import Outcome, marker_path
from benchmark.harness.tracking import RunHandle, Tracker


@dataclass
class Context:
    """What the stages of one run share: where results go, tracking, the device."""

    results: Path
    tracker: Tracker
    device: str = "cpu"
    on_cell: Callable[[Any, str], None] | None = None

    def output(self, job: Job, stage: str) -> dict[str, Any]:
        """The recorded outputs of ``job``'s one dependency of ``stage`` (a stage or job id)."""
        found = [d for d in job.deps if d == stage or d.split("/")[0] == stage]
        if len(found) != 1:
            raise SSLBenchError(f"{job.id}: expected one {stage} dependency, got {found}")
        marker = read_json(marker_path(self.results, found[0])) or {}
        if marker.get("status") != "ok":
            raise SSLBenchError(f"{job.id}: dependency {found[0]} has not finished")
        return dict(marker.get("outputs") or {})


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_data(job: Job, ctx: Context) -> dict[str, Any]:
    """Convert a dataset, generate a phantom, or check an existing file."""
    from benchmark.data.h5format import compute_content_hash

    if "phantom" in job.config:
        from benchmark.data.phantom import generate_phantom

        generate_phantom(job.out, overwrite=True, **job.config["phantom"])
    elif "convert" in job.config:
        from benchmark.data.converters import CONVERTERS

        opts = job.config["convert"]
        options = {k: v for k, v in opts.items() if k not in ("kind", "source")}
        converter = CONVERTERS.create(opts["kind"], **options)
        converter.convert(Path(job.run["src"]), job.out, overwrite=True)
    content_hash = compute_content_hash(job.out)
    expected = (job.config.get("path") or {}).get("content_hash")
    if expected is not None and content_hash != expected:
        raise SSLBenchError(
            f"{job.out}: content hash {content_hash[:12]}... differs from the one the file "
            f"records ({str(expected)[:12]}...): the file is corrupted or was edited in place"
        )
    return {"path": str(job.out), "content_hash": content_hash}


def check_matched_pool(job: Job, data: Path | None) -> None:
    """Refuse a generator job whose sample count cannot fill a pool matched to the real
    train split (``job.run["matched_pool_samples"]``, set by the planner).

    Raises:
        SSLBenchError: Fewer samples than train images, naming both and the fix.
    """
    samples = job.run.get("matched_pool_samples")
    if samples is None or data is None:
        return
    from pretrain.sources.base import resolve_pool_size

    n_train = resolve_pool_size("matched", data, "synthetic")
    if n_train is not None and int(samples) < n_train:
        raise SSLBenchError(
            f"{job.id}: generator.samples is {samples}, but pretrain.pool_size 'matched' "
            f"needs a synthetic pool as large as the {n_train}-image train split of "
            f"{data.name} (the synthetic and mixed arms would fail after the generator "
            f"trained); set generator.samples to at least {n_train}, more if "
            "drop_near_real may drop some"
        )


def run_generator_train(job: Job, ctx: Context) -> dict[str, Any]:
    """Train (or resume) a trainable generator on the train split of its dataset."""
    from pretrain.generators.base import GENERATOR_TRAINERS

    data = Path(ctx.output(job, "data")["path"])
    check_matched_pool(job, data)
    trainer = GENERATOR_TRAINERS.get(job.config["kind"])
    with ctx.tracker.run(job.id, "generate", job.config) as wb:
        out = trainer.fit(data, job.out, dict(job.config["train"]), ctx.device)
        meta = read_json(out / "generator.json") or {}
        wb.log_history(_jsonl(out / "metrics.jsonl"))
        wb.summary(
            {k: meta[k] for k in ("final_loss", "images_per_s", "train_time_s") if k in meta}
        )
        grids = sorted((out / "samples").glob("*.png"))
        if grids:
            wb.images({"samples": grids[-1]})
    return {
        "path": str(out),
        "train_time_s": meta.get("train_time_s"),
        "final_loss": meta.get("final_loss"),
    }


def run_generator_sample(job: Job, ctx: Context) -> dict[str, Any]:
    """Sample the synthetic set (and write its quality report)."""
    from pretrain.generators import GENERATORS, write_synthetic

    cfg = job.config
    cls = GENERATORS.get(cfg["kind"])
    like = Path(ctx.output(job, "data")["path"]) if cfg["like"] else None
    check_matched_pool(job, like)
    if cls.trainable:
        folder = job.run.get("checkpoint") or ctx.output(job, "generate/train")["path"]
        _check_training_data(Path(folder), like)
        # samples are written on the real file's grid (a generator trained at a smaller
        # size is resized up), so that real, synthetic and mixed pools are interchangeable
        shape = tuple(read_meta(like)["image_shape"]) if like is not None else None
        gen = cls.load(  # type: ignore[attr-defined]
            folder, steps=cfg["sample_steps"], device=ctx.device, output_shape=shape
        )
    else:
        options = {
            **dict(cfg["options"]),
            **{k: job.run[k] for k in cls.path_options if k in job.run},
        }
        if cls.takes_like and like is not None:
            options.setdefault("like", str(like))
        gen = GENERATORS.create(cfg["kind"], **options)
    with ctx.tracker.run(job.id, "generate", cfg) as wb:
        near = cfg.get("drop_near_real")
        raw = job.out.with_name(job.out.stem + "-unfiltered.h5") if near else job.out
        write_synthetic(gen, cfg["samples"], raw, seed=cfg["seed"], overwrite=True, progress=False)
        summary: dict[str, Any] = {"path": str(job.out), "samples": cfg["samples"]}
        if near:
            if like is None:
                raise SSLBenchError(f"{job.id}: drop_near_real needs the generator's dataset")
            summary["near_real_filter"] = _drop_near_real(raw, job.out, like, near)
            summary["samples"] = summary["near_real_filter"]["train_kept"]
            wb.summary({"near_real_dropped": summary["near_real_filter"]["dropped_near_real"]})
        if cfg["report"] and like is not None:
            from pretrain.generators.report import synth_report

            report_dir = job.out.with_name(job.out.stem + "-report")
            rep = synth_report(job.out, like, report_dir, overwrite=True)
            summary["report"] = str(report_dir)
            flat = _flat_numbers(rep, ("fidelity", "diversity", "memorisation"))
            wb.summary(flat)
            summary["report_metrics"] = flat
            figure = report_dir / "samples_real_vs_synthetic.png"
            if figure.exists():
                wb.images({"real_vs_synthetic": figure})
    return summary


def _drop_near_real(raw: Path, out: Path, real: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Write ``raw``'s samples to ``out`` without those that near-duplicate a train image
    of ``real`` (the dhash+corr memorisation filter; volumes compared whole); returns the
    curation record (counts and options), which ``out`` also holds in its metadata."""
    from benchmark.data.curation import CURATORS, curate_file

    opts = {k: v for k, v in options.items() if k != "curator"}
    curator = CURATORS.create(str(options.get("curator", "dhash")), scope="dataset", **opts)
    record = curate_file(
        raw, out, curator, drop_near=real, overwrite=True, unit="volume", prune=False
    )
    return record


def run_curate(job: Job, ctx: Context) -> dict[str, Any]:
    """Prune the real train split (Less is More) into the pool of the curated arms."""
    from benchmark.data.curation import CURATORS, curate_file
    from benchmark.data.h5format import compute_content_hash

    cfg = job.config
    data = Path(ctx.output(job, "data")["path"])
    curator = CURATORS.create(cfg["curator"], **cfg["options"])
    with ctx.tracker.run(job.id, "curate", cfg) as wb:
        # whole volumes for 3D files (a 3D encoder pretrains on the pool); 2D files ignore it
        record = curate_file(data, job.out, curator, overwrite=True, unit="volume")
        wb.summary({k: record[k] for k in ("train_in", "train_kept", "kept_fraction")})
    return {
        "path": str(job.out),
        "content_hash": compute_content_hash(job.out),
        "label": cfg["label"],
        "curation": record,
    }


def _check_training_data(folder: Path, real: Path | None) -> None:
    """Refuse a generator that was not trained on the experiment's real train split."""
    from benchmark.data.h5format import compute_content_hash

    meta = read_json(folder / "generator.json") or {}
    trained_on = (meta.get("training_data") or {}).get("content_hash")
    if real is not None and trained_on != compute_content_hash(real):
        raise SSLBenchError(
            f"{folder}: the generator was trained on data with content hash "
            f"{str(trained_on)[:12]}..., not on {real}; train it on the experiment's dataset"
        )


def _flat_numbers(report: dict[str, Any], sections: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            out[prefix] = float(node)

    for s in sections:
        walk(s, report.get(s, {}))
    return out


def run_pretrain(job: Job, ctx: Context) -> dict[str, Any]:
    """Pretrain (or resume) one strategy's encoder.

    Every source's run monitors kNN accuracy on the experiment's dataset (the ``data``
    dependency; :mod:`pretrain.monitor`), so the outputs carry the run's health verdict
    (:func:`benchmark.harness.health.compact`), which W&B gets in the run summary.
    """
    from pretrain.train import PretrainConfig, pretrain

    cfg = {k: v for k, v in job.config.items() if k != "label"}
    real = str(ctx.output(job, "data")["path"])
    if cfg.get("curation"):  # the real pool is the curated file; its record is provenance
        curated = ctx.output(job, "curate")
        real = str(curated["path"])
        keep = ("curator", "options", "unit", "train_in", "train_kept", "kept_fraction")
        cfg["curation"] = {
            "label": curated["label"],
            **{k: curated["curation"][k] for k in keep},
        }
    if job.run.get("init"):  # the key holds the weights' identity, ``run`` their location
        cfg["encoder_config"] = {**cfg["encoder_config"], "init": job.run["init"]}
    data = str(ctx.output(job, "data")["path"])
    synthetic = ctx.output(job, "generate/sample")["path"] if cfg["synthetic"] else None
    if cfg.get("pool_size") == "matched" and (not cfg["real"] or cfg.get("curation")):
        # a synthetic-only arm matches its pool to the dataset's train split, and so does
        # the synthetic part of a curated arm (not to the pruned pool: its unpruned
        # reference must differ in the real pool only)
        from pretrain.sources.base import resolve_pool_size

        cfg["pool_size"] = resolve_pool_size("matched", data, cfg["source"])
    config = PretrainConfig(
        **{
            **cfg,
            "real": real if cfg["real"] else None,
            "synthetic": str(synthetic) if synthetic else None,
            # the labelled dataset of the kNN monitor, also for synthetic-only runs
            "monitor_data": data,
            "device": ctx.device,
        }
    )
    config.validate()
    nproc = int(job.run.get("nproc_per_node") or 1)
    with ctx.tracker.run(job.id, "pretrain", job.config) as wb:
        if nproc > 1:  # data-parallel under torchrun (pretrain.distributed)
            from pretrain.distributed import launch_torchrun

            summary = launch_torchrun(config, job.out, nproc)
        else:
            summary = pretrain(config, job.out, resume=True, progress=False).summary
        wb.log_history(_jsonl(job.out / "metrics.jsonl"))
        wb.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
        health = compact(summary.get("health"))
        if health is not None:
            wb.summary(wandb_summary(health))
        if ctx.tracker.log_checkpoints:
            wb.artifact(job.out / "encoder", f"encoder-{job.slug}", "model")
    return {
        "checkpoint": str(job.out / "encoder"),
        "train_time_s": summary.get("train_time_s"),
        "world_size": nproc,
        "health": health,
    }


def run_evaluate(job: Job, ctx: Context) -> dict[str, Any]:
    """Run (or resume) one sweep: a strategy's encoder, the baselines, or an ``external``
    arm (its weights' location in ``job.run["init"]``)."""
    from tasks.sweep import SweepConfig, run_sweep, sweep_overrides

    cfg = job.config
    data = Path(ctx.output(job, "data")["path"]) if cfg["dataset"] else None
    encoder, arch = None, None
    if cfg.get("encoder"):
        encoder = str(ctx.output(job, "pretrain")["checkpoint"])
    else:
        arch = _architecture(cfg["architecture"], data)
    sweep = SweepConfig(
        encoder=encoder,
        task=cfg["spec"],
        adapters=list(cfg["adapters"]),
        fractions=list(cfg["fractions"]),
        seeds=list(cfg["seeds"]),
        output=job.run["output"],
        baselines=list(cfg["baselines"]),
        supervised_seeds=cfg.get("supervised_seeds"),
        device=ctx.device,
        overrides=sweep_overrides(cfg["overrides"], cfg["adapters"], cfg["spec"], cfg["baselines"]),
        cache_dir=str(ctx.results / "cache" / "features"),
        encoder_name=cfg.get("encoder"),
        progress=False,
        dataset=str(data) if data else None,
        image_size=cfg["image_size"],
        architecture=arch,
        keep_going=True,
        init=job.run.get("init"),
    )
    with ctx.tracker.run(job.id, "evaluate", {**cfg, "sweep": sweep.to_dict()}) as wb:
        result = run_sweep(sweep, on_cell=ctx.on_cell)
        _log_sweep(wb, result.records)
    failed = [
        f"{f['adapter']} f={f['fraction']:g} s={f['seed']}: {f['error']}" for f in result.failures
    ]
    out = {
        "records": [str(p.relative_to(ctx.results)) for p in result.paths],
        "ran": result.ran,
        "skipped": result.skipped,
        "reused": result.reused,
        "failures": result.failures,
    }
    if failed:
        raise CellFailures(out, failed)
    return out


class CellFailures(SSLBenchError):
    """Some cells of a sweep failed; the others were recorded."""

    def __init__(self, summary: dict[str, Any], failed: list[str]) -> None:
        super().__init__(f"{len(failed)} cell(s) failed: " + "; ".join(failed[:3]))
        self.summary = summary


def _architecture(planned: dict[str, Any], data: Path | None) -> dict[str, Any]:
    """The baselines' encoder: the planned name and args, with the data's input channels."""
    args: dict[str, Any] = {}
    if data is not None:
        args["in_chans"] = int(read_meta(data)["image_shape"][0])
    args.update(planned["args"])
    return {"name": planned["name"], "args": args}


def _log_sweep(wb: RunHandle, records: list[dict[str, Any]]) -> None:
    if not wb.active or not records:
        return
    rows = []
    for r in records:
        primary = r["primary_metric"]
        rows.append(
            [
                r["task"]["name"],
                r["adapter"]["name"],
                r.get("baseline") or r["encoder"]["id"],
                r["fraction"],
                r["seed"],
                r["metrics"].get(primary),
            ]
        )
    wb.table("cells", ["task", "adapter", "encoder", "fraction", "seed", "primary"], rows)
    final: dict[str, float] = {}
    for r in records:
        key = f"{r['adapter']['name']}/frac{r['fraction']:g}/seed{r['seed']}"
        value = r["metrics"].get(r["primary_metric"])
        if isinstance(value, int | float):
            final[key] = float(value)
    wb.summary(final)


_STAGE_FN = {
    "data": run_data,
    "generate/train": run_generator_train,
    "generate/sample": run_generator_sample,
    "curate": run_curate,
    "pretrain": run_pretrain,
    "evaluate": run_evaluate,
}


def _fn(job: Job) -> Any:
    return _STAGE_FN.get(job.id) or _STAGE_FN[job.stage]


def run_job(job: Job, ctx: Context) -> Outcome:
    """Run one job in this process, catching its error (KeyboardInterrupt propagates)."""
    t0 = time.perf_counter()
    try:
        out = _fn(job)(job, ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return Outcome(
            False,
            error=f"{exc.__class__.__name__}: {exc}",
            traceback=traceback.format_exc(limit=12),
            partial=exc.summary if isinstance(exc, CellFailures) else None,
            wall_s=time.perf_counter() - t0,
        )
    return Outcome(True, out=out, wall_s=time.perf_counter() - t0)
