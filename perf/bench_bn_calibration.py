"""Issue 23: how much batch-norm calibration lifts the random-init linear probe.

A randomly initialised ResNet-18 in eval mode normalises every layer with
running statistics of mean 0 and variance 1, which no real image has; any
pretraining run refits them on the data as a side effect. This measures the
frozen-feature baseline before and after :func:`calibrate_batch_norm` (one
no-grad pass over the **train split**, cumulative statistics, weights
untouched; the protocol of the ``scratch`` arm of the linear and kNN probes,
:mod:`tasks.taskdata`) on real data:

* BUSI (3 classes), converted at 64 px, its patient-grouped split;
* BreastMNIST (2 classes), 28 px images upsampled to 32 px (the ResNet needs
  multiples of 32), the official MedMNIST split.

Probe: pooled features of every image (the task spec's preprocessing, as the
adapters see them), standardised on the train split, L2 logistic regression
(lbfgs, ``class_weight="balanced"`` as the specs' protocol) with ``C`` chosen
by 5-fold stratified cross-validation on the **full train split** (ROC AUC,
one-vs-rest macro for 3 classes) from the linear adapter's grid, refitted on
the full train split; validation and test AUC reported. Alongside, the other
frozen-feature baseline: the kNN adapter's weighted cosine vote (k = 20,
T = 0.07, full train split as the bank; no standardisation, so it sees the
raw feature geometry). One value per initialisation seed (default 3),
summarised as mean ± sd over seeds with the paired difference calibrated - raw.

Usage::

    python perf/bench_bn_calibration.py                 # both datasets, seeds 0,1,2
    python perf/bench_bn_calibration.py --seeds 0,1,2,3,4 --data-dir /tmp/bn-data
    python perf/bench_bn_calibration.py --json out.json # also the per-seed values
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from benchmark.data.converters import CONVERTERS
from pretrain.encoders.calibration import calibrate_batch_norm
from tasks.adapters.knn import KNNAdapter, knn_predict
from tasks.adapters.linear import DEFAULT_C_GRID
from tasks.features import extract_features, load_images, read_labels
from tasks.metrics.classification import auc
from tasks.spec import load_spec
from tasks.taskdata import CALIBRATION_BATCH, CALIBRATION_SPLIT, EncoderSource, TaskData

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: name -> (task spec, converter, source, image size fed to the encoder)
DATASETS = {
    "BUSI": ("busi-cls", "busi", SHARED / "busi_256", 64),
    "BreastMNIST": ("breastmnist-cls", "medmnist", SHARED / "medmnist" / "breastmnist.npz", 32),
}
ARCH = "resnet18"


def prepare(name: str, data_dir: Path) -> TaskData:
    """Convert the dataset (once per ``data_dir``) and read its task data."""
    spec_name, converter, src, size = DATASETS[name]
    out = data_dir / f"{name.lower()}.h5"
    if not out.exists():
        options = {"size": 64} if converter == "busi" else {}
        CONVERTERS.create(converter, **options).convert(src, out)
    spec = dataclasses.replace(load_spec(spec_name), dataset=str(out), image_size=size)
    return TaskData.load(spec)


def probe(feats: np.ndarray, labels: np.ndarray, task: TaskData, seed: int) -> dict[str, float]:
    """Standardised logistic regression, C by 5-fold CV on the train split; val/test AUC."""
    train, val, test = task.pool("train"), task.pool("val"), task.pool("test")
    scoring = "roc_auc" if task.num_classes == 2 else "roc_auc_ovr"
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed),
    )
    search = GridSearchCV(
        model,
        {"logisticregression__C": DEFAULT_C_GRID},
        scoring=scoring,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        refit=True,
    )
    with threadpool_limits(1, "blas"):
        search.fit(feats[train], labels[train])
    k = task.num_classes
    opts = KNNAdapter.default_config

    def knn_auc(split: np.ndarray) -> float:
        probs = knn_predict(
            feats[train], labels[train], feats[split], k, opts["k"], opts["temperature"]
        )
        return auc(labels[split], probs, num_classes=k)

    return {
        "C": float(search.best_params_["logisticregression__C"]),
        "cv_auc": float(search.best_score_),
        "val_auc": auc(labels[val], search.predict_proba(feats[val]), num_classes=k),
        "test_auc": auc(labels[test], search.predict_proba(feats[test]), num_classes=k),
        "knn_val_auc": knn_auc(val),
        "knn_test_auc": knn_auc(test),
    }


def run_dataset(name: str, data_dir: Path, seeds: list[int]) -> dict[str, Any]:
    """Raw and calibrated random init, per seed."""
    task = prepare(name, data_dir)
    size = task.spec.image_size
    cell = task.cell(1.0, 0)  # any cell: load_images reads every image of the file
    images = load_images(cell, 1)
    labels = np.asarray(read_labels(cell), dtype=np.int64)
    train_images = task.split_images(CALIBRATION_SPLIT, 1)
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        source = EncoderSource.scratch(ARCH, {"in_chans": 1, "img_size": size})
        enc = source.build(seed)  # exactly the baseline's random init
        t0 = time.perf_counter()
        raw = probe(extract_features(enc, images, 128), labels, task, seed)
        t1 = time.perf_counter()
        calibration = calibrate_batch_norm(
            enc, train_images, split=CALIBRATION_SPLIT, batch_size=CALIBRATION_BATCH
        )
        t2 = time.perf_counter()
        cal = probe(extract_features(enc, images, 128), labels, task, seed)
        rows.append(
            {
                "seed": seed,
                "raw": raw,
                "calibrated": cal,
                "calibration": calibration,
                "time_s": {"raw": round(t1 - t0, 2), "calibration": round(t2 - t1, 2)},
            }
        )
        print(
            f"  {name} seed {seed}: test AUC raw {raw['test_auc']:.3f} -> calibrated "
            f"{cal['test_auc']:.3f} (val {raw['val_auc']:.3f} -> {cal['val_auc']:.3f}; "
            f"C {raw['C']:.3g} -> {cal['C']:.3g}); kNN test AUC {raw['knn_test_auc']:.3f} -> "
            f"{cal['knn_test_auc']:.3f}",
            flush=True,
        )
    split = {s: int(task.pool(s).size) for s in ("train", "val", "test")}
    return {
        "dataset": name,
        "image_size": size,
        "classes": task.num_classes,
        "n": split,
        "rows": rows,
    }


def mean_sd(values: list[float]) -> str:
    a = np.asarray(values, dtype=np.float64)
    sd = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{a.mean():.3f} ± {sd:.3f}"


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table: per dataset, raw and calibrated, and the paired difference."""
    keys = ("val_auc", "test_auc", "cv_auc", "knn_val_auc", "knn_test_auc")
    lines = [
        "| dataset (px, classes, train/val/test) | init | linear val AUC | linear test AUC | "
        "linear CV AUC (train) | kNN val AUC | kNN test AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        n = res["n"]
        what = (
            f"{res['dataset']} ({res['image_size']} px, {res['classes']}, "
            f"{n['train']}/{n['val']}/{n['test']})"
        )
        rows = res["rows"]
        arms = (("raw", "random"), ("calibrated", "random, BN calibrated on train"))
        for arm, label in arms:
            cols = [mean_sd([r[arm][k] for r in rows]) for k in keys]
            lines.append(f"| {what} | {label} | " + " | ".join(cols) + " |")
        diffs = [mean_sd([r["calibrated"][k] - r["raw"][k] for r in rows]) for k in keys]
        lines.append(f"| {what} | difference (paired) | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="initialisation seeds (default 0,1,2)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="BUSI,BreastMNIST")
    p.add_argument("--data-dir", help="where the converted .h5 files go (default: a temp dir)")
    p.add_argument("--json", help="also write the per-seed values here")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n.strip() for n in args.datasets.split(",")]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        results = [run_dataset(n, data_dir, seeds) for n in names]
    print()
    print(
        f"Random-init {ARCH} linear probe, {len(seeds)} init seeds (mean ± sd), torch "
        f"{torch.__version__}, {time.perf_counter() - start:.0f} s:"
    )
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
