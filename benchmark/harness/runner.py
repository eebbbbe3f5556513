"""``sslbench run EXPERIMENT``: run a whole grid to the end, resumably.

The runner plans the job graph (:mod:`benchmark.harness.jobs`), skips every job whose
marker says it finished with the same key, runs the rest in dependency order
and writes the leaderboard. It is safe to kill at any point (``kill -9``
included) and run again:

* every output is written to a temporary name and renamed (no half files);
  leftover temporary files are removed at start;
* a job's marker (``RESULTS/jobs/<job>.json``) is written only after its
  outputs; long jobs resume from their own checkpoints (DDPM, pretraining) or
  skip the cells already recorded (sweeps), so every cell is recorded once;
* an exclusive lock (``RESULTS/.lock``, released by the OS when the process
  dies) stops two runners from sharing a results folder.

A failing job or cell is recorded under ``RESULTS/failures/`` with its error;
the jobs that do not depend on it go on, and a summary lists the failures.
The summary also lists every pretrained encoder's health (kNN accuracy at the
calibrated step 0 and at the end, loss against chance, collapse, verdict;
:mod:`benchmark.harness.health`) and warns about encoders that did not learn;
with ``strict`` such a pretraining job counts as failed (its encoder is still
written, its dependants do not run, and a run without ``strict`` resumes it).
The folder belongs to one experiment ``name``: another experiment's folder is
refused before any work starts, while an edited version of the same
experiment reruns only what its edits changed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.core.errors import SSLBenchError
from benchmark.core.io import read_json
from benchmark.harness.experiment import Experiment, experiment_hash
from benchmark.harness.findings import headline
from benchmark.harness.health import (
    did_not_learn,
    format_health,
    job_health,
    strict_outcome,
    unhealthy_done,
)
from benchmark.harness.jobs import Job, format_duration, plan_jobs
from benchmark.harness.ledger import (
    LockedError,
    RunSummary,
    check_results_folder,
    clean_partials,
    job_done,
    job_lock,
    record_failure,
    record_success,
    results_lock,
    save_experiment,
    write_index,
)
from benchmark.harness.stages import Context, run_job
from benchmark.harness.tracking import Tracker


def select_jobs(jobs: list[Job], stage: str | None, shard: tuple[int, int] | None) -> list[Job]:
    """The jobs of one runner of a split grid: those of ``stage`` (a stage such as
    ``pretrain`` or a job-id prefix such as ``generate/train``), then every
    ``count``-th of them starting at ``index`` for ``shard = (index, count)``."""
    chosen = [j for j in jobs if stage is None or j.stage == stage or j.id.startswith(stage)]
    if stage is not None and not chosen:
        stages = sorted({j.stage for j in jobs})
        raise SSLBenchError(f"--stage {stage!r} matches no job; stages: {', '.join(stages)}")
    if shard is not None:
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise SSLBenchError(
                f"--shard {index}/{count}: expected INDEX/COUNT, 0 <= INDEX < COUNT"
            )
        chosen = chosen[index::count]
    return chosen


def describe_plan(jobs: list[Job], results: Path) -> tuple[str, float]:
    """A table of the jobs with their status and estimates, and the estimated total."""
    lines = [f"{'status':<8} {'estimate':>9}  job"]
    total = 0.0
    for job in jobs:
        done = job_done(results, job)
        extra = f" ({len(job.cells)} cells)" if job.cells else ""
        if not done:
            total += job.estimate_s
        est = "-" if done else format_duration(job.estimate_s)
        lines.append(f"{'done' if done else 'todo':<8} {est:>9}  {job.id}{extra}")
    lines.append(
        f"estimated time of the todo jobs on this profile: {format_duration(total)} "
        "(calibrated on a 2-core CPU; a GPU is one to two orders of magnitude faster)"
    )
    return "\n".join(lines), total


def run_experiment(
    exp: Experiment,
    results: str | Path,
    *,
    source: str = "",
    dry_run: bool = False,
    wandb_mode: str | None = None,
    progress: bool = True,
    leaderboard: bool = True,
    executor: str = "local",
    ray_options: Any = None,
    stage: str | None = None,
    shard: tuple[int, int] | None = None,
    strict: bool = False,
) -> RunSummary:
    """Run (or resume) the resolved experiment ``exp`` into ``results``.

    ``strict`` makes a pretraining job whose encoder did not learn (its health verdict,
    :mod:`benchmark.harness.health`) a failed job: it gets a failure record naming the
    reasons instead of its marker (the encoder is still written), and the jobs that
    depend on it do not run. A finished job of an earlier run counts the same way.

    ``executor`` is ``local`` (jobs one after the other in this process) or
    ``ray`` (:mod:`benchmark.harness.ray_executor`, with :class:`RayOptions` ``ray_options``).
    ``stage`` and ``shard`` make this one of several runners of a split grid
    (:func:`select_jobs`; e.g. one task of a Slurm job array): it runs only its
    jobs, whose dependencies must have finished, locks each job, and writes no
    index or leaderboard (a final whole-grid run does, having nothing left to run).
    """
    if executor not in ("local", "ray"):
        raise SSLBenchError(f"executor must be local or ray, got {executor!r}")
    results = Path(results).resolve()
    check_results_folder(results, exp)
    jobs = plan_jobs(exp, results)
    if dry_run:
        table, total = describe_plan(jobs, results)
        print(table)
        return RunSummary(results, experiment_hash(exp), len(jobs), estimate_s=total)
    split = stage is not None or shard is not None
    mine = select_jobs(jobs, stage, shard) if split else None
    if split and executor != "local":
        raise SSLBenchError("--stage/--shard run their jobs locally; drop --executor ray")
    start = time.perf_counter()
    with results_lock(results, shared=split):
        if not split:  # a shard must not delete the temporary files of the others
            clean_partials(results)
        h = save_experiment(results, exp, source)
        wb = exp.wandb
        tracker = Tracker(
            mode=str(wandb_mode or wb.mode or ""),
            project=wb.project,
            entity=wb.entity,
            group=exp.name,
            dir=results,
            log_checkpoints=bool(wb.log_checkpoints),
        )
        if executor == "ray":
            from benchmark.harness.ray_executor import RayOptions, execute_ray

            options = ray_options or RayOptions()
            summary = execute_ray(exp, results, jobs, tracker, progress, options, strict=strict)
        else:
            summary = _execute(exp, results, jobs, tracker, progress, mine, strict=strict)
        summary.experiment_hash = h
        summary.health = {
            j.id: job_health(results, j) for j in (mine or jobs) if j.stage == "pretrain"
        }
        if split:
            summary.wall_s = time.perf_counter() - start
            return summary
        records = write_index(results, jobs, h)
        if leaderboard and records:
            from benchmark.harness.leaderboard import build_leaderboard

            lb = build_leaderboard(results, out=results / "leaderboard", tracker=tracker)
            summary.leaderboard = lb
    summary.wall_s = time.perf_counter() - start
    return summary


def _execute(
    exp: Experiment,
    results: Path,
    jobs: list[Job],
    tracker: Tracker,
    progress: bool,
    selected: list[Job] | None = None,
    strict: bool = False,
) -> RunSummary:
    """Run the unfinished jobs (of ``selected``, a shard, if given) one after the other.

    With ``strict``, pretraining jobs whose encoder did not learn fail (see
    :func:`run_experiment`).
    """
    from benchmark.core.device import resolve_device

    split = selected is not None
    mine = jobs if selected is None else selected
    by_id = {j.id: j for j in jobs}
    summary = RunSummary(results, "", len(mine))
    todo = [j for j in mine if not job_done(results, j)]
    summary.skipped = [j.id for j in mine if j not in todo]
    cells_total = sum(len(j.cells) for j in mine)
    cells_done = sum(len(j.cells) for j in mine if j not in todo)
    bar = tqdm(
        total=sum(j.estimate_s for j in todo) or 1.0,
        disable=not progress,
        unit="s(est)",
        bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
        dynamic_ncols=True,
    )
    state = {"cells": cells_done}
    credited: dict[str, float] = {}

    def advance(job: Job, seconds: float) -> None:
        """Credit ``seconds`` of ``job``'s estimate to the bar, never past it (nor the
        bar's total: tqdm would clamp and print a negative remaining time)."""
        done = credited.get(job.id, 0.0)
        step = max(0.0, min(seconds, job.estimate_s - done, bar.total - bar.n))
        credited[job.id] = done + step
        bar.update(step)

    def show(stage: str) -> None:
        bar.set_description_str(stage, refresh=False)
        bar.set_postfix_str(f"cells {state['cells']}/{cells_total}")

    ctx = Context(results, tracker, str(resolve_device(exp.device)))
    failed = unhealthy_done(results, jobs) if strict else {}
    for job_id, message in failed.items():
        if job_id in summary.skipped:  # finished earlier, failed under --strict now
            summary.skipped.remove(job_id)
            summary.failed[job_id] = message
    try:
        for job in todo:
            bad = [d for d in job.deps if d in failed]
            if bad:
                failed[job.id] = "failed"
                summary.failed[job.id] = f"skipped: depends on failed {', '.join(bad)}"
                advance(job, job.estimate_s)
                continue
            show(job.id)
            per_cell = job.estimate_s / max(len(job.cells), 1)

            def on_cell(cell: Any, status: str, per_cell: float = per_cell, job: Job = job) -> None:
                state["cells"] += 1
                advance(job, per_cell)
                bar.set_postfix_str(f"cells {state['cells']}/{cells_total}")

            ctx.on_cell = on_cell
            if split:
                missing = [d for d in job.deps if not job_done(results, by_id[d])]
                if missing:
                    failed[job.id] = "failed"
                    summary.failed[job.id] = (
                        f"not run: {', '.join(missing)} not finished (run that stage first)"
                    )
                    advance(job, job.estimate_s)
                    continue
                try:
                    with job_lock(results, job):
                        outcome = run_job(job, ctx)
                except LockedError as exc:
                    summary.failed[job.id] = f"not run: {exc}"
                    advance(job, job.estimate_s)
                    continue
            else:
                outcome = run_job(job, ctx)
            if strict:
                outcome = strict_outcome(job, outcome)
            if outcome.ok:
                record_success(results, job, outcome)
                summary.ran.append(job.id)
            else:
                failed[job.id] = "failed"
                summary.failed[job.id] = record_failure(results, job, outcome)
            advance(job, job.estimate_s)  # what its cells did not credit (or all of it)
    finally:
        bar.close()
    return summary


def format_run_summary(summary: RunSummary) -> str:
    """The end-of-run report printed by the CLI.

    Lists every pretrained encoder's health (kNN init -> end, loss first -> last against
    chance, collapse, verdict) and ends with a warning naming each encoder that did not
    learn.
    """
    lines = [
        f"results: {summary.results}  (experiment {summary.experiment_hash[:12]})",
        f"jobs: {summary.jobs} planned, {len(summary.ran)} ran, {len(summary.skipped)} already "
        f"done, {len(summary.failed)} failed; wall time {format_duration(summary.wall_s)}",
    ]
    if summary.health:
        lines.append(
            "pretrained encoders (monitor init -> end: kNN or dense probe; loss first -> last; collapse; verdict):"
        )
        lines += [f"  {job}: {format_health(h)}" for job, h in summary.health.items()]
    if summary.failed:
        lines.append("failures (details in RESULTS/failures/):")
        lines += [f"  {job}: {err}" for job, err in summary.failed.items()]
    if summary.leaderboard:
        board = read_json(summary.leaderboard / "leaderboard.json")
        block = headline(board) if board else []
        if block:
            lines += ["findings (generated from the leaderboard):", *[f"  {x}" for x in block]]
        lines.append(f"leaderboard: {summary.leaderboard / 'LEADERBOARD.md'}")
        if any(summary.leaderboard.glob("curves_*.png")):
            lines.append(f"plots: {summary.leaderboard}/curves_*.png")
    wandb_dir = summary.results / "wandb"
    if wandb_dir.exists():
        lines.append(f"W&B offline runs: wandb sync {wandb_dir}/offline-run-*")
    bad = [job for job, h in summary.health.items() if h is not None and did_not_learn(h)]
    if bad:
        lines.append(
            f"WARNING: {len(bad)} pretrained encoder(s) did not learn (neither kNN accuracy "
            "nor linear-probe AUC rose by >= the margin during pretraining, loss at chance or "
            "collapse): "
            + ", ".join(bad)
            + "; their leaderboard rows are flagged ⚠ and their numbers are not comparable"
            + ("" if all(job in summary.failed for job in bad) else " (--strict fails such jobs)")
        )
    return "\n".join(lines)
