"""``sslbench export RESULTS DEST``: the light, committable part of a results folder.

Copies what a reference leaderboard needs to be checked and regenerated, and
nothing heavy or private: the resolved experiment and its hash, ``index.json``,
the job markers, every current cell record (same relative paths, so
``sslbench leaderboard DEST`` regenerates the leaderboard), the pretraining
summaries and loss curves, the generator's quality report, and the
leaderboard; of job output folders only those of the index's jobs (not those a
changed config superseded). Datasets, synthetic images, checkpoints, feature caches and W&B
runs stay behind (converted datasets must never enter a repository).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmark.core.errors import DataError

FILES = ("experiment.yaml", "experiment.json", "index.json")
PRETRAIN_FILES = ("pretrain.json", "metrics.jsonl", "config.json")
GENERATOR_FILES = ("generator.json", "metrics.jsonl")


def export_results(results: str | Path, dest: str | Path) -> list[Path]:
    """Copy the committable files of ``results`` into ``dest``; returns the copied paths."""
    src, out = Path(results), Path(dest)
    index_path = src / "index.json"
    if not index_path.exists():
        raise DataError(f"{src}: no index.json; is this a results folder of `sslbench run`?")
    index = json.loads(index_path.read_text())
    # job outputs are named ``<label>-<key>``: a folder of a superseded job (its config
    # changed, so its key did) is not part of the experiment the index describes
    keys = {str(job["key"]) for job in index.get("jobs", [])}

    def current(name: str) -> bool:
        return not keys or name.rsplit("-", 1)[-1] in keys

    wanted = [src / f for f in FILES if (src / f).exists()]
    slugs = {str(job["job"]).replace("/", "__") + ".json" for job in index.get("jobs", [])}
    wanted += sorted(p for p in (src / "jobs").glob("*.json") if not slugs or p.name in slugs)
    wanted += [src / r for r in index["records"]]
    for folder in sorted((src / "pretrain").glob("*")):
        if current(folder.name):
            wanted += [folder / f for f in PRETRAIN_FILES if (folder / f).exists()]
    for folder in sorted((src / "generator").glob("*")):
        if current(folder.name):
            wanted += [folder / f for f in GENERATOR_FILES if (folder / f).exists()]
            wanted += sorted((folder / "samples").glob("*.png"))
    for report in sorted((src / "synthetic").glob("*-report")):
        if current(report.name.removesuffix("-report")):
            wanted += sorted(p for p in report.iterdir() if p.is_file())
    if (src / "leaderboard").is_dir():
        wanted += sorted(p for p in (src / "leaderboard").iterdir() if p.is_file())
    copied = []
    for path in wanted:
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(target)
    return copied
