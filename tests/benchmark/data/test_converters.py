"""Converters on the real datasets in ../shared/data (counts and quirks from its README)."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from benchmark.data import H5Dataset, compute_content_hash, read_meta
from benchmark.data.converters import CONVERTERS
from benchmark.data.converters.busi import Sample, load_sample
from benchmark.data.h5format import read_split, read_strings

BUSI_COUNTS = {"benign": 437, "malignant": 210, "normal": 133}


def load(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a converted file, strings decoded."""
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("images", "masks", "labels") if k in f}
        out["split"] = read_split(f)
        out["patient_ids"] = read_strings(f, "patient_ids")
        out["source_files"] = read_strings(f, "source_files")
    return out


def check_split(arrays: dict[str, np.ndarray], strata: np.ndarray) -> None:
    """Every split non-empty, patient-disjoint and holding every stratum."""
    split, pids = arrays["split"], arrays["patient_ids"]
    sets = {s: set(pids[split == s].tolist()) for s in ("train", "val", "test")}
    assert all(sets.values())
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"])
    assert not sets["val"] & sets["test"]
    for s in ("train", "val", "test"):
        assert set(strata[split == s].tolist()) == set(strata.tolist()), s


@pytest.fixture(scope="module")
def busi64(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("busi") / "busi64.h5"
    return CONVERTERS.create("busi", size=64).convert(shared_data / "busi_256", out)


@pytest.fixture(scope="module")
def busi_raw(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "raw.h5"
    return CONVERTERS.create("busi", size=48).convert(shared_data / "busi_raw_sample", out)


@pytest.fixture(scope="module")
def msd(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("msd") / "hippo.h5"
    return CONVERTERS.create("msd").convert(shared_data / "msd_hippocampus", out)


@pytest.fixture(scope="module")
def breastmnist(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mnist") / "breastmnist.h5"
    src = shared_data / "medmnist" / "breastmnist.npz"
    return CONVERTERS.create("medmnist").convert(src, out)


def test_convert_busi_counts_and_masks(busi64: Path) -> None:
    meta, a = read_meta(busi64), load(busi64)
    assert meta["n"] == 780 and meta["class_names"] == list(BUSI_COUNTS)
    assert np.bincount(a["labels"]).tolist() == list(BUSI_COUNTS.values())
    assert meta["extra"]["class_counts"] == BUSI_COUNTS
    assert a["images"].shape == (780, 1, 64, 64) and a["images"].dtype == np.uint8
    assert a["masks"].shape == (780, 64, 64) and set(np.unique(a["masks"])) == {0, 1}
    fg = a["masks"].reshape(780, -1).sum(1)
    assert (fg[a["labels"] == 2] == 0).all()  # normal: empty masks
    assert (fg[a["labels"] != 2] > 0).all()  # every lesion survives the resize
    assert meta["modality"] == "ultrasound" and meta["licence"] == "CC BY 4.0"
    assert "Data in Brief" in meta["citation"] and meta["mask_class_names"][1] == "lesion"
    assert "bilinear" in meta["extra"]["resize_policy"]
    assert "patient id" in meta["extra"]["patient_id_policy"]
    assert meta["extra"]["split_policy"] == {  # v2: near-duplicates share a split unit
        "method": "make_split: stratified by class, grouped by patient id and near-duplicate group",
        "seed": 0,
        "val_fraction": 0.15,
        "test_fraction": 0.2,
    }
    assert a["patient_ids"][0] == "benign (1)" and a["patient_ids"][1] == "benign (2)"
    assert a["source_files"][0] == "benign/benign (1).png"


def test_convert_busi_split_and_hash(busi64: Path) -> None:
    a = load(busi64)
    check_split(a, a["labels"])
    frac = {s: float(np.mean(a["split"] == s)) for s in ("val", "test")}
    assert abs(frac["val"] - 0.15) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    assert compute_content_hash(busi64) == read_meta(busi64)["content_hash"]


def test_convert_busi_reads_back(busi64: Path) -> None:
    ds = H5Dataset(busi64, split="test")
    item = ds[0]
    assert item["image"].dtype.is_floating_point and tuple(item["image"].shape) == (1, 64, 64)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert float(item["image"].max()) > 0.5  # real ultrasound, not blank
    assert tuple(item["mask"].shape) == (64, 64) and int(item["label"]) in (0, 1, 2)


def test_convert_busi_full_size_keeps_pixels(shared_data: Path) -> None:
    """At 256 px busi_256 is not resampled: images equal the PNGs, masks are >= 128."""
    sample = Sample(
        shared_data / "busi_256/malignant/malignant (3).png",
        1,
        [shared_data / "busi_256/malignant/malignant (3)_mask.png"],
    )
    image, mask, original = load_sample(sample, 256)
    assert original == (256, 256)
    assert np.array_equal(image[0], np.asarray(Image.open(sample.image).convert("L")))
    raw_mask = np.asarray(Image.open(sample.masks[0]).convert("L"))
    assert mask is not None and np.array_equal(mask, (raw_mask >= 128).astype(np.uint8))
    assert len(np.unique(raw_mask)) > 2  # the grey values the threshold removes


def test_convert_busi_raw_sample(busi_raw: Path, shared_data: Path) -> None:
    meta, a = read_meta(busi_raw), load(busi_raw)
    # The README says 30 images; the folder holds 29 (13 benign, 8 malignant, 8 normal).
    assert meta["n"] == 29 and meta["image_shape"] == [1, 48, 48]
    assert np.bincount(a["labels"]).tolist() == [13, 8, 8]
    sizes = meta["extra"]["source_sizes_wh"]
    assert sizes["min"] != sizes["max"] and meta["extra"]["resized_images"] == 29
    assert meta["extra"]["images_with_several_masks"] == 6
    i = int(np.flatnonzero(a["patient_ids"] == "benign (195)")[0])
    folder = shared_data / "busi_raw_sample" / "benign"
    names = ["benign (195)_mask.png", "benign (195)_mask_1.png", "benign (195)_mask_2.png"]
    union = a["masks"][i].astype(bool)
    for name in names:
        _, single, _ = load_sample(Sample(folder / "benign (195).png", 0, [folder / name]), 48)
        assert single is not None and single.any()
        assert union.sum() >= single.sum() and not (single.astype(bool) & ~union).any()


def test_convert_deterministic_and_seeded(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "busi_raw_sample"
    paths = {}
    for key, seed in (("a", 0), ("b", 0), ("c", 3)):
        paths[key] = CONVERTERS.create("busi", size=32, seed=seed).convert(src, tmp_path / key)
    hashes = {k: read_meta(p)["content_hash"] for k, p in paths.items()}
    assert hashes["a"] == hashes["b"] == compute_content_hash(paths["a"])
    assert hashes["c"] != hashes["a"]
    split_a, split_c = load(paths["a"])["split"], load(paths["c"])["split"]
    assert not np.array_equal(split_a, split_c)
    assert np.array_equal(load(paths["a"])["images"], load(paths["c"])["images"])


def test_convert_folder_options(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "busi_raw_sample"
    out = CONVERTERS.create("folder", size=16, no_masks=True).convert(src, tmp_path / "f.h5")
    meta = read_meta(out)
    assert not meta["has_masks"] and meta["name"] == "busi_raw_sample"
    assert meta["class_names"] == ["benign", "malignant", "normal"]
    out2 = CONVERTERS.create("folder", size=16, classes="normal,benign").convert(
        src, tmp_path / "g.h5"
    )
    meta2 = read_meta(out2)
    assert meta2["class_names"] == ["normal", "benign"] and meta2["has_masks"]
    assert np.bincount(load(out2)["labels"]).tolist() == [8, 13]


@pytest.mark.parametrize("kind", ["busi", "folder", "medmnist", "msd", "nifti"])
def test_convert_cli_arguments(kind: str) -> None:
    """Options parsed by argparse construct the converter with their defaults."""
    parser = argparse.ArgumentParser()
    CONVERTERS.get(kind).add_arguments(parser)
    args = vars(parser.parse_args([]))
    conv = CONVERTERS.create(kind, **args)
    assert CONVERTERS.get(kind).description
    assert conv.dup.policy == "group"  # near-duplicate defaults: 2D dhash+corr, 3D corr
    assert conv.dup.rule.rule == ("corr" if kind in ("msd", "nifti") else "dhash+corr")
    if kind in ("busi", "folder"):
        assert (conv.size, conv.seed, conv.val_fraction, conv.test_fraction) == (256, 0, 0.15, 0.2)
    if kind == "busi":
        assert conv.classes == ["benign", "malignant", "normal"] and conv.require_masks
    if kind in ("msd", "nifti"):
        assert conv.shape == (48, 64, 48)
        args = vars(parser.parse_args(["--shape", "8,9,10"]))
        assert CONVERTERS.create(kind, **args).shape == (8, 9, 10)


def test_convert_breastmnist(breastmnist: Path, shared_data: Path) -> None:
    meta, a = read_meta(breastmnist), load(breastmnist)
    assert meta["name"] == "breastmnist" and meta["class_names"] == ["malignant", "normal+benign"]
    assert meta["image_shape"] == [1, 28, 28] and meta["label_shape"] == []
    assert {s: int(np.sum(a["split"] == s)) for s in ("train", "val", "test")} == {
        "train": 546,
        "val": 78,
        "test": 156,
    }
    check_split(a, a["labels"])
    assert set(a["labels"].tolist()) == {0, 1}
    npz = np.load(shared_data / "medmnist" / "breastmnist.npz")
    test = a["split"] == "test"
    assert np.array_equal(a["images"][test][:, 0], npz["test_images"])
    assert np.array_equal(a["labels"][test], npz["test_labels"].reshape(-1))
    assert a["patient_ids"][12] == "train-00012" and "no patient ids" in str(meta["extra"])
    assert compute_content_hash(breastmnist) == meta["content_hash"]
    # the size estimates read before converting is the one written
    src = shared_data / "medmnist" / "breastmnist.npz"
    assert CONVERTERS.get("medmnist").image_size(src, {}) == meta["image_shape"][-1] == 28
    assert CONVERTERS.get("medmnist").image_size(Path("pneumoniamnist_128.npz"), {}) == 128
    assert CONVERTERS.get("busi").image_size(Path("busi"), {"size": 64}) == 64


def test_convert_medmnist_rgb_3d_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def npz(name: str, image_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> Path:
        arrays = {}
        for s, n in (("train", 6), ("val", 2), ("test", 3)):
            arrays[f"{s}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
            arrays[f"{s}_labels"] = rng.integers(0, 2, (n, *label_shape))
            arrays[f"{s}_labels"][:2] = [[0], [1]] if label_shape == (1,) else 1
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    rgb = npz("pathmnist.npz", (8, 8, 3), (1,))
    out = CONVERTERS.create("medmnist", classes="a,b").convert(rgb, tmp_path / "rgb.h5")
    meta, a = read_meta(out), load(out)
    assert meta["image_shape"] == [3, 8, 8] and meta["class_names"] == ["a", "b"]
    assert meta["modality"] == "pathology" and a["labels"].shape == (11,)
    src = np.load(rgb)["train_images"]
    assert np.array_equal(a["images"][:6], src.transpose(0, 3, 1, 2))
    vol = npz("organmnist3d.npz", (4, 5, 6), (1,))
    out3 = CONVERTERS.create("medmnist").convert(vol, tmp_path / "vol.h5")
    assert read_meta(out3)["image_shape"] == [1, 4, 5, 6]
    assert H5Dataset(out3)[0]["image"].shape == (1, 4, 5, 6)
    multi = npz("chestmnist.npz", (8, 8), (5,))
    outm = CONVERTERS.create("medmnist").convert(multi, tmp_path / "multi.h5")
    meta_m = read_meta(outm)
    assert meta_m["label_shape"] == [5] and len(meta_m["class_names"]) == 5
    assert H5Dataset(outm)[0]["label"].shape == (5,)


@pytest.mark.parametrize(
    ("name", "shape", "classes", "modality"),
    [
        ("adrenalmnist3d_64.npz", (6, 6, 6), ["normal", "hyperplasia"], "CT (adrenal shape masks)"),
        ("breastmnist_224.npz", (8, 8), ["malignant", "normal+benign"], "ultrasound"),
        ("organmnist3d.npz", (4, 4, 4), ["liver", "kidney-right"], "CT"),
        ("synapsemnist3d_28.npz", (4, 4, 4), ["inhibitory synapse"], "electron microscopy"),
        ("mystery.npz", (8, 8), ["class_0", "class_1"], "unknown"),
    ],
)
def test_medmnist_names_and_modality_from_the_v2_table(
    tmp_path: Path, name: str, shape: tuple[int, ...], classes: list[str], modality: str
) -> None:
    """MedMNIST+ size suffixes map to their dataset; names and modality come from the table."""
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{s}_labels"] = np.array([[0], [1]] * (n // 2))
    np.savez(tmp_path / name, **arrays)
    out = CONVERTERS.create("medmnist").convert(tmp_path / name, tmp_path / "out.h5")
    meta = read_meta(out)
    assert meta["class_names"][: len(classes)] == classes
    assert meta["modality"] == modality
    assert meta["name"] == name.removesuffix(".npz")


def test_convert_msd_hippocampus(msd: Path, shared_data: Path) -> None:
    meta, a = read_meta(msd), load(msd)
    assert meta["n"] == 260 and meta["image_shape"] == [1, 48, 64, 48]
    assert meta["image_dtype"] == "float32" and not meta["has_labels"]
    assert 0.0 <= a["images"].min() and a["images"].max() == 1.0
    assert set(np.unique(a["masks"]).tolist()) == {0, 1, 2}
    assert meta["mask_class_names"] == ["background", "anterior", "posterior"]
    assert meta["modality"] == "MRI" and meta["licence"] == "CC BY-SA 4.0"
    assert "Nature Communications 13" in meta["citation"] and meta["spacing"] == [1.0, 1.0, 1.0]
    extra = meta["extra"]
    assert extra["foreground_voxels_lost"] == 0 and extra["foreground_fraction_lost"] == 0.0
    assert extra["axis_order"].endswith("(D, H, W) = (Z, Y, X)")
    assert a["patient_ids"][0] == "hippocampus_001" and len(set(a["patient_ids"])) == 260
    dup = meta["duplicates"]  # 3D rule: 16^3 thumbnail correlation >= 0.99; no case is a copy
    assert (dup["rule"], dup["min_corr"], dup["groups"], dup["pairs"]) == ("corr", 0.99, 0, 0)
    check_split(a, (a["masks"].reshape(260, -1).max(1) > 0).astype(int))
    assert compute_content_hash(msd) == meta["content_hash"]
    # Axis mapping: stored (D, H, W) = label (X, Y, Z) transposed, centred by zero padding.
    lab = np.asarray(
        nib.load(shared_data / "msd_hippocampus/labelsTr/hippocampus_001.nii.gz").dataobj
    ).transpose(2, 1, 0)
    off = [(t - s) // 2 for s, t in zip(lab.shape, (48, 64, 48), strict=True)]
    region = tuple(slice(o, o + s) for o, s in zip(off, lab.shape, strict=True))
    assert np.array_equal(a["masks"][0][region], lab)
    assert (a["masks"][0] > 0).sum() == (lab > 0).sum()
    item = H5Dataset(msd, split="val")[0]
    assert tuple(item["image"].shape) == (1, 48, 64, 48) and item["mask"].max() <= 2
