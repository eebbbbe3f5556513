"""SparK: sparse encoder emulation, visible-only batch norm, dense encoder after the step, sizes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark.data.dataset import H5Dataset
from pretrain.checkpoint import load_encoder
from pretrain.encoders import create_encoder
from pretrain.encoders.base import Encoder
from pretrain.encoders.calibration import calibrate_batch_norm
from pretrain.methods import create_method
from pretrain.methods.base import MethodConfigError
from pretrain.methods.spark import SparK, _resize_mask, sparse_encoder
from pretrain.train import pretrain
from tests.pretrain.test_train import config, tiny_file

# (encoder, view size, config): the 2D CNNs at the 128 px minimum of a stride-32 mask
# grid, the 3D ResNet on 32^3 volumes with a finer (explicit) 8 px mask grid.
CASES = [
    ("resnet18", 128, {}),
    ("convnext_atto", 128, {}),
    ("resnet10_3d", 32, {"mask_stride": 8}),
]
IDS = [c[0] for c in CASES]


def _spark(encoder: str = "resnet18", size: int = 128, **config: object) -> SparK:
    torch.manual_seed(0)
    enc = create_encoder(encoder, img_size=size)
    method = create_method("spark", enc, decoder_width=32, **config)
    assert isinstance(method, SparK)
    return method.train()


def _inputs(method: SparK, size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, *S) without exact zeros and a random visible mask on the mask grid."""
    nd = method.encoder.spatial_dims
    images = torch.rand(batch, 1, *(size,) * nd) + 0.1
    return images, method.random_mask(batch, (size // method.patch,) * nd, images.device)


@pytest.mark.parametrize(("encoder", "size", "config"), CASES, ids=IDS)
def test_masked_pixels_never_reach_visible_features(
    encoder: str, size: int, config: dict[str, object]
) -> None:
    """Inputs differing only inside masked patches give identical visible features, zero gradient."""
    method = _spark(encoder, size, **config)
    images, visible = _inputs(method, size)
    pixels = _resize_mask(visible, images.shape[2:])
    other = torch.where(pixels, images, 10 * torch.randn_like(images))
    images.requires_grad_(True)
    with sparse_encoder(method.encoder, visible):
        feats = method.encoder.forward_multiscale(images * pixels)
        again = method.encoder.forward_multiscale(other * pixels)
    total = torch.zeros(())
    for f, g in zip(feats, again, strict=True):
        m = _resize_mask(visible, f.shape[2:])
        assert torch.equal(f * m, g * m)
        assert (f[~m.expand_as(f)] == 0).all(), "masked positions are 0 in every level"
        total = total + (f * m).sum()
    (grad,) = torch.autograd.grad(total, images)
    assert (grad[~pixels] == 0).all() and (grad[pixels] != 0).any()


@pytest.mark.parametrize(("encoder", "size", "config"), CASES, ids=IDS)
def test_every_intermediate_map_is_zero_where_masked(
    encoder: str, size: int, config: dict[str, object]
) -> None:
    """Conv, norm, activation and block outputs: masked positions stay exactly 0 (sparse)."""
    method = _spark(encoder, size, **config)
    images, visible = _inputs(method, size)
    nd, leaks, seen = method.encoder.spatial_dims, [], []

    def check(module: nn.Module, inputs: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == nd + 2:
            m = _resize_mask(visible, out.shape[2:]).expand_as(out)
            seen.append(module)
            if (out[~m] != 0).any():
                leaks.append(type(module).__name__)

    handles = [m.register_forward_hook(check) for m in method.encoder.modules()]
    with sparse_encoder(method.encoder, visible):
        method.encoder.forward_multiscale(images * _resize_mask(visible, images.shape[2:]))
    for h in handles:
        h.remove()
    assert len(seen) > 20 and not leaks


@pytest.mark.parametrize(("encoder", "size", "config"), [CASES[0], CASES[2]], ids=IDS[::2])
def test_batch_norm_statistics_come_from_visible_positions_only(
    encoder: str, size: int, config: dict[str, object]
) -> None:
    method = _spark(encoder, size, **config)
    images, visible = _inputs(method, size)
    norms = [m for m in method.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = {m: (m.running_mean.clone(), m.running_var.clone()) for m in norms}
    expected, visible_means, dense_means = {}, [], []

    def record(module: nn.Module, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        x = inputs[0].detach()
        keep = _resize_mask(visible, x.shape[2:])[:, 0]
        rows = x.movedim(1, -1)[keep]  # (N_visible, C)
        mean0, var0 = before[module]
        mom = module.momentum
        expected[module] = (
            (1 - mom) * mean0 + mom * rows.mean(0),
            (1 - mom) * var0 + mom * rows.var(0, unbiased=True),
        )
        if not keep.all():  # a dense BN would average the masked zeros in
            visible_means.append(rows.mean(0))
            dense_means.append(x.mean(dim=(0, *range(2, x.dim()))))

    handles = [m.register_forward_hook(record) for m in norms]
    with sparse_encoder(method.encoder, visible):
        method.encoder.forward_multiscale(images * _resize_mask(visible, images.shape[2:]))
    for h in handles:
        h.remove()
    assert len(expected) == len(norms)
    for m, (mean, var) in expected.items():
        assert int(m.num_batches_tracked) == 1
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-6)
    assert visible_means
    assert all(not torch.allclose(a, b) for a, b in zip(visible_means, dense_means, strict=True))


def test_encoder_is_plain_dense_after_the_step() -> None:
    method = _spark("resnet18", 128)
    images, _ = _inputs(method, 128, batch=4)
    out = method.training_step([images], step=0, total_steps=1)
    out.loss.backward()
    assert not [m for m in method.modules() if "forward" in m.__dict__], "forwards restored"
    fresh = create_encoder("resnet18", img_size=128)
    state = method.encoder.state_dict()
    assert list(state) == list(fresh.state_dict()), "state-dict keys unchanged"
    fresh.load_state_dict(state)
    method.encoder.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(method.encoder.forward_features(images), fresh.forward_features(images))
        full = method.encoder.forward_multiscale(images)
        assert all(
            torch.equal(a, b) for a, b in zip(full, fresh.forward_multiscale(images), strict=True)
        )


def test_forwards_are_restored_when_the_block_raises() -> None:
    method = _spark("resnet18", 128)
    _, visible = _inputs(method, 128)
    with pytest.raises(RuntimeError, match="boom"), sparse_encoder(method.encoder, visible):
        assert "forward" in method.encoder.model.conv1.__dict__
        raise RuntimeError("boom")
    assert not [m for m in method.encoder.modules() if "forward" in m.__dict__]


@pytest.mark.parametrize(("encoder", "size", "config"), CASES, ids=IDS)
def test_step_trains_encoder_on_masked_patches_only(
    encoder: str, size: int, config: dict[str, object]
) -> None:
    method = _spark(encoder, size, **config)
    images, _ = _inputs(method, size, batch=4)
    preds: list[torch.Tensor] = []  # full-resolution prediction

    def keep_grad(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        preds.append(output)

    method.head.register_forward_hook(keep_grad)
    masks: list[torch.Tensor] = []
    random_mask = method.random_mask

    def spy(*args: object) -> torch.Tensor:
        masks.append(random_mask(*args))  # type: ignore[arg-type]
        return masks[-1]

    object.__setattr__(method, "random_mask", spy)
    out = method.training_step([images], step=0, total_steps=1)
    out.loss.backward()
    p = method.patch
    assert torch.isfinite(out.loss) and out.logs["mask_stride"] == p
    n = (size // p) ** method.encoder.spatial_dims
    assert out.logs["mask_ratio"] == pytest.approx(1 - round(n * 0.4) / n)
    grad = SparK.patchify(preds[0].grad, p).abs().sum(dim=-1)  # (B, n patches)
    visible = masks[0].flatten(1)
    assert (grad[visible] == 0).all(), "no loss on visible patches"
    assert (grad[~visible] > 0).all()
    assert out.embeddings.shape == (4, method.encoder.num_features)
    # every weight the pyramid uses gets a gradient (zero at first where timm zero-initialises
    # the last norm of each residual branch), the first convolution a non-zero one
    grads = [p.grad for n, p in method.encoder.named_parameters() if ".head." not in n]
    assert all(g is not None for g in grads) and grads[0] is not None and grads[0].abs().sum() > 0
    assert all(t.grad is not None for t in method.mask_tokens.values())


def test_too_small_views_are_refused() -> None:
    method = _spark("resnet18", 64)
    with pytest.raises(
        MethodConfigError, match=r"64x64 px .* 2x2 mask grid at stride 32 .* 128 px"
    ):
        method.view_recipes(64)
    with pytest.raises(MethodConfigError, match="96x96 px"):
        method.training_step([torch.rand(2, 1, 96, 96)], step=0, total_steps=1)
    assert method.view_recipes(128)[0].size == 128
    finer = _spark("resnet18", 64, mask_stride=16)  # explicit finer grid: 4x4 patches at 64 px
    assert finer.view_recipes(64)[0].size == 64
    with pytest.raises(MethodConfigError, match="at least 64 px"):
        finer.view_recipes(32)
    with pytest.raises(MethodConfigError, match="mask_stride"):
        create_method("spark", method.encoder, mask_stride=64)
    with pytest.raises(MethodConfigError, match="mask_stride"):
        SparK.validate_config({"mask_stride": 24})


@pytest.mark.parametrize(
    ("encoder", "size", "module"),
    [("efficientnet_b0", 128, "Sigmoid"), ("swin_3d", 32, "Linear"), ("vit_tiny", 32, "mae")],
)
def test_refuses_encoders_it_cannot_make_sparse(encoder: str, size: int, module: str) -> None:
    with pytest.raises(MethodConfigError, match=module):
        create_method("spark", create_encoder(encoder, img_size=size))


class _FlatEncoder(Encoder):
    name = "flat"
    supports_multiscale = False

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 4
        self.proj = torch.nn.Linear(1, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def test_refuses_encoder_without_multiscale_support() -> None:
    with pytest.raises(MethodConfigError, match="multi-scale"):
        create_method("spark", _FlatEncoder())


def test_exported_encoder_has_dense_batch_norm_statistics(tmp_path: Path) -> None:
    """SparK's training statistics cover visible positions only; the saved encoder
    carries statistics of whole pool images (SparK only: SimCLR keeps its own)."""
    real = tiny_file(tmp_path / "real.h5", n=24, size=128)
    runs = {}
    for method in ("spark", "simclr"):
        cfg = config(
            tmp_path, method=method, steps=2, image_size=128, checkpoint_every=0, knn_every=-1
        )
        runs[method] = pretrain(cfg, tmp_path / method, progress=False)
    record = runs["spark"].summary["bn_recalibration"]
    assert record["calibrated"] and record["images"] == 12  # the train pool
    assert record["split"] == "real:train"
    assert runs["simclr"].summary["bn_recalibration"] is None
    saved = load_encoder(runs["spark"].checkpoint)
    again = copy.deepcopy(saved)
    pool = H5Dataset(real, split="train").load()
    calibrate_batch_norm(again, pool.to_float(pool.raw_images()), split="train")
    for name, value in again.state_dict().items():
        if "running_" in name:
            # float32 means of 12 images: equal up to summation order (relative 1e-4)
            assert torch.allclose(saved.state_dict()[name], value, rtol=1e-4, atol=1e-5), name
