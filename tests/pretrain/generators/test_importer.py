"""Importing generated images (folders, npz, HDF5) and the phantom generator."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from benchmark.core.errors import DataError, OutputExistsError
from benchmark.data.h5format import read_meta
from pretrain.generators import GeneratorError, write_synthetic
from pretrain.generators.importer import ImportedImages
from pretrain.generators.phantom import PhantomGenerator


def _png_folder(root: Path, n: int = 5, size: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    arrays = []
    for i in range(n):
        rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        arrays.append(rgb)
        where = root / "sub" if i % 2 else root
        if i == 0:
            Image.fromarray(rgb[..., 0]).save(where / f"img{i}.png")  # greyscale
        else:
            Image.fromarray(rgb).save(where / f"img{i}.png")
    return arrays


def test_folder_of_pngs(tmp_path: Path) -> None:
    arrays = _png_folder(tmp_path / "pngs")
    gen = ImportedImages(tmp_path / "pngs", size=16)
    assert gen.images.shape == (5, 1, 16, 16) and gen.images.dtype == np.uint8
    info = gen.describe()
    assert info["source_kind"] == "folder" and info["n_files"] == 5
    assert info["original_dtype"] == "uint8" and info["resized"] == {
        "from": [20, 20],
        "to": [16, 16],
    }
    assert len(info["files_sha256"]) == 64
    same = ImportedImages(tmp_path / "pngs")  # no resize: PIL's luma, bit-exact
    grey = np.asarray(Image.fromarray(arrays[1]).convert("L"))
    names = same.names
    np.testing.assert_array_equal(same.images[names.index("sub/img1.png"), 0], grey)
    np.testing.assert_array_equal(same.images[names.index("img0.png"), 0], arrays[0][..., 0])
    out = write_synthetic(same, 5, tmp_path / "imp.h5", progress=False)
    meta = read_meta(out)
    assert meta["image_shape"] == [1, 20, 20] and meta["extra"]["generator"]["name"] == "import"
    with h5py.File(out) as f:
        assert f["source_files"][0].decode() == names[0]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        ImportedImages(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(DataError, match=r"b\.png.*all images must match"):
        ImportedImages(mixed)
    with pytest.raises(DataError, match="no such file"):
        ImportedImages(tmp_path / "nope")


def test_npz_ranges_and_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    unit = rng.random((6, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "unit.npz", samples=unit)
    gen = ImportedImages(tmp_path / "unit.npz")
    assert gen.describe()["interpretation"] == "float in [0, 1]"
    np.testing.assert_array_equal(gen.images[:, 0], np.round(unit * 255).astype(np.uint8))
    signed = unit * 2 - 1
    np.savez(tmp_path / "signed.npz", other=np.zeros(3), x=signed[:, None])
    gen = ImportedImages(tmp_path / "signed.npz", key="x")
    assert gen.describe()["interpretation"].startswith("float in [-1, 1]")
    assert np.abs(gen.images[:, 0].astype(int) - np.round(unit * 255)).max() <= 1
    np.savez(tmp_path / "last.npz", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    assert ImportedImages(tmp_path / "last.npz").image_shape == (1, 16, 16)
    with pytest.raises(DataError, match=r"no array 'y'.*other, x"):
        ImportedImages(tmp_path / "signed.npz", key="y")


def test_bad_npz_values_are_rejected(tmp_path: Path, tiny_real: Path) -> None:
    bad = np.zeros((4, 16, 16), np.float32)
    bad[2, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", bad)
    with pytest.raises(DataError, match=r"nan\.npz.*sample 2 contains NaN"):
        ImportedImages(tmp_path / "nan.npz")
    np.savez(tmp_path / "big.npz", np.full((2, 16, 16), 3.0))
    with pytest.raises(DataError, match="outside"):
        ImportedImages(tmp_path / "big.npz")
    np.savez(tmp_path / "small.npz", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"has \(1, 16, 16\); pass --size 16"):
        ImportedImages(tmp_path / "small.npz", like=tiny_real)
    assert ImportedImages(tmp_path / "small.npz", like=tiny_real, size=16).image_shape == (
        1,
        16,
        16,
    )


def test_hdf5_sources(tmp_path: Path, tiny_real: Path) -> None:
    gen = ImportedImages(tiny_real)
    assert gen.describe()["source_kind"] == "sslbench-hdf5" and gen.num_available == 24
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["group/generated"] = np.zeros((3, 16, 16), np.uint8)
        f["other"] = np.zeros(2)
    with pytest.raises(DataError, match="pass --key"):
        ImportedImages(tmp_path / "plain.h5")
    assert ImportedImages(tmp_path / "plain.h5", key="group/generated").num_available == 3


def test_phantom_generator(tmp_path: Path) -> None:
    gen = PhantomGenerator(size=16)
    a = gen.sample(5, seed=1, batch_size=2)
    assert a.shape == (5, 1, 16, 16) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, gen.sample(5, seed=1, batch_size=5))  # batch-independent
    assert not np.array_equal(a, gen.sample(5, seed=2))
    out = write_synthetic(gen, 4, tmp_path / "ph.h5", seed=1, progress=False)
    meta = read_meta(out)
    assert meta["extra"]["generator"]["name"] == "phantom" and not meta["has_labels"]
    with pytest.raises(OutputExistsError):
        write_synthetic(gen, 4, out, progress=False)
    with pytest.raises(GeneratorError, match="size"):
        PhantomGenerator(size=8)
