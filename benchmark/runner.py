"""``sslbench run EXPERIMENT``: run a whole grid to the end, resumably.

The runner plans the job graph (:mod:`benchmark.jobs`), skips every job whose
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
The folder belongs to one experiment ``name``: another experiment's folder is
refused before any work starts, while an edited version of the same
experiment reruns only what its edits changed.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from benchmark.errors import SSLBenchError
from benchmark.experiment import ExperimentError, experiment_hash
from benchmark.io import atomic_write_json, atomic_write_text, provenance
from benchmark.jobs import Job, format_duration, plan, read_json
from benchmark.stages import (
    CellFailures,
    Context,
    run_data,
    run_evaluate,
    run_generator_sample,
    run_generator_train,
    run_pretrain,
)
from benchmark.tracking import Tracker

EXPERIMENT_FILE = "experiment.yaml"
EXPERIMENT_META = "experiment.json"
INDEX = "index.json"
LOCK = ".lock"


class LockedError(SSLBenchError):
    """Another runner holds the results folder."""


@dataclass
class RunSummary:
    """What a run did."""

    results: Path
    experiment_hash: str
    jobs: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    estimate_s: float = 0.0
    wall_s: float = 0.0
    leaderboard: Path | None = None


@contextmanager
def results_lock(results: Path, shared: bool = False) -> Iterator[None]:
    """Hold a lock on ``results`` (``LockedError`` if another runner holds it).

    A whole-grid run holds it exclusively. Shard runners (``--stage``/``--shard``,
    e.g. the tasks of a Slurm job array) hold it shared, so they run side by side
    while a whole-grid run is refused, and lock each job they run
    (:func:`job_lock`).
    """
    results.mkdir(parents=True, exist_ok=True)
    path = results / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            raise LockedError(
                f"{results}: another sslbench runner is using this folder ({holder}); wait for "
                "it to finish or stop it"
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def job_lock(results: Path, job: Job) -> Iterator[None]:
    """Hold ``RESULTS/locks/<job>.lock`` exclusively (``LockedError`` if another shard does)."""
    path = results / "locks" / f"{job.slug}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{job.id} is being run by another runner") from None
        yield
    finally:
        os.close(fd)


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


def check_results_folder(results: Path, exp: dict[str, Any]) -> None:
    """Refuse a folder of another experiment, or a non-empty folder that is not a results folder."""
    meta = read_json(results / EXPERIMENT_META)
    if meta is not None:
        if meta.get("name") != exp["name"]:
            raise ExperimentError(
                f"{results}: holds results of experiment {meta.get('name')!r}, not "
                f"{exp['name']!r}; choose another output folder"
            )
        return
    if results.exists() and any(p.name != LOCK for p in results.iterdir()):
        raise ExperimentError(
            f"{results}: exists and is not an sslbench results folder (no {EXPERIMENT_META}); "
            "choose an empty or new output folder"
        )


def clean_partials(results: Path) -> int:
    """Remove temporary files left by a killed writer; returns how many."""
    n = 0
    for p in results.rglob(".*.partial-*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def marker_path(results: Path, job: Job) -> Path:
    return results / "jobs" / f"{job.slug}.json"


def failure_path(results: Path, job: Job) -> Path:
    return results / "failures" / f"{job.slug}.json"


def job_done(results: Path, job: Job) -> bool:
    """Whether ``job`` finished with its current key (and, for sweeps, every planned cell)."""
    marker = read_json(marker_path(results, job))
    if marker is None or marker.get("key") != job.key or marker.get("status") != "ok":
        return False
    if job.stage == "evaluate":
        have = {tuple(c) for c in marker.get("cells", [])}
        return all(tuple(c) in have for c in job.cells)
    return job.out.exists()


def save_experiment(results: Path, exp: dict[str, Any], source: str) -> str:
    """Write the resolved experiment and its hash (history kept per hash)."""
    h = experiment_hash(exp)
    text = yaml.safe_dump(exp, sort_keys=False)
    atomic_write_text(results / EXPERIMENT_FILE, text)
    atomic_write_text(results / "experiments" / f"{h[:12]}.yaml", text)
    atomic_write_json(
        results / EXPERIMENT_META,
        {"name": exp["name"], "hash": h, "source": source, "provenance": provenance()},
    )
    return h


_STAGE_FN = {
    "data": run_data,
    "generate/train": run_generator_train,
    "generate/sample": run_generator_sample,
    "pretrain": run_pretrain,
    "evaluate": run_evaluate,
}


def _fn(job: Job) -> Any:
    return _STAGE_FN.get(job.id) or _STAGE_FN[job.stage]


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
    exp: dict[str, Any],
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
) -> RunSummary:
    """Run (or resume) the resolved experiment ``exp`` into ``results``.

    ``executor`` is ``local`` (jobs one after the other in this process) or
    ``ray`` (:mod:`benchmark.ray_executor`, with :class:`RayOptions` ``ray_options``).
    ``stage`` and ``shard`` make this one of several runners of a split grid
    (:func:`select_jobs`; e.g. one task of a Slurm job array): it runs only its
    jobs, whose dependencies must have finished, locks each job, and writes no
    index or leaderboard (a final whole-grid run does, having nothing left to run).
    """
    if executor not in ("local", "ray"):
        raise SSLBenchError(f"executor must be local or ray, got {executor!r}")
    results = Path(results).resolve()
    check_results_folder(results, exp)
    jobs = plan(exp, results)
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
        wb = exp.get("wandb") or {}
        tracker = Tracker(
            mode=str(wandb_mode or wb.get("mode") or ""),
            project=wb.get("project"),
            entity=wb.get("entity"),
            group=exp["name"],
            dir=results,
            log_checkpoints=bool(wb.get("log_checkpoints")),
        )
        if executor == "ray":
            from benchmark.ray_executor import RayOptions, execute_ray

            options = ray_options or RayOptions()
            summary = execute_ray(exp, results, jobs, tracker, progress, options)
        else:
            summary = _execute(exp, results, jobs, tracker, progress, mine)
        summary.experiment_hash = h
        if split:
            summary.wall_s = time.perf_counter() - start
            return summary
        records = write_index(results, jobs, h)
        if leaderboard and records:
            from benchmark.leaderboard import build_leaderboard

            lb = build_leaderboard(results, out=results / "leaderboard", tracker=tracker)
            summary.leaderboard = lb
    summary.wall_s = time.perf_counter() - start
    return summary


def _execute(
    exp: dict[str, Any],
    results: Path,
    jobs: list[Job],
    tracker: Tracker,
    progress: bool,
    selected: list[Job] | None = None,
) -> RunSummary:
    """Run the unfinished jobs (of ``selected``, a shard, if given) one after the other."""
    from pretrain.train import resolve_device

    split = selected is not None
    mine = jobs if selected is None else selected
    by_id = {j.id: j for j in jobs}
    summary = RunSummary(results, "", len(mine))
    todo = [j for j in mine if not job_done(results, j)]
    summary.skipped = [j.id for j in mine if j not in todo]
    cells_total = sum(len(j.cells) for j in mine)
    cells_done = sum(len(j.cells) for j in mine if j not in todo)
    bar = tqdm(
        total=round(sum(j.estimate_s for j in todo), 1) or 1.0,
        disable=not progress,
        unit="s(est)",
        bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]",
        dynamic_ncols=True,
    )
    state = {"cells": cells_done}

    def show(stage: str) -> None:
        bar.set_description_str(stage, refresh=False)
        bar.set_postfix_str(f"cells {state['cells']}/{cells_total}")

    ctx = Context(
        exp, results, {j.id: j for j in jobs}, tracker, str(resolve_device(exp["device"]))
    )
    failed: set[str] = set()
    try:
        for job in todo:
            bad = [d for d in job.deps if d in failed]
            if bad:
                failed.add(job.id)
                summary.failed[job.id] = f"skipped: depends on failed {', '.join(bad)}"
                bar.update(job.estimate_s)
                continue
            show(job.id)
            per_cell = job.estimate_s / max(len(job.cells), 1)

            def on_cell(cell: Any, status: str, per_cell: float = per_cell) -> None:
                state["cells"] += 1
                bar.update(per_cell)
                bar.set_postfix_str(f"cells {state['cells']}/{cells_total}")

            ctx.on_cell = on_cell
            if split:
                missing = [d for d in job.deps if not job_done(results, by_id[d])]
                if missing:
                    failed.add(job.id)
                    summary.failed[job.id] = (
                        f"not run: {', '.join(missing)} not finished (run that stage first)"
                    )
                    continue
                try:
                    with job_lock(results, job):
                        outcome = run_job(job, ctx)
                except LockedError as exc:
                    summary.failed[job.id] = f"not run: {exc}"
                    continue
            else:
                outcome = run_job(job, ctx)
            if outcome.ok:
                record_success(results, job, outcome)
                summary.ran.append(job.id)
            else:
                failed.add(job.id)
                summary.failed[job.id] = record_failure(results, job, outcome)
            if not job.cells:
                bar.update(job.estimate_s)
    finally:
        bar.close()
    return summary


@dataclass
class Outcome:
    """What running one job gave: its outputs, or its error (and a sweep's partial summary)."""

    ok: bool
    out: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    partial: dict[str, Any] | None = None
    wall_s: float = 0.0
    attempts: int = 1


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


def record_success(results: Path, job: Job, outcome: Outcome) -> None:
    """Write the job's marker (after its outputs) and clear an old failure record."""
    _write_marker(results, job, outcome.out, outcome.wall_s)
    failure_path(results, job).unlink(missing_ok=True)


def record_failure(results: Path, job: Job, outcome: Outcome) -> str:
    """Write ``RESULTS/failures/<job>.json`` (and a sweep's partial marker); returns the error."""
    atomic_write_json(
        failure_path(results, job),
        {
            "job": job.id,
            "key": job.key,
            "error": outcome.error,
            "attempts": outcome.attempts,
            "traceback": outcome.traceback,
            "partial": outcome.partial,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    if outcome.partial is not None:  # keep what the sweep recorded for the index
        _write_marker(results, job, outcome.partial, outcome.wall_s, status="partial")
    return outcome.error


def _write_marker(
    results: Path, job: Job, out: dict[str, Any], wall: float, status: str = "ok"
) -> None:
    previous = read_json(marker_path(results, job)) or {}
    spent = float(previous.get("wall_s_total", 0.0)) if previous.get("key") == job.key else 0.0
    atomic_write_json(
        marker_path(results, job),
        {
            "job": job.id,
            "stage": job.stage,
            "key": job.key,
            "status": status,
            "config": job.config,
            "cells": job.cells if status == "ok" else [],
            "outputs": out,
            "wall_s": round(wall, 3),
            "wall_s_total": round(spent + wall, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def write_index(results: Path, jobs: list[Job], exp_hash: str) -> list[str]:
    """``RESULTS/index.json``: the current jobs, their records and compute time per stage."""
    records: list[str] = []
    compute: dict[str, float] = {}
    entries = []
    for job in jobs:
        marker = read_json(marker_path(results, job)) or {}
        current = marker.get("key") == job.key
        status = marker.get("status") if current else "todo"
        if current and job.stage == "evaluate":
            records += list(marker.get("outputs", {}).get("records", []))
        if current:
            compute[job.stage] = compute.get(job.stage, 0.0) + float(
                marker.get("wall_s_total", 0.0)
            )
        entries.append({"job": job.id, "stage": job.stage, "key": job.key, "status": status})
    records = sorted(dict.fromkeys(records))
    atomic_write_json(
        results / INDEX,
        {
            "experiment_hash": exp_hash,
            "jobs": entries,
            "records": records,
            "compute_s": {k: round(v, 1) for k, v in sorted(compute.items())},
        },
    )
    return records


def format_summary(summary: RunSummary) -> str:
    """The end-of-run report printed by the CLI."""
    lines = [
        f"results: {summary.results}  (experiment {summary.experiment_hash[:12]})",
        f"jobs: {summary.jobs} planned, {len(summary.ran)} ran, {len(summary.skipped)} already "
        f"done, {len(summary.failed)} failed; wall time {format_duration(summary.wall_s)}",
    ]
    if summary.failed:
        lines.append("failures (details in RESULTS/failures/):")
        lines += [f"  {job}: {err}" for job, err in summary.failed.items()]
    if summary.leaderboard:
        lines.append(f"leaderboard: {summary.leaderboard / 'LEADERBOARD.md'}")
    wandb_dir = summary.results / "wandb"
    if wandb_dir.exists():
        lines.append(f"W&B offline runs: wandb sync {wandb_dir}/offline-run-*")
    return "\n".join(lines)
