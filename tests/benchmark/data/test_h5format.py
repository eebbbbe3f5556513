"""The HDF5 writer, reader and content hash on small generated files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmark.core.errors import DataError, OutputExistsError
from benchmark.data import DatasetMeta, H5Dataset, H5Writer, compute_content_hash, read_meta


def write_tiny(
    path: Path,
    n: int = 12,
    *,
    dims: int = 2,
    dtype=np.uint8,
    masks: bool = True,
    label_shape=(),
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    spatial = (8, 8) if dims == 2 else (4, 8, 8)
    meta = DatasetMeta(
        name="tiny",
        modality="test",
        class_names=["a", "b", "c"],
        mask_class_names=["bg", "fg"],
        converter="test",
    )
    splits = ["train", "train", "val", "test"] * (n // 4)
    with H5Writer(
        path,
        n=n,
        image_shape=(1, *spatial),
        meta=meta,
        image_dtype=dtype,
        has_masks=masks,
        label_shape=label_shape,
        overwrite=overwrite,
    ) as w:
        for i in range(n):
            if dtype == np.uint8:
                img = rng.integers(0, 256, (1, *spatial), dtype=np.uint8)
            else:
                img = rng.random((1, *spatial), dtype=np.float32)
            label = i % 3 if label_shape == () else (rng.random(label_shape) > 0.5).astype(int)
            w.write(
                i,
                img,
                mask=(img[0] > 128).astype(np.uint8) if masks else None,
                label=label if label_shape is not None else None,
                patient_id=f"p{i // 2}",
                split=splits[i],
                source_file=f"img{i}.png",
            )
    return path


def test_roundtrip_schema_and_reader(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "t.h5")
    with h5py.File(path) as f:
        assert f["images"].shape == (12, 1, 8, 8)
        assert f["images"].chunks == (1, 1, 8, 8)
        assert f["images"].compression == "lzf"
        assert f["masks"].shape == (12, 8, 8)
        assert f["labels"].dtype == np.int64
        assert set(f["split"][()].tolist()) == {b"train", b"val", b"test"}
    meta = read_meta(path)
    assert meta["spatial_dims"] == 2 and meta["class_names"] == ["a", "b", "c"]
    assert meta["provenance"]["versions"]["h5py"] == h5py.__version__
    assert meta["content_hash"] == compute_content_hash(path)
    ds = H5Dataset(path)
    item = ds[3]
    assert set(item) == {"image", "label", "mask", "index", "patient_id"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 8, 8)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].item() == 0 and item["patient_id"] == "p1" and item["index"] == 3
    with h5py.File(path) as f:
        np.testing.assert_array_equal(item["image"].numpy() * 255, f["images"][3].astype(float))
        np.testing.assert_array_equal(item["mask"].numpy(), f["masks"][3])


def test_split_selection_indices_and_in_memory(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "t.h5")
    train = H5Dataset(path, split="train")
    assert len(train) == 6 and set(train.split) == {"train"}
    both = H5Dataset(path, split=["val", "test"], in_memory=True)
    assert len(both) == 6 and both.in_memory
    lazy = H5Dataset(path, split=["val", "test"])
    for a, b in zip(both, lazy, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    sub = H5Dataset(path, split="train", indices=[4, 0], in_memory=True)
    assert [sub[i]["index"] for i in range(2)] == [4, 0]
    with pytest.raises(DataError, match="outside the selected split"):
        H5Dataset(path, split="train", indices=[2])
    with pytest.raises(DataError, match="unknown split"):
        H5Dataset(path, split="training")


def test_dataloader_workers_match_single_process(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "t.h5", n=16)
    ds = H5Dataset(path)
    ds[0]  # open a handle in the parent: workers must not inherit it
    single = list(DataLoader(ds, batch_size=4, num_workers=0))
    multi = list(DataLoader(ds, batch_size=4, num_workers=2))
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


def test_float_3d_and_multilabel(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "v.h5", dims=3, dtype=np.float32, label_shape=(4,))
    ds = H5Dataset(path, in_memory=True)
    item = ds[0]
    assert item["image"].shape == (1, 4, 8, 8) and item["mask"].shape == (4, 8, 8)
    assert item["label"].dtype == torch.float32 and item["label"].shape == (4,)
    assert read_meta(path)["spatial_dims"] == 3


def test_content_hash_is_about_data_not_bytes(tmp_path: Path) -> None:
    a = write_tiny(tmp_path / "a.h5")
    b = write_tiny(tmp_path / "b.h5")
    c = write_tiny(tmp_path / "c.h5", seed=1)
    assert read_meta(a)["content_hash"] == read_meta(b)["content_hash"]
    assert read_meta(a)["content_hash"] != read_meta(c)["content_hash"]
    with h5py.File(b, "r+") as f:  # tamper with one pixel
        f["images"][0, 0, 0, 0] = (int(f["images"][0, 0, 0, 0]) + 1) % 256
    assert compute_content_hash(b) != read_meta(b)["content_hash"]


def test_existing_output_refused_and_kept(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "t.h5")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="t.h5"):
        write_tiny(path)
    assert path.read_bytes() == before
    write_tiny(path, overwrite=True, seed=3)
    assert read_meta(path)["content_hash"] != ""


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    meta = DatasetMeta(name="x", modality="y")
    with pytest.raises(DataError, match="mask shape"):
        with H5Writer(
            path, n=2, image_shape=(1, 4, 4), meta=meta, has_masks=True, label_shape=None
        ) as w:
            w.write(0, np.zeros((1, 4, 4), np.uint8), mask=np.zeros((4, 4)), split="train")
            w.write(
                1,
                np.zeros((1, 4, 4), np.uint8),
                mask=np.zeros((5, 4)),
                split="train",
                source_file="bad.png",
            )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="never written"):
        with H5Writer(path, n=2, image_shape=(1, 4, 4), meta=meta, label_shape=None) as w:
            w.write(0, np.zeros((1, 4, 4), np.uint8), split="train")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        with H5Writer(
            path, n=1, image_shape=(1, 4, 4), meta=meta, image_dtype=np.float32, label_shape=None
        ) as w:
            w.write(0, np.full((1, 4, 4), 2.0), split="train")
    assert list(tmp_path.iterdir()) == []


def test_kill_during_write_leaves_no_final_file(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-way leaves only a hidden partial file."""
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import numpy as np, sys, time
        from benchmark.data import DatasetMeta, H5Writer
        w = H5Writer({str(path)!r}, n=1000, image_shape=(1, 32, 32),
                     meta=DatasetMeta(name="k", modality="m"), label_shape=None)
        for i in range(1000):
            w.write(i, np.zeros((1, 32, 32), np.uint8), split="train")
            if i == 10:
                print("ready", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not path.exists()
    assert all(p.name.startswith(".killed.h5.partial-") for p in tmp_path.iterdir())


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        H5Dataset(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5"):
        read_meta(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="missing 'images'"):
        H5Dataset(other)


def test_writer_setup_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        H5Writer(
            tmp_path / "t.h5",
            n=2,
            image_shape=(1, 4, 4),
            meta=DatasetMeta(name="x", modality="y"),
            compression="no-such-filter",
        )
    assert list(tmp_path.iterdir()) == []
