"""``sslbench snapshot``: the light state of a run in progress, and the check of its resume.

A reference run can take longer than one working session on a machine that is not
kept. :func:`snapshot_run` copies what a later session needs to resume it without
redoing the evaluation: the resolved experiment, the markers of the jobs that
finished with their current key, the cell records of the current jobs written so far
(finished and unfinished sweeps alike), and the summaries of the pretraining and
generator jobs (and the sampling report) under ``pretrain-summaries/`` and
``generator-summaries/`` (not ``pretrain/`` or ``generator/``, whose outputs would
mark those jobs done although their weights stay behind). No data, synthetic images,
weights, caches or W&B runs. A ``snapshot.json`` names the run it came from; a save
only ever replaces a folder that holds one.

Resuming (:func:`restore_run`) copies the snapshot into a new run folder without the
summaries; ``sslbench run`` then regenerates the data, generator and encoders
(deterministic on one CPU kind) and skips every recorded cell. Records of two
sessions may only share a leaderboard when the regenerated jobs are those of the
first session; :func:`check_resume` says whether they are, figure by figure:

* every job finished in the snapshot finished in the run with the same key;
* every record of the snapshot is in the run, byte for byte;
* every pretraining job gave the same final loss, health verdict and figures and
  monitor curve (timings aside) from pools of the same content hashes, every
  generator the same final loss;
* every encoder arm's records, across tasks and adapters, carry one weights hash.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmark.core.errors import DataError
from benchmark.core.io import atomic_write_json, read_json
from benchmark.harness.experiment import load_experiment
from benchmark.harness.export import GENERATOR_FILES, PRETRAIN_FILES
from benchmark.harness.jobs import Job, plan_jobs
from benchmark.harness.leaderboard import load_records
from benchmark.harness.ledger import EXPERIMENT_FILE, EXPERIMENT_META, marker_path
from pretrain.checkpoint import read_checkpoint_meta

SUMMARIES = {"pretrain": "pretrain-summaries", "generator": "generator-summaries"}
#: The file that makes a folder a snapshot (what it was taken of, and when).
SNAPSHOT_META = "snapshot.json"


def _current_jobs(run: Path) -> list[Job]:
    """The jobs of the experiment a run folder holds (planned from its resolved copy)."""
    if not (run / EXPERIMENT_META).exists() or not (run / EXPERIMENT_FILE).exists():
        raise DataError(
            f"{run}: no {EXPERIMENT_FILE} / {EXPERIMENT_META}; is this a folder of `sslbench run`?"
        )
    if (run / SNAPSHOT_META).exists():
        raise DataError(f"{run}: is a snapshot, not a run folder (restore it first)")
    exp = load_experiment(run / EXPERIMENT_FILE)
    return plan_jobs(exp, run.resolve())


def _arms(run: Path, job: Job, by_id: dict[str, Job]) -> tuple[str, ...]:
    """Records-folder names (or name prefixes) of a sweep's current arms.

    A pretrained encoder's folder is ``<label>-<first 8 of its weights hash>``: exact
    once the encoder exists (records of older weights of the same label stay behind).
    """
    label = str(job.config.get("encoder") or "")
    if label:
        pre = next((by_id[d] for d in job.deps if by_id[d].stage == "pretrain"), None)
        try:
            sha = read_checkpoint_meta(pre.out / "encoder").get("weights_sha256") if pre else None
        except DataError:  # not (re)generated yet: its records cannot be told apart
            sha = None
        return (f"{label}-{str(sha)[:8]}",) if sha else (f"{label}-",)
    arch = str((job.config.get("architecture") or {}).get("name", ""))
    return tuple(f"{b}-{arch}-" for b in job.config.get("baselines", []))


def _snapshot_files(run: Path) -> dict[Path, Path]:
    """Source file -> path inside the snapshot."""
    jobs = _current_jobs(run)
    by_id = {j.id: j for j in jobs}
    files = {run / f: Path(f) for f in (EXPERIMENT_FILE, EXPERIMENT_META)}
    for job in jobs:
        marker = read_json(marker_path(run, job))
        if marker is not None and marker.get("key") == job.key and marker.get("status") == "ok":
            path = marker_path(run, job)
            files[path] = path.relative_to(run)
    root = run.resolve()
    for job in (j for j in jobs if j.stage == "evaluate"):
        arms = _arms(run, job, by_id)
        # (an unfinished atomic write is a hidden ``.*.partial-*`` file: never matched)
        for record in sorted((Path(job.run["output"]) / "records").rglob("*.json")):
            if record.parent.name.startswith(arms):
                files[record] = record.relative_to(root)
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


def _check_destination(src: Path, out: Path) -> None:
    """A save writes only into a new folder, an empty one or an older snapshot."""
    a, b = src.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise DataError(f"{out}: the snapshot cannot be the run folder {src}, inside or above it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SNAPSHOT_META).exists():
        raise DataError(
            f"{out}: exists, is not empty and is not a snapshot (no {SNAPSHOT_META}); "
            "give a new folder, e.g. partial-runs/NAME"
        )


def snapshot_run(run: str | Path, dest: str | Path) -> list[Path]:
    """Write the light state of ``run`` into ``dest`` (replacing an older snapshot whole).

    The snapshot is assembled in a temporary sibling folder and renamed into place, so
    a failure leaves the previous snapshot as it was.

    Args:
        run: A results folder of ``sslbench run``.
        dest: A new or empty folder, or an older snapshot of any run.

    Returns:
        The written paths (``snapshot.json`` included).

    Raises:
        DataError: ``run`` is not a run folder, or ``dest`` is neither new, empty nor a
            snapshot, or lies inside the run (or the run inside it).
    """
    src, out = Path(run), Path(dest)
    files = _snapshot_files(src)  # reads only: a folder that is no run is refused first
    _check_destination(src, out)
    tmp = out.with_name(f".{out.name}.partial-snapshot")
    old = out.with_name(f".{out.name}.old-snapshot")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for path, rel in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
        meta = read_json(src / EXPERIMENT_META) or {}
        atomic_write_json(
            tmp / SNAPSHOT_META,
            {
                "run": str(src.resolve()),
                "experiment": meta.get("name"),
                "experiment_hash": meta.get("hash"),
                "records": sum("records" in rel.parts for rel in files.values()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return sorted(out / rel for rel in [*files.values(), Path(SNAPSHOT_META)])


def _snapshot_folder(path: Path) -> Path:
    if not (path / SNAPSHOT_META).exists():
        raise DataError(f"{path}: no {SNAPSHOT_META}; not a folder of `sslbench snapshot save`")
    return path


def restore_run(snapshot: str | Path, run: str | Path) -> int:
    """Copy a snapshot into a new run folder, without its summaries.

    Written into a temporary sibling and renamed into place: a failure leaves no
    half-filled run folder.

    Args:
        snapshot: A folder of :func:`snapshot_run`.
        run: The run folder to create (new, or an empty folder).

    Returns:
        The number of files copied.

    Raises:
        DataError: ``snapshot`` is not a snapshot, or ``run`` exists and is not empty
            (a resume never writes into old outputs).
    """
    src, out = _snapshot_folder(Path(snapshot)), Path(run)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; restore into a new folder")
    tmp = out.with_name(f".{out.name}.partial-restore")
    shutil.rmtree(tmp, ignore_errors=True)
    n = 0
    try:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_dir() or rel.parts[0] in SUMMARIES.values() or rel.name == SNAPSHOT_META:
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
            n += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    return n


def repeatable_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What must repeat exactly in a regenerated job's summary.

    Timings and locations are dropped. The generator's file hash is too: its file
    names the training data by path, so it differs between run folders even for
    equal weights; the sampled pool's content hash (in the synthetic arms' source)
    and the losses carry the identity instead.

    Args:
        summary: A ``pretrain.json`` or ``generator.json``.

    Returns:
        The figures that a run repeating the job must give to the last digit.
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
    """``where.path: old then, new now`` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff(f"{where}.{k}", old.get(k), new.get(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [d for i, (a, b) in pairs for d in _diff(f"{where}[{i}]", a, b)]
    return [] if old == new else [f"{where}: {old!r} then, {new!r} now"]


def check_resume(snapshot: str | Path, run: str | Path) -> list[str]:
    """Differences between a snapshot and the run resumed from it.

    Args:
        snapshot: A folder of :func:`snapshot_run`.
        run: The run folder restored from it, after ``sslbench run`` resumed it.

    Returns:
        One line per difference ([] when the two sessions may share a leaderboard).

    Raises:
        DataError: ``snapshot`` is not a snapshot or ``run`` not a run folder.
    """
    snap, out = _snapshot_folder(Path(snapshot)), Path(run)
    if not (out / EXPERIMENT_META).exists():
        raise DataError(f"{out}: no {EXPERIMENT_META}; not a folder of `sslbench run`")
    problems: list[str] = []
    for marker in sorted((snap / "jobs").glob("*.json")):
        then, now = read_json(marker) or {}, read_json(out / "jobs" / marker.name) or {}
        if now.get("key") != then.get("key") or now.get("status") != "ok":
            problems.append(
                f"jobs/{marker.name}: finished with key {then.get('key')} then, "
                f"{now.get('status', 'not run')} with key {now.get('key')} now"
            )
    for record in sorted(snap.glob("evaluate/**/records/**/*.json")):
        rel = record.relative_to(snap)
        now_path = out / rel
        if not now_path.exists():
            problems.append(f"{rel}: recorded in the snapshot, missing in {out}")
        elif now_path.read_bytes() != record.read_bytes():
            problems.append(f"{rel}: rewritten by the resumed run")
    for kind, folder in SUMMARIES.items():
        name = "pretrain.json" if kind == "pretrain" else "generator.json"
        for summary in sorted((snap / folder).glob(f"*/{name}")):
            job = summary.parent.name
            regenerated = out / kind / job / name
            if not regenerated.exists():
                problems.append(f"{kind}/{job}: not in {out} (not run yet, or its key changed)")
                continue
            old, new = (
                repeatable_figures(json.loads(p.read_text())) for p in (summary, regenerated)
            )
            problems += _diff(f"{kind}/{job}", old, new)
    hashes: dict[str, set[str]] = {}
    try:
        records = load_records(out)  # the index's records once the run wrote one
    except DataError:  # none yet
        records = []
    for rec in records:
        enc = rec.get("encoder") or {}
        if enc.get("kind") == "checkpoint":
            hashes.setdefault(str(enc["id"]).rsplit("-", 1)[0], set()).add(str(enc["hash"]))
    for label, seen in sorted(hashes.items()):
        if len(seen) > 1:
            problems.append(f"{label}: records of {len(seen)} different encoder weights")
    return problems
