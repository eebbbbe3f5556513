"""Pixel DDPM against latent diffusion (LDM) for equal wall-clock training time.

On MSD hippocampus volumes (``../shared/data/msd_hippocampus``) converted at 32^3
with the repository's MSD converter, both generators train on the train split for
the same wall-clock budget (``--minutes``, default 30), batch size and device:

* ``ddpm``: :mod:`pretrain.generators.ddpm_train` on voxels (U-Net channels
  16,32,64 as in ``benchmark/experiments/hippocampus-cpu.yaml``);
* ``ldm``: :mod:`pretrain.generators.ldm_train` with a profile's settings (default
  ``cpu``), its autoencoder getting ``--ae-fraction`` of the budget (default 0.4)
  and the latent U-Net the rest.

The budget counts everything between the first and the last training step
(including the LDM's ``scale_factor`` estimate); the last step may overrun it by
one step. Then ``--n`` volumes are sampled from each (DDIM, ``--sample-steps``),
written as sslbench files and scored by :func:`pretrain.generators.report.synth_report`
against the real train split, so FID (same seeded random 3D ResNet-10 extractor),
MS-SSIM diversity and memorisation are exactly the quality report's. Printed per
model: training steps, training images/s, FID (and the real-halves floor on the
same scale), mean MS-SSIM between random synthetic pairs (real pairs for
reference), the fraction of samples closer to a real train volume than the median
real nearest-neighbour distance, and the median memorisation ratio. Written to
``--out``: ``<model>_samples.png`` (middle axial slices), ``real_samples.png``, the
sampled files, each model's report folder and ``bench_ldm.json``.

With a few minutes of training, and fewer samples than the extractor's 512 features
(FID strongly biased upwards), the numbers only show that the pipeline works; the
comparison needs the 30-minute default and ``--n`` in the hundreds.

Usage::

    python perf/bench_ldm.py --minutes 3 --n 16 --sample-steps 20 --out /tmp/bench_ldm
    python perf/bench_ldm.py                     # the 30-minute comparison
"""

from __future__ import annotations

import os

# Before torch loads OpenMP (see perf/bench_generator.py): passive waiting on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.data.converters import CONVERTERS
from benchmark.data.dataset import H5Dataset
from pretrain.generators.base import Generator, save_grid, write_synthetic
from pretrain.generators.ddpm import DDPMGenerator
from pretrain.generators.ddpm_train import DDPMConfig, DDPMTrainer
from pretrain.generators.ldm import LDMGenerator
from pretrain.generators.ldm_train import LDMConfig, LDMTrainer
from pretrain.generators.report import synth_report

ENDLESS = 10**9  # step targets: the clock stops training, not the step count


def train_ddpm_for(data: Path, out: Path, seconds: float, args: argparse.Namespace) -> Any:
    """Pixel DDPM trained for ``seconds``; returns (generator, stats)."""
    cfg = DDPMConfig(
        steps=ENDLESS,
        batch_size=args.batch_size,
        channels=(16, 32, 64),
        sample_every=0,
        checkpoint_every=0,
        device=args.device,
    )
    trainer = DDPMTrainer(data, out, cfg)
    t0 = time.perf_counter()
    loss = float("nan")
    while time.perf_counter() - t0 < seconds:
        loss = trainer.train_step()["loss"]
        trainer.step += 1
    wall = time.perf_counter() - t0
    stats = {
        "steps": trainer.step,
        "train_s": wall,
        "images_per_s": trainer.step * cfg.batch_size / wall,
        "final_loss": loss,
        "params": sum(p.numel() for p in trainer.model.parameters()),
    }
    gen = DDPMGenerator(trainer.export(), "ddim", args.sample_steps, trainer.device)
    return gen, stats


def train_ldm_for(data: Path, out: Path, seconds: float, args: argparse.Namespace) -> Any:
    """LDM trained for ``seconds`` (autoencoder ``ae_fraction`` of it); (generator, stats)."""
    cfg = LDMConfig.from_options(
        {
            "profile": args.profile,
            "batch_size": args.batch_size,
            "steps": ENDLESS,
            "ae_steps": ENDLESS,
            "sample_every": 0,
            "checkpoint_every": 0,
            "device": args.device,
        }
    )
    trainer = LDMTrainer(data, out, cfg)
    t0 = time.perf_counter()
    ae_l1 = loss = float("nan")
    while time.perf_counter() - t0 < seconds * args.ae_fraction:
        ae_l1 = trainer.train_autoencoder_step()["ae_l1"]
        trainer.ae_step += 1
    ae_wall = time.perf_counter() - t0
    trainer.start_diffusion()
    while time.perf_counter() - t0 < seconds:
        loss = trainer.train_step()["loss"]
        trainer.step += 1
    wall = time.perf_counter() - t0
    stats = {
        "ae_steps": trainer.ae_step,
        "steps": trainer.step,
        "train_s": wall,
        "ae_train_s": ae_wall,
        "ae_images_per_s": trainer.ae_step * cfg.batch_size / ae_wall,
        "diffusion_images_per_s": trainer.step * cfg.batch_size / (wall - ae_wall),
        "images_per_s": (trainer.ae_step + trainer.step) * cfg.batch_size / wall,
        "final_ae_l1": ae_l1,
        "final_loss": loss,
        "scale_factor": trainer.scale_factor,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "ae_params": sum(p.numel() for p in trainer.autoencoder.parameters()),
    }
    gen = LDMGenerator(trainer.export(), "ddim", args.sample_steps, trainer.device)
    return gen, stats


def evaluate(gen: Generator, name: str, real: Path, out: Path, args: argparse.Namespace) -> Any:
    """Sample ``--n`` volumes, save their grid and score them with the quality report."""
    t0 = time.perf_counter()
    synth = write_synthetic(
        gen, args.n, out / f"{name}_samples.h5", seed=0, batch_size=8, overwrite=True
    )
    sample_s = time.perf_counter() - t0
    ds = H5Dataset(synth, keys=())
    save_grid(ds.raw_images(np.arange(min(32, args.n))), out / f"{name}_samples.png", scale=4)
    ds.close()
    rep = synth_report(synth, real, out / f"{name}_report", seed=0, overwrite=True)
    mem = rep["memorisation"]
    return {
        "sample_s": sample_s,
        "fid": rep["fid"],
        "fid_real_halves": rep["fid_real_halves"],
        "ms_ssim": rep["ms_ssim"]["synthetic"]["mean"],
        "ms_ssim_real": rep["ms_ssim"]["real"]["mean"],
        "mem_closer_than_median_real_nn": mem["fraction_closer_than_median_real_nn"],
        "mem_ratio_median": mem["ratio_quantiles"].get("q50"),
        "extractor_sha256": rep["extractor"]["weights_sha256"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per model")
    p.add_argument("--n", type=int, default=128, help="volumes sampled per model")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ae-fraction", type=float, default=0.4, help="LDM budget of stage 1")
    p.add_argument("--profile", default="cpu", help="LDM profile (cpu or gpu)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--out", default="bench_ldm", help="output folder")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "hippocampus32.h5"
    if not data.exists():
        CONVERTERS.create("msd", shape=(32, 32, 32)).convert(
            Path(args.shared) / "msd_hippocampus", data
        )
    ds = H5Dataset(data, split="train", keys=())
    real_u8 = (ds.to_float(ds.raw_images(np.arange(32))).numpy() * 255).round().astype(np.uint8)
    save_grid(real_u8, out / "real_samples.png", scale=4)  # the MSD file stores floats in [0, 1]
    ds.close()
    seconds = args.minutes * 60
    results: dict[str, Any] = {"args": vars(args), "threads": torch.get_num_threads()}
    for name, train in (("ddpm", train_ddpm_for), ("ldm", train_ldm_for)):
        torch.manual_seed(0)
        gen, stats = train(data, out / name, seconds, args)
        print(f"{name}: trained {json.dumps(stats)}", flush=True)
        results[name] = {**stats, **evaluate(gen, name, data, out, args)}
    (out / "bench_ldm.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nMSD hippocampus 32^3, {args.minutes:g} min training each, batch {args.batch_size}, "
        f"{results['threads']} threads, {args.n} samples (DDIM {args.sample_steps}); "
        f"FID floor (real halves) {results['ddpm']['fid_real_halves']:.4g}; real MS-SSIM "
        f"{results['ddpm']['ms_ssim_real']:.3f}\n"
    )
    print(
        "| model | train steps | train img/s | sample s | FID | MS-SSIM | mem. closer | ratio q50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ("ddpm", "ldm"):
        r = results[name]
        steps = f"AE {r['ae_steps']} + {r['steps']}" if name == "ldm" else str(r["steps"])
        print(
            f"| {name} | {steps} | {r['images_per_s']:.2f} | {r['sample_s']:.0f} | "
            f"{r['fid']:.4g} | {r['ms_ssim']:.3f} | {r['mem_closer_than_median_real_nn']:.3f} | "
            f"{r['mem_ratio_median']:.3f} |"
        )


if __name__ == "__main__":
    main()
