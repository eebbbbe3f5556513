"""The U-Net decoder over every encoder and the segmentation adapter on tiny phantom data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.core.errors import SSLBenchError
from benchmark.data.dataset import H5Dataset
from benchmark.data.phantom import generate_phantom
from pretrain.encoders import ENCODERS, Encoder, FeatureInfo, create_encoder
from tasks.adapters import ADAPTERS, CellData
from tasks.adapters.segmentation import SegmentationAdapter, joint_augment, load_cell_split
from tasks.decoders import SegmentationModel, UNetDecoder
from tasks.metrics.segmentation import AGGREGATE_METRICS

SIZE = 32
ENCODERS_2D = [n for n in ENCODERS.names() if ENCODERS.get(n).spatial_dims == 2]
EXPECTED_KEYS = set(AGGREGATE_METRICS) | {f"{m}_lesion" for m in AGGREGATE_METRICS}


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> CellData:
    path = generate_phantom(tmp_path_factory.mktemp("seg") / "phantom.h5", n=40, size=SIZE)
    split = H5Dataset(path).split
    return CellData(
        path=path,
        train=np.flatnonzero(split == "train"),
        val=np.flatnonzero(split == "val"),
        test=np.flatnonzero(split == "test"),
        target="masks",
        num_classes=2,
        class_names=["background", "lesion"],
        image_size=SIZE,
    )


@pytest.mark.parametrize("name", ENCODERS_2D)
def test_decoder_output_matches_input_size(name: str) -> None:
    torch.manual_seed(0)
    model = SegmentationModel(create_encoder(name, img_size=SIZE), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, SIZE, SIZE))
    assert out.shape == (2, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()


def test_decoder_is_generic_over_levels_and_dims() -> None:
    # 3D, three levels, finest stride 4 -> two extra stages, and a custom width list
    info = [FeatureInfo(8, 4), FeatureInfo(16, 8), FeatureInfo(24, 16)]
    dec = UNetDecoder(info, num_classes=2, spatial_dims=3, channels=(12, 6), norm="instance")
    feats = [torch.rand(1, c.channels, *(16 // c.stride,) * 3) for c in info]
    assert dec(feats, (16, 16, 16)).shape == (1, 2, 16, 16, 16)
    assert dec.stage_channels == [12, 6, 6, 6]
    with pytest.raises(ValueError, match="finest first"):
        UNetDecoder(info[::-1], num_classes=2)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_adapter_modes(cell: CellData, mode: str) -> None:
    encoder = create_encoder("resnet18", img_size=SIZE)
    before = _state(encoder)
    adapter = ADAPTERS.create(
        "seg", mode=mode, epochs=2, batch_size=8, min_steps=1, encoder_lr=[1e-4], stop_after=1.0
    )
    result = adapter.run(encoder, cell, seed=0)
    assert set(result.metrics) == EXPECTED_KEYS
    assert set(result.val_metrics) == EXPECTED_KEYS
    # the phantom test split has empty and non-empty masks, so everything is defined
    assert all(np.isfinite(v) for v in result.metrics.values()), result.metrics
    assert 0.0 <= result.metrics["dice"] <= 1.0
    plan = result.extra["step_plan"]
    assert result.extra["steps_trained"] == plan["total_steps"] == 2 * plan["steps_per_epoch"]
    assert result.extra["mode"] == mode
    assert result.per_case["ids"] == [str(i) for i in cell.test]
    assert len(result.per_case["dice"]) == len(cell.test)
    assert _same(before, _state(encoder)), "the caller's encoder must never change"
    trained = adapter.model
    assert trained is not None
    assert _same(before, _state(trained.encoder)) == (mode == "frozen")
    assert adapter.updates_encoder == (mode == "finetune")


def test_adapter_is_deterministic_per_seed(cell: CellData) -> None:
    encoder = create_encoder("resnet18", img_size=SIZE)
    runs = [
        SegmentationAdapter(mode="frozen", epochs=1, batch_size=8, min_steps=1).run(
            encoder, cell, seed=s
        )
        for s in (3, 3, 4)
    ]
    curves = [r.extra["learning_curve"] for r in runs]
    assert curves[0] == curves[1] and runs[0].metrics == runs[1].metrics
    assert curves[0] != curves[2]


def test_joint_augment_keeps_image_and_mask_aligned() -> None:
    mask = torch.zeros(8, SIZE, SIZE, dtype=torch.long)
    mask[:, 6:20, 4:14] = 1
    image = mask[:, None].float()
    gen = torch.Generator().manual_seed(0)
    cfg = {**SegmentationAdapter.default_config, "affine_p": 1.0, "vflip_p": 0.5}
    img, msk = joint_augment(image, mask, gen, cfg)
    assert img.shape == image.shape and msk.shape == mask.shape and msk.dtype == torch.long
    agree = ((img[:, 0] > 0.5).long() == msk).float().mean()
    assert agree > 0.97
    flip = {**cfg, "affine_p": 0.0, "hflip_p": 1.0, "vflip_p": 0.0}
    img, msk = joint_augment(image, mask, gen, flip)
    assert torch.equal(msk, mask.flip(-1))
    assert torch.allclose(img, image.flip(-1), atol=1e-5)


def test_resizes_to_cell_image_size(cell: CellData) -> None:
    images, masks = load_cell_split(Path(cell.path), cell.test, 64, 2)
    assert images.shape == (len(cell.test), 1, 64, 64) and masks.shape == (len(cell.test), 64, 64)
    assert set(masks.unique().tolist()) <= {0, 1} and 0.0 <= float(images.min())


class PooledOnlyEncoder(Encoder):
    """A real encoder that has pooled features only (no pyramid)."""

    name = "pooled_only"
    supports_multiscale = False

    def __init__(self) -> None:
        super().__init__(in_chans=1, img_size=SIZE)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.num_features = 8

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def test_clear_errors(cell: CellData) -> None:
    adapter = SegmentationAdapter(mode="frozen", epochs=1, min_steps=1)
    with pytest.raises(SSLBenchError, match="cannot produce multi-scale features"):
        adapter.run(PooledOnlyEncoder(), cell, seed=0)
    bad_size = CellData(**{**cell.__dict__, "image_size": 48})
    with pytest.raises(SSLBenchError, match="image size 48 does not suit encoder 'resnet18'"):
        adapter.check(create_encoder("resnet18", img_size=SIZE), bad_size)
    with pytest.raises(SSLBenchError, match="mode must be one of"):
        SegmentationAdapter(mode="linear")
    with pytest.raises(SSLBenchError, match="unknown option"):
        SegmentationAdapter(learning_rate=1.0)


@pytest.mark.parametrize("mode", ["finetune", "frozen"])
def test_training_passes_are_the_images_a_cell_trains_on(
    cell: CellData, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--dry-run`` estimates read ``training_passes``: with early stopping off, the
    images the cell's steps see (batches of ``batch_size``, ``n // batch_size`` per
    epoch), over the grid when the encoder trains and once when it is frozen."""
    seen: list[int] = []
    forward = UNetDecoder.forward

    def counting(self: UNetDecoder, feats: list[torch.Tensor], *args: object) -> torch.Tensor:
        if self.training:
            seen.append(int(feats[0].shape[0]))
        return forward(self, feats, *args)

    monkeypatch.setattr(UNetDecoder, "forward", counting)
    adapter = SegmentationAdapter(
        mode=mode, epochs=2, batch_size=4, min_steps=1, stop_after=1.0, encoder_lr=[1e-4, 1e-3]
    )
    torch.manual_seed(0)
    adapter.run(create_encoder("resnet18", img_size=SIZE), cell, seed=0)
    n = len(cell.train)
    expected = (2 if mode == "finetune" else 1) * 2 * (n // 4) * 4
    assert set(seen) == {4}
    assert sum(seen) == expected == pytest.approx(adapter.training_passes(n))
