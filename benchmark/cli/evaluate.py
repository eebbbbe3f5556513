"""``sslbench evaluate``: label-fraction sweeps of task adapters on an encoder checkpoint.

Example::

    sslbench evaluate --encoder runs/simclr/encoder --task busi-cls --adapter linear \\
        --fractions 0.01,0.05,0.1,0.25,0.5,1.0 --seeds 0,1,2 -o results/

    # plus an ImageNet-init arm of the checkpoint's architecture (a local file offline)
    sslbench evaluate --encoder runs/simclr/encoder --task busi-cls \\
        --baselines scratch,supervised,external --init timm:resnet18.a1_in1k

Wire it into the main parser with :func:`add_evaluate_command`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Default ``--fractions`` (kept equal to :data:`tasks.sweep.DEFAULT_FRACTIONS`;
#: not imported from there so that building the parser stays cheap).
DEFAULT_FRACTIONS = "0.01,0.05,0.1,0.25,0.5,1"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from benchmark.cli.args import parse_assignments
    from benchmark.core.errors import SSLBenchError
    from benchmark.core.io import atomic_write_json
    from tasks.spec import available_specs, load_spec
    from tasks.sweep import SweepConfig, run_sweep

    if args.list_tasks:
        for name in available_specs():
            spec = load_spec(name)
            print(f"{name:<18} v{spec.version}  {spec.target:<6}  {spec.description.strip()}")
        return 0
    if not args.encoder or not args.task:
        raise SSLBenchError("evaluate needs --encoder CKPT and --task SPEC")
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if baselines in (["none"], []):
        baselines = []
    adapters = [a.strip() for a in args.adapter.split(",") if a.strip()] if args.adapter else None
    cfg = SweepConfig(
        encoder=args.encoder,
        task=args.task,
        adapters=adapters,
        fractions=args.fractions,
        seeds=args.seeds,
        output=args.output,
        baselines=baselines,
        data_root=args.data_root,
        device=args.device,
        overrides=parse_assignments(args.set, "--set"),
        overwrite=args.overwrite,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        encoder_name=args.encoder_name,
        progress=not args.no_progress,
        init=args.init,
    )
    result = run_sweep(cfg)
    spec = load_spec(args.task)
    rows = summarize_sweep(result.records)
    primary = next(m for m in spec.metrics if m.name == spec.primary_metric)
    print(format_sweep_summary(rows, spec.primary_metric, primary.higher_is_better))
    source_id = result.records[0]["encoder"]["id"] if result.records else "none"
    summary_path = Path(args.output) / "summaries" / spec.name / f"{source_id}.json"
    atomic_write_json(
        summary_path,
        {
            "task": spec.name,
            "version": spec.version,
            "primary_metric": spec.primary_metric,
            "rows": rows,
            "records": [str(p) for p in result.paths],
        },
    )
    print(
        f"{len(result.records)} cells: {result.ran} run, {result.skipped} skipped (record "
        f"exists), {result.reused} reused; {result.time_s:.1f}s; summary {summary_path}"
    )
    return 0


def add_evaluate_command(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand to ``sslbench``'s subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="sweep task adapters over label fractions and seeds on an encoder checkpoint",
        description="Evaluate an encoder checkpoint on a task: one JSON record per "
        "(adapter, encoder, fraction, seed) cell, plus scratch and supervised baselines.",
    )
    p.add_argument("--encoder", help="encoder checkpoint folder (from sslbench pretrain)")
    p.add_argument("--task", help="task spec name (see --list-tasks) or YAML path")
    p.add_argument("--adapter", help="comma-separated adapters (default: the spec's list)")
    p.add_argument(
        "--fractions",
        default=DEFAULT_FRACTIONS,
        help="strictly increasing label fractions in (0, 1] (default %(default)s)",
    )
    p.add_argument("--seeds", default="0,1,2", help="evaluation seeds (default %(default)s)")
    p.add_argument("-o", "--output", default="results", help="output folder (default results/)")
    p.add_argument(
        "--baselines",
        default="scratch,supervised",
        help="comma-separated baselines: scratch, supervised, external (needs --init), or "
        "none (default %(default)s)",
    )
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="weights of the external baseline: timm:<tag> (e.g. timm:resnet18.a1_in1k, needs "
        "the internet) or a local .pt/.pth/.safetensors state dict",
    )
    p.add_argument(
        "--data-root", help="root of relative dataset paths (default $SSLBENCH_DATA_ROOT or data/)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="adapter option (KEY or ADAPTER.KEY), e.g. --set finetune.epochs=20",
    )
    p.add_argument("--encoder-name", help="label of the checkpoint in record folders")
    p.add_argument("--cache-dir", help="feature cache folder (default OUTPUT/cache/features)")
    p.add_argument("--no-cache", action="store_true", help="re-extract features in every cell")
    p.add_argument("--overwrite", action="store_true", help="recompute cells with records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-tasks", action="store_true", help="list the shipped task specs")
    p.set_defaults(handler=_cmd_evaluate)


# -- summaries ------------------------------------------------------------------------
def summarize_sweep(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std (ddof 1) over seeds of every metric, per adapter, encoder and fraction."""
    import numpy as np

    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["adapter"]["name"], r["encoder"]["id"], r["fraction"]), []).append(r)
    rows = []
    for (adapter, enc, frac), rs in sorted(groups.items()):
        row: dict[str, Any] = {
            "adapter": adapter,
            "encoder": enc,
            "baseline": rs[0]["baseline"],
            "fraction": frac,
            "seeds": sorted(r["seed"] for r in rs),
            "n_train_mean": float(np.mean([r["n_train"] for r in rs])),
        }
        for name in rs[0]["metrics"]:
            vals = np.array([r["metrics"].get(name, np.nan) for r in rs], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            row[name] = {
                "mean": round(float(vals.mean()), 6) if vals.size else None,
                "std": round(float(vals.std(ddof=1)), 6) if vals.size > 1 else 0.0,
                "n": int(vals.size),
            }
        rows.append(row)
    return rows


def format_sweep_summary(
    rows: list[dict[str, Any]], metric: str, higher_is_better: bool = True
) -> str:
    """A text table of ``metric`` (mean +- std over seeds) per adapter, encoder and fraction."""
    direction = "higher" if higher_is_better else "lower"
    lines = [
        f"{metric} ({direction} is better), mean +- std over seeds",
        f"{'adapter':<12} {'encoder':<34} {'fraction':>8} {'n_train':>8} {'seeds':>5}  value",
    ]
    for r in rows:
        m = r.get(metric, {})
        value = "n/a" if m.get("mean") is None else f"{m['mean']:.4f} +- {m['std']:.4f}"
        lines.append(
            f"{r['adapter']:<12} {r['encoder'][:34]:<34} {r['fraction']:>8g} "
            f"{r['n_train_mean']:>8.1f} {len(r['seeds']):>5}  {value}"
        )
    return "\n".join(lines)
