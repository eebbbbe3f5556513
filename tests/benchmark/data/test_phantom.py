"""Tests of the procedural phantom generator (benchmark.data.phantom)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmark.core.errors import OutputExistsError, SplitError
from benchmark.data import H5Dataset, compute_content_hash, open_h5, read_meta
from benchmark.data.h5format import read_split, read_strings
from benchmark.data.phantom import (
    CLASS_NAMES,
    MASK_CLASS_NAMES,
    PhantomError,
    generate_phantom,
    patient_classes,
    phantom_sample,
)


def load(path):
    with open_h5(path) as f:
        return {
            "images": f["images"][()],
            "masks": f["masks"][()],
            "labels": f["labels"][()],
            "pids": read_strings(f, "patient_ids"),
            "split": read_split(f),
        }


@pytest.fixture(scope="module")
def p2d(tmp_path_factory):
    """The default phantom: 240 images of 64 px, 2 per patient."""
    return generate_phantom(tmp_path_factory.mktemp("phantom") / "phantom.h5")


@pytest.fixture(scope="module")
def d2d(p2d):
    return load(p2d)


@pytest.fixture(scope="module")
def p3d(tmp_path_factory):
    return generate_phantom(
        tmp_path_factory.mktemp("phantom3d") / "phantom3d.h5", n=80, size=24, depth=16, dims=3
    )


def test_2d_shapes_dtypes_and_meta(p2d, d2d):
    assert d2d["images"].shape == (240, 1, 64, 64)
    assert d2d["images"].dtype == np.uint8
    assert d2d["masks"].shape == (240, 64, 64)
    assert d2d["masks"].dtype == np.uint8
    assert set(np.unique(d2d["masks"]).tolist()) == {0, 1}
    assert d2d["labels"].dtype == np.int64
    # a real dynamic range, not a constant image
    assert d2d["images"].min() < 20 and d2d["images"].max() > 235
    meta = read_meta(p2d)
    assert meta["name"] == "phantom"
    assert meta["modality"] == "synthetic-ultrasound-phantom"
    assert meta["source"] == "sslbench procedural phantom"
    assert meta["licence"] == "Apache-2.0 (generated)"
    assert meta["citation"] == ""
    assert meta["converter"] == "phantom"
    assert meta["spacing"] == [1.0, 1.0]
    assert meta["class_names"] == list(CLASS_NAMES) == ["none", "smooth", "irregular"]
    assert meta["mask_class_names"] == list(MASK_CLASS_NAMES) == ["background", "lesion"]
    assert meta["spatial_dims"] == 2
    extra = meta["extra"]
    assert (extra["n"], extra["size"], extra["dims"], extra["seed"]) == (240, 64, 2, 0)
    assert extra["images_per_patient"] == 2
    assert extra["class_balance"] == [0.25, 0.4, 0.35]
    assert meta["content_hash"] == compute_content_hash(p2d)


def test_class_counts(d2d):
    # 120 patients = 6 blocks of 20 with 5 / 8 / 7 patients per class, 2 images each
    assert np.bincount(d2d["labels"], minlength=3).tolist() == [60, 96, 84]


def test_masks_empty_iff_no_lesion(d2d):
    area = d2d["masks"].reshape(240, -1).sum(1)
    labels = d2d["labels"]
    assert (area[labels == 0] == 0).all()
    assert (area[labels > 0] > 0).all()
    # lesions are a minority of the image but clearly more than a few pixels
    assert 15 < np.median(area[labels > 0]) < 0.25 * 64 * 64


def test_patients_grouped_and_splits(d2d):
    pids, labels, split = d2d["pids"], d2d["labels"], d2d["split"]
    uniq, counts = np.unique(pids, return_counts=True)
    assert uniq.size == 120 and (counts == 2).all()
    for pid in uniq:
        sel = pids == pid
        assert len(set(labels[sel].tolist())) == 1, pid
        assert len(set(split[sel].tolist())) == 1, pid
    for name, frac in (("train", 0.65), ("val", 0.15), ("test", 0.2)):
        part = split == name
        assert abs(part.mean() - frac) < 0.07, name
        assert set(labels[part].tolist()) == {0, 1, 2}, name


def test_views_of_a_patient_differ_but_share_the_lesion(d2d):
    img, masks, labels = d2d["images"], d2d["masks"], d2d["labels"]
    i = int(np.flatnonzero(labels == 2)[0])
    assert i % 2 == 0
    assert not np.array_equal(img[i], img[i + 1])
    a, b = masks[i].sum(), masks[i + 1].sum()
    assert 0.6 < a / b < 1.6  # same lesion, slightly different pose and scale


def test_deterministic_and_seeded(tmp_path):
    args: dict[str, Any] = {"n": 40, "size": 32}
    first = read_meta(generate_phantom(tmp_path / "a.h5", seed=3, **args))["content_hash"]
    again = read_meta(generate_phantom(tmp_path / "b.h5", seed=3, **args))["content_hash"]
    other = read_meta(generate_phantom(tmp_path / "c.h5", seed=4, **args))["content_hash"]
    assert first == again != other
    assert not np.array_equal(load(tmp_path / "a.h5")["images"], load(tmp_path / "c.h5")["images"])
    bigger = read_meta(generate_phantom(tmp_path / "d.h5", seed=3, n=60, size=32))
    assert bigger["content_hash"] != first


def test_sample_independent_of_n(tmp_path, d2d):
    small = load(generate_phantom(tmp_path / "small.h5", n=30))
    np.testing.assert_array_equal(small["images"], d2d["images"][:30])
    np.testing.assert_array_equal(small["masks"], d2d["masks"][:30])
    np.testing.assert_array_equal(small["labels"], d2d["labels"][:30])
    np.testing.assert_array_equal(small["pids"], d2d["pids"][:30])


def test_existing_output_refused_unless_overwrite(tmp_path):
    out = tmp_path / "p.h5"
    generate_phantom(out, n=30, size=32)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        generate_phantom(out, n=30, size=32, seed=5)
    assert out.read_bytes() == before
    generate_phantom(out, n=30, size=32, seed=5, overwrite=True)
    assert read_meta(out)["extra"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]  # no partial files left


def test_too_few_patients_leaves_no_file(tmp_path):
    with pytest.raises(SplitError):
        generate_phantom(tmp_path / "tiny.h5", n=4, size=32)  # 2 patients
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dims": 4},
        {"size": 8},
        {"size": 32.5},
        {"n": 0},
        {"seed": -1},
        {"images_per_patient": 0},
        {"depth": 16},  # 2D has no depth
        {"dims": 3, "depth": 4},
        {"class_balance": (1.0, -1.0, 1.0)},
        {"class_balance": (1.0, 1.0)},
        {"variant": "birads", "class_balance": (1.0, 1.0, 1.0)},
        {"variant": "nope"},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    params: dict[str, Any] = {"n": 30, "size": 32, **kwargs}
    with pytest.raises(PhantomError):
        generate_phantom(tmp_path / "bad.h5", **params)
    assert issubclass(PhantomError, ValueError)
    assert not (tmp_path / "bad.h5").exists()


def test_class_balance_and_patients(tmp_path):
    assert np.bincount(patient_classes(40, 0, (1, 1, 1))).tolist() == [14, 14, 12]
    assert np.bincount(patient_classes(20, 3, (0, 1, 1)), minlength=3).tolist() == [0, 10, 10]
    # balance is exact for whole blocks of 20 patients: 40 patients = 14 / 14 / 12
    d = load(
        generate_phantom(
            tmp_path / "p.h5", n=120, size=32, images_per_patient=3, class_balance=(1, 1, 1)
        )
    )
    uniq, counts = np.unique(d["pids"], return_counts=True)
    assert uniq.size == 40 and (counts == 3).all()
    assert np.bincount(d["labels"]).tolist() == [42, 42, 36]


def test_3d_volumes(p3d):
    d = load(p3d)
    assert d["images"].shape == (80, 1, 16, 24, 24)
    assert d["images"].dtype == np.uint8
    assert d["masks"].shape == (80, 16, 24, 24)
    area = d["masks"].reshape(80, -1).sum(1)
    assert (area[d["labels"] == 0] == 0).all()
    assert (area[d["labels"] > 0] > 0).all()
    meta = read_meta(p3d)
    assert meta["name"] == "phantom3d"
    assert meta["spatial_dims"] == 3
    assert meta["spacing"] == [1.0, 1.0, 1.0]
    assert meta["extra"]["depth"] == 16
    assert set(d["split"].tolist()) == {"train", "val", "test"}
    item = H5Dataset(p3d, split="test")[0]
    assert item["image"].shape == (1, 16, 24, 24) and item["mask"].shape == (16, 24, 24)


@pytest.mark.parametrize(("dims", "shape"), [(2, (1, 48, 48)), (3, (1, 20, 20, 20))])
def test_phantom_sample(dims, shape):
    for cls in (0, 1, 2):
        image, mask = phantom_sample(np.random.default_rng(cls), cls, size=shape[-1], dims=dims)
        assert image.shape == shape and image.dtype == np.uint8
        assert mask.shape == shape[1:] and mask.dtype == np.uint8
        assert bool(mask.any()) == (cls > 0)
        again = phantom_sample(np.random.default_rng(cls), cls, size=shape[-1], dims=dims)
        np.testing.assert_array_equal(image, again[0])
    with pytest.raises(PhantomError):
        phantom_sample(np.random.default_rng(0), 3)


def _compactness(masks: np.ndarray) -> np.ndarray:
    """Perimeter^2 / area of each 2D mask (perimeter = count of boundary pixel edges)."""
    m = np.pad(masks.astype(bool), ((0, 0), (1, 1), (1, 1)))
    perimeter = (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))
    return perimeter**2 / np.maximum(m.sum((1, 2)), 1)


def test_classes_separable_but_not_trivially(d2d):
    from sklearn.linear_model import LogisticRegression

    labels = d2d["labels"]
    comp = _compactness(d2d["masks"])
    smooth, irregular = comp[labels == 1], comp[labels == 2]
    assert np.median(irregular) > 1.3 * np.median(smooth)
    assert irregular.mean() > smooth.mean()
    # shape overlaps: some irregular lesions are about as compact as smooth ones
    assert (irregular < np.percentile(smooth, 95)).any()
    # brightness alone does not give the class away
    x = d2d["images"].reshape(labels.size, -1).mean(1, keepdims=True)
    x = (x - x.mean()) / x.std()
    acc = LogisticRegression().fit(x, labels).score(x, labels)
    assert acc < 0.9
    # ... nor does the presence of a dark region (structures overlap in brightness)
    lesion_px = d2d["images"][:, 0][d2d["masks"] > 0]
    assert np.percentile(lesion_px, 90) > np.percentile(d2d["images"][labels == 0], 25)


@pytest.mark.parametrize("in_memory", [False, True])
def test_h5dataset_reads_phantom(p2d, d2d, in_memory):
    ds = H5Dataset(p2d, split="train", in_memory=in_memory)
    train = np.flatnonzero(d2d["split"] == "train")
    assert len(ds) == train.size
    for pos in (0, len(ds) - 1):
        item = ds[pos]
        i = int(train[pos])
        assert item["index"] == i
        expected = d2d["images"][i].astype(np.float32) / 255.0
        np.testing.assert_allclose(item["image"].numpy(), expected, rtol=1e-6)
        assert item["image"].dtype == torch.float32
        assert item["label"].item() == d2d["labels"][i]
        np.testing.assert_array_equal(item["mask"].numpy(), d2d["masks"][i])
        assert item["patient_id"] == d2d["pids"][i]


def test_dataloader_workers_match_single_process(p2d):
    ds = H5Dataset(p2d, split="train")  # lazy: each worker opens its own handle
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=32, shuffle=False, num_workers=workers)
        batches[workers] = list(loader)
    assert ds._h5 is not None  # open in the parent (workers=0): forked workers must reopen
    assert len(batches[0]) == len(batches[2]) == -(-len(ds) // 32)
    for a, b in zip(batches[0], batches[2], strict=True):
        for key in ("image", "mask", "label", "index"):
            assert a[key].dtype == b[key].dtype
            assert torch.equal(a[key], b[key]), key
        assert a["patient_id"] == b["patient_id"]


@pytest.fixture(scope="module")
def birads(tmp_path_factory):
    """The demo's variant: 400 images of 32 px, benign / malignant."""
    path = generate_phantom(
        tmp_path_factory.mktemp("birads") / "birads.h5", n=400, size=32, variant="birads"
    )
    return path, load(path)


def _orientation(masks: np.ndarray) -> np.ndarray:
    """Depth extent / lateral extent of each 2D mask (rows are depth)."""
    rows, cols = masks.any(2).sum(1), masks.any(1).sum(1)
    return rows / np.maximum(cols, 1)


def test_birads_variant_meta_and_every_image_has_a_lesion(birads):
    path, d = birads
    meta = read_meta(path)
    assert meta["class_names"] == ["benign", "malignant"]
    assert meta["extra"]["variant"] == "birads" and meta["extra"]["class_balance"] == [0.5, 0.5]
    assert np.bincount(d["labels"]).tolist() == [200, 200]
    assert (d["masks"].reshape(400, -1).sum(1) > 0).all()
    # the default variant's files carry no variant key (byte-identical to version 1)
    assert (
        "variant" not in read_meta(generate_phantom(path.with_name("s.h5"), n=30, size=32))["extra"]
    )


def test_birads_classes_are_shape_not_brightness(birads):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    _, d = birads
    labels, masks = d["labels"], d["masks"]
    # the class is in the lesion's orientation and margin ...
    tall, comp = _orientation(masks), _compactness(masks)
    assert roc_auc_score(labels, tall) > 0.95
    assert np.median(comp[labels == 1]) > 1.15 * np.median(comp[labels == 0])
    # ... and not in the lesion's size (areas overlap) ...
    area = masks.reshape(400, -1).sum(1)
    assert 0.3 < roc_auc_score(labels, area) < 0.75
    # ... nor in trivial image statistics: mean, darkest pixels, spread
    x = d["images"].reshape(400, -1).astype(np.float64)
    stats = np.stack([x.mean(1), np.percentile(x, 5, axis=1), x.std(1)], 1)
    stats = (stats - stats.mean(0)) / stats.std(0)
    assert LogisticRegression().fit(stats, labels).score(stats, labels) < 0.7


def test_birads_sample_and_supersampled_masks():
    for cls in (0, 1):
        image, mask = phantom_sample(np.random.default_rng(cls), cls, size=32, variant="birads")
        assert image.shape == (1, 32, 32) and mask.any()
        again = phantom_sample(np.random.default_rng(cls), cls, size=32, variant="birads")
        np.testing.assert_array_equal(image, again[0])
    with pytest.raises(PhantomError, match="variant 'birads'"):
        phantom_sample(np.random.default_rng(0), 2, variant="birads")
