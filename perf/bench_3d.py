"""3D benchmark: pretraining pipeline efficiency and throughput, segmentation throughput, memory.

On MSD hippocampus volumes (``../shared/data/msd_hippocampus``, converted at the
default 48 x 64 x 48 crop) at the cpu-small volume size (32^3 views):

* pretraining (SimCLR, default ``resnet10_3d``): volumes/s of the full step
  (source batch + batched 3D augmentations + forward + backward + optimizer)
  and of the model step alone on pre-made views; pipeline efficiency = full /
  model-only (target >= 0.9);
* segmentation fine-tuning (the ``segmentation`` adapter, U-Net decoder on the
  encoder's multi-scale features, one epoch on the hippocampus train split):
  training volumes/s;
* peak resident memory of the process.

Usage::

    python perf/bench_3d.py [--encoder resnet10_3d] [--batch-size 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain import sslbench_rates

from benchmark.data.converters import CONVERTERS
from pretrain.encoders import create_encoder


def segmentation_rate(data: Path, encoder: str, size: int, batch: int) -> dict[str, float]:
    """Training volumes/s of one epoch of the segmentation adapter."""
    from tasks.adapters import ADAPTERS
    from tasks.spec import load_spec
    from tasks.taskdata import TaskData

    spec = dataclasses.replace(load_spec("hippocampus-seg"), dataset=str(data), image_size=size)
    cell = TaskData.load(spec).cell(1.0, 0)
    torch.manual_seed(0)
    adapter = ADAPTERS.create(
        "segmentation", epochs=1, patience=1, batch_size=batch, min_steps=1, encoder_lr=[1e-4]
    )
    result = adapter.run(create_encoder(encoder, img_size=size), cell, seed=0)
    seen = int(result.extra["steps_trained"]) * min(batch, len(cell.train))
    return {
        "train_volumes_per_s": seen / result.train_time_s,
        "n_train": len(cell.train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data")
    )
    parser.add_argument("--encoder", default="resnet10_3d")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    results: dict[str, Any] = {"encoder": args.encoder, "size": args.size, "batch": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        data = CONVERTERS.create("msd").convert(
            Path(args.shared) / "msd_hippocampus", Path(tmp) / "hippocampus.h5"
        )
        pre = sslbench_rates(data, args.size, args.batch_size, args.steps, args.encoder)
        results["pretrain"] = pre
        print(
            f"pretrain SimCLR/{args.encoder} {args.size}^3 batch {args.batch_size}: full "
            f"{pre['full']:.2f} vol/s, model-only {pre['model_only']:.2f} vol/s, efficiency "
            f"{pre['efficiency']:.3f} (target >= 0.9), data+augment "
            f"{pre['data_ms_per_batch']:.1f} ms/batch",
            flush=True,
        )
        seg = segmentation_rate(data, args.encoder, args.size, args.batch_size)
        results["segmentation"] = seg
        print(f"segmentation fine-tuning {args.size}^3: {seg['train_volumes_per_s']:.2f} vol/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = peak
    print(f"peak resident memory: {peak:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
