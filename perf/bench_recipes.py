"""Recipe benchmark: does every SSL method learn at the budget people run?

For every registered method (or ``--methods``) on its default encoder, at the
busi-cpu budget (300 steps x 32 images, 64 px; masked methods at 128 px), one
pretraining run on BUSI's train split, then:

* loss first / last and its chance level (where the method has one);
* the online kNN monitor (:mod:`pretrain.monitor`): kNN accuracy on the
  validation split at step 0 (batch norm calibrated) and at the end;
* a linear probe on the frozen pooled features at 10 % and 100 % of the train
  labels (standardised features, L2 logistic regression with ``C`` chosen by
  stratified cross-validation on the labelled subset only; the 10 % figure
  averages 3 stratified subsets): macro one-vs-rest AUC on the validation and
  test splits;
* images/s of the training loop and the monitor's share of the run time.

Each method is compared with the random-init encoder of the same architecture
and seed, probed the same way, twice: raw (batch-norm statistics of mean 0,
variance 1) and batch-norm calibrated on the train split
(:func:`pretrain.encoders.calibration.calibrate_batch_norm`): the fair
reference, because any training run calibrates batch norm as a side effect.

Tuning used the validation columns only; the test columns are for the report.

Usage::

    python perf/bench_recipes.py [--methods simclr,moco] [--steps 300] [--batch-size 32]
        [--set simclr.lr=1e-3] [--json out.json] [--data ../shared/data/busi_256]
        [--dataset breastmnist --data ../shared/data/medmnist/breastmnist.npz --size 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmark.cli.args import parse_assignments
from benchmark.data.converters import CONVERTERS
from benchmark.data.dataset import H5Dataset
from pretrain.encoders import create_encoder
from pretrain.encoders.calibration import calibrate_batch_norm
from pretrain.methods import METHODS
from pretrain.train import PretrainConfig, pretrain
from tasks.metrics.classification import auc as auc_score

#: Default encoder and view size of each method at the busi-cpu budget.
DEFAULT_ENCODER = {"mae": "vit_tiny"}
MASKED_SIZE = 128
C_GRID = [float(c) for c in np.logspace(-4, 1, 6)]


def convert(dataset: str, src: Path, size: int, out: Path) -> Path:
    """The dataset in sslbench's format.

    ``busi``: BUSI at ``size`` px (grouped near-duplicates, seed 0 split);
    ``breastmnist``: the MedMNIST v2 npz at its 28 px with the official split
    (views and probes resize it to ``size``).
    """
    if dataset == "busi":
        path = out / f"busi{size}.h5"
        if not path.exists():
            CONVERTERS.create("busi", size=size).convert(src, path)
        return path
    path = out / "breastmnist.h5"
    if not path.exists():
        CONVERTERS.create("medmnist").convert(src, path)
    return path


def split_arrays(path: Path, size: int) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """Float images and labels of the train / val / test splits at ``size`` px."""
    out = {}
    for split in ("train", "val", "test"):
        ds = H5Dataset(path, split=split, keys=("label",)).load()
        images = ds.to_float(ds.raw_images())
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True
            )
        out[split] = (images, np.asarray(ds.labels, dtype=np.int64))
    return out


@torch.no_grad()
def features(encoder: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    encoder.eval()
    return torch.cat(
        [encoder.forward_features(images[i : i + 128]).float() for i in range(0, len(images), 128)]
    ).numpy()


def auc(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The evaluation's AUC (binary on the positive class, e.g. BreastMNIST; else macro
    one-vs-rest, BUSI) of ``model``'s probabilities."""
    return auc_score(y, model.predict_proba(x))


def linear_probe(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Linear-probe AUC on val and test at 100 % and 10 % (mean of 3 subsets) of train labels."""
    out: dict[str, float] = {}
    x, y = feats["train"], labels["train"]
    for frac, seeds in ((1.0, [0]), (0.1, [0, 1, 2])):
        scores: dict[str, list[float]] = {"val": [], "test": []}
        for seed in seeds:
            if frac < 1:
                idx, _ = train_test_split(
                    np.arange(len(y)), train_size=frac, stratify=y, random_state=seed
                )
            else:
                idx = np.arange(len(y))
            folds = StratifiedKFold(n_splits=3 if frac < 1 else 5, shuffle=True, random_state=0)
            search = GridSearchCV(
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                {"logisticregression__C": C_GRID},
                scoring="roc_auc_ovr",
                cv=folds,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                search.fit(x[idx], y[idx])
            for split in ("val", "test"):
                scores[split].append(auc(search.best_estimator_, feats[split], labels[split]))
        for split, vals in scores.items():
            out[f"auc{int(frac * 100)}_{split}"] = float(np.mean(vals))
    return out


def probe(encoder: torch.nn.Module, data: dict[str, tuple[torch.Tensor, np.ndarray]]) -> dict:
    feats = {s: features(encoder, imgs) for s, (imgs, _) in data.items()}
    return linear_probe(feats, {s: lab for s, (_, lab) in data.items()})


def random_init(
    encoder_name: str, size: int, seed: int, data: dict[str, tuple[torch.Tensor, np.ndarray]]
) -> dict[str, Any]:
    """Probe of the random-init encoder, raw and batch-norm calibrated on train."""
    torch.manual_seed(seed)
    encoder = create_encoder(encoder_name, in_chans=1, img_size=size)
    raw = probe(encoder, data)
    calibrated = copy.deepcopy(encoder)
    calibrate_batch_norm(calibrated, data["train"][0], split="train")
    return {"raw": raw, "calibrated": probe(calibrated, data)}


def run_method(
    method: str,
    args: argparse.Namespace,
    data_path: Path,
    size: int,
    overrides: dict,
    out: Path,
    arrays: dict[str, tuple[torch.Tensor, np.ndarray]],
) -> dict[str, Any]:
    """Pretrain ``method`` on ``data_path`` and probe it on ``arrays`` (the split arrays)."""
    encoder = DEFAULT_ENCODER.get(method, args.encoder)
    config = PretrainConfig(
        method=method,
        encoder=encoder,
        real=str(data_path),
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=size,
        seed=args.seed,
        method_config=overrides,
        checkpoint_every=0,
        log_every=10,
        device="cpu",
    )
    t0 = time.perf_counter()
    result = pretrain(config, out / method, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    s = result.summary
    from pretrain.checkpoint import load_encoder

    enc = load_encoder(result.checkpoint)
    h = s["health"]
    row = {
        "method": method,
        "encoder": encoder,
        "size": size,
        "recipe": s["recipe"],
        "optimizer": s["method_config"]["optimizer"],
        "lr_scaling": s["lr_scaling"],
        "effective_lr": s["effective_lr"],
        "loss_first": h["loss"]["first"],
        "loss_last": h["loss"]["last"],
        "loss_chance": h["loss"]["chance"],
        "knn_init": h["knn"]["init"],
        "knn_end": h["knn"]["end"],
        "linear_init": (h.get("linear") or {}).get("init"),
        "linear_end": (h.get("linear") or {}).get("end"),
        "verdict": h["verdict"],
        "images_per_s": s["images_per_s"],
        "monitor_share": s["monitor"]["time_s"] / wall,
        "wall_s": wall,
        "overrides": overrides,
    }
    return {**row, **probe(enc, arrays)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(sorted(METHODS.names())))
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=["busi", "breastmnist"], default="busi")
    p.add_argument("--data", default="../shared/data/busi_256", help="BUSI folder or MedMNIST npz")
    p.add_argument("--work", help="folder for datasets and runs (default: a temporary one)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--jobs", type=int, default=1, help="methods run side by side")
    args = p.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(args.set, "--set").items():
        method, _, option = key.partition(".")
        overrides.setdefault(method, {})[option] = value
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_recipes_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    baselines: dict[tuple[str, int], dict[str, Any]] = {}
    arrays: dict[tuple[Path, int], dict[str, tuple[torch.Tensor, np.ndarray]]] = {}
    plan = []
    for method in args.methods.split(","):
        cls = METHODS.get(method)
        size = MASKED_SIZE if cls.family == "masked" else args.size
        path = convert(args.dataset, Path(args.data), size, work)
        encoder = DEFAULT_ENCODER.get(method, args.encoder)
        if (path, size) not in arrays:
            arrays[path, size] = split_arrays(path, size)
        if (encoder, size) not in baselines:
            baselines[encoder, size] = random_init(encoder, size, args.seed, arrays[path, size])
            print(json.dumps({"random_init": [encoder, size], **baselines[encoder, size]}))
        plan.append((method, path, size, encoder))
    # --jobs N: N methods side by side, each on cpu_count / N threads (one command, one
    # baseline, the same seed; images/s is then per share of the machine)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=mp.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(threads,),
    ) as pool:
        futures = [
            pool.submit(
                run_method,
                m,
                args,
                path,
                size,
                overrides.get(m, {}),
                work / "runs",
                arrays[path, size],
            )
            for m, path, size, _ in plan
        ]
        for (_, _, size, encoder), future in zip(plan, futures, strict=True):
            row = {**future.result(), "threads": threads, "jobs": args.jobs}
            ref = baselines[encoder, size]["calibrated"]["auc100_val"]
            row["gain_auc100_val"] = row["auc100_val"] - ref
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"rows": rows, "random_init": {f"{e}@{s}": v for (e, s), v in baselines.items()}},
                indent=1,
            )
        )
    print(table(rows, baselines))
    return 0


def table(rows: list[dict[str, Any]], baselines: dict[tuple[str, int], dict[str, Any]]) -> str:
    """The README table (Markdown)."""
    lines = [
        "| method | encoder @ px | recipe (opt, lr at B) | loss first -> last (chance) | "
        "monitor: kNN bal. acc / lin AUC, val, init -> end | verdict | "
        "lin AUC 10 % val / test | lin AUC 100 % val / test | img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (enc, size), b in baselines.items():
        for kind in ("raw", "calibrated"):
            r = b[kind]
            lines.append(
                f"| random init ({'BN calibrated' if kind == 'calibrated' else 'raw BN'}) | "
                f"{enc} @ {size} | - | - | - | - | {r['auc10_val']:.3f} / {r['auc10_test']:.3f} | "
                f"{r['auc100_val']:.3f} / {r['auc100_test']:.3f} | - |"
            )
    for r in rows:
        chance = f" ({r['loss_chance']:.2f})" if r["loss_chance"] is not None else ""
        knn = f"{r['knn_init']:.3f} -> {r['knn_end']:.3f}" if r["knn_init"] is not None else "-"
        if r.get("linear_init") is not None:
            knn += f" / {r['linear_init']:.3f} -> {r['linear_end']:.3f}"
        lines.append(
            f"| {r['method']} | {r['encoder']} @ {r['size']} | {r['recipe']} ({r['optimizer']}, "
            f"{r['effective_lr']:.2g}) | {r['loss_first']:.2f} -> {r['loss_last']:.2f}{chance} | "
            f"{knn} | {r['verdict']} | {r['auc10_val']:.3f} / {r['auc10_test']:.3f} | "
            f"{r['auc100_val']:.3f} / {r['auc100_test']:.3f} | {r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
