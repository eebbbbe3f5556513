"""Data-parallel pretraining throughput: one process vs ``torchrun`` with N processes.

Runs the same ``sslbench pretrain`` config (SimCLR, global batch B, BUSI at the
given size) once as a single process with all cores as threads, and once under
``torchrun --nproc_per_node N`` with ``cores / N`` threads per process (gloo on
CPU, NCCL on GPUs with ``--device cuda``), and prints the training images/s
recorded by each run (``pretrain.json``; process start-up excluded) and their ratio.

Usage::

    python perf/bench_distributed.py [--nproc 2] [--steps 20] [--size 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmark.data.converters import CONVERTERS
from pretrain.distributed import torchrun_command

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(config: Path, out: Path, nproc: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = torchrun_command(nproc, config, out, "--no-progress")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    summary = json.loads((out / "pretrain.json").read_text())
    assert isinstance(summary, dict)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "busi.h5"
        CONVERTERS.create("busi", size=args.size).convert(SHARED / "busi_256", data)
        cfg = {
            "method": args.method,
            "encoder": args.encoder,
            "real": str(data),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "image_size": args.size,
            "checkpoint_every": 0,
            "device": args.device,
        }
        config = Path(tmp) / "run.yaml"
        config.write_text(yaml.safe_dump(cfg))
        one = run(config, Path(tmp) / "one", 1, cores)
        many = run(config, Path(tmp) / "many", args.nproc, max(1, cores // args.nproc))
    print(
        f"{args.method}/{args.encoder} {args.size}px global batch {args.batch_size}, "
        f"{args.steps} steps, {cores} cores, device {args.device}"
    )
    print(f"1 process x {cores} threads:      {one['images_per_s']:.1f} img/s")
    print(
        f"{args.nproc} processes x {max(1, cores // args.nproc)} threads: "
        f"{many['images_per_s']:.1f} img/s (ratio {many['images_per_s'] / one['images_per_s']:.2f}, "
        f"{many['distributed']['backend']})"
    )
    print(f"final loss: {one['final_loss']:.4f} vs {many['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
