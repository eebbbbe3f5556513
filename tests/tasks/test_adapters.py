"""Classification adapters and the feature cache on a tiny phantom and a 32 px ResNet-18."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data.phantom import generate_phantom
from pretrain.checkpoint import load_encoder, save_encoder
from pretrain.encoders import create_encoder
from tasks.adapters import ADAPTERS, CellData
from tasks.adapters.knn import knn_predict
from tasks.features import (
    EncoderInputError,
    FeatureError,
    clear_memory_cache,
    get_features,
)
from tasks.spec import spec_from_dict
from tasks.sweep import TaskData

METRICS = ["auc", "balanced_accuracy", "macro_f1", "accuracy"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 images of 32 px: 30 train / 8 val / 10 test, 3 classes in each split."""
    return generate_phantom(tmp_path_factory.mktemp("data") / "ph.h5", n=48, size=32, seed=0)


def make_checkpoint(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_encoder(folder, create_encoder("resnet18", img_size=32), {"method": "test"})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return make_checkpoint(root / "a", 0), make_checkpoint(root / "b", 1)


@pytest.fixture(scope="module")
def cell(phantom: Path) -> CellData:
    spec = spec_from_dict(
        {
            "name": "phantom-tiny",
            "version": "1",
            "dataset": str(phantom),
            "target": "labels",
            "image_size": 32,
            "metrics": METRICS,
            "primary_metric": "auc",
        }
    )
    return TaskData.load(spec).cell(0.5, 0)


def test_knn_votes_by_hand() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([0, 0, 1])
    probs = knn_predict(train, labels, np.array([[1.0, 0.05], [0.05, 1.0]]), 2, k=2)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0].argmax() == 0 and probs[1].argmax() == 1
    # k above the training size is capped; with T large the votes become counts
    flat = knn_predict(train, labels, np.array([[1.0, 0.0]]), 2, k=50, temperature=1e6)
    assert flat[0] == pytest.approx([2 / 3, 1 / 3], abs=1e-4)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("knn", {"k": 5}),
        ("linear", {}),
        ("finetune", {"epochs": 1, "batch_size": 8, "min_steps": 1, "lr_encoder": [1e-3]}),
    ],
)
def test_adapter_reports_metrics(
    name: str,
    options: dict[str, object],
    cell: CellData,
    checkpoints: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    encoder = load_encoder(checkpoints[0])
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = ADAPTERS.create(name, **options).run(encoder, cell, seed=0, cache_dir=tmp_path)
    assert set(result.metrics) == set(METRICS) and set(result.val_metrics) == set(METRICS)
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    cm = np.asarray(result.extra["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == len(cell.test)
    assert result.train_time_s > 0 and result.eval_time_s > 0
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # caller's encoder untouched
    if name != "finetune":
        assert result.extra["feature_cache"] in ("hit", "miss")
    if name == "linear":
        assert result.extra["C"] in result.extra["C_grid"]


def test_finetune_is_deterministic_per_seed(cell: CellData) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", img_size=32)
    adapter = ADAPTERS.create(
        "finetune", epochs=2, batch_size=8, patience=1, min_steps=1, lr_encoder=[1e-4, 1e-3]
    )
    a = adapter.run(encoder, cell, seed=3)
    b = adapter.run(encoder, cell, seed=3)
    assert a.metrics == b.metrics and a.extra["history"] == b.extra["history"]
    assert a.per_case == b.per_case
    plan = a.extra["step_plan"]
    assert 1 <= a.extra["steps_trained"] <= plan["total_steps"]
    sel = a.extra["lr_selection"]
    assert sel["grid"] == [1e-4, 1e-3] and a.extra["lr_encoder_used"] == sel["chosen"]
    assert len(sel["val_scores"]) == 2 and len(sel["trial_seconds"]) == 2


def test_feature_cache_hit_and_miss(
    cell: CellData, checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    clear_memory_cache()
    enc_a, enc_b = load_encoder(checkpoints[0]), load_encoder(checkpoints[1])
    first = get_features(enc_a, cell, cache_dir=tmp_path)
    assert first.status == "miss" and first.path is not None and first.path.exists()
    assert get_features(enc_a, cell, cache_dir=tmp_path).status == "hit"  # memory
    clear_memory_cache()
    again = get_features(load_encoder(checkpoints[0]), cell, cache_dir=tmp_path)
    assert again.status == "hit" and np.array_equal(again.features, first.features)  # disk
    other = get_features(enc_b, cell, cache_dir=tmp_path)
    assert other.status == "miss" and other.key != first.key  # other weights, other key
    assert not np.allclose(other.features, first.features)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # another image size is another key; no cache dir means no caching at all
    resized = CellData(**{**cell.__dict__, "image_size": 64})
    assert get_features(enc_a, resized, cache_dir=tmp_path).status == "miss"
    assert get_features(enc_a, cell, cache_dir=None).status == "miss"
    assert first.features.shape == (48, enc_a.num_features)


def test_linear_probe_reports_cache_hit_in_extra(
    cell: CellData, checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    clear_memory_cache()
    adapter = ADAPTERS.create("linear", C_grid=[0.01, 1.0])
    encoder = load_encoder(checkpoints[0])
    assert adapter.run(encoder, cell, 0, cache_dir=tmp_path).extra["feature_cache"] == "miss"
    assert adapter.run(encoder, cell, 1, cache_dir=tmp_path).extra["feature_cache"] == "hit"


def test_nan_features_are_an_error(cell: CellData) -> None:
    encoder = create_encoder("resnet18", img_size=32)
    with torch.no_grad():
        next(encoder.parameters()).fill_(float("nan"))
    with pytest.raises(FeatureError, match="non-finite feature values"):
        ADAPTERS.create("knn").run(encoder, cell, 0)


def test_cells_the_adapters_cannot_take(cell: CellData) -> None:
    encoder = create_encoder("resnet18", img_size=32)
    for name in ("knn", "linear", "finetune"):
        with pytest.raises(EncoderInputError, match="multiple of 32"):
            ADAPTERS.create(name).check(encoder, CellData(**{**cell.__dict__, "image_size": 40}))
        with pytest.raises(Exception, match="target is 'masks'"):
            ADAPTERS.create(name).check(encoder, CellData(**{**cell.__dict__, "target": "masks"}))
    with pytest.raises(Exception, match="did you mean 'temperature'"):
        ADAPTERS.create("knn", temprature=0.1)


def count_training_images(encoder: torch.nn.Module) -> list[int]:
    """Batch sizes of the train-mode forward passes through ``encoder`` and its copies
    (the hook on its first convolution is deep-copied with it)."""
    seen: list[int] = []
    conv = next(m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d))

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            seen.append(int(args[0].shape[0]))

    conv.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("grid", [[1e-3], [1e-4, 1e-3]])
@pytest.mark.parametrize(("epochs", "min_steps"), [(2, 5), (1, 9)])
def test_finetune_training_passes_are_the_images_a_cell_trains_on(
    cell: CellData, grid: list[float], epochs: int, min_steps: int
) -> None:
    """``--dry-run`` estimates read ``training_passes``: with early stopping off it is the
    exact number of images the cell's optimizer steps see, over every grid value (16
    images in batches of 5: 5, 5 and 6 after the merge of a batch of one, 3 steps per
    epoch; the budget is 2 epochs = 6 steps, or the 9-step floor = 3 epochs)."""
    adapter = ADAPTERS.create(
        "finetune",
        epochs=epochs,
        batch_size=5,
        min_steps=min_steps,
        stop_after=1.0,
        lr_encoder=grid,
        augment=False,
    )
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", img_size=32)
    seen = count_training_images(encoder)
    adapter.run(encoder, cell, seed=0)
    assert len(cell.train) == 16 and set(seen) == {5, 6}
    expected = len(grid) * 16 * (2 if epochs == 2 else 3)
    assert sum(seen) == expected
    assert adapter.training_passes(len(cell.train)) == pytest.approx(expected)
    assert ADAPTERS.create("linear").training_passes(16) == 0  # a probe trains no encoder
