"""Near-duplicate groups: signatures, rules, policies, duplicate-aware splits and subsets.

Real BUSI (``shared_data``) converted at 32 px with real h5py files; small planted
folders for exact grouping; bad options.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from benchmark.core.errors import DataError
from benchmark.data import H5Dataset, compute_content_hash, read_meta
from benchmark.data import duplicates as dup
from benchmark.data.converters import CONVERTERS
from benchmark.data.h5format import (
    DatasetMeta,
    H5Writer,
    read_duplicates,
    read_split,
    read_split_units,
    read_strings,
)
from benchmark.data.info import format_dataset_summary, summarize_dataset
from benchmark.data.splits import make_split, split_units, subset

IDENTICAL = ("benign/benign (433).png", "malignant/malignant (145).png")
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)
SEEDS = (0, 1, 2)
#: Measured on busi_256 with the default rule (dHash Hamming <= 6 and correlation >= 0.85).
BUSI_PAIRS, BUSI_GROUPS, BUSI_IN_GROUPS, BUSI_CONFLICTING = 199, 138, 306, 8


def load(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        groups, info = read_duplicates(f)
        return {
            "labels": f["labels"][()] if "labels" in f else None,
            "split": read_split(f),
            "pids": read_strings(f, "patient_ids"),
            "sources": read_strings(f, "source_files"),
            "units": read_split_units(f),
            "groups": groups,
            "info": info,
            "dhash": f["dhash"][()] if "dhash" in f else None,
        }


def members(groups: np.ndarray) -> list[np.ndarray]:
    return [m for m in dup.group_members(groups) if m.size > 1]


def closed(idx: np.ndarray, units: np.ndarray, pool: np.ndarray) -> bool:
    """``idx`` holds whole units of the ``pool`` only."""
    inside = pool[np.isin(units[pool], units[idx])]
    return set(inside.tolist()) == set(idx.tolist())


@pytest.fixture(scope="module")
def busi(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """BUSI at 32 px under each policy."""
    root = tmp_path_factory.mktemp("busi_dup")
    src = shared_data / "busi_256"
    return {
        policy: CONVERTERS.create("busi", size=32, duplicates=policy).convert(
            src, root / f"{policy}.h5"
        )
        for policy in ("group", "keep", "drop")
    }


# -- real BUSI -----------------------------------------------------------------------
def test_busi_groups_recorded(busi: dict[str, Path]) -> None:
    meta, a = read_meta(busi["group"]), load(busi["group"])
    assert meta["n"] == 780 and meta["converter_version"] == "2"
    info = a["info"]
    assert info["policy"] == "group" and info["rule"] == "dhash+corr"
    assert (info["max_hamming"], info["min_corr"]) == (6, 0.85)
    assert (info["pairs"], info["groups"], info["images_in_groups"]) == (
        BUSI_PAIRS,
        BUSI_GROUPS,
        BUSI_IN_GROUPS,
    )
    assert len(info["conflicting_groups"]) == BUSI_CONFLICTING
    assert list(IDENTICAL) in info["conflicting_groups"]  # exactly these two, one group
    groups = a["groups"]
    assert groups.shape == (780,) and int((groups >= 0).sum()) == BUSI_IN_GROUPS
    assert len(members(groups)) == BUSI_GROUPS
    i, j = (int(np.flatnonzero(a["sources"] == name)[0]) for name in IDENTICAL)
    assert groups[i] == groups[j] >= 0 and int((groups == groups[i]).sum()) == 2
    assert a["labels"][i] != a["labels"][j]  # benign vs malignant: conflicting
    assert a["dhash"].dtype == np.uint64 and a["dhash"][i] == a["dhash"][j]
    assert compute_content_hash(busi["group"]) == meta["content_hash"]


def test_busi_no_group_across_splits(busi: dict[str, Path]) -> None:
    a = load(busi["group"])
    for m in members(a["groups"]):
        assert len(set(a["split"][m].tolist())) == 1, a["sources"][m]
    for unit in np.unique(a["units"]):  # a unit = a group with its members' patients
        assert len(set(a["split"][a["units"] == unit].tolist())) == 1
    frac = {s: float(np.mean(a["split"] == s)) for s in ("val", "test")}
    assert abs(frac["val"] - 0.15) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    for s in ("train", "val", "test"):
        assert set(a["labels"][a["split"] == s].tolist()) == {0, 1, 2}


def test_busi_subsets_never_split_a_group(busi: dict[str, Path]) -> None:
    a = load(busi["group"])
    for pool_name in ("train", "val"):
        pool = np.flatnonzero(a["split"] == pool_name)
        for seed in SEEDS:
            previous: set[int] = set()
            for fraction in FRACTIONS:
                f = max(fraction, 3 / pool.size)
                idx = pool[subset(a["labels"][pool], f, seed, groups=a["units"][pool])]
                assert closed(idx, a["units"], pool)
                for m in members(a["groups"]):
                    inside = np.isin(m, idx)
                    assert inside.all() or not inside.any(), (fraction, seed, a["sources"][m])
                assert previous <= set(idx.tolist())  # still nested
                previous = set(idx.tolist())


def test_busi_task_cells_never_split_a_group(busi: dict[str, Path]) -> None:
    """The sweep's own subsets (``TaskData.cell``) keep groups whole."""
    from tasks.spec import load_spec, spec_from_dict
    from tasks.taskdata import TaskData

    raw = load_spec("busi-cls").to_dict()
    raw.pop("source", None)
    raw.update(dataset=str(busi["group"]), image_size=32)
    task = TaskData.load(spec_from_dict(raw))
    a = load(busi["group"])
    assert task.units is not None and np.array_equal(task.units, a["units"])
    for seed in SEEDS:
        for fraction in (0.05, 0.25):
            cell = task.cell(fraction, seed)
            for idx in (cell.train, cell.val):
                for m in members(a["groups"]):
                    inside = np.isin(m, idx)
                    assert inside.all() or not inside.any()


def test_busi_drop(busi: dict[str, Path]) -> None:
    grouped, dropped = load(busi["group"]), load(busi["drop"])
    info = dropped["info"]
    n_conflicting = sum(len(g) for g in info["conflicting_groups"])
    expected = BUSI_IN_GROUPS - (BUSI_GROUPS - BUSI_CONFLICTING)  # one exemplar per clean group
    assert info["policy"] == "drop" and info["dropped"] == expected == 176
    assert read_meta(busi["drop"])["n"] == 780 - expected
    assert len(info["dropped_files"]) == expected
    kept = set(dropped["sources"].tolist())
    assert not kept & set(info["dropped_files"])
    assert not set(IDENTICAL) & kept and n_conflicting == 18  # conflicting groups: all gone
    conflicting = {name for g in info["conflicting_groups"] for name in g}
    for m in members(grouped["groups"]):
        names = set(grouped["sources"][m].tolist())
        assert len(names & kept) == (0 if names <= conflicting else 1)
    assert (dropped["groups"] >= 0).sum() == BUSI_GROUPS - BUSI_CONFLICTING  # exemplars
    assert len(members(dropped["groups"])) == 0
    assert np.array_equal(dropped["units"], dropped["pids"])  # nothing left to group
    counts = read_meta(busi["drop"])["extra"]["class_counts"]
    assert sum(counts.values()) == 780 - expected
    assert compute_content_hash(busi["drop"]) == read_meta(busi["drop"])["content_hash"]


def test_busi_keep_splits_as_before(busi: dict[str, Path]) -> None:
    kept, grouped = load(busi["keep"]), load(busi["group"])
    before = make_split(kept["labels"], kept["pids"], 0, 0.15, 0.2)  # the version-1 split
    assert np.array_equal(kept["split"], before)
    assert kept["info"]["policy"] == "keep"
    assert np.array_equal(kept["groups"], grouped["groups"])  # same groups recorded
    assert np.array_equal(kept["units"], kept["pids"])  # ... but not used
    crossing = [m for m in members(kept["groups"]) if len(set(kept["split"][m].tolist())) > 1]
    assert crossing  # why 'group' is the default: the old split separates copies
    assert not np.array_equal(kept["split"], grouped["split"])
    assert read_meta(busi["keep"])["content_hash"] != read_meta(busi["group"])["content_hash"]


def test_old_format_file_splits_by_patient(busi: dict[str, Path], tmp_path: Path) -> None:
    """A file without ``duplicate_groups`` (format of converter version 1) behaves as before."""
    old = tmp_path / "old.h5"
    shutil.copy(busi["group"], old)
    with h5py.File(old, "a") as f:
        del f["duplicate_groups"], f["dhash"]
        del f.attrs["duplicates"]
    a = load(old)
    assert a["groups"] is None and a["info"] is None
    assert np.array_equal(a["units"], a["pids"])
    pool = np.flatnonzero(a["split"] == "train")
    for seed in SEEDS:
        got = subset(a["labels"][pool], 0.1, seed, groups=a["units"][pool])
        assert np.array_equal(got, subset(a["labels"][pool], 0.1, seed, groups=a["pids"][pool]))
    summary = summarize_dataset(old)
    assert "duplicates" not in summary and "duplicates" not in format_dataset_summary(summary)
    assert len(H5Dataset(old, split="test")) == int(np.sum(a["split"] == "test"))
    # a file written without groups hashes as before the groups existed
    meta = DatasetMeta(name="old", modality="test")
    rng = np.random.default_rng(0)
    with H5Writer(tmp_path / "v1.h5", n=6, image_shape=(1, 4, 4), meta=meta) as w:
        for i in range(6):
            w.write(i, rng.integers(0, 255, (1, 4, 4), dtype=np.uint8), label=i % 2,
                    patient_id=f"p{i}", split=("train", "val", "test")[i % 3])  # fmt: skip
    assert compute_content_hash(tmp_path / "v1.h5") == read_meta(tmp_path / "v1.h5")["content_hash"]
    with h5py.File(tmp_path / "v1.h5") as f:
        assert "duplicate_groups" not in f and "duplicates" not in f.attrs


def test_busi_info_lists_conflicting_groups(busi: dict[str, Path]) -> None:
    summary = summarize_dataset(busi["group"])
    d = summary["duplicates"]
    assert d["groups"] == BUSI_GROUPS and d["in_file"]["groups_across_splits"] == 0
    pair = [{"file": IDENTICAL[0], "label": "benign"}, {"file": IDENTICAL[1], "label": "malignant"}]
    assert pair in d["conflicting_groups"] and len(d["groups_in_file"]) == BUSI_GROUPS
    text = format_dataset_summary(summary)
    assert f"conflicting-label groups: {BUSI_CONFLICTING}" in text
    assert "benign/benign (433).png [benign], malignant/malignant (145).png [malignant]" in text
    assert f"{BUSI_PAIRS} pairs in {BUSI_GROUPS} groups" in text
    drop_text = format_dataset_summary(summarize_dataset(busi["drop"]))
    assert "dropped   176 images" in drop_text


# -- MedMNIST and MSD ----------------------------------------------------------------
def test_breastmnist_keeps_official_split(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "medmnist" / "breastmnist.npz"
    out = CONVERTERS.create("medmnist").convert(src, tmp_path / "bm.h5")
    a = load(out)
    counts = {s: int(np.sum(a["split"] == s)) for s in ("train", "val", "test")}
    assert counts == {"train": 546, "val": 78, "test": 156}  # official, whatever the groups
    info = a["info"]
    assert info["groups"] > 100 and info["groups_across_official_splits"] > 0  # it is BUSI
    pool = np.flatnonzero(a["split"] == "train")
    for seed in SEEDS:
        idx = pool[subset(a["labels"][pool], 0.1, seed, groups=a["units"][pool])]
        assert closed(idx, a["units"], pool)
    out2 = CONVERTERS.create("medmnist", duplicates="drop").convert(src, tmp_path / "d.h5")
    d = load(out2)
    assert read_meta(out2)["n"] == 780 - d["info"]["dropped"]
    assert read_meta(out2)["extra"]["official_split_counts"] == counts
    splits = dict(zip(a["sources"].tolist(), a["split"].tolist(), strict=True))
    conflicting = {n for g in info["conflicting_groups"] for n in g}
    for m in members(a["groups"]):  # the exemplar comes from the most protected split
        names = a["sources"][m].tolist()
        if set(names) & conflicting:
            continue
        kept = [n for n in names if n in set(d["sources"].tolist())]
        best = min(("test", "val", "train").index(splits[n]) for n in names)
        assert len(kept) == 1 and ("test", "val", "train").index(splits[kept[0]]) == best


def make_msd(root: Path, n: int = 8, shape: tuple[int, int, int] = (10, 12, 8)) -> Path:
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(1, n + 1):
        img = rng.normal(100, 20, shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[2:5, 3:6, 2:4] = 1 if i % 3 else 0
        if i == n:  # a copy of case 1
            img = np.asarray(nib.load(root / "imagesTr" / "case_001.nii.gz").dataobj)
            lab = np.asarray(nib.load(root / "labelsTr" / "case_001.nii.gz").dataobj)
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    return root


def test_msd_volume_duplicates(tmp_path: Path) -> None:
    src = make_msd(tmp_path / "msd")
    out = CONVERTERS.create("msd", shape="8,12,10").convert(src, tmp_path / "m.h5")
    a = load(out)
    assert a["info"]["rule"] == "corr" and a["info"]["min_corr"] == 0.99
    assert [sorted(a["sources"][m].tolist()) for m in members(a["groups"])] == [
        ["imagesTr/case_001.nii.gz", "imagesTr/case_008.nii.gz"]
    ]
    assert a["split"][0] == a["split"][7] and a["units"][0] == a["units"][7] == "case_001"
    out2 = CONVERTERS.create("msd", shape="8,12,10", duplicates="drop").convert(
        src, tmp_path / "d.h5"
    )
    d = load(out2)
    assert read_meta(out2)["n"] == 7 and d["info"]["dropped_files"] == ["imagesTr/case_008.nii.gz"]


# -- planted duplicates in a small folder ----------------------------------------------
def planted_folder(root: Path) -> Path:
    """6 noise images per class plus planted copies; no masks."""
    rng = np.random.default_rng(0)
    pixels: dict[str, np.ndarray] = {}
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(1, 7):
            pixels[f"{cls} ({i})"] = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    exact = pixels["benign (1)"].copy()  # a byte-identical copy
    noisy = np.clip(pixels["malignant (2)"] + rng.integers(-3, 4, (30, 40)), 0, 255)
    noisy[2:4, 5:9] = 255  # a caliper mark
    pixels["benign (7)"] = exact
    pixels["malignant (7)"] = noisy.astype(np.uint8)
    pixels["benign (8)"] = pixels["normal (3)"].copy()  # same image, another class
    pixels["normal (7)"] = pixels["malignant (2)"].copy()  # joins the malignant (2) group
    for name, arr in pixels.items():
        cls = name.split(" ")[0]
        rgb = np.stack([arr] * 3, -1)
        Image.fromarray(rgb).save(root / cls / f"{name}.png")
    return root


def test_planted_duplicates_grouped_exactly(tmp_path: Path) -> None:
    src = planted_folder(tmp_path / "src")
    out = CONVERTERS.create("folder", size=16).convert(src, tmp_path / "f.h5")
    a = load(out)
    got = sorted(sorted(a["sources"][m].tolist()) for m in members(a["groups"]))
    assert got == [
        ["benign/benign (1).png", "benign/benign (7).png"],
        ["benign/benign (8).png", "normal/normal (3).png"],
        ["malignant/malignant (2).png", "malignant/malignant (7).png", "normal/normal (7).png"],
    ]
    info = a["info"]
    assert (info["groups"], info["images_in_groups"], info["largest_group"]) == (3, 7, 3)
    assert sorted(sorted(g) for g in info["conflicting_groups"]) == [got[1], got[2]]
    for m in members(a["groups"]):
        assert len(set(a["split"][m].tolist())) == 1


def test_planted_drop_keeps_one_exemplar(tmp_path: Path) -> None:
    src = planted_folder(tmp_path / "src")
    out = CONVERTERS.create("folder", size=16, duplicates="drop").convert(src, tmp_path / "d.h5")
    d = load(out)
    assert d["info"]["dropped_files"] == [
        "benign/benign (7).png",  # benign (1) is kept as the exemplar
        "benign/benign (8).png",  # the two conflicting groups are dropped entirely
        "malignant/malignant (2).png",
        "malignant/malignant (7).png",
        "normal/normal (3).png",
        "normal/normal (7).png",
    ]
    assert read_meta(out)["n"] == 22 - 6 and "benign/benign (1).png" in d["sources"].tolist()


# -- the pieces ----------------------------------------------------------------------
def test_area_resize_and_dhash() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((64, 48)) * 255
    assert np.allclose(dup.area_resize(a, (8, 6)), a.reshape(8, 8, 6, 8).mean((1, 3)))
    assert np.allclose(
        dup.area_resize(np.arange(6.0)[:, None], (4, 1)).ravel(), [1, 5, 10, 14] / np.array(3.0)
    )
    ramp = np.tile(np.arange(90.0), (8, 1))  # brighter to the right: every bit set
    h, thumb = dup.signature(ramp)
    assert h == 2**64 - 1 and thumb.shape == (1024,)
    assert dup.signature(ramp[:, ::-1])[0] == 0
    assert int(dup.hamming(h, 0)) == 64
    vol = rng.random((12, 16, 20))
    h3, t3 = dup.signature(vol, dims=3)
    assert t3.shape == (16**3,) and 0 <= h3 < 2**64


def test_union_find_and_blank_images() -> None:
    assert dup.union_find_groups(6, [(4, 5), (0, 2), (2, 3)]).tolist() == [0, -1, 0, 0, 1, 1]
    sigs = dup.Signatures()
    for level in (0, 0, 255, 128):
        sigs.add(np.full((20, 20), level, np.uint8))
    sigs.add(np.random.default_rng(0).integers(0, 256, (20, 20)))
    rule = dup.parse_options(None, None, None, None, dup.DEFAULTS_2D).rule
    assert dup.find_pairs(sigs, rule) == [(0, 1)]  # blank and equal only
    corr_rule = dup.parse_options(None, "corr", None, 0.5, dup.DEFAULTS_2D).rule
    assert dup.find_pairs(sigs, corr_rule) == [(0, 1)]


def test_split_units_join_patients() -> None:
    pids = np.array(["p3", "p1", "p1", "p2", "p4", "p5"], dtype=object)
    groups = np.array([0, -1, 0, -1, 1, 1])
    assert split_units(pids, groups).tolist() == ["p1", "p1", "p1", "p2", "p4", "p4"]
    assert split_units(pids, None).tolist() == pids.tolist()
    assert split_units(pids, np.full(6, -1)).tolist() == pids.tolist()


@pytest.mark.parametrize("kind", ["busi", "folder", "medmnist", "msd"])
@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"duplicates": "grop"}, "--duplicates: unknown policy 'grop'"),
        ({"duplicates": "merge"}, "--duplicates"),
        ({"dup_rule": "md5"}, "--dup-rule: unknown rule 'md5'"),
        ({"dup_rule": "dhash", "dup_hamming": 65}, "--dup-hamming: must be an integer from 0"),
        ({"dup_rule": "dhash", "dup_hamming": -1}, "--dup-hamming"),
        ({"dup_rule": "dhash", "dup_hamming": 2.5}, "--dup-hamming"),
        ({"dup_corr": 0.0}, "--dup-corr: must be a number in (0, 1]"),
        ({"dup_corr": 1.5}, "--dup-corr"),
        ({"dup_corr": float("nan")}, "--dup-corr"),
        ({"dup_rule": "dhash", "dup_corr": 0.9}, "--dup-corr: the rule 'dhash' uses no"),
        ({"dup_rule": "corr", "dup_hamming": 3}, "--dup-hamming: the rule 'corr' uses no"),
    ],
)
def test_bad_options_fail_before_work(
    kind: str, options: dict[str, Any], needle: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    with pytest.raises(DataError) as info:
        CONVERTERS.create(kind, **options).convert(tmp_path / "nope", out, overwrite=True)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert out.read_bytes() == b"precious" and not list(tmp_path.glob(".*partial*"))


def test_default_and_explicit_options() -> None:
    o = dup.parse_options(None, None, None, None, dup.DEFAULTS_2D)
    assert (o.policy, o.rule.rule, o.rule.max_hamming, o.rule.min_corr) == (
        "group",
        "dhash+corr",
        6,
        0.85,
    )
    o3 = dup.parse_options("keep", None, None, None, dup.DEFAULTS_3D)
    assert (o3.policy, o3.rule.rule, o3.rule.max_hamming, o3.rule.min_corr) == (
        "keep",
        "corr",
        None,
        0.99,
    )
    edge = dup.parse_options("drop", "dhash+corr", 0, 1.0, dup.DEFAULTS_2D).rule
    assert (edge.max_hamming, edge.min_corr) == (0, 1.0)
    assert dup.parse_options(None, "dhash", 64, None, dup.DEFAULTS_2D).rule.max_hamming == 64
