"""The shared encoder contract, parametrised over every registered encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.core.errors import DataError
from pretrain.checkpoint import checkpoint_hash, load_encoder, read_checkpoint_meta, save_encoder
from pretrain.encoders import ENCODERS, create_encoder


def _size(name: str) -> int:
    enc = ENCODERS.get(name)
    return 64 if getattr(enc, "spatial_dims", 2) == 2 else 32


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_contract_and_checkpoint_roundtrip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = _size(name)
    enc = create_encoder(name, img_size=size).eval()
    shape = (2, 1) + (size,) * enc.spatial_dims
    x = torch.rand(shape)
    with torch.no_grad():
        pooled = enc.forward_features(x)
        maps = enc.forward_multiscale(x)
    assert pooled.shape == (2, enc.num_features)
    assert len(maps) == len(enc.feature_info) > 0
    for fmap, info in zip(maps, enc.feature_info, strict=True):
        assert fmap.shape[:2] == (2, info.channels)
        assert tuple(fmap.shape[2:]) == (size // info.stride,) * enc.spatial_dims
    strides = [f.stride for f in enc.feature_info]
    assert strides == sorted(strides), "levels must go from high to low resolution"
    # no downloads, single channel by default
    assert enc.in_chans == 1

    ckpt = save_encoder(tmp_path / "ckpt", enc, {"method": "none", "seed": 0})
    meta = read_checkpoint_meta(ckpt)
    assert meta["encoder"]["name"] == name and meta["method"] == "none"
    assert torch.__version__.startswith(meta["provenance"]["versions"]["torch"])
    loaded = load_encoder(ckpt)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), pooled)
        for a, b in zip(loaded.forward_multiscale(x), maps, strict=True):
            assert torch.equal(a, b)
    assert len(checkpoint_hash(ckpt)) == 64


def test_input_size_checks() -> None:
    enc = create_encoder("resnet18")
    with pytest.raises(ValueError, match="multiple of 32"):
        enc.check_input_size((48, 48))
    with pytest.raises(ValueError, match="2D"):
        enc.check_input_size((32, 32, 32))
    create_encoder("vit_tiny_p8").check_input_size((40, 40))


def test_corrupt_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    enc = create_encoder("resnet18")
    ckpt = save_encoder(tmp_path / "c", enc, {"method": "none"})
    with pytest.raises(DataError, match="no such checkpoint"):
        load_encoder(tmp_path / "missing")
    weights = ckpt / "encoder.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError, match="do not match the hash"):
        load_encoder(ckpt)
    with pytest.raises(DataError, match="unreadable weights"):
        load_encoder(ckpt, verify=False)
    (ckpt / "encoder.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable checkpoint metadata"):
        load_encoder(ckpt)
