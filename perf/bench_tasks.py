"""Task-adapter benchmark: the cost of a linear-probe sweep with and without the feature cache.

A linear-probe sweep over 6 fractions x 5 seeds (30 cells) of one encoder
extracts features once (cache miss in the first cell, hits afterwards). Reported:

(a) total wall time of the sweep with the cache;
(b) one feature extraction (timed alone) and the sum of the 30 fits
    (logistic-regression grid + refit + test evaluation, from the records);
(c) the ratio (a) / (b): the sweep's overhead over its irreducible work
    (target <= 1.5x);
(d) the time if features were re-extracted in every cell: estimated as
    30 x extraction + fits, and measured per cell with the cache disabled on
    a couple of cells.

If the segmentation adapter exists, fine-tuning throughput (training images/s)
at 64 and 128 px is also measured (one short run on the phantom).

Usage::

    python perf/bench_tasks.py            # BUSI 64 px from ../shared/data, else phantom
    python perf/bench_tasks.py --quick    # small phantom at 32 px, fewer seeds
    python perf/bench_tasks.py --data some.h5 --size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmark.data.phantom import generate_phantom
from pretrain.checkpoint import load_encoder, save_encoder
from pretrain.encoders import create_encoder
from tasks.features import clear_memory_cache, get_features
from tasks.spec import load_spec
from tasks.sweep import SweepConfig, TaskData, run_sweep

SHARED_BUSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "busi_256"


def prepare_data(args: argparse.Namespace, tmp: Path) -> Path:
    """The dataset file: given, BUSI converted at ``--size``, or a phantom."""
    if args.data:
        return Path(args.data)
    if not args.quick and SHARED_BUSI.exists():
        from benchmark.data.converters import CONVERTERS

        return CONVERTERS.create("busi", size=args.size).convert(SHARED_BUSI, tmp / "busi.h5")
    n = 96 if args.quick else 480
    return generate_phantom(tmp / "phantom.h5", n=n, size=args.size, seed=0)


def write_spec(data: Path, size: int, tmp: Path, target: str = "labels") -> Path:
    spec = load_spec("phantom-cls" if target == "labels" else "phantom-seg").to_dict()
    spec.pop("source")
    spec.update(name=f"bench-{target}", dataset=str(data.resolve()), image_size=size)
    path = tmp / f"bench-{target}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def linear_sweep(args: argparse.Namespace, tmp: Path, data: Path) -> dict[str, Any]:
    """Figures (a)-(d) for the linear probe."""
    spec = write_spec(data, args.size, tmp)
    torch.manual_seed(0)
    ckpt = save_encoder(tmp / "ckpt", create_encoder(args.encoder, img_size=args.size), {})
    fractions = [0.05, 0.1, 0.25, 0.5, 0.75, 1.0] if args.quick else [
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0
    ]  # fmt: skip
    seeds = list(range(args.seeds))

    # (b) one extraction, timed alone (no cache, warm-up excluded)
    task = TaskData.load(load_spec(spec))
    cell = task.cell(1.0, 0)
    encoder = load_encoder(ckpt)
    get_features(encoder, cell, cache_dir=None)  # warm-up: loads and resizes the images
    start = time.perf_counter()
    get_features(encoder, cell, cache_dir=None)
    extraction = time.perf_counter() - start

    # (a) the sweep with the cache, from a cold cache
    clear_memory_cache()
    cfg = SweepConfig(encoder=str(ckpt), task=str(spec), adapters=["linear"], fractions=fractions,
                      seeds=seeds, output=str(tmp / "out"), baselines=[], progress=False)  # fmt: skip
    start = time.perf_counter()
    result = run_sweep(cfg)
    total = time.perf_counter() - start
    recs = result.records
    fits = sum(r["train_time_s"] + r["eval_time_s"] - r["extra"]["feature_time_s"] for r in recs)
    misses = sum(r["extra"]["feature_cache"] == "miss" for r in recs)

    # (d) measured: a couple of cells with the cache disabled
    clear_memory_cache()
    nocache = SweepConfig(encoder=str(ckpt), task=str(spec), adapters=["linear"],
                          fractions=fractions[-2:], seeds=[0], output=str(tmp / "out-nocache"),
                          baselines=[], cache=False, progress=False)  # fmt: skip
    start = time.perf_counter()
    measured = run_sweep(nocache)
    per_cell_nocache = (time.perf_counter() - start) / len(measured.records)
    cells = len(recs)
    return {
        "dataset": str(data),
        "n_images": int(task.split.size),
        "image_size": args.size,
        "encoder": args.encoder,
        "cells": cells,
        "feature_misses": misses,
        "a_total_with_cache_s": round(total, 2),
        "b_one_extraction_s": round(extraction, 2),
        "b_fits_s": round(fits, 2),
        "c_ratio": round(total / (extraction + fits), 2),
        "d_estimated_reextract_s": round(cells * extraction + fits, 2),
        "d_measured_per_cell_nocache_s": round(per_cell_nocache, 2),
        "d_measured_extrapolated_s": round(per_cell_nocache * cells, 2),
        "speedup_vs_reextract": round((cells * extraction + fits) / total, 2),
    }


def segmentation_rates(args: argparse.Namespace, tmp: Path) -> dict[str, Any] | None:
    """Training images/s of the segmentation adapter at 64 and 128 px (if it exists)."""
    try:
        from tasks.adapters import ADAPTERS

        ADAPTERS.get("segmentation")
    except Exception:  # adapter not written yet
        return None
    out: dict[str, Any] = {}
    for size in (64, 128):
        data = generate_phantom(tmp / f"seg{size}.h5", n=48 if args.quick else 96, size=size)
        spec = write_spec(data, size, tmp, target="masks")
        cell = TaskData.load(load_spec(spec)).cell(1.0, 0)
        torch.manual_seed(0)
        encoder = create_encoder(args.encoder, img_size=size)
        adapter = ADAPTERS.create(
            "segmentation", epochs=1, patience=1, min_steps=1, encoder_lr=[1e-4]
        )
        result = adapter.run(encoder, cell, seed=0)
        seen = int(result.extra["steps_trained"]) * min(16, len(cell.train))
        out[f"{size}px_train_images_per_s"] = round(seen / result.train_time_s, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small phantom, 2 seeds")
    parser.add_argument("--data", help="sslbench .h5 classification dataset")
    parser.add_argument("--size", type=int, default=None, help="image size (64; 32 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (5; 2 with --quick)")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--no-seg", action="store_true", help="skip the segmentation figures")
    args = parser.parse_args()
    args.size = args.size or (32 if args.quick else 64)
    args.seeds = args.seeds or (2 if args.quick else 5)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = prepare_data(args, tmp)
        report: dict[str, Any] = {"linear_probe_sweep": linear_sweep(args, tmp, data)}
        if not args.no_seg:
            report["segmentation_finetune"] = segmentation_rates(args, tmp)
    lp = report["linear_probe_sweep"]
    print(json.dumps(report, indent=2))
    print(
        f"\n(a) sweep with cache: {lp['a_total_with_cache_s']}s for {lp['cells']} cells "
        f"({lp['feature_misses']} extraction)\n"
        f"(b) one extraction {lp['b_one_extraction_s']}s + fits {lp['b_fits_s']}s\n"
        f"(c) ratio {lp['c_ratio']}x (target <= 1.5x)\n"
        f"(d) re-extracting every cell: ~{lp['d_estimated_reextract_s']}s estimated, "
        f"~{lp['d_measured_extrapolated_s']}s extrapolated from {lp['d_measured_per_cell_nocache_s']}s"
        f"/cell measured without cache ({lp['speedup_vs_reextract']}x slower than with the cache)"
    )


if __name__ == "__main__":
    main()
