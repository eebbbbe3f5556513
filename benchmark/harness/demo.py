"""``sslbench demo``: the main job end to end on the built-in phantom data.

It runs the shipped ``demo`` experiment (``benchmark/experiments/demo.yaml``):
the phantom's ``birads`` variant (benign / malignant by lesion orientation and
margin, a lesion mask in every image), a small DDPM trained on its train split
and sampled, SimCLR pretraining on real / synthetic / mixed images,
classification and segmentation at 10 % of the labels against scratch, a
supervised baseline with every label, and the leaderboard, with W&B offline
runs; the summary ends with the findings block generated from the leaderboard.
Its targets are checked on every CI run by
``tests/benchmark/harness/test_demo_targets.py``: supervised AUC >= 0.95 and Dice
>= 0.7; every pretrained arm above scratch at the smallest fraction (by >= 0.1 for
fine-tuning and segmentation, > 0 for the linear probe), the best contrast per task
with an interval that excludes 0. ``--quick`` runs the smaller
``phantom-tiny`` grid instead (the tox ``smoke`` environment). Like every
``sslbench run``, it resumes where it stopped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmark.core.errors import SSLBenchError
from benchmark.harness.experiment import load_experiment
from benchmark.harness.ledger import EXPERIMENT_META
from benchmark.harness.runner import format_run_summary, run_experiment


def run_demo(out: Path, overwrite: bool = False, quick: bool = False, progress: bool = True) -> int:
    """Run the demo into ``out``; returns a process exit code."""
    name = "phantom-tiny" if quick else "demo"
    exp = load_experiment(name)
    if overwrite and out.exists():
        if not (out / EXPERIMENT_META).exists():
            raise SSLBenchError(f"{out}: not an sslbench results folder; refusing to delete it")
        shutil.rmtree(out)
    print(f"[demo] running the {name!r} experiment into {out}")
    summary = run_experiment(exp, out, source=name, progress=progress)
    print(format_run_summary(summary))
    if summary.leaderboard:
        print(f"[demo] open {summary.leaderboard / 'LEADERBOARD.md'} for the results")
    return 1 if summary.failed else 0
