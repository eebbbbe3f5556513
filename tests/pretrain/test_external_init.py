"""External initial weights (``init``): real timm modules and real files, offline."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from benchmark.core.errors import DataError, SSLBenchError
from pretrain.checkpoint import load_encoder, read_checkpoint_meta, save_encoder
from pretrain.encoders import Encoder, create_encoder
from pretrain.encoders.external import parse_init, state_dict_sha256


def inner(encoder: Encoder) -> Any:
    """The timm / MONAI module inside an encoder (the keys of external weights)."""
    return encoder.model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def rgb_resnet18() -> dict[str, torch.Tensor]:
    """A timm resnet18 state dict: 3 input channels, a 1000-class ``fc``, random weights."""
    torch.manual_seed(0)
    model: Any = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # non-trivial running statistics, to see that buffers load too
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-1, 1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def weights_file(tmp_path: Path, rgb_resnet18: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(rgb_resnet18, path)
    return path


def test_rgb_state_dict_initialises_a_single_channel_encoder(
    weights_file: Path, rgb_resnet18: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    enc = create_encoder("resnet18", in_chans=1, init=str(weights_file))
    m = inner(enc)
    # the input convolution is adapted as timm does for in_chans=1: the RGB kernels summed
    assert m.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.equal(m.conv1.weight, rgb_resnet18["conv1.weight"].sum(dim=1, keepdim=True))
    # every other layer is the saved one, exactly (parameters and buffers)
    assert torch.equal(m.layer3[1].conv2.weight, rgb_resnet18["layer3.1.conv2.weight"])
    assert torch.equal(m.layer1[0].bn1.running_var, rgb_resnet18["layer1.0.bn1.running_var"])
    # provenance: the spec, the file's SHA-256, what was adapted and dropped
    info = enc.init_info
    assert info is not None
    assert info["sha256"] == sha256(weights_file) and info["hash_of"] == "file"
    assert info["file"] == "resnet18_rgb.pth" and info["spec"] == str(weights_file.resolve())
    assert info["dropped"] == ["fc.bias", "fc.weight"]
    assert info["adapted"] and info["adapted"][0].startswith("conv1.weight: 3 -> 1")
    assert enc.encoder_args["init"] == str(weights_file.resolve())
    assert enc.describe()["init"]["sha256"] == sha256(weights_file)

    # the checkpoint records it, and is rebuilt without reading the weights file again
    ckpt = save_encoder(tmp_path / "ckpt", enc, {"method": "none"})
    assert read_checkpoint_meta(ckpt)["encoder"]["init"]["sha256"] == sha256(weights_file)
    weights_file.unlink()
    loaded = load_encoder(ckpt)
    assert torch.equal(inner(loaded).conv1.weight, m.conv1.weight)
    assert loaded.init_info == info and loaded.encoder_args["init"] == info["spec"]


def test_random_init_is_unchanged() -> None:
    enc = create_encoder("resnet18", init="random")
    assert enc.init_info is None and "init" not in enc.encoder_args
    assert "init" not in enc.describe()


def test_sslbench_checkpoint_weights_as_init(tmp_path: Path) -> None:
    """An sslbench encoder's ``encoder.pt`` (keys ``model.*``), or its checkpoint folder."""
    torch.manual_seed(1)
    source = create_encoder("resnet18", in_chans=1)
    ckpt = save_encoder(tmp_path / "ssl", source, {"method": "simclr"})
    for init in (ckpt / "encoder.pt", ckpt):
        enc = create_encoder("resnet18", in_chans=1, init=str(init))
        for (k, a), b in zip(enc.state_dict().items(), source.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
        assert enc.init_info is not None and enc.init_info["adapted"] == []
        assert enc.init_info["sha256"] == sha256(ckpt / "encoder.pt")
    assert parse_init(ckpt).label("resnet18") == "external init (ssl) / resnet18"


def test_safetensors_file(tmp_path: Path, rgb_resnet18: dict[str, torch.Tensor]) -> None:
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    st.save_file({k: v.contiguous() for k, v in rgb_resnet18.items()}, str(path))
    enc = create_encoder("resnet18", init=str(path))
    assert torch.equal(inner(enc).layer4[0].conv1.weight, rgb_resnet18["layer4.0.conv1.weight"])
    assert enc.init_info is not None and enc.init_info["sha256"] == sha256(path)


def test_vit_weights_are_resampled_like_timm(tmp_path: Path) -> None:
    """A 224 px, patch-16 RGB ViT loads into the 64 px, patch-8, 1-channel encoder."""
    torch.manual_seed(0)
    vit: Any = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    enc = create_encoder("vit_tiny_p8", img_size=64, init=str(path))
    assert torch.equal(inner(enc).blocks[2].attn.qkv.weight, vit.blocks[2].attn.qkv.weight)
    assert inner(enc).patch_embed.proj.weight.shape[1:] == (1, 8, 8)
    assert enc.init_info is not None and enc.init_info["dropped"] == ["head.bias", "head.weight"]
    assert enc(torch.rand(1, 1, 64, 64)).shape == (1, enc.num_features)


def test_monai_3d_encoder_from_a_state_dict_file(tmp_path: Path) -> None:
    """A 3D ResNet from a MedicalNet-style file (``module.`` prefix, a segmentation head)."""
    torch.manual_seed(0)
    source = create_encoder("resnet10_3d")
    state = {f"module.{k}": v for k, v in inner(source).state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "medicalnet_resnet10.pth"
    torch.save({"state_dict": state}, path)
    enc = create_encoder("resnet10_3d", init=str(path))
    assert torch.equal(inner(enc).layer4[0].conv1.weight, inner(source).layer4[0].conv1.weight)
    assert enc.init_info is not None and enc.init_info["dropped"] == ["conv_seg.0.weight"]
    with pytest.raises(SSLBenchError, match="needs a 2D timm encoder"):
        create_encoder("resnet10_3d", init="timm:resnet18.a1_in1k")


def _edited(rgb: dict[str, torch.Tensor], edit: str) -> dict[str, torch.Tensor]:
    state = dict(rgb)
    if edit == "missing":
        del state["layer2.0.bn1.weight"]
    elif edit == "shape":
        state["layer4.1.conv2.weight"] = torch.zeros(512, 256, 3, 3)
    elif edit == "unexpected":
        state["extra.proj.weight"] = torch.zeros(3)
    return state


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing", r"missing keys \[layer2\.0\.bn1\.weight\]"),
        ("shape", r"wrong shapes \[layer4\.1\.conv2\.weight \(512, 256, 3, 3\) \(encoder \(512, "),
        ("unexpected", r"unexpected keys \[extra\.proj\.weight\]"),
    ],
)
def test_weights_that_do_not_fit_name_the_file_and_keys(
    tmp_path: Path, rgb_resnet18: dict[str, torch.Tensor], edit: str, message: str
) -> None:
    path = tmp_path / f"bad_{edit}.pth"
    torch.save(_edited(rgb_resnet18, edit), path)
    with pytest.raises(DataError, match=message) as err:
        create_encoder("resnet18", init=str(path))
    assert str(path.resolve()) in str(err.value)


def test_unusable_init_values_are_clear_errors(tmp_path: Path, weights_file: Path) -> None:
    missing = tmp_path / "nowhere" / "w.pth"
    with pytest.raises(DataError, match=r"weights file .*nowhere/w\.pth does not exist"):
        create_encoder("resnet18", init=str(missing))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"corrupt\.pth: unreadable weights"):
        create_encoder("resnet18", init=str(corrupt))
    text = tmp_path / "w.txt"
    text.write_text("x")
    with pytest.raises(DataError, match="neither a torch file"):
        create_encoder("resnet18", init=str(text))
    with pytest.raises(DataError, match=r"missing keys \[stem\.0\.weight"):
        create_encoder("convnext_atto", init=str(weights_file))  # another architecture's file
    with pytest.raises(SSLBenchError, match="is a 'resnet50' model"):
        create_encoder("resnet18", init="timm:resnet50.a1_in1k")  # refused before any download
    with pytest.raises(SSLBenchError, match="no timm tag"):
        create_encoder("resnet18", init="timm:")


def test_timm_tag_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the internet a timm tag fails naming the tag and the local-file way out.

    Hugging Face is forced offline and pointed at an empty cache, so nothing is
    downloaded or waited for (with a black-holed network the retries take a minute).
    """
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SSLBenchError) as err:
        create_encoder("resnet18", init="timm:resnet18.a1_in1k")
    message = str(err.value)
    assert "init 'timm:resnet18.a1_in1k'" in message
    assert "init=/path/to/resnet18.a1_in1k.pth" in message


def test_state_dict_hash_is_content_based(rgb_resnet18: dict[str, torch.Tensor]) -> None:
    copy = {k: v.clone() for k, v in reversed(list(rgb_resnet18.items()))}
    assert state_dict_sha256(copy) == state_dict_sha256(rgb_resnet18)
    copy["fc.bias"] = copy["fc.bias"] + 1
    assert state_dict_sha256(copy) != state_dict_sha256(rgb_resnet18)


def test_labels() -> None:
    assert (
        parse_init("timm:resnet18.a1_in1k").label("resnet18") == "ImageNet init (resnet18.a1_in1k)"
    )
    assert (
        parse_init("timm:resnet18.fb_ssl_yfcc100m_ft_in1k").label("resnet18").startswith("ImageNet")
    )
    assert parse_init("timm:vit_small_patch16_224.dino").label("vit_small") == (
        "timm init (vit_small_patch16_224.dino)"
    )
