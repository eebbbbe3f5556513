"""``sslbench snapshot``: the light state of a run in progress, and the check of its resume.

A reference run can take longer than one working session on a machine that is not
kept. :func:`snapshot_run` copies what a later session needs to resume it without
redoing the evaluation: the resolved experiment, the markers of the jobs that
finished with their current key, every cell record written so far (finished and
unfinished sweeps alike), and the summaries of the pretraining and generator jobs
(and the sampling report) under ``pretrain-summaries/`` and ``generator-summaries/`` (not ``pretrain/`` or
``generator/``, whose outputs would mark those jobs done although their weights
stay behind). No data, synthetic images, weights, caches or W&B runs.

Resuming copies the snapshot into a run folder, drops the two summary folders and
runs the experiment again: the runner regenerates the data, generator and
encoders (deterministic on one CPU kind) and skips every recorded cell. Records of
two sessions may only share a leaderboard when the regenerated jobs are those of
the first session; :func:`check_resume` says whether they are, figure by figure:

* every record of the snapshot is in the run, byte for byte;
* every pretraining job gave the same final loss, health verdict and figures and
  monitor curve (timings aside) from pools of the same content hashes, every
  generator the same final loss;
* within each encoder arm, every record of the run carries one weights hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from benchmark.core.errors import DataError
from benchmark.core.io import read_json
from benchmark.harness.experiment import load_experiment
from benchmark.harness.export import GENERATOR_FILES, PRETRAIN_FILES
from benchmark.harness.jobs import Job, plan_jobs
from benchmark.harness.ledger import EXPERIMENT_FILE, EXPERIMENT_META, marker_path

SUMMARIES = {"pretrain": "pretrain-summaries", "generator": "generator-summaries"}


def _current_jobs(run: Path) -> list[Job]:
    """The jobs of the experiment a run folder holds (planned from its resolved copy)."""
    if not (run / EXPERIMENT_META).exists() or not (run / EXPERIMENT_FILE).exists():
        raise DataError(
            f"{run}: no {EXPERIMENT_FILE} / {EXPERIMENT_META}; is this a folder of `sslbench run`?"
        )
    exp = load_experiment(run / EXPERIMENT_FILE)
    return plan_jobs(exp, run.resolve())


def _snapshot_files(run: Path) -> dict[Path, Path]:
    """Source file -> path inside the snapshot."""
    jobs = _current_jobs(run)
    files = {run / f: Path(f) for f in (EXPERIMENT_FILE, EXPERIMENT_META)}
    for job in jobs:
        marker = read_json(marker_path(run, job))
        if marker is not None and marker.get("key") == job.key and marker.get("status") == "ok":
            path = marker_path(run, job)
            files[path] = path.relative_to(run)
    for folder in sorted({Path(j.run["output"]) for j in jobs if j.stage == "evaluate"}):
        for record in sorted((folder / "records").rglob("*.json")):
            if not record.name.startswith("."):  # an unfinished atomic write
                files[record] = record.relative_to(run.resolve())
    for job in jobs:
        names: tuple[str, ...]
        if job.stage == "pretrain" and job.out.is_dir():
            names, folder = PRETRAIN_FILES, job.out
        elif job.id == "generate/train" and job.out.is_dir():
            names, folder = GENERATOR_FILES, job.out
        elif job.id == "generate/sample":  # the quality / memorisation report beside the h5
            folder = job.out.with_name(job.out.stem + "-report")
            names = tuple(p.name for p in sorted(folder.glob("*")) if p.is_file())
        else:
            continue
        kind = "pretrain" if job.stage == "pretrain" else "generator"
        for name in names:
            if (folder / name).exists():
                files[folder / name] = Path(SUMMARIES[kind]) / folder.name / name
    return files


def snapshot_run(run: str | Path, dest: str | Path) -> list[Path]:
    """Write the light state of ``run`` into ``dest`` (replacing an older snapshot whole).

    The snapshot is assembled in a temporary sibling folder and renamed into place, so
    a failure leaves the previous snapshot as it was. Returns the written paths.

    Raises:
        DataError: ``run`` is not a results folder of ``sslbench run``.
    """
    src, out = Path(run), Path(dest)
    files = _snapshot_files(src)
    tmp = out.with_name(f".{out.name}.partial-snapshot")
    old = out.with_name(f".{out.name}.old-snapshot")
    shutil.rmtree(tmp, ignore_errors=True)
    for path, rel in files.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return sorted(out / rel for rel in files.values())


def restore_run(snapshot: str | Path, run: str | Path) -> int:
    """Copy a snapshot into a new run folder, without its summaries; returns the files copied.

    Raises:
        DataError: ``run`` exists and is not empty (a resume never writes into old outputs).
    """
    src, out = Path(snapshot), Path(run)
    if not (src / EXPERIMENT_META).exists():
        raise DataError(f"{src}: no {EXPERIMENT_META}; not a snapshot of `sslbench snapshot`")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; restore into a new folder")
    n = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.parts[0] in SUMMARIES.values():
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
        n += 1
    return n


def repeatable_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What must repeat exactly in a regenerated job's summary.

    Timings and locations are dropped. The generator's file hash is too: its file
    names the training data by path, so it differs between run folders even for
    equal weights; the sampled pool's content hash (in the synthetic arms' source)
    and the losses carry the identity instead.
    """
    keep = ("final_loss", "final_embedding_std", "images_seen", "steps")
    out = {k: summary[k] for k in keep if k in summary}
    if isinstance(summary.get("health"), dict):
        # a monitor that did not run is absent in older summaries and all None in newer
        # ones (e.g. the dense probe of a labelled dataset): the same fact either way
        out["health"] = {
            k: v
            for k, v in summary["health"].items()
            if not (isinstance(v, dict) and all(x is None for f, x in v.items() if f != "metric"))
            and v is not None
        }
    source = summary.get("source")
    if isinstance(source, dict):  # the content hash of each pool an encoder was trained on
        out["source"] = {
            k: {f: v for f, v in pool.items() if f != "path"}
            for k, pool in source.items()
            if isinstance(pool, dict) and "content_hash" in pool
        }
    points = (summary.get("monitor") or {}).get("points") or []
    out["monitor"] = [
        {k: v for k, v in p.items() if not k.endswith("time_s") and k != "calibration"}
        for p in points
    ]
    return out


def _diff(where: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in _diff(f"{where}.{k}", old.get(k), new.get(k))
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in _diff(f"{where}[{i}]", a, b)
        ]
    return [] if old == new else [f"{where}: {old!r} then, {new!r} now"]


def check_resume(snapshot: str | Path, run: str | Path) -> list[str]:
    """Differences between a snapshot and the run resumed from it ([] when it is sound)."""
    snap, out = Path(snapshot), Path(run)
    problems: list[str] = []
    for record in sorted(snap.glob("evaluate/**/records/**/*.json")):
        rel = record.relative_to(snap)
        now = out / rel
        if not now.exists():
            problems.append(f"{rel}: recorded in the snapshot, missing in {out}")
        elif now.read_bytes() != record.read_bytes():
            problems.append(f"{rel}: rewritten by the resumed run")
    for kind, folder in SUMMARIES.items():
        name = "pretrain.json" if kind == "pretrain" else "generator.json"
        for summary in sorted((snap / folder).glob(f"*/{name}")):
            job = summary.parent.name
            regenerated = out / kind / job / name
            if not regenerated.exists():
                problems.append(f"{kind}/{job}: not regenerated in {out} (run it first)")
                continue
            old, new = (
                repeatable_figures(json.loads(p.read_text())) for p in (summary, regenerated)
            )
            problems += _diff(f"{kind}/{job}", old, new)
    hashes: dict[tuple[str, str], set[str]] = {}
    index = read_json(out / "index.json") or {}
    listed = [out / r for r in index.get("records", [])]  # the current cells, once indexed
    for record in listed or sorted(out.glob("evaluate/**/records/**/*.json")):
        data = json.loads(record.read_text())
        enc = data.get("encoder") or {}
        if enc.get("kind") == "checkpoint":
            task_arm = (str(data["task"]["name"]), str(enc["id"]).rsplit("-", 1)[0])
            hashes.setdefault(task_arm, set()).add(str(enc["hash"]))
    for (task, label), seen in sorted(hashes.items()):
        if len(seen) > 1:
            problems.append(f"{task} / {label}: records of {len(seen)} different encoder weights")
    return problems
