"""Synthetic data quality report: FID, MS-SSIM diversity and memorisation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli.synth import add_synth_command
from benchmark.core.errors import DataError, OutputExistsError
from pretrain.generators import write_synthetic
from pretrain.generators.phantom import PhantomGenerator
from pretrain.generators.report import fid, memorisation, ms_ssim_params, synth_report


@pytest.mark.filterwarnings("ignore:.*disp.*:DeprecationWarning")
def test_fid_subspace_reduction_is_exact() -> None:
    from monai.metrics import FIDMetric

    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 40, generator=g, dtype=torch.float64)
    b = torch.randn(9, 40, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert fid(a, b) == pytest.approx(float(FIDMetric()(a, b)), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("side", "scales", "kernel"), [(16, 2, 7), (32, 3, 7), (64, 4, 7), (256, 5, 11)]
)
def test_ms_ssim_params_fit_small_images(side: int, scales: int, kernel: int) -> None:
    p = ms_ssim_params((side, side))
    assert (p["scales"], p["kernel_size"]) == (scales, kernel)
    assert sum(p["weights"]) == pytest.approx(1.0)


def test_memorisation_detects_copies() -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.rand(10, 1, 16, 16, generator=g)
    copies = real[:4].clone()
    mem = memorisation(copies, real)
    assert mem["fraction_closer_than_median_real_nn"] == 1.0
    assert mem["fraction_ratio_below_1"] == 1.0 and mem["ratio_quantiles"]["q100"] == 0.0
    novel = memorisation(torch.rand(6, 1, 16, 16, generator=g), real)
    assert novel["ratio_quantiles"]["q50"] > 0.5


def test_report_fields_and_files(tiny_real: Path, tmp_path: Path) -> None:
    synth = write_synthetic(PhantomGenerator(size=16), 12, tmp_path / "s.h5", progress=False)
    parser = argparse.ArgumentParser()
    add_synth_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "report"
    report = synth_report(synth, tiny_real, out, n_pairs=20)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["fid"] == pytest.approx(report["fid"]) and np.isfinite(report["fid"])
    assert report["fid_real_halves"] is not None and report["fid_real_halves"] >= 0
    ex = report["extractor"]
    assert ex["name"] == "resnet18" and ex["seed"] == 0 and len(ex["weights_sha256"]) == 64
    assert ex["num_features"] == 512 and ex["input_size"] == [64, 64]
    for key in ("synthetic", "real"):
        assert 0.0 <= report["ms_ssim"][key]["mean"] <= 1.0
        assert report["ms_ssim"][key]["n_pairs"] == 20
    mem = report["memorisation"]
    assert 0.0 <= mem["fraction_closer_than_median_real_nn"] <= 1.0
    assert set(mem["ratio_quantiles"]) == {"q00", "q01", "q05", "q25", "q50", "q75", "q95", "q100"}
    assert report["real"]["n"] == 16 and report["synthetic"]["n"] == 12  # train split only
    for name in report["files"].values():
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "FID" in md and "only comparable with the same extractor" in md
    # the same inputs give the same numbers; an existing report is kept
    with pytest.raises(OutputExistsError):
        synth_report(synth, tiny_real, out, n_pairs=20)
    args = parser.parse_args(
        [
            "synth",
            "report",
            str(synth),
            "--real",
            str(tiny_real),
            "-o",
            str(tmp_path / "r2"),
            "--pairs",
            "20",
        ]
    )
    assert args.handler(args) == 0
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert again["fid"] == report["fid"] and again["extractor"] == report["extractor"]
    assert again["memorisation"] == report["memorisation"]


def test_report_shape_mismatch(tiny_real: Path, tmp_path: Path) -> None:
    synth = write_synthetic(PhantomGenerator(size=32), 4, tmp_path / "s.h5", progress=False)
    with pytest.raises(DataError, match=r"shape \(1, 32, 32\).*\(1, 16, 16\)"):
        synth_report(synth, tiny_real, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_report_on_3d_volumes(tmp_path: Path) -> None:
    from benchmark.data.phantom import generate_phantom

    real = generate_phantom(tmp_path / "real3d.h5", n=12, size=32, dims=3, seed=0)
    synth = write_synthetic(
        PhantomGenerator(size=32, dims=3), 6, tmp_path / "s3d.h5", seed=1, progress=False
    )
    report = synth_report(synth, real, tmp_path / "r3d", n_pairs=10, max_images=8)
    assert report["image_shape"] == [1, 32, 32, 32]
    assert report["extractor"]["name"] == "resnet10_3d"
    assert report["extractor"]["input_size"] == [32, 32, 32]
    assert np.isfinite(report["fid"])
    assert 0.0 <= report["ms_ssim"]["synthetic"]["mean"] <= 1.0
    assert 0.0 <= report["memorisation"]["fraction_ratio_below_1"] <= 1.0
    assert report["files"]["orthogonal_slices"] == "orthogonal_slices.png"
    assert (tmp_path / "r3d" / "orthogonal_slices.png").stat().st_size > 0
