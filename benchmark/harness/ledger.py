"""The ledger of a results folder: locks, job markers, failure records and the index.

Everything the runner and the Ray executor write about jobs (as opposed to the
jobs' own outputs) lives here, so both executors share one bookkeeping::

    RESULTS/.lock                  whole-folder lock (exclusive, or shared by shards)
    RESULTS/locks/<job>.lock       per-job lock of split runners
    RESULTS/jobs/<job>.json        marker: written only after the job's outputs
    RESULTS/failures/<job>.json    the error of a failed job (and a sweep's partial summary)
    RESULTS/experiment.yaml/json   the resolved experiment and its hash
    RESULTS/index.json             the current jobs, their records, compute per stage
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.core.errors import SSLBenchError
from benchmark.core.io import atomic_write_json, atomic_write_text, provenance, read_json
from benchmark.harness.experiment import Experiment, ExperimentError, experiment_hash
from benchmark.harness.jobs import Job

EXPERIMENT_FILE = "experiment.yaml"
EXPERIMENT_META = "experiment.json"
INDEX = "index.json"
LOCK = ".lock"


class LockedError(SSLBenchError):
    """Another runner holds the results folder."""


@dataclass
class RunSummary:
    """What a run did.

    Attributes:
        results: The results folder.
        experiment_hash: Hash of the resolved experiment.
        jobs: Jobs of this runner (the whole grid, or a stage/shard's).
        ran: Jobs run now.
        skipped: Jobs already done.
        failed: Job id -> error (``--strict`` failures included).
        estimate_s: Estimated time of the todo jobs (``--dry-run``).
        wall_s: Wall time of the run.
        leaderboard: The leaderboard folder, when one was written.
        health: Pretraining job id -> its compact health verdict
            (:func:`benchmark.harness.health.compact`, None when the run recorded none).
    """

    results: Path
    experiment_hash: str
    jobs: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    estimate_s: float = 0.0
    wall_s: float = 0.0
    leaderboard: Path | None = None
    health: dict[str, dict[str, Any] | None] = field(default_factory=dict)


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


def check_results_folder(results: Path, exp: Experiment) -> None:
    """Refuse a folder of another experiment, or a non-empty folder that is not a results folder."""
    meta = read_json(results / EXPERIMENT_META)
    if meta is not None:
        if meta.get("name") != exp.name:
            raise ExperimentError(
                f"{results}: holds results of experiment {meta.get('name')!r}, not "
                f"{exp.name!r}; choose another output folder"
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


def marker_path(results: Path, job: Job | str) -> Path:
    """``RESULTS/jobs/<job>.json`` of a job (or a job id)."""
    slug = job.replace("/", "__") if isinstance(job, str) else job.slug
    return results / "jobs" / f"{slug}.json"


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


def save_experiment(results: Path, exp: Experiment, source: str) -> str:
    """Write the resolved experiment and its hash (history kept per hash)."""
    h = experiment_hash(exp)
    text = yaml.safe_dump(exp.to_dict(), sort_keys=False)
    atomic_write_text(results / EXPERIMENT_FILE, text)
    atomic_write_text(results / "experiments" / f"{h[:12]}.yaml", text)
    atomic_write_json(
        results / EXPERIMENT_META,
        {"name": exp.name, "hash": h, "source": source, "provenance": provenance()},
    )
    return h


@dataclass
class Outcome:
    """What running one job gave: its outputs, or its error (and a sweep's partial summary).

    ``retry`` is False for a failure that another attempt would repeat (a pretraining
    job failed by ``--strict``: its encoder did not learn).
    """

    ok: bool
    out: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    partial: dict[str, Any] | None = None
    wall_s: float = 0.0
    attempts: int = 1
    retry: bool = True


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
