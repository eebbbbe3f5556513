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
def results_lock(results: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``results`` (``LockedError`` if another runner does)."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            raise LockedError(
                f"{results}: another sslbench runner is using this folder ({holder}); wait for "
                "it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


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
    lines.append(f"estimated time of the todo jobs on this profile: {format_duration(total)}")
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
) -> RunSummary:
    """Run (or resume) the resolved experiment ``exp`` into ``results``."""
    results = Path(results).resolve()
    check_results_folder(results, exp)
    jobs = plan(exp, results)
    if dry_run:
        table, total = describe_plan(jobs, results)
        print(table)
        return RunSummary(results, experiment_hash(exp), len(jobs), estimate_s=total)
    start = time.perf_counter()
    with results_lock(results):
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
        summary = _execute(exp, results, jobs, tracker, progress)
        summary.experiment_hash = h
        records = write_index(results, jobs, h)
        if leaderboard and records:
            from benchmark.leaderboard import build_leaderboard

            lb = build_leaderboard(results, out=results / "leaderboard", tracker=tracker)
            summary.leaderboard = lb
    summary.wall_s = time.perf_counter() - start
    return summary


def _execute(
    exp: dict[str, Any], results: Path, jobs: list[Job], tracker: Tracker, progress: bool
) -> RunSummary:
    from pretrain.train import resolve_device

    summary = RunSummary(results, "", len(jobs))
    todo = [j for j in jobs if not job_done(results, j)]
    summary.skipped = [j.id for j in jobs if j not in todo]
    cells_total = sum(len(j.cells) for j in jobs)
    cells_done = sum(len(j.cells) for j in jobs if j not in todo)
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
        t0 = time.perf_counter()
        try:
            out = _fn(job)(job, ctx)
        except KeyboardInterrupt:
            bar.close()
            raise
        except Exception as exc:
            failed.add(job.id)
            summary.failed[job.id] = f"{exc.__class__.__name__}: {exc}"
            partial = exc.summary if isinstance(exc, CellFailures) else None
            atomic_write_json(
                failure_path(results, job),
                {
                    "job": job.id,
                    "key": job.key,
                    "error": summary.failed[job.id],
                    "traceback": traceback.format_exc(limit=12),
                    "partial": partial,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            if partial is not None:  # keep what the sweep recorded for the index
                _write_marker(results, job, partial, time.perf_counter() - t0, status="partial")
            if not job.cells:
                bar.update(job.estimate_s)
            continue
        _write_marker(results, job, out, time.perf_counter() - t0)
        failure_path(results, job).unlink(missing_ok=True)
        summary.ran.append(job.id)
        if not job.cells:
            bar.update(job.estimate_s)
    bar.close()
    return summary


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
