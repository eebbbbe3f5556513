"""Curation before SSL (Less is More's dHash pruning): the rule, the file, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmark.core.errors import DataError, OutputExistsError, SSLBenchError
from benchmark.data.converters import CONVERTERS
from benchmark.data.curation import CURATORS, curate_file
from benchmark.data.dataset import H5Dataset
from benchmark.data.duplicates import hamming
from benchmark.data.h5format import (
    DatasetMeta,
    H5Writer,
    compute_content_hash,
    open_h5,
    read_meta,
    read_split,
    read_strings,
)


def coded(bits: np.ndarray) -> np.ndarray:
    """A 9 x 8 grey image whose dHash is ``bits`` (8 x 8): each pixel is brighter than its
    left neighbour exactly where the bit is set."""
    steps = np.where(bits, 12, -12)
    return (100 + np.concatenate([np.zeros((8, 1)), np.cumsum(steps, 1)], 1)).astype(np.uint8)


def flipped(bits: np.ndarray, k: int) -> np.ndarray:
    out = bits.copy().ravel()
    out[:k] = ~out[:k]
    return out.reshape(8, 8)


def test_hash6_keeps_an_image_only_when_far_from_every_exemplar_before_it() -> None:
    """Exemplar chain: B is 4 bits from A (dropped), C is 4 from B but 8 from A (kept:
    B was never an exemplar), D is 6 from A (dropped: the threshold is inclusive)."""
    a = np.random.default_rng(0).random((8, 8)) > 0.5
    b, c, d = flipped(a, 4), flipped(a, 8), flipped(a, 6)
    images = np.stack([coded(x) for x in (a, b, c, d)])
    curator = CURATORS.create("dhash", threshold=6, scope="dataset")
    hashes = curator.hashes(images)
    assert hamming(hashes[0], hashes[1:]).tolist() == [4, 8, 6]
    assert hamming(hashes[1], hashes[2]) == 4
    assert curator.select(images, np.zeros(4, str)).tolist() == [True, False, True, False]
    # per volume: the same images in two volumes are pruned separately
    units = np.array(["v0", "v0", "v1", "v1"])
    assert CURATORS.create("dhash", threshold=6).select(images, units).tolist() == [
        True, False, True, False,
    ]  # fmt: skip
    twice = np.concatenate([images[:2], images[:2]])
    assert CURATORS.create("dhash").select(twice, units).tolist() == [True, False, True, False]
    assert CURATORS.create("dhash", scope="dataset").select(twice, units).sum() == 1
    assert CURATORS.create("dhash", threshold=0).select(images, np.zeros(4, str)).all()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": 65}, "threshold must be an int in"),
        ({"threshold": 2.5}, "threshold must be an int in"),
        ({"scope": "patient"}, "scope must be one of"),
        ({"hamming": 6}, "unknown option 'hamming'"),
    ],
)
def test_bad_options_are_named(options: dict, match: str) -> None:
    with pytest.raises(SSLBenchError, match=match):
        CURATORS.create("dhash", **options)


def tiny(path: Path) -> Path:
    """12 images: train holds 4 copies of one pattern and 4 of another; val and test hold
    copies too, which curation must keep."""
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.5
    with H5Writer(path, n=12, image_shape=(1, 8, 9), meta=DatasetMeta("tiny", "test"),
                  label_shape=()) as w:  # fmt: skip
        for i in range(12):
            split = "train" if i < 8 else ("val" if i < 10 else "test")
            w.write(i, coded(a if i % 2 else b)[None], label=i % 2, patient_id=f"p{i}",
                    split=split)  # fmt: skip
    return path


def test_curated_file_prunes_train_only_and_records_it(tmp_path: Path) -> None:
    src = tiny(tmp_path / "in.h5")
    record = curate_file(src, tmp_path / "out.h5", CURATORS.create("dhash", scope="dataset"))
    assert (record["train_in"], record["train_kept"], record["train_dropped"]) == (8, 2, 6)
    with open_h5(tmp_path / "out.h5") as f:
        split = read_split(f).tolist()
        sources = read_strings(f, "patient_ids").tolist()
    assert split == ["train", "train", "val", "val", "test", "test"]
    assert sources == ["p0", "p1", "p8", "p9", "p10", "p11"]  # the first of each pattern
    meta = read_meta(tmp_path / "out.h5")
    cur = meta["extra"]["curation"]
    assert cur["curator"] == "dhash"
    assert cur["options"] == {"threshold": 6, "scope": "dataset", "min_corr": 0.85}
    assert cur["input"]["content_hash"] == read_meta(src)["content_hash"]
    assert compute_content_hash(tmp_path / "out.h5") == meta["content_hash"]
    # an existing output is never touched; a bad input names the file
    before = (tmp_path / "out.h5").read_bytes()
    with pytest.raises(OutputExistsError, match="output exists"):
        curate_file(src, tmp_path / "out.h5", CURATORS.create("dhash"))
    assert (tmp_path / "out.h5").read_bytes() == before
    with pytest.raises(DataError, match="missing.h5"):
        curate_file(tmp_path / "missing.h5", tmp_path / "x.h5", CURATORS.create("dhash"))
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_busi_and_hippocampus_slices(shared_data: Path, tmp_path: Path) -> None:
    """Real data: BUSI images (2D, near-duplicate groups carried over) and the slices of
    the MSD hippocampus volumes (the output is the 2D file of the kept slices, val / test
    slices all kept), both through the CLI as a subprocess."""
    busi = CONVERTERS.create("busi", size=64).convert(shared_data / "busi_256", tmp_path / "b.h5")
    cli = [sys.executable, "-m", "benchmark.cli", "data", "curate"]
    out = tmp_path / "busi-hash6.h5"
    proc = subprocess.run([*cli, str(busi), "-o", str(out), "--scope", "dataset"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train images" in proc.stdout and "val / test unchanged" in proc.stdout
    src, cur = H5Dataset(busi), H5Dataset(out)
    cur_meta = read_meta(out)["extra"]["curation"]
    assert 0 < cur_meta["train_dropped"] < cur_meta["train_in"] == int((src.split == "train").sum())
    for part in ("val", "test"):
        assert int((cur.split == part).sum()) == int((src.split == part).sum())
    with open_h5(out) as f:
        assert "duplicate_groups" in f and len(f["duplicate_groups"]) == len(cur)
    hippo = CONVERTERS.create("msd").convert(shared_data / "msd_hippocampus", tmp_path / "h.h5")
    sliced = tmp_path / "hippo-hash6.h5"
    proc = subprocess.run([*cli, str(hippo), "-o", str(sliced), "--threshold", "6"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    vol, sl = H5Dataset(hippo), H5Dataset(sliced)
    depth = vol.image_shape[1]
    assert sl.image_shape == (1, *vol.image_shape[2:])
    rec = read_meta(sliced)["extra"]["curation"]
    assert rec["unit"] == "slice" and rec["train_in"] == depth * int((vol.split == "train").sum())
    assert 0 < rec["train_kept"] < rec["train_in"]
    assert int((sl.split == "val").sum()) == depth * int((vol.split == "val").sum())
    # a second run refuses to overwrite, exit status 2, the output intact
    proc = subprocess.run([*cli, str(hippo), "-o", str(sliced)], capture_output=True, text=True)
    assert proc.returncode == 2 and "output exists" in proc.stderr


def test_near_real_images_are_dropped_first(tmp_path: Path) -> None:
    """The memorisation filter: images of a (synthetic) file within the threshold of a real
    train image are dropped before pruning; the count and the real file are recorded."""
    rng = np.random.default_rng(1)
    a, b = rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.5
    syn = tmp_path / "syn.h5"
    with H5Writer(syn, n=4, image_shape=(1, 8, 9), meta=DatasetMeta("syn", "test"),
                  label_shape=None) as w:  # fmt: skip
        for i, bits in enumerate((a, flipped(a, 3), b, flipped(b, 20))):
            w.write(i, coded(bits)[None], patient_id=f"s{i}", split="train")
    only_a = tmp_path / "real-a.h5"
    with H5Writer(only_a, n=2, image_shape=(1, 8, 9), meta=DatasetMeta("r", "test"),
                  label_shape=None) as w:  # fmt: skip
        w.write(0, coded(a)[None], patient_id="r0", split="train")
        w.write(1, coded(b)[None], patient_id="r1", split="test")  # not train: not compared
    rec = curate_file(syn, tmp_path / "out.h5", CURATORS.create("dhash", threshold=6,
                      scope="dataset"), drop_near=only_a)  # fmt: skip
    assert rec["dropped_near_real"] == 2 and rec["near_real"]["path"] == "real-a.h5"
    assert rec["train_kept"] == 2  # b and its 20-bit variant, far apart
    with open_h5(tmp_path / "out.h5") as f:
        assert read_strings(f, "patient_ids").tolist() == ["s2", "s3"]


def test_regroup_renumbers_and_drops_lonely_members() -> None:
    from benchmark.data.curation.base import regroup

    kept, counts = regroup(np.array([3, -1, 3, 7, 5, 5, 5]))
    assert kept.tolist() == [0, -1, 0, -1, 1, 1, 1]
    assert counts == {"groups": 2, "images_in_groups": 5, "largest_group": 3}
    assert regroup(np.array([-1, 2]))[1] == {"groups": 0, "images_in_groups": 0, "largest_group": 0}


def volumes_file(path: Path, volumes: list[np.ndarray], splits: list[str]) -> Path:
    """A 3D file of grey volumes ``(D, 8, 9)`` (no labels), one patient each."""
    with H5Writer(path, n=len(volumes), image_shape=(1, *volumes[0].shape),
                  meta=DatasetMeta("vols", "test"), label_shape=None) as w:  # fmt: skip
        for i, (v, split) in enumerate(zip(volumes, splits, strict=True)):
            w.write(i, v[None], patient_id=f"v{i}", split=split)
    return path


def test_whole_volumes_are_pruned_by_their_mean_slice_distance(tmp_path: Path) -> None:
    """``unit="volume"``: v1 is 4 bits per slice from v0 (dropped), v2 8 bits (kept), v3
    0 bits on half its slices and 12 on the other half, a mean of 6 (dropped: inclusive);
    the output stays 3D, and the val volume (a copy of v0) is kept."""
    rng = np.random.default_rng(3)
    base = [rng.random((8, 8)) > 0.5 for _ in range(4)]
    vol = lambda bits: np.stack([coded(b) for b in bits])  # noqa: E731
    v0 = vol(base)
    v1 = vol([flipped(b, 4) for b in base])
    v2 = vol([flipped(b, 8) for b in base])
    v3 = vol([b if k % 2 else flipped(b, 12) for k, b in enumerate(base)])
    src = volumes_file(tmp_path / "v.h5", [v0, v1, v2, v3, v0], ["train"] * 4 + ["val"])
    curator = CURATORS.create("dhash", threshold=6, scope="dataset")
    rec = curate_file(src, tmp_path / "out.h5", curator, unit="volume")
    assert (rec["unit"], rec["train_in"], rec["train_kept"]) == ("volume", 4, 2)
    out = H5Dataset(tmp_path / "out.h5")
    assert out.image_shape == (1, 4, 8, 9)
    assert out.patient_ids.tolist() == ["v0", "v2", "v4"]
    # per-slice scope has no meaning for whole volumes: named before any work
    with pytest.raises(SSLBenchError, match="set scope: dataset"):
        curate_file(src, tmp_path / "x.h5", CURATORS.create("dhash"), unit="volume")
    with pytest.raises(SSLBenchError, match="unit must be one of"):
        curate_file(src, tmp_path / "x.h5", curator, unit="patient")
    assert not (tmp_path / "x.h5").exists()


def test_a_planted_copy_of_a_real_train_volume_is_dropped(tmp_path: Path) -> None:
    """The 3D memorisation filter (``prune=False``: nothing else is dropped): a synthetic
    set holding an exact copy of a real train volume loses exactly that volume; a filter
    that would drop every sample is refused and writes nothing."""
    rng = np.random.default_rng(4)
    vol = lambda: np.stack([coded(rng.random((8, 8)) > 0.5) for _ in range(4)])  # noqa: E731
    real_train, real_test = vol(), vol()
    real = volumes_file(tmp_path / "real.h5", [real_train, real_test], ["train", "test"])
    syn = volumes_file(tmp_path / "syn.h5", [vol(), real_train, vol(), real_test], ["train"] * 4)
    curator = CURATORS.create("dhash", scope="dataset")
    rec = curate_file(syn, tmp_path / "f.h5", curator, drop_near=real, unit="volume", prune=False)
    assert (rec["dropped_near_real"], rec["train_kept"], rec["pruned"]) == (1, 3, False)
    assert H5Dataset(tmp_path / "f.h5").patient_ids.tolist() == ["v0", "v2", "v3"]
    copies = volumes_file(tmp_path / "copies.h5", [real_train, real_train], ["train"] * 2)
    with pytest.raises(DataError, match="would drop every one of its 2 train volumes"):
        curate_file(copies, tmp_path / "g.h5", curator, drop_near=real, unit="volume")
    assert not (tmp_path / "g.h5").exists()


def test_near_real_filter_compares_2d_images_of_other_sizes(tmp_path: Path) -> None:
    """2D images are hashed at a fixed size, so a synthetic set and a real file stored at
    other sizes are compared as they are (a 2x upscaled copy is still found)."""
    rng = np.random.default_rng(5)
    a, b = rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.5
    syn = tmp_path / "syn.h5"
    with H5Writer(syn, n=2, image_shape=(1, 8, 9), meta=DatasetMeta("syn", "test"),
                  label_shape=None) as w:  # fmt: skip
        w.write(0, coded(a)[None], patient_id="s0", split="train")
        w.write(1, coded(b)[None], patient_id="s1", split="train")
    real = tmp_path / "real.h5"
    with H5Writer(real, n=1, image_shape=(1, 16, 18), meta=DatasetMeta("r", "test"),
                  label_shape=None) as w:  # fmt: skip
        w.write(0, np.kron(coded(a), np.ones((2, 2), np.uint8))[None], patient_id="r0",
                split="train")  # fmt: skip
    rec = curate_file(syn, tmp_path / "out.h5", CURATORS.create("dhash", scope="dataset"),
                      drop_near=real, prune=False)  # fmt: skip
    assert (rec["dropped_near_real"], rec["train_kept"]) == (1, 1)
