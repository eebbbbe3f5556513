"""GPU profile benchmark: pretraining images/s and peak GPU memory at ``gpu-full`` sizes.

For each configuration (method x encoder x view size x batch), the real training
step of :class:`pretrain.train.Trainer` (source batch + batched augmentation on
the GPU + forward + backward + optimizer) is timed after warm-up, with mixed
precision (bf16, or fp16 where bf16 is unsupported) and channels-last on and
off, and ``torch.cuda.max_memory_allocated`` is reported. BUSI is converted at
256 px, MSD hippocampus at its native 48x64x48 grid.

Usage::

    python perf/bench_gpu.py [--steps 20] [--quick]
    python perf/bench_gpu.py --cpu --quick     # exercise the script on a CPU

Without a CUDA device (and without ``--cpu``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark.data.converters import CONVERTERS
from pretrain.train import PretrainConfig, Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

#: (method, encoder, view size, batch size, dataset): the gpu-full profile's choices.
FULL = [
    ("simclr", "resnet50", 224, 256, "busi"),
    ("simclr", "resnet18", 224, 256, "busi"),
    ("vicreg", "resnet50", 224, 256, "busi"),
    ("mae", "vit_small", 224, 256, "busi"),
    ("dino", "vit_small", 224, 128, "busi"),
    ("simclr", "resnet18_3d", 96, 16, "hippocampus"),
]
QUICK = [
    ("simclr", "resnet18", 128, 32, "busi"),
    ("mae", "vit_tiny", 64, 16, "busi"),
    ("simclr", "resnet10_3d", 32, 4, "hippocampus"),
]


def convert(kind: str, tmp: Path) -> Path:
    out = tmp / f"{kind}.h5"
    if kind == "busi":
        CONVERTERS.create("busi", size=256).convert(SHARED / "busi_256", out, overwrite=True)
    else:
        CONVERTERS.create("msd").convert(SHARED / "msd_hippocampus", out, overwrite=True)
    return out


def measure(
    data: Path,
    method: str,
    encoder: str,
    size: int,
    batch: int,
    device: str,
    steps: int,
    amp: str,
    channels_last: str,
    out: Path,
) -> dict[str, float | str]:
    cfg = PretrainConfig(
        method=method,
        encoder=encoder,
        real=str(data),
        steps=steps + 3,
        batch_size=batch,
        image_size=size,
        device=device,
        amp=amp,
        channels_last=channels_last,
        checkpoint_every=0,
        log_every=10_000,
    )
    trainer = Trainer(cfg, out)
    cuda = trainer.device.type == "cuda"
    for step in range(3):  # warm-up (cuDNN autotuning, allocator)
        trainer.train_step(step)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(3, 3 + steps):
        trainer.train_step(step)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {
        "images_per_s": round(steps * batch / elapsed, 1),
        "peak_gpu_gib": round(mem, 2),
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "none",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (script check)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.cpu):
        print("no CUDA device: nothing to measure (use --cpu to exercise the script)")
        return 0
    device = "cpu" if args.cpu else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        for method, encoder, size, batch, kind in QUICK if args.quick else FULL:
            if kind not in files:
                files[kind] = convert(kind, Path(tmp))
            for amp, cl in (("auto", "auto"), ("auto", "off"), ("none", "auto")):
                if device == "cpu" and amp != "none":
                    continue
                if "vit" in encoder and cl == "off":
                    continue  # channels-last only applies to 2D CNNs
                try:
                    r = measure(
                        files[kind],
                        method,
                        encoder,
                        size,
                        batch,
                        device,
                        args.steps,
                        amp,
                        cl,
                        Path(tmp) / "run",
                    )
                except torch.cuda.OutOfMemoryError:
                    r = {"images_per_s": float("nan"), "peak_gpu_gib": float("nan"), "amp": amp}
                    torch.cuda.empty_cache()
                row = {
                    "method": method,
                    "encoder": encoder,
                    "size": size,
                    "batch": batch,
                    "channels_last": cl,
                    **r,
                }
                rows.append(row)
                print(
                    f"{method:>7} {encoder:>12} {size:>4}px b{batch:<4} amp={row['amp']:<8} "
                    f"channels_last={cl:<4} {row['images_per_s']:>8} img/s  "
                    f"{row['peak_gpu_gib']} GiB",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
