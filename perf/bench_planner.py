"""Planner benchmark: ``--dry-run`` estimates against the committed reference runs.

For every committed results folder with job markers (``results/*/jobs``), the jobs are
planned again from the folder's resolved ``experiment.yaml`` with the current rates
(``SPEED`` in ``benchmark/harness/jobs.py``) and each job's estimate is set beside the
time it took: for evaluation sweeps the sum of their current cell records' training and
evaluation seconds, for the other jobs the wall time their marker recorded.
Printed: one line per job, then the median ratio estimate / recorded per class of
job (stage; for evaluation sweeps also 2D / 3D and whether the adapters train), the
figure a recalibration of ``SPEED`` divides by.

Caveats, printed with the figures: the recorded times come from 2-core machines,
some of them shared with the test suite (the READMEs of the results folders say
which); a sweep's cells stop early when validation stops improving, which the
estimate (the planned step budget) cannot know.

Usage::

    python perf/bench_planner.py [--results results] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmark.core.errors import SSLBenchError
from benchmark.harness.experiment import load_experiment
from benchmark.harness.jobs import Job, _dims, _frozen, format_duration, plan_jobs
from benchmark.harness.ledger import marker_path


def job_class(job: Job, exp: Any) -> str:
    """``pretrain``, ``generate/train``, ``evaluate 3D trains`` ... (the rows of the summary)."""
    if job.stage != "evaluate":
        return job.id if job.stage == "generate" else job.stage
    spec = str(job.config.get("spec"))
    entry = next((t for t in exp.evaluate.tasks if t.spec == spec), None)
    dims = _dims(exp.datasets[entry.dataset]) if entry and entry.dataset else 2
    adapters = {str(c[0]) for c in job.cells}
    frozen = set(_frozen(sorted(adapters)))
    kind = "frozen" if adapters <= frozen else "mixed" if frozen else "trains"
    return f"evaluate {dims}D {kind} ({'+'.join(sorted(adapters))})"


def cell_seconds(folder: Path, job: Job) -> tuple[float, float | None] | None:
    """Training + evaluation seconds of a sweep's current records, and the share of
    their planned steps that the trained adapters ran before early stopping (None:
    no trained adapter); None without records.

    A sweep's marker keeps the wall time of the runs that recorded its cells only
    while its key is unchanged and no run was cut short; the records keep their own.
    """
    index = folder / "index.json"
    if job.stage != "evaluate" or not index.exists():
        return None
    label = job.id.rsplit("/", 1)[-1]
    if label.startswith("baselines-"):
        arch = label.removeprefix("baselines-")
        prefixes = tuple(f"{b}-{arch}-" for b in ("scratch", "supervised"))
    else:
        prefixes = (f"{label}-",)
    records = json.loads(index.read_text())["records"]
    out = Path(job.run["output"]).relative_to(folder.resolve()).as_posix() + "/"
    total, n, ran, planned = 0.0, 0, 0, 0
    for rel in records:
        if rel.startswith(out) and Path(rel).parent.name.startswith(prefixes):
            rec = json.loads((folder / rel).read_text())
            total += float(rec.get("train_time_s") or 0) + float(rec.get("eval_time_s") or 0)
            n += 1
            extra = rec.get("extra") or {}
            plan = (extra.get("step_plan") or {}).get("total_steps")
            if plan and extra.get("steps_trained") is not None:
                ran, planned = ran + int(extra["steps_trained"]), planned + int(plan)
    if not n:
        return None
    return total, (round(ran / planned, 3) if planned else None)


def compare(folder: Path) -> list[dict[str, Any]]:
    """Estimate vs recorded time of every job of one results folder with markers."""
    exp = load_experiment(folder / "experiment.yaml")
    rows = []
    for job in plan_jobs(exp, folder.resolve()):
        marker = marker_path(folder, job)
        if not marker.exists():
            continue
        data = json.loads(marker.read_text())
        cells = cell_seconds(folder, job)
        recorded = cells[0] if cells else float(data.get("wall_s_total") or 0.0)
        if data.get("key") != job.key or recorded <= 0 or job.estimate_s <= 0:
            continue
        share = cells[1] if cells else None
        rows.append(
            {
                "reference": folder.name,
                "job": job.id,
                "class": job_class(job, exp),
                "estimate_s": round(job.estimate_s, 1),
                "recorded_s": round(recorded, 1),
                "ratio": round(job.estimate_s / recorded, 3),
                "steps_share": share,
                # the rate's own error: the ratio had every cell run its whole budget
                "rate_ratio": None
                if share is None
                else round(job.estimate_s * share / recorded, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="folder of committed references")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for folder in sorted(Path(args.results).iterdir()):
        if (folder / "experiment.yaml").exists() and (folder / "jobs").is_dir():
            try:
                rows += compare(folder)
            except SSLBenchError as exc:  # e.g. a reference whose data is not on this machine
                print(f"{folder.name}: skipped ({exc})")
    print(
        f"{'reference':<20} {'job':<56} {'estimate':>9} {'recorded':>9} {'ratio':>6} "
        f"{'steps':>6} {'rate':>6}"
    )
    for r in rows:
        share = "" if r["steps_share"] is None else f"{r['steps_share']:.2f}"
        rate = "" if r["rate_ratio"] is None else f"{r['rate_ratio']:.2f}"
        print(
            f"{r['reference']:<20} {r['job'][:56]:<56} {format_duration(r['estimate_s']):>9} "
            f"{format_duration(r['recorded_s']):>9} {r['ratio']:>6.2f} {share:>6} {rate:>6}"
        )
    summary: dict[str, dict[str, Any]] = {}
    for cls in sorted({r["class"] for r in rows}):
        mine = [r for r in rows if r["class"] == cls]
        ratios = [r["ratio"] for r in mine]
        rates = [r["rate_ratio"] for r in mine if r["rate_ratio"] is not None]
        summary[cls] = {
            "jobs": len(ratios),
            "median_ratio": round(statistics.median(ratios), 3),
            "min": min(ratios),
            "max": max(ratios),
            "median_rate_ratio": round(statistics.median(rates), 3) if rates else None,
        }
    print(
        "\nmedian estimate / recorded per class of job (> 1: the planner is long; rate: the "
        "same with the\nestimate cut to the share of planned steps the cells trained before "
        "early stopping)"
    )
    for cls, s in summary.items():
        rate = "" if s["median_rate_ratio"] is None else f"  rate {s['median_rate_ratio']:.2f}"
        print(
            f"  {cls:<52} {s['jobs']:>3} jobs  {s['median_ratio']:>5.2f}  "
            f"[{s['min']:.2f}, {s['max']:.2f}]{rate}"
        )
    print(
        "\nrecorded on 2-core CPUs, partly shared with the test suite (see each results "
        "folder's README); sweeps' early stopping is not in the estimate"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
