"""Online kNN monitor, loss against chance and the health verdict of pretraining runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmark.data.converters import CONVERTERS
from pretrain.encoders import create_encoder
from pretrain.methods import METHODS
from pretrain.monitor import KNNMonitor, health, monitor_steps
from pretrain.train import PretrainConfig, Trainer, pretrain
from tests.pretrain.test_train import tiny_file


@pytest.fixture(scope="module")
def breast(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BreastMNIST (real, 28 px, official train/val/test split with labels)."""
    out = tmp_path_factory.mktemp("breast") / "breast.h5"
    CONVERTERS.create("medmnist").convert(shared_data / "medmnist" / "breastmnist.npz", out)
    return out


def run_config(data: Path, **kw: object) -> PretrainConfig:
    base: dict[str, object] = dict(
        method="simclr",
        encoder="resnet18",
        real=str(data),
        steps=6,
        batch_size=16,
        image_size=32,
        seed=0,
        checkpoint_every=0,
        log_every=1,
        device="cpu",
        knn_every=3,
    )
    base.update(kw)
    return PretrainConfig(**base)  # type: ignore[arg-type]


def test_monitor_steps() -> None:
    assert monitor_steps(300, 0) == [0, 60, 120, 180, 240, 300]
    assert monitor_steps(10, 4) == [0, 4, 8, 10]
    assert monitor_steps(10, -1) == []
    assert monitor_steps(3, 0) == [0, 1, 2, 3]


def test_monitor_records_step0_and_end(breast: Path, tmp_path: Path) -> None:
    result = pretrain(run_config(breast), tmp_path / "run", progress=False)
    s = result.summary
    points = s["monitor"]["points"]
    assert [p["step"] for p in points] == [0, 3, 6]
    assert points[0]["calibration"]["calibrated"] and points[0]["calibration"]["split"] == "train"
    assert all(p["calibration"]["calibrated"] for p in points)  # every point, not only step 0
    assert all(0.0 <= p["knn_acc"] <= 1.0 for p in points)
    assert all(0.0 <= p["linear_auc"] <= 1.0 for p in points)
    assert s["health"]["linear"]["init"] == points[0]["linear_auc"]
    assert s["health"]["linear"]["end"] == points[-1]["linear_auc"]
    assert s["monitor"]["queries"] == "val" and s["monitor"]["bank"] == "train"
    h = s["health"]
    assert h["knn"]["metric"] == "knn_balanced_acc"
    assert h["knn"]["init"] == points[0]["knn_balanced_acc"]
    assert h["knn"]["end"] == points[-1]["knn_balanced_acc"]
    assert h["knn"]["accuracy_end"] == points[-1]["knn_acc"]
    assert h["loss"]["chance"] == pytest.approx(math.log(2 * 16 - 1))
    assert h["verdict"] in ("learned", "did not learn")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and "knn_acc" in lines[0]
    assert [x["step"] for x in lines] == sorted(x["step"] for x in lines)
    assert sum("knn_acc" in x for x in lines) == 3 and sum("loss" in x for x in lines) == 6
    on_disk = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert on_disk["health"]["verdict"] == h["verdict"]


def test_monitor_leaves_training_unchanged(breast: Path, tmp_path: Path) -> None:
    """Weights and losses are bit-identical with and without the monitor."""
    a = pretrain(run_config(breast, steps=3), tmp_path / "a", progress=False)
    b = pretrain(run_config(breast, steps=3, knn_every=-1), tmp_path / "b", progress=False)
    wa = torch.load(a.checkpoint / "encoder.pt", weights_only=False)
    wb = torch.load(b.checkpoint / "encoder.pt", weights_only=False)
    state_a = wa.get("state_dict", wa)
    state_b = wb.get("state_dict", wb)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert b.summary["monitor"]["points"] == []
    assert b.summary["health"]["knn"]["init"] is None


def test_lr_zero_run_did_not_learn(breast: Path, tmp_path: Path) -> None:
    """A deliberately broken run (lr 0: only batch norm moves) is flagged."""
    cfg = run_config(breast, method_config={"lr": 0.0}, steps=8, knn_every=0)
    s = pretrain(cfg, tmp_path / "run", progress=False).summary
    h = s["health"]
    assert h["verdict"] == "did not learn", h
    assert h["reasons"] and "kNN" in h["reasons"][0]


def test_unlabelled_data_skips_the_monitor_with_a_note(tmp_path: Path) -> None:
    data = tiny_file(tmp_path / "tiny.h5")
    cfg = PretrainConfig(
        real=str(data), steps=2, batch_size=4, image_size=32, checkpoint_every=0, device="cpu"
    )
    s = pretrain(cfg, tmp_path / "run", progress=False).summary
    assert "no single-label classes" in s["monitor"]["note"]
    assert s["health"]["knn"]["note"] == s["monitor"]["note"]
    # no monitor: the verdict rests on the loss against chance
    assert s["health"]["verdict"] in ("learned", "did not learn")


def test_resume_keeps_monitor_points(breast: Path, tmp_path: Path) -> None:
    cfg = run_config(breast, checkpoint_every=3)
    t = Trainer(cfg, tmp_path / "run")
    for record in t.run(progress=False):
        if record["step"] == 3 and "loss" in record:
            t.save_state()
            break
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert [p["step"] for p in state["monitor_history"]] == [0]  # step 3 is measured after
    resumed = pretrain(cfg, tmp_path / "run", resume=True, progress=False)
    assert [p["step"] for p in resumed.summary["monitor"]["points"]] == [0, 3, 6]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("simclr", lambda c, b: math.log(2 * b - 1)),
        ("moco", lambda c, b: math.log(c["memory_bank_size"] + 1)),
        ("dino", lambda c, b: math.log(c["head_out_dim"])),
    ],
)
def test_chance_levels(name: str, expected: object) -> None:
    cls = METHODS.get(name)
    config = cls.validate_config({})
    assert cls.chance_loss(config, 32) == pytest.approx(expected(config, 32))  # type: ignore[operator]


@pytest.mark.parametrize("name", ["byol", "simsiam", "barlowtwins", "vicreg", "mae", "spark"])
def test_methods_without_a_chance_level(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.chance_loss(cls.validate_config({}), 32) is None


def test_knn_monitor_does_not_modify_the_encoder(breast: Path) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", in_chans=1, img_size=32)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    monitor = KNNMonitor(breast, 32, torch.device("cpu"))
    record = monitor.evaluate(encoder, calibrate=True)
    assert record["calibration"]["calibrated"]
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert encoder.training  # mode restored


def test_knn_monitor_standardises_features_on_the_bank(breast: Path) -> None:
    """A per-dimension shift and scale of the features (a dominant shared direction,
    as after a ReLU) does not change the kNN vote: features are standardised with
    the bank's statistics before the cosine similarity."""
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", in_chans=1, img_size=32)
    monitor = KNNMonitor(breast, 32, torch.device("cpu"))
    plain = monitor.evaluate(encoder)
    dims = encoder.num_features
    scale = torch.linspace(0.5, 4.0, dims)
    offset = torch.linspace(1.0, 8.0, dims)
    original = encoder.forward_features
    encoder.forward_features = lambda x: original(x) * scale + offset  # type: ignore[method-assign]
    shifted = monitor.evaluate(encoder)
    assert shifted["knn_acc"] == pytest.approx(plain["knn_acc"], abs=1e-6)
    assert shifted["knn_balanced_acc"] == pytest.approx(plain["knn_balanced_acc"], abs=1e-6)
    assert "standardised" in monitor.describe()["features"]


def test_health_rules() -> None:
    hist = [{"loss": 4.0, "embedding_std": 0.04}, {"loss": 2.0, "embedding_std": 0.03}]
    knn = [{"step": 0, "knn_acc": 0.60}, {"step": 10, "knn_acc": 0.70}]
    assert health(hist, knn, chance=4.1, num_features=512)["verdict"] == "learned"
    flat = [{"step": 0, "knn_acc": 0.60}, {"step": 10, "knn_acc": 0.61}]
    assert health(hist, flat, chance=4.1, num_features=512)["verdict"] == "did not learn"
    at_chance = [{"loss": 4.1, "embedding_std": 0.04}, {"loss": 4.09, "embedding_std": 0.04}]
    assert health(at_chance, [], chance=4.1, num_features=512)["verdict"] == "did not learn"
    assert health(hist, [], chance=None, num_features=512)["verdict"] == "not checked"
    collapsed = [{"loss": 1.0, "embedding_std": 0.04}, {"loss": 0.5, "embedding_std": 0.001}]
    h = health(collapsed, knn, chance=None, num_features=512)
    assert h["verdict"] == "did not learn" and h["collapse"]["collapsed"]


def test_health_compares_balanced_accuracy() -> None:
    """A rise that only comes from voting for the majority class is not learning."""
    hist = [{"loss": 4.0, "embedding_std": 0.04}, {"loss": 2.0, "embedding_std": 0.03}]
    majority = [
        {"step": 0, "knn_acc": 0.60, "knn_balanced_acc": 0.50},
        {"step": 10, "knn_acc": 0.66, "knn_balanced_acc": 0.49},
    ]
    h = health(hist, majority, chance=None, num_features=512)
    assert h["verdict"] == "did not learn" and h["knn"]["gain"] == pytest.approx(-0.01)
    assert h["knn"]["accuracy_init"] == 0.60 and h["knn"]["accuracy_end"] == 0.66
    assert "balanced" in h["reasons"][0]


def test_health_accepts_a_linear_probe_gain() -> None:
    """Masked-modelling features can be poor neighbours yet linearly separable: a rise of
    the monitor's linear-probe AUC by the margin counts; neither rising does not."""
    hist = [{"loss": 1.0, "embedding_std": 0.04}, {"loss": 0.7, "embedding_std": 0.03}]
    points = [
        {"step": 0, "knn_acc": 0.6, "knn_balanced_acc": 0.50, "linear_auc": 0.69},
        {"step": 10, "knn_acc": 0.6, "knn_balanced_acc": 0.43, "linear_auc": 0.78},
    ]
    h = health(hist, points, chance=None, num_features=512)
    assert h["verdict"] == "learned" and h["linear"]["gain"] == pytest.approx(0.09)
    points[-1]["linear_auc"] = 0.70
    h = health(hist, points, chance=None, num_features=512)
    assert h["verdict"] == "did not learn"
    assert any("linear-probe AUC" in r for r in h["reasons"])
