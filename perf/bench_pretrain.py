"""Pretraining pipeline benchmark: efficiency and throughput against a standard lightly pipeline.

Pipeline efficiency = images/s of the full sslbench pretraining step (source
batch + batched augmentations + forward + backward + optimizer) divided by
images/s of the model step alone on pre-made views (same model, batch,
resolution). The reference is a standard lightly SimCLR pipeline: PIL
transforms (``lightly.transforms.SimCLRTransform``), a DataLoader with 2
workers and a torchvision ResNet-18, on the same BUSI images at the same
resolution; its own efficiency is measured the same way.

Each pipeline runs in its own fresh process. The sslbench process tunes glibc's
allocator as ``sslbench pretrain`` does (:mod:`benchmark.core.allocator`); the lightly
standard process keeps the defaults, and a third process runs the lightly pipeline
with the same allocator setting, so the part of the ratio that comes from the
allocator is reported separately.

Usage::

    python perf/bench_pretrain.py [--sizes 64,128] [--batch-size 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmark.core.allocator import ENV, tune_allocator
from benchmark.data.converters import CONVERTERS
from pretrain.augment import make_views
from pretrain.encoders import create_encoder
from pretrain.methods import create_method
from pretrain.sources import create_source
from pretrain.train import build_optimizer, memory_format


def timed(step: Callable[[int], int], steps: int, warmup: int = 1) -> float:
    """Images/s of ``step(i) -> images`` over ``steps`` steps after ``warmup`` steps."""
    for i in range(warmup):
        step(i)
    n = 0
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        n += step(i)
    return n / (time.perf_counter() - start)


# -- sslbench ---------------------------------------------------------------------
def sslbench_rates(
    data: Path, size: int, batch: int, steps: int, encoder_name: str = "resnet18"
) -> dict[str, float]:
    """SimCLR full-step and model-only rates (images or volumes/s) and data time per batch."""
    torch.manual_seed(0)
    source = create_source("real", real=str(data), batch_size=batch, seed=0)
    encoder = create_encoder(encoder_name, img_size=size)
    fmt = memory_format(encoder)  # what `sslbench pretrain` uses (channels-last for CNNs)
    method = create_method("simclr", encoder).to(memory_format=fmt)
    recipes = method.view_recipes(size)
    opt = build_optimizer(method, method.config, batch)

    def model_step(views: list[torch.Tensor]) -> int:
        out = method.training_step(views, 0, 100)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return batch

    def full(i: int) -> int:
        gen = torch.Generator().manual_seed(i)
        views = make_views(source.batch(i), recipes, gen)
        return model_step([v.contiguous(memory_format=fmt) for v in views])

    fixed = [
        v.contiguous(memory_format=fmt)
        for v in make_views(source.batch(0), recipes, torch.Generator().manual_seed(0))
    ]
    t0 = time.perf_counter()
    for i in range(20):
        make_views(source.batch(i), recipes, torch.Generator().manual_seed(i))
    data_ms = (time.perf_counter() - t0) / 20 * 1000
    model_only = timed(lambda i: model_step(fixed), steps)
    full_rate = timed(full, steps)
    model_only2 = timed(lambda i: model_step(fixed), steps)  # bracket the full run
    model_rate = (model_only + model_only2) / 2
    return {
        "full": full_rate,
        "model_only": model_rate,
        "efficiency": full_rate / model_rate,
        "data_ms_per_batch": data_ms,
    }


# -- standard lightly pipeline ---------------------------------------------------
class PngFolder(Dataset[Any]):
    def __init__(self, root: Path, transform: Callable[[Any], Any]) -> None:
        self.files = sorted(p for p in root.glob("*/*.png") if "_mask" not in p.name)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        return self.transform(Image.open(self.files[i]).convert("RGB"))


def lightly_rates(root: Path, size: int, batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    transform = SimCLRTransform(input_size=size)
    loader = DataLoader(
        PngFolder(root, transform),
        batch_size=batch,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=True,
    )
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    head = SimCLRProjectionHead(512, 512, 128)
    criterion = NTXentLoss(temperature=0.5)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9)

    def model_step(views: list[torch.Tensor]) -> int:
        z0, z1 = head(backbone(views[0])), head(backbone(views[1]))
        loss = criterion(z0, z1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch

    it = iter(loader)

    def full(i: int) -> int:
        nonlocal it
        try:
            views = next(it)
        except StopIteration:
            it = iter(loader)
            views = next(it)
        return model_step(views)

    fixed = next(iter(DataLoader(PngFolder(root, transform), batch_size=batch)))
    model_only = timed(lambda i: model_step(fixed), steps)
    full_rate = timed(full, steps)
    model_only2 = timed(lambda i: model_step(fixed), steps)
    model_rate = (model_only + model_only2) / 2
    return {"full": full_rate, "model_only": model_rate, "efficiency": full_rate / model_rate}


PIPELINES = {
    # name: (rates function, tune the allocator in that process?)
    "sslbench": ("ours", True),
    "lightly_standard": ("lightly", False),
    "lightly_tuned_allocator": ("lightly", True),
}


def worker(args: argparse.Namespace) -> None:
    """Measure one pipeline in this (fresh) process and print its figures as JSON."""
    kind, tuned = PIPELINES[args.worker]
    if tuned:
        # What `sslbench pretrain` does at start-up (benchmark/core/allocator.py).
        tune_allocator()
    if kind == "ours":
        rates = sslbench_rates(Path(args.h5), args.size, args.batch_size, args.steps)
    else:
        rates = lightly_rates(Path(args.root), args.size, args.batch_size, args.steps)
    print(json.dumps(rates))


def measure(
    name: str, args: argparse.Namespace, h5: Path, root: Path, size: int
) -> dict[str, float]:
    """Run one pipeline in its own process, so allocator settings cannot leak between them."""
    cmd = [
        sys.executable, __file__, "--worker", name, "--h5", str(h5), "--root", str(root),
        "--size", str(size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
    ]  # fmt: skip
    env = {**os.environ, ENV: "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data")
    )
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--worker", choices=sorted(PIPELINES), help=argparse.SUPPRESS)
    parser.add_argument("--h5", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    root = Path(args.shared) / "busi_256"
    results: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = CONVERTERS.create("busi", size=256).convert(root, Path(tmp) / "busi256.h5")
        for size in (int(s) for s in args.sizes.split(",")):
            fig: dict[str, Any] = {
                name: measure(name, args, data, root, size) for name in PIPELINES
            }
            ours, ref, ref_tuned = (fig[name] for name in PIPELINES)
            fig["throughput_ratio"] = ours["full"] / ref["full"]
            fig["ratio_vs_lightly_tuned_allocator"] = ours["full"] / ref_tuned["full"]
            results[f"{size}px"] = fig
            print(
                f"{size}px  sslbench: full {ours['full']:.1f} img/s, model-only "
                f"{ours['model_only']:.1f} img/s, efficiency {ours['efficiency']:.3f}, "
                f"data+augment {ours['data_ms_per_batch']:.1f} ms/batch"
            )
            for name, label in (
                ("lightly_standard", "lightly standard (PIL, 2 workers, torchvision ResNet-18)"),
                ("lightly_tuned_allocator", "lightly standard + sslbench's allocator setting"),
            ):
                r = fig[name]
                print(
                    f"{size}px  {label}: full {r['full']:.1f} img/s, model-only "
                    f"{r['model_only']:.1f} img/s, efficiency {r['efficiency']:.3f}"
                )
            print(
                f"{size}px  throughput ratio sslbench / lightly standard: "
                f"{fig['throughput_ratio']:.2f}x (vs lightly with the same allocator setting: "
                f"{fig['ratio_vs_lightly_tuned_allocator']:.2f}x)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
