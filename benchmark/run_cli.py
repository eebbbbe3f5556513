"""``sslbench run`` and ``sslbench leaderboard``: the harness commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    from benchmark.experiment import experiment_hash, load_experiment
    from benchmark.runner import format_summary, run_experiment

    exp = load_experiment(args.experiment, args.overrides)
    results = Path(args.output) if args.output else Path("runs") / exp["name"]
    if not args.dry_run:
        print(f"[run] experiment {exp['name']} ({experiment_hash(exp)[:12]}) -> {results}")
    summary = run_experiment(
        exp,
        results,
        source=str(args.experiment),
        dry_run=args.dry_run,
        wandb_mode=args.wandb,
        progress=not args.no_progress,
    )
    if args.dry_run:
        return 0
    print(format_summary(summary))
    return 1 if summary.failed else 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import build_leaderboard

    out = build_leaderboard(args.results, out=args.output)
    print(
        f"leaderboard: {out / 'LEADERBOARD.md'} (+ leaderboard.csv, leaderboard.json, curves_*.png)"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from benchmark.export import export_results

    copied = export_results(args.results, args.dest)
    print(f"copied {len(copied)} files into {args.dest}")
    return 0


def add_harness_commands(sub: Any) -> None:
    """Register ``run`` and ``leaderboard`` on the top-level subparsers."""
    run = sub.add_parser(
        "run",
        help="run a whole experiment grid (resumable) and write its leaderboard",
        description="Run an experiment file end to end: convert, generate, pretrain, "
        "evaluate, leaderboard. Rerunning skips finished work; edits rerun only what changed.",
    )
    run.add_argument("experiment", help="experiment YAML, or a shipped name (e.g. phantom-tiny)")
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. pretrain.steps=50"
    )
    run.add_argument("-o", "--output", help="results folder (default runs/<name>)")
    run.add_argument("--dry-run", action="store_true", help="list the jobs and a time estimate")
    run.add_argument(
        "--wandb",
        choices=("disabled", "offline", "online"),
        default=None,
        help="W&B mode (default: the experiment's wandb.mode, WANDB_MODE, else offline)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    run.set_defaults(handler=_cmd_run)

    lb = sub.add_parser("leaderboard", help="aggregate a results folder into a leaderboard")
    lb.add_argument("results", help="results folder of `sslbench run` (or any folder of records)")
    lb.add_argument("-o", "--output", help="output folder (default RESULTS/leaderboard)")
    lb.set_defaults(handler=_cmd_leaderboard)

    ex = sub.add_parser(
        "export",
        help="copy the committable files of a results folder (records, leaderboard, reports)",
    )
    ex.add_argument("results", help="results folder of `sslbench run`")
    ex.add_argument("dest", help="destination folder, e.g. results/busi")
    ex.set_defaults(handler=_cmd_export)
