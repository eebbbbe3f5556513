"""Data-layer benchmark: conversion time and reader throughput vs the original files.

Measures, on this machine:

* conversion time of BUSI 256 (at 64, 128 and 256 px) and MSD hippocampus;
* random-access read throughput (samples/s) of :class:`benchmark.data.H5Dataset`
  through a DataLoader with 0 and 2 workers, against reading the original
  PNG / NIfTI files (decode + greyscale + resize) the same way;
* the throughput of a ResNet-18 training step (forward + backward + SGD) at 64
  and 128 px, to show the reader is not the bottleneck.

Usage::

    python perf/bench_data.py [--shared ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmark.data import H5Dataset
from benchmark.data.converters import CONVERTERS
from pretrain.encoders import create_encoder


class PngDataset(Dataset[dict[str, Any]]):
    """The baseline: decode the original BUSI PNGs per sample."""

    def __init__(self, root: Path, size: int) -> None:
        self.files = sorted(p for p in root.glob("*/*.png") if "_mask" not in p.name)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = Image.open(self.files[i]).convert("L").resize((self.size, self.size), Image.BILINEAR)
        mask = Image.open(str(self.files[i])[:-4] + "_mask.png").convert("L")
        mask = mask.resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        return {"image": x, "mask": torch.from_numpy(np.asarray(mask) >= 128)}


class NiftiDataset(Dataset[dict[str, Any]]):
    """The baseline: load the original MSD NIfTI volumes per sample."""

    def __init__(self, root: Path) -> None:
        self.files = sorted((root / "imagesTr").glob("*.nii.gz"))
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = np.asarray(nib.load(self.files[i]).dataobj, dtype=np.float32)
        lab = np.asarray(nib.load(self.root / "labelsTr" / self.files[i].name).dataobj)
        return {
            "image": torch.from_numpy(img)[None],
            "mask": torch.from_numpy(lab.astype(np.int64)),
        }


def _collate_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch  # NIfTI volumes differ in size: no stacking


def throughput(
    ds: Dataset[Any], workers: int, batch: int = 64, max_samples: int = 780, collate: Any = None
) -> float:
    """Samples/s of a shuffled pass (random access) over up to ``max_samples`` samples."""
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        generator=gen,
        collate_fn=collate,
        persistent_workers=False,
    )
    n = 0
    start = time.perf_counter()
    for b in loader:
        n += len(b) if isinstance(b, list) else b["image"].shape[0]
        if n >= max_samples:
            break
    return n / (time.perf_counter() - start)


def resnet_step_rate(size: int, batch: int = 64, steps: int = 3) -> float:
    """Images/s of a ResNet-18 training step (fwd + bwd + SGD) on random data."""
    enc = create_encoder("resnet18", img_size=size)
    head = torch.nn.Linear(enc.num_features, 3)
    opt = torch.optim.SGD([*enc.parameters(), *head.parameters()], lr=0.01)
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 3, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared/data")
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    shared = Path(args.shared)
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for size in (64, 128, 256):
            out = Path(tmp) / f"busi{size}.h5"
            t0 = time.perf_counter()
            CONVERTERS.create("busi", size=size).convert(shared / "busi_256", out)
            results[f"convert_busi_{size}px_s"] = time.perf_counter() - t0
            files[size] = out
        out = Path(tmp) / "hippo.h5"
        t0 = time.perf_counter()
        CONVERTERS.create("msd").convert(shared / "msd_hippocampus", out)
        results["convert_msd_hippocampus_s"] = time.perf_counter() - t0
        files["msd"] = out

        for size in (64, 128):
            for workers in (0, 2):
                results[f"read_h5_busi{size}_w{workers}"] = throughput(
                    H5Dataset(files[size]), workers
                )
                results[f"read_png_busi{size}_w{workers}"] = throughput(
                    PngDataset(shared / "busi_256", size), workers
                )
            results[f"read_h5_inmemory_busi{size}"] = throughput(
                H5Dataset(files[size], in_memory=True), 0
            )
            results[f"resnet18_train_step_{size}px_img_s"] = resnet_step_rate(size)
        for workers in (0, 2):
            results[f"read_h5_msd_w{workers}"] = throughput(
                H5Dataset(files["msd"]), workers, batch=16, max_samples=260
            )
            results[f"read_nifti_msd_w{workers}"] = throughput(
                NiftiDataset(shared / "msd_hippocampus"),
                workers,
                batch=16,
                max_samples=260,
                collate=_collate_list,
            )
    width = max(len(k) for k in results)
    for key, value in results.items():
        unit = "img/s" if key.endswith("img_s") else ("s" if key.endswith("_s") else "samples/s")
        print(f"{key:<{width}}  {value:10.2f} {unit if key != 'torch_threads' else ''}")
    for size in (64, 128):
        step = results[f"resnet18_train_step_{size}px_img_s"]
        reader = results[f"read_h5_busi{size}_w0"]
        print(f"reader / ResNet-18 step throughput at {size}px (0 workers): {reader / step:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
