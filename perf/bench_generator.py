"""DDPM generator benchmark: training and sampling throughput on this machine.

Measures, for one model size at one image size (default 64 px, U-Net channels
32,64,64 with attention at the lowest resolution, as ``sslbench synth train``):

* training throughput (images/s) of :class:`pretrain.generators.ddpm_train.DDPMTrainer`
  (forward + backward + Adam + EMA), after warm-up steps;
* sampling throughput (images/s) with DDIM (Song et al. 2021), 50 steps;
* the time of ancestral DDPM sampling (Ho et al. 2020) over all 1000 training
  timesteps on the same model and batch, and its ratio to DDIM 50 (about
  1000 / 50 = 20, since each step is one U-Net forward pass).

The training data is a temporary procedural phantom file (all ``train``).
With ``--quick`` (under a minute on 2 CPU cores) fewer steps are timed and the
DDPM time is extrapolated from its first ``--ddpm-probe`` steps (marked
"extrapolated"); without it, DDPM runs all 1000 steps.

Usage::

    python perf/bench_generator.py --quick
    python perf/bench_generator.py --size 64 --channels 32,64,64 --batch-size 16 \\
        --json bench_generator.json
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a shared CPU, spinning OpenMP threads wait for a
# descheduled peer at every barrier (measured 10-100x slowdowns); passive waiting
# avoids that at a small cost on an idle machine. Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.generators import write_synthetic
from pretrain.generators.ddpm import DDPMGenerator
from pretrain.generators.ddpm_train import DDPMConfig, DDPMTrainer
from pretrain.generators.phantom import PhantomGenerator


def _timed_sample(gen: DDPMGenerator, n: int, max_steps: int | None = None) -> tuple[float, int]:
    """Seconds to sample one batch of ``n`` (first ``max_steps`` timesteps only if given)."""
    if max_steps is not None:
        gen.scheduler.timesteps = gen.scheduler.timesteps[:max_steps]
    steps = len(gen.scheduler.timesteps)
    t0 = time.perf_counter()
    gen.sample_batch(0, n, seed=0, batch_index=0)
    return time.perf_counter() - t0, steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    cfg = DDPMConfig(
        steps=args.warmup + args.train_steps,
        batch_size=args.batch_size,
        channels=channels,
        sample_every=0,
        checkpoint_every=0,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(
            PhantomGenerator(size=args.size),
            max(2 * args.batch_size, 32),
            Path(tmp) / "real.h5",
            progress=False,
        )
        trainer = DDPMTrainer(data, Path(tmp) / "run", cfg)
        for _ in range(args.warmup):
            trainer.train_step()
            trainer.step += 1
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            trainer.train_step()
            trainer.step += 1
        train_s = time.perf_counter() - t0
        export = trainer.export()
    params = sum(p.numel() for p in trainer.model.parameters())
    n = args.sample_batch
    ddim = DDPMGenerator(export, "ddim", args.ddim_steps)
    _timed_sample(ddim, n, max_steps=2)  # warm-up
    ddim = DDPMGenerator(export, "ddim", args.ddim_steps)
    ddim_s, _ = _timed_sample(ddim, n)
    ddpm = DDPMGenerator(export, "ddpm")
    total = len(ddpm.scheduler.timesteps)
    probe = args.ddpm_probe if args.quick else None
    ddpm_s, ran = _timed_sample(ddpm, n, probe)
    ddpm_full_s = ddpm_s * total / ran
    return {
        "size": args.size,
        "channels": list(channels),
        "num_params": params,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "batch_size": args.batch_size,
        "train_steps_timed": args.train_steps,
        "train_images_per_s": args.train_steps * args.batch_size / train_s,
        "sample_batch": n,
        "ddim_steps": args.ddim_steps,
        "ddim_batch_s": ddim_s,
        "ddim_images_per_s": n / ddim_s,
        "ddpm_steps": total,
        "ddpm_steps_run": ran,
        "ddpm_extrapolated": ran != total,
        "ddpm_batch_s": ddpm_full_s,
        "ddpm_images_per_s": n / ddpm_full_s,
        "ddpm_over_ddim": ddpm_full_s / ddim_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small timings (< 1 min on 2 cores)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", default="32,64,64")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (16; quick 8)")
    p.add_argument("--train-steps", type=int, default=None, help="timed steps (20; quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (3; quick 1)")
    p.add_argument("--sample-batch", type=int, default=None, help="images per batch (16; 4)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--ddpm-probe", type=int, default=50, help="quick: DDPM steps timed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    quick = args.quick
    for name, full, small in (
        ("batch_size", 16, 8),
        ("train_steps", 20, 3),
        ("warmup", 3, 1),
        ("sample_batch", 16, 4),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    r = run(args)
    ext = f" (extrapolated from {r['ddpm_steps_run']} steps)" if r["ddpm_extrapolated"] else ""
    print(
        f"DDPM U-Net channels {r['channels']} ({r['num_params'] / 1e6:.2f} M params), "
        f"{r['size']} px, {r['threads']} torch threads "
        f"(OMP_WAIT_POLICY={r['omp_wait_policy']}), CPU"
    )
    print(
        f"  training : {r['train_images_per_s']:.2f} images/s (batch {r['batch_size']}, "
        f"{r['train_steps_timed']} steps)"
    )
    print(
        f"  DDIM {r['ddim_steps']:>4} steps: {r['ddim_batch_s']:.1f} s per batch of "
        f"{r['sample_batch']} = {r['ddim_images_per_s']:.3f} images/s"
    )
    print(
        f"  DDPM {r['ddpm_steps']:>4} steps: {r['ddpm_batch_s']:.1f} s per batch of "
        f"{r['sample_batch']} = {r['ddpm_images_per_s']:.4f} images/s{ext}"
    )
    print(
        f"  DDPM {r['ddpm_steps']} / DDIM {r['ddim_steps']} time ratio: {r['ddpm_over_ddim']:.1f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
