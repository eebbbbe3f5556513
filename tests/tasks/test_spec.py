"""Task specs: shipped files, validation errors and dataset resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark.core.errors import DataError, SSLBenchError, UnknownNameError
from benchmark.data.h5format import DatasetMeta, H5Writer
from tasks.spec import SpecError, available_specs, load_spec, spec_from_dict

SHIPPED = {"busi-cls", "busi-seg", "breastmnist-cls", "phantom-cls", "phantom-seg"}


def minimal(**changes: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "name": "t",
        "version": "1",
        "dataset": "x.h5",
        "target": "labels",
        "image_size": 32,
        "metrics": [{"name": "auc", "higher_is_better": True}, "accuracy"],
        "primary_metric": "auc",
    }
    spec.update(changes)
    return spec


def write_unlabelled(path: Path, n: int = 6) -> Path:
    """A tiny dataset with neither labels nor masks."""
    meta = DatasetMeta(name="unlabelled", modality="test")
    with H5Writer(path, n=n, image_shape=(1, 16, 16), meta=meta, label_shape=None) as w:
        for i in range(n):
            w.write(
                i,
                np.full((1, 16, 16), i, np.uint8),
                patient_id=f"p{i}",
                split=("train", "val", "test")[i % 3],
            )
    return path


def test_shipped_specs_load_and_are_consistent() -> None:
    assert SHIPPED <= set(available_specs())
    for name in SHIPPED:
        spec = load_spec(name)
        assert spec.name == name and spec.version and spec.convert.startswith("sslbench data")
        assert spec.primary_metric in spec.metric_names
        assert spec.target == ("masks" if name.endswith("-seg") else "labels")
        if spec.target == "labels":
            spec.check_registries()  # metrics and protocol options exist


def test_load_by_path_and_unknown_name() -> None:
    path = Path(__file__).resolve().parents[2] / "tasks" / "specs" / "busi-cls.yaml"
    assert load_spec(path).name == "busi-cls"
    with pytest.raises(SpecError, match="did you mean 'busi-cls'"):
        load_spec("busi-clf")


def test_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    bad = minimal()
    bad["primary_metrc"] = bad.pop("primary_metric")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(
        SpecError, match=r"unknown key 'primary_metrc'; did you mean 'primary_metric'"
    ):
        load_spec(path)
    with pytest.raises(SpecError, match="did you mean 'antialias'"):
        spec_from_dict(minimal(preprocessing={"antialis": True}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": "label"}, "did you mean 'labels'"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"primary_metric": "f1"}, "primary_metric 'f1' is not among"),
        ({"metrics": []}, "metrics must be a non-empty list"),
        ({"metrics": [{"name": "auc", "higer": True}]}, "unknown metric key 'higer'"),
        ({"version": None}, "missing required key"),
        ({"preprocessing": {"resize": "cubic"}}, "resize must be one of"),
    ],
)
def test_invalid_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_dict(minimal(**changes))


def test_registry_checks() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'auc'"):
        spec_from_dict(minimal(metrics=["aucc"], primary_metric="aucc")).check_registries()
    with pytest.raises(SpecError, match="higher_is_better"):
        spec_from_dict(
            minimal(metrics=[{"name": "auc", "higher_is_better": False}])
        ).check_registries()
    with pytest.raises(SSLBenchError, match="did you mean 'class_weight'"):
        spec_from_dict(minimal(protocol={"linear": {"class_weigth": None}})).check_registries()


def test_missing_dataset_shows_convert_command(tmp_path: Path) -> None:
    spec = load_spec("busi-cls")
    with pytest.raises(DataError, match=r"create it with: sslbench data convert busi"):
        spec.resolve_dataset(tmp_path)


def test_data_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_from_dict(minimal(dataset="d.h5"))
    monkeypatch.delenv("SSLBENCH_DATA_ROOT", raising=False)
    assert spec.dataset_path() == Path("data") / "d.h5"
    monkeypatch.setenv("SSLBENCH_DATA_ROOT", str(tmp_path / "env"))
    assert spec.dataset_path() == tmp_path / "env" / "d.h5"
    assert spec.dataset_path(tmp_path / "cli") == tmp_path / "cli" / "d.h5"
    absolute = spec_from_dict(minimal(dataset=str(tmp_path / "abs.h5")))
    assert absolute.dataset_path(tmp_path / "cli") == tmp_path / "abs.h5"


def test_dataset_without_target(tmp_path: Path) -> None:
    write_unlabelled(tmp_path / "u.h5")
    with pytest.raises(DataError, match="needs labels but the dataset has none"):
        spec_from_dict(minimal(dataset="u.h5")).resolve_dataset(tmp_path)
    seg = spec_from_dict(minimal(dataset="u.h5", target="masks"))
    with pytest.raises(DataError, match="needs masks but the dataset has none"):
        seg.resolve_dataset(tmp_path)
