"""Converters on small generated inputs: bad input, atomic output, crop policy."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from benchmark.core.errors import DataError, OutputExistsError
from benchmark.data import read_meta
from benchmark.data.converters import CONVERTERS
from benchmark.data.converters.msd import crop_or_pad

CLASSES = ("benign", "malignant", "normal")


def make_busi(root: Path, n: int = 6, size: tuple[int, int] = (40, 30)) -> Path:
    """A BUSI-like folder with ``n`` RGB noise images (and masks) per class."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            pixels = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(np.stack([pixels] * 3, -1)).save(root / cls / f"{cls} ({i}).png")
            mask = np.zeros((size[1], size[0]), np.uint8)
            if cls != "normal":
                mask[5:15, 5:20] = 255
            Image.fromarray(mask).save(root / cls / f"{cls} ({i})_mask.png")
    return root


def make_msd(root: Path, n: int = 6, shape: tuple[int, int, int] = (10, 12, 8)) -> Path:
    """An MSD-like folder with ``n`` random volumes and labels (X, Y, Z) = ``shape``."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(1, n + 1):
        img = rng.normal(100, 20, shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[2:5, 3:6, 2:4] = 1 + i % 2
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_clean(out: Path, existed: bytes | None = None) -> None:
    """Nothing new under the final name and no temporary file left beside it."""
    assert not list(out.parent.glob(".*.partial-*"))
    if existed is None:
        assert not out.exists()
    else:
        assert out.read_bytes() == existed


def convert_err(kind: str, src: Path, out: Path, match: str, **options: object) -> str:
    with pytest.raises(DataError) as info:
        CONVERTERS.create(kind, **options).convert(src, out)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    assert_clean(out)
    return msg


@pytest.mark.parametrize("kind", ["busi", "folder", "medmnist", "msd"])
def test_convert_missing_source(kind: str, tmp_path: Path) -> None:
    convert_err(kind, tmp_path / "nope", tmp_path / "out" / "o.h5", "nope")


def test_convert_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    convert_err("folder", tmp_path / "empty", tmp_path / "o.h5", "no images found")
    for cls in CLASSES:
        (tmp_path / "busi" / cls).mkdir(parents=True)
    msg = convert_err("busi", tmp_path / "busi", tmp_path / "o.h5", "no images found")
    assert "benign" in msg
    make_msd(tmp_path / "msd", n=0)
    convert_err("msd", tmp_path / "msd", tmp_path / "o.h5", "no images found")


def test_convert_bad_images(tmp_path: Path) -> None:
    src = make_busi(tmp_path / "src")
    out = tmp_path / "out" / "busi.h5"
    truncate(src / "malignant" / "malignant (2).png")
    convert_err("busi", src, out, "malignant (2).png: unreadable or truncated image")
    (src / "malignant" / "malignant (2).png").write_text("not a png")
    convert_err("busi", src, out, "malignant (2).png: unreadable")
    Image.new("L", (7, 7)).save(src / "malignant" / "malignant (2).png")
    convert_err("busi", src, out, "malignant (2)_mask.png: mask size 40x30 differs from image")


def test_convert_missing_masks(tmp_path: Path) -> None:
    src = make_busi(tmp_path / "src")
    out = tmp_path / "o.h5"
    (src / "normal" / "normal (4)_mask.png").unlink()
    convert_err("busi", src, out, "normal (4).png: image has no normal (4)_mask file")
    convert_err("folder", src, out, "normal (4).png", size=16)  # some masks: all needed
    ok = CONVERTERS.create("folder", size=16, no_masks=True).convert(src, out)
    assert not read_meta(ok)["has_masks"]
    for mask in src.glob("*/*_mask.png"):
        mask.unlink()
    convert_err("busi", src, tmp_path / "b.h5", "_mask file")
    convert_err("folder", src, tmp_path / "b.h5", "_mask file", require_masks=True)
    meta = read_meta(CONVERTERS.create("folder", size=16).convert(src, tmp_path / "c.h5"))
    assert not meta["has_masks"] and meta["n"] == 18


def test_convert_mask_union_and_threshold(tmp_path: Path) -> None:
    src = make_busi(tmp_path / "src")
    extra = np.zeros((30, 40), np.uint8)
    extra[20:28, 25:35] = 127  # below the threshold: not lesion
    extra[20:24, 25:35] = 200
    Image.fromarray(extra).save(src / "benign" / "benign (1)_mask_1.png")
    out = CONVERTERS.create("busi", size=40).convert(src, tmp_path / "o.h5")
    with h5py.File(out, "r") as f:
        mask = f["masks"][0]  # benign (1), resized 40x30 -> 40x40
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert mask[8:20, 6:19].all()  # first lesion
    assert mask[28:31, 26:34].all() and not mask[35:, :].any()  # second lesion, upper half


def test_convert_bad_npz(tmp_path: Path) -> None:
    arrays = {
        f"{s}_{k}": np.zeros((4, 8, 8) if k == "images" else (4,), np.uint8)
        for s in ("train", "val", "test")
        for k in ("images", "labels")
    }
    partial = {k: v for k, v in arrays.items() if k not in ("val_labels", "test_images")}
    np.savez(tmp_path / "partial.npz", **partial)
    msg = convert_err("medmnist", tmp_path / "partial.npz", tmp_path / "o.h5", "partial.npz")
    assert "missing keys" in msg and "val_labels" in msg and "test_images" in msg
    np.savez(tmp_path / "short.npz", **{**arrays, "val_labels": np.zeros(3, np.uint8)})
    convert_err(
        "medmnist",
        tmp_path / "short.npz",
        tmp_path / "o.h5",
        "val_images has 4 samples but val_labels has 3",
    )
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 garbage")
    convert_err("medmnist", tmp_path / "junk.npz", tmp_path / "o.h5", "junk.npz: unreadable")


def test_convert_bad_nifti(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "msd")
    out = tmp_path / "o.h5"
    (src / "labelsTr" / "case_003.nii.gz").rename(tmp_path / "case_003.nii.gz")
    convert_err("msd", src, out, "imagesTr/case_003.nii.gz: no matching file in labelsTr")
    (src / "imagesTr" / "case_004.nii.gz").unlink()
    (tmp_path / "case_003.nii.gz").rename(src / "labelsTr" / "case_003.nii.gz")
    convert_err("msd", src, out, "labelsTr/case_004.nii.gz: no matching file in imagesTr")
    make_msd(tmp_path / "m2")
    lab = nib.Nifti1Image(np.zeros((10, 12, 9), np.uint8), np.eye(4))
    nib.save(lab, tmp_path / "m2" / "labelsTr" / "case_005.nii.gz")
    convert_err("nifti", tmp_path / "m2", out, "case_005.nii.gz: label shape (10, 12, 9) differs")
    truncate(tmp_path / "m2" / "imagesTr" / "case_005.nii.gz")
    convert_err("msd", tmp_path / "m2", out, "imagesTr/case_005.nii.gz: unreadable or truncated")


def test_convert_existing_output_and_interruption(tmp_path: Path) -> None:
    src = make_busi(tmp_path / "src", n=8)
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=r"out\.h5"):
        CONVERTERS.create("busi", size=16).convert(src, out)
    assert_clean(out, b"precious")
    # The 7th benign image is broken: the conversion fails midway, after 6 samples.
    truncate(src / "benign" / "benign (7).png")
    with pytest.raises(DataError, match=r"benign \(7\)\.png"):
        CONVERTERS.create("busi", size=16).convert(src, out, overwrite=True)
    assert_clean(out, b"precious")
    Image.new("RGB", (40, 30)).save(src / "benign" / "benign (7).png")
    CONVERTERS.create("busi", size=16).convert(src, out, overwrite=True)
    assert read_meta(out)["n"] == 24
    assert_clean(out, out.read_bytes())


def test_convert_msd_crop_policy(tmp_path: Path) -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[14:19, 1:4, 8:12] = 2  # off-centre foreground
    data = np.arange(mask.size, dtype=np.float32).reshape(1, *mask.shape)
    img, out = crop_or_pad(data, mask, (8, 8, 30))
    assert img.shape == (1, 8, 8, 30) and out.shape == (8, 8, 30)
    assert (out == 2).sum() == (mask == 2).sum()  # nothing lost: window follows foreground
    assert img[0, :, :, :5].max() == 0 and img[0, :, :, 25:].max() == 0  # symmetric padding
    _, lossy = crop_or_pad(data, mask, (3, 3, 3))
    assert 0 < lossy.sum() < mask.sum()


def test_convert_msd_dataset_json_and_loss(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "msd", n=6)
    info = {
        "name": "Toy",
        "modality": {"0": "CT"},
        "licence": "CC0",
        "labels": {"0": "background", "1": "Liver", "2": "Tumour"},
    }
    (src / "dataset.json").write_text(json.dumps(info))
    (src / "imagesTr" / "._case_001.nii.gz").write_bytes(b"AppleDouble junk")
    out = CONVERTERS.create("msd", shape="4,2,4", seed=1).convert(src, tmp_path / "o.h5")
    meta = read_meta(out)
    assert meta["name"] == "toy" and meta["modality"] == "CT" and meta["licence"] == "CC0"
    assert meta["mask_class_names"] == ["background", "liver", "tumour"]
    assert meta["image_shape"] == [1, 4, 2, 4] and meta["n"] == 6
    extra = meta["extra"]
    assert extra["foreground_fraction_lost"] > 0 and len(extra["volumes_with_lost_foreground"]) == 6
    assert extra["split_policy"]["seed"] == 1 and extra["cropped_volumes"] == 6
