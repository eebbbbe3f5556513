"""``sslbench run`` and ``sslbench leaderboard``: the harness commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    from benchmark.harness.experiment import experiment_hash, load_experiment
    from benchmark.harness.runner import format_run_summary, run_experiment

    exp = load_experiment(args.experiment, args.overrides)
    results = Path(args.output) if args.output else Path("runs") / exp.name
    if not args.dry_run:
        print(f"[run] experiment {exp.name} ({experiment_hash(exp)[:12]}) -> {results}")
    ray_options = None
    if args.executor == "ray":
        from benchmark.harness.ray_executor import RayOptions

        ray_options = RayOptions(
            address=args.address,
            cpus_per_job=args.cpus_per_job,
            gpus_per_job=args.gpus_per_job,
            retries=args.retries,
        )
    summary = run_experiment(
        exp,
        results,
        source=str(args.experiment),
        dry_run=args.dry_run,
        wandb_mode=args.wandb,
        progress=not args.no_progress,
        executor=args.executor,
        ray_options=ray_options,
        stage=args.stage,
        shard=_parse_shard(args.shard),
        strict=args.strict,
    )
    if args.dry_run:
        return 0
    print(format_run_summary(summary))
    return 1 if summary.failed else 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/8"`` -> ``(3, 8)``."""
    if text is None:
        return None
    from benchmark.core.errors import SSLBenchError

    index, _, count = text.partition("/")
    try:
        return int(index), int(count)
    except ValueError:
        raise SSLBenchError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/8") from None


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from benchmark.harness.leaderboard import build_leaderboard

    out = build_leaderboard(args.results, out=args.output)
    print(
        f"leaderboard: {out / 'LEADERBOARD.md'} (+ leaderboard.csv, leaderboard.json, curves_*.png)"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from benchmark.harness.export import export_results

    copied = export_results(args.results, args.dest)
    print(f"copied {len(copied)} files into {args.dest}")
    return 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from benchmark.harness.snapshot import check_resume, restore_run, snapshot_run

    if args.action == "save":
        written = snapshot_run(args.source, args.dest)
        meta = json.loads((Path(args.dest) / "snapshot.json").read_text())
        print(f"snapshot: {len(written)} files ({meta['records']} cell records) in {args.dest}")
        return 0
    if args.action == "restore":
        n = restore_run(args.source, args.dest)
        print(
            f"restored {n} files into {args.dest}; resume with `sslbench run EXPERIMENT -o "
            f"{args.dest}`, then `sslbench snapshot check {args.source} {args.dest}`"
        )
        return 0
    problems = check_resume(args.source, args.dest)
    for line in problems:
        print(f"differs: {line}")
    print(
        f"resume check: {len(problems)} difference(s)"
        if problems
        else "resume check: the regenerated jobs repeat the snapshot's figures; records intact"
    )
    return 1 if problems else 0


def add_harness_commands(sub: Any) -> None:
    """Register ``run``, ``leaderboard``, ``export`` and ``snapshot`` on the top-level
    subparsers."""
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
    run.add_argument(
        "--strict",
        action="store_true",
        help="a pretraining job whose encoder did not learn (health verdict: kNN accuracy "
        "did not rise by >= the margin, loss at chance or collapse) fails: its encoder is "
        "written, its evaluations do not run; a later run without --strict resumes it",
    )
    ray = run.add_argument_group("executor")
    ray.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one job at a time in this process (default); ray: independent jobs as "
        "Ray tasks (pip install 'sslbench[ray]')",
    )
    ray.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    ray.add_argument("--cpus-per-job", type=float, default=1.0, help="CPUs per Ray task")
    ray.add_argument(
        "--gpus-per-job", type=float, default=0.0, help="GPUs per generate/pretrain/evaluate task"
    )
    ray.add_argument(
        "--retries", type=int, default=1, help="further attempts of a failed job (Ray executor)"
    )
    split = run.add_argument_group("split grid (e.g. a Slurm job array)")
    split.add_argument(
        "--stage",
        help="run only this stage's jobs (data, generate, curate, pretrain, evaluate, or a job-id "
        "prefix such as generate/train); their dependencies must be done",
    )
    split.add_argument(
        "--shard",
        metavar="INDEX/COUNT",
        help="run every COUNT-th selected job from INDEX (e.g. $SLURM_ARRAY_TASK_ID/"
        "$SLURM_ARRAY_TASK_COUNT); shards share the folder, the final plain run "
        "writes the leaderboard",
    )
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

    snap = sub.add_parser(
        "snapshot",
        help="save / restore the light state of a run in progress, and check its resume",
        description="save RUN SNAPSHOT: the resolved experiment, the finished jobs' markers, "
        "the current arms' cell records so far and the pretraining / generator summaries (no "
        "data or weights). restore SNAPSHOT RUN: copy a snapshot into a new run folder to "
        "resume it with `sslbench run`. check SNAPSHOT RUN: after the resumed run, whether its "
        "regenerated jobs repeat the snapshot's figures exactly and every arm's records carry "
        "one encoder.",
    )
    snap.add_argument("action", choices=("save", "restore", "check"))
    snap.add_argument(
        "source", metavar="FROM", help="save: RUN, the run folder; restore / check: SNAPSHOT"
    )
    snap.add_argument(
        "dest",
        metavar="TO",
        help="save: SNAPSHOT (new, empty or an older snapshot); restore: RUN (new); check: "
        "RUN (the resumed run)",
    )
    snap.set_defaults(handler=_cmd_snapshot)
