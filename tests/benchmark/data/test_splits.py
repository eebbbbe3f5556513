"""Tests of benchmark.data.splits: nested label-fraction subsets and train/val/test splits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.core.errors import SplitError
from benchmark.data.splits import make_split, strata_for, subset

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
BUSI = (437, 210, 133)  # benign / malignant / normal image counts of BUSI


def grouped(counts: tuple[int, ...], seed: int = 0, max_per_patient: int = 3):
    """Labels and patient ids with 1..max_per_patient same-class images per patient."""
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    groups: list[str] = []
    for c, n in enumerate(counts):
        left = n
        while left > 0:
            k = min(left, int(rng.integers(1, max_per_patient + 1)))
            labels += [c] * k
            groups += [f"p{len(set(groups)):04d}"] * k
            left -= k
    perm = rng.permutation(len(labels))  # patients' images need not be contiguous
    return np.array(labels)[perm], np.array(groups, dtype=object)[perm]


def all_subsets(
    labels, seed, groups=None, num_classes=None, fractions=FRACTIONS
) -> dict[float, np.ndarray]:
    return {f: subset(labels, f, seed, groups=groups, num_classes=num_classes) for f in fractions}


def assert_nested(subs: dict[float, np.ndarray]) -> None:
    fracs = sorted(subs)
    for small, big in itertools.pairwise(fracs):
        assert set(subs[small].tolist()) <= set(subs[big].tolist()), (small, big)


def assert_group_closed(idx: np.ndarray, groups: np.ndarray) -> None:
    inside = set(groups[idx].tolist())
    members = np.isin(groups, list(inside))
    assert set(np.flatnonzero(members).tolist()) == set(idx.tolist())


# -- subset ------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_labels() -> np.ndarray:
    return np.random.default_rng(1).permutation(np.repeat(np.arange(3), BUSI))


@pytest.fixture(scope="module")
def busi_grouped() -> tuple[np.ndarray, np.ndarray]:
    return grouped(BUSI, seed=2)


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
def test_subset_nested_ungrouped(busi_labels, seed):
    subs = all_subsets(busi_labels, seed, num_classes=3)
    assert_nested(subs)
    sizes = [subs[f].size for f in FRACTIONS]
    assert sizes == sorted(sizes)
    np.testing.assert_array_equal(subs[1.0], np.arange(busi_labels.size))
    for f, idx in subs.items():
        assert idx.size >= math.ceil(f * busi_labels.size - 1e-9)
        assert np.all(np.diff(idx) > 0)  # sorted, unique positions


@pytest.mark.parametrize("seed", [0, 1, 2, 7, 123])
def test_subset_nested_and_grouped(busi_grouped, seed):
    labels, groups = busi_grouped
    subs = all_subsets(labels, seed, groups=groups, num_classes=3)
    assert_nested(subs)
    for idx in subs.values():
        assert_group_closed(idx, groups)


def test_subset_deterministic_per_seed(busi_grouped):
    labels, groups = busi_grouped
    for f in FRACTIONS:
        a = subset(labels, f, 5, groups=groups)
        b = subset(labels.copy(), f, 5, groups=groups.copy())
        np.testing.assert_array_equal(a, b)


def test_subset_seeds_differ(busi_labels, busi_grouped):
    for labels, groups in ((busi_labels, None), busi_grouped):
        draws = {tuple(subset(labels, 0.1, s, groups=groups).tolist()) for s in range(6)}
        assert len(draws) == 6


@pytest.mark.parametrize("grouped_data", [False, True])
@pytest.mark.parametrize("seed", [0, 3])
def test_subset_stratified(busi_labels, busi_grouped, grouped_data, seed):
    labels, groups = busi_grouped if grouped_data else (busi_labels, None)
    pool = np.bincount(labels, minlength=3) / labels.size
    tol = 0.05 if grouped_data else 0.02
    for f in FRACTIONS:
        idx = subset(labels, f, seed, groups=groups)
        counts = np.bincount(labels[idx], minlength=3)
        assert (counts >= 1).all(), f  # every class, even at 1 %
        if f >= 0.1:
            np.testing.assert_allclose(counts / idx.size, pool, atol=tol, err_msg=str(f))
            # roughly the requested size (grouping may overshoot a little)
            assert idx.size <= f * labels.size * 1.1 + 3 * 3


def test_subset_single_patient_classes_untouched_by_rarest_rule():
    # each patient has one class -> exactly ceil(f * n_c) samples per class (no groups)
    labels = np.repeat(np.arange(3), [50, 30, 20])
    idx = subset(labels, 0.25, 0)
    assert np.bincount(labels[idx]).tolist() == [13, 8, 5]


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf")])
def test_subset_rejects_bad_fraction(busi_labels, fraction):
    with pytest.raises(SplitError, match="fraction"):
        subset(busi_labels, fraction, 0)


def test_split_error_is_value_error():
    with pytest.raises(ValueError):
        subset([0, 1, 2], 2.0, 0)


def test_subset_rejects_unhonourable_fraction():
    labels = np.repeat(np.arange(3), [60, 30, 10])  # 100 samples, 3 classes
    with pytest.raises(SplitError, match="fewer than"):
        subset(labels, 0.01, 0)  # ceil(1.0) = 1 sample < 3 classes
    with pytest.raises(SplitError):
        subset(labels, 0.02, 0)  # 2 < 3
    assert np.unique(labels[subset(labels, 0.03, 0)]).size == 3  # 3 is enough


def test_subset_rejects_absent_class():
    labels = np.repeat([0, 2], [20, 20])
    with pytest.raises(SplitError, match=r"\[1\]"):
        subset(labels, 0.5, 0, num_classes=3)
    with pytest.raises(SplitError):
        subset(labels, 0.5, 0, num_classes=4)
    assert subset(labels, 0.5, 0, num_classes=None).size == 20


def test_subset_rejects_empty_pool_and_bad_groups():
    with pytest.raises(SplitError):
        subset(np.array([], dtype=np.int64), 0.5, 0)
    with pytest.raises(SplitError, match="groups"):
        subset(np.array([0, 1, 0, 1]), 0.5, 0, groups=np.array(["a", "b"]))


def test_subset_mixed_class_patient_keeps_every_class():
    # class 1 occurs only in patient "a", which is filed under the rarer class 0
    labels = np.array([0, 1, 1, 1, 0] + [2] * 40)
    groups = np.array(["a", "a", "a", "a", "b"] + [f"c{i}" for i in range(40)])
    for seed in range(20):
        subs = all_subsets(labels, seed, groups, num_classes=3, fractions=FRACTIONS[1:])
        assert_nested(subs)
        for idx in subs.values():
            assert set(labels[idx].tolist()) == {0, 1, 2}
            assert_group_closed(idx, groups)


# -- strata_for ----------------------------------------------------------------


def test_strata_for_multilabel_and_subset():
    rng = np.random.default_rng(0)
    multi = (rng.random((600, 4)) < 0.3).astype(np.uint8)
    strata = strata_for(multi)
    expected = [int(np.flatnonzero(r)[0]) if r.any() else 4 for r in multi]
    assert strata.tolist() == expected
    subs = {f: subset(multi, f, 3) for f in FRACTIONS}  # (N, K) labels go through strata_for
    assert_nested(subs)
    for f, idx in subs.items():
        np.testing.assert_array_equal(idx, subset(strata, f, 3))
        assert set(strata[idx].tolist()) == set(strata.tolist())


def test_strata_for_segmentation():
    empty = np.array([True] * 30 + [False] * 70)
    strata = strata_for(masks_empty=empty)
    assert strata.dtype == np.int64
    assert strata.tolist() == [0] * 30 + [1] * 70
    idx = subset(strata, 0.1, 0, num_classes=2)
    assert np.bincount(strata[idx]).tolist() == [3, 7]


def test_strata_for_plain_labels_and_errors():
    assert strata_for(np.array([2, 0, 1])).tolist() == [2, 0, 1]
    with pytest.raises(SplitError):
        strata_for()
    with pytest.raises(SplitError):
        strata_for(np.zeros((2, 2, 2)))


# -- make_split ------------------------------------------------------------------


def assert_patient_disjoint(split: np.ndarray, groups: np.ndarray) -> None:
    for g in np.unique(groups):
        assert len(set(split[groups == g].tolist())) == 1, g


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_make_split_realistic(busi_grouped, seed):
    labels, groups = busi_grouped
    split = make_split(labels, groups, seed)
    assert split.shape == labels.shape
    assert set(split.tolist()) == {"train", "val", "test"}
    assert_patient_disjoint(split, groups)
    n = labels.size
    for name, frac in (("test", 0.2), ("val", 0.15), ("train", 0.65)):
        part = split == name
        assert abs(part.mean() - frac) < 0.04, (name, part.mean())
        assert set(labels[part].tolist()) == {0, 1, 2}
        props = np.bincount(labels[part], minlength=3) / part.sum()
        np.testing.assert_allclose(props, np.bincount(labels) / n, atol=0.04)


def test_make_split_deterministic_and_seeded(busi_grouped):
    labels, groups = busi_grouped
    a = make_split(labels, groups, seed=4)
    np.testing.assert_array_equal(a, make_split(labels.copy(), groups.copy(), seed=4))
    assert not np.array_equal(a, make_split(labels, groups, seed=5))


def test_make_split_custom_fractions(busi_grouped):
    labels, groups = busi_grouped
    split = make_split(labels, groups, seed=0, val_fraction=0.1, test_fraction=0.5)
    assert abs((split == "test").mean() - 0.5) < 0.05
    assert abs((split == "val").mean() - 0.1) < 0.05


def test_make_split_small_dataset_fallback():
    # a class with fewer samples than folds takes the unstratified group fallback
    labels = np.array([0] * 12 + [1] * 6 + [2] * 2)
    groups = np.array([f"p{i // 2}" for i in range(20)])
    split = make_split(labels, groups, seed=0)
    assert_patient_disjoint(split, groups)
    assert {"train", "val", "test"} == set(split.tolist())


@pytest.mark.parametrize(
    ("val", "test"), [(0.0, 0.2), (0.15, 0.0), (0.5, 0.5), (0.6, 0.5), (-0.1, 0.2), (0.1, 1.0)]
)
def test_make_split_rejects_bad_fractions(busi_grouped, val, test):
    labels, groups = busi_grouped
    with pytest.raises(SplitError):
        make_split(labels, groups, val_fraction=val, test_fraction=test)


def test_make_split_needs_three_patients():
    with pytest.raises(SplitError, match="3 patients"):
        make_split(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]))


# -- properties ------------------------------------------------------------------


@st.composite
def pools(draw, mixed: bool):
    """Random (labels, groups): 1-3 images per patient, same class unless ``mixed``."""
    n_classes = draw(st.integers(2, 4))
    n_patients = draw(st.integers(3, 50))
    labels: list[int] = []
    groups: list[str] = []
    for p in range(n_patients):
        k = draw(st.integers(1, 3))
        if mixed:
            labels += draw(st.lists(st.integers(0, n_classes - 1), min_size=k, max_size=k))
        else:
            labels += [draw(st.integers(0, n_classes - 1))] * k
        groups += [f"p{p}"] * k
    return np.array(labels), np.array(groups)


@settings(max_examples=50, deadline=None)
@given(pool=pools(mixed=True), seed=st.integers(0, 2**31 - 1))
def test_property_subset_nested_grouped_complete(pool, seed):
    labels, groups = pool
    subs = {}
    for f in FRACTIONS:
        try:
            subs[f] = subset(labels, f, seed, groups=groups)
        except SplitError:
            assert math.ceil(f * labels.size - 1e-9) < np.unique(labels).size
    assert 1.0 in subs
    assert_nested(subs)
    for idx in subs.values():
        assert_group_closed(idx, groups)
        assert set(labels[idx].tolist()) == set(labels.tolist())


@settings(max_examples=50, deadline=None)
@given(pool=pools(mixed=False), seed=st.integers(0, 2**31 - 1))
def test_property_make_split_patient_disjoint(pool, seed):
    labels, groups = pool
    split = make_split(labels, groups, seed)
    assert set(split.tolist()) <= {"train", "val", "test"}
    assert_patient_disjoint(split, groups)
    assert (split == "train").any()
