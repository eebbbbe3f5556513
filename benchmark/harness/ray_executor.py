"""``sslbench run --executor ray``: fan the job graph out over a Ray cluster.

The driver (the ``sslbench run`` process) plans the same jobs as the local
executor, holds the results folder's lock and is the only writer of job
markers, failure records, ``index.json`` and the leaderboard. Each job whose
dependencies have finished is submitted as one Ray task with a resource
request (CPUs, and a GPU for GPU experiments); the task runs the job's stage
function (:mod:`benchmark.harness.stages`) in a Ray worker on a node that sees the
results folder (a shared file system on a multi-node cluster) and returns its
outcome. Independent jobs (the pretraining runs of every strategy, the sweeps
of every task x strategy) run concurrently.

Guarantees are those of the local executor: every output is written to a
temporary name and renamed, a job is submitted once at a time, its marker is
written by the driver after the task returned, and a task that is retried
(after an error, or after its worker died) resumes from the job's own
checkpoints and skips the cells it already recorded, so each cell is recorded
exactly once. A job is retried ``retries`` times and then recorded under
``RESULTS/failures/``; the jobs that do not depend on it go on.

Ray is an optional extra (``pip install 'sslbench[ray]'``); the local
executor needs none of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.core.errors import SSLBenchError
from benchmark.harness.experiment import Experiment
from benchmark.harness.jobs import Job
from benchmark.harness.tracking import Tracker


@dataclass
class RayOptions:
    """How jobs are submitted.

    Attributes:
        address: Ray cluster address (``auto``, ``ray://host:10001``); None starts
            a local Ray instance for the run.
        cpus_per_job: CPUs requested by each task (its worker's torch threads).
        gpus_per_job: GPUs requested by generator, pretraining and evaluation
            tasks (0 on CPU experiments).
        retries: Further attempts of a failed job before it is recorded as failed.
        num_cpus: CPUs of a local instance started for the run (default: all).
    """

    address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    retries: int = 1
    num_cpus: int | None = None


def _run_remote(
    results: str,
    job: Job,
    tracker: Tracker,
    device: str,
    cwd: str,
    threads: int,
) -> Any:
    """Body of a Ray task: run one job in the worker and return its :class:`Outcome`."""
    import torch

    from benchmark.core.device import resolve_device
    from benchmark.harness.stages import Context, run_job

    if os.path.isdir(cwd):  # relative paths are the driver's (resolved ones work anywhere)
        os.chdir(cwd)
    torch.set_num_threads(max(1, threads))
    # Ray hides the GPUs of tasks that did not ask for one, so "auto" resolves per task
    ctx = Context(Path(results), tracker, str(resolve_device(device)))
    return run_job(job, ctx)


def _resources(job: Job, options: RayOptions) -> dict[str, float]:
    gpus = options.gpus_per_job if job.stage not in ("data", "curate") else 0.0
    return {"num_cpus": options.cpus_per_job, "num_gpus": gpus}


def execute_ray(
    exp: Experiment,
    results: Path,
    jobs: list[Job],
    tracker: Tracker,
    progress: bool,
    options: RayOptions,
    strict: bool = False,
) -> Any:
    """Run the unfinished ``jobs`` as Ray tasks in dependency order; returns a RunSummary.

    With ``strict``, pretraining jobs whose encoder did not learn fail, without retries
    (:func:`benchmark.harness.runner.run_experiment`).
    """
    try:
        import ray
    except ImportError:
        raise SSLBenchError(
            "--executor ray needs Ray: pip install 'sslbench[ray]' (or use --executor local)"
        ) from None
    from tqdm.auto import tqdm

    from benchmark.harness.health import strict_outcome, unhealthy_done
    from benchmark.harness.ledger import (
        Outcome,
        RunSummary,
        job_done,
        record_failure,
        record_success,
    )

    if options.retries < 0 or options.cpus_per_job <= 0 or options.gpus_per_job < 0:
        raise SSLBenchError("ray: retries must be >= 0, cpus_per_job > 0 and gpus_per_job >= 0")
    summary = RunSummary(results, "", len(jobs))
    todo = [j for j in jobs if not job_done(results, j)]
    summary.skipped = [j.id for j in jobs if j not in todo]
    device = str(exp.device)
    started = False
    if not ray.is_initialized():
        ray.init(
            address=options.address,
            num_cpus=options.num_cpus if options.address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        started = True
    task = ray.remote(_run_remote)
    cwd = os.getcwd()
    waiting = list(todo)
    running: dict[Any, tuple[Job, int]] = {}
    finished: set[str] = set(summary.skipped)
    failed: set[str] = set()
    if strict:  # finished earlier, failed under --strict now
        for job_id, message in unhealthy_done(results, jobs).items():
            finished.discard(job_id)
            failed.add(job_id)
            summary.skipped.remove(job_id)
            summary.failed[job_id] = message
    bar = tqdm(total=len(todo), disable=not progress, unit="job", desc="ray", dynamic_ncols=True)

    def submit(job: Job, attempt: int) -> None:
        ref = task.options(
            **_resources(job, options), max_retries=0, name=job.id.replace("/", ":")
        ).remote(
            str(results),
            job,
            tracker,
            device,
            cwd,
            round(options.cpus_per_job),
        )
        running[ref] = (job, attempt)

    try:
        while waiting or running:
            for job in list(waiting):
                bad = [d for d in job.deps if d in failed]
                if bad:
                    waiting.remove(job)
                    failed.add(job.id)
                    summary.failed[job.id] = f"skipped: depends on failed {', '.join(bad)}"
                    bar.update(1)
                elif all(d in finished for d in job.deps):
                    waiting.remove(job)
                    submit(job, 1)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1)
            job, attempt = running.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # the worker died (killed, out of memory, node lost)
                outcome = Outcome(False, error=f"{exc.__class__.__name__}: {exc}")
            outcome.attempts = attempt
            if strict:
                outcome = strict_outcome(job, outcome)
            if outcome.ok:
                record_success(results, job, outcome)
                summary.ran.append(job.id)
                finished.add(job.id)
            elif attempt <= options.retries and outcome.retry:
                submit(job, attempt + 1)
                continue
            else:
                failed.add(job.id)
                summary.failed[job.id] = record_failure(results, job, outcome)
            bar.update(1)
            bar.set_postfix_str(f"{len(running)} running, {len(waiting)} waiting")
    finally:
        bar.close()
        for ref in running:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
    return summary
